# napari-polarstem: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Qt and Xvfb system libraries for napari (Debian package names)
APT_PACKAGES := xvfb xauth libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1 libgl1 \
	libegl1 libdbus-1-3 libfontconfig1
# run under a virtual display when there is no real one
XRUN := $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1600x1000x24")
DEMO_OUT ?= demo_output
TORCH_VERSION := 2.13.0
# PyTorch's own index of CPU-only wheels (PyPI's Linux torch is the multi-GB CUDA build)
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=

.PHONY: venv system-deps test demo clean lint

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# CPU build of PyTorch unless a GPU is present: from PyTorch's CPU index when it answers within
	@# seconds, else from the default index (which may serve a CPU build itself, as a local mirror does)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install -q "torch>=2.3"; \
	else \
		$(PIP) install -q --index-url $(TORCH_CPU_INDEX) --timeout 5 --retries 0 "torch==$(TORCH_VERSION)" \
		|| { echo "PyTorch CPU index not reachable: torch $(TORCH_VERSION) from the default index"; \
		     $(PIP) install -q "torch==$(TORCH_VERSION)"; }; \
	fi
	$(PIP) install -q -e ".[testing]"
	@# Qt binding: PyQt6 (napari deprecates PyQt5, and qtpy would still prefer a PyQt5 left by an older install)
	$(PIP) uninstall -y -q PyQt5 PyQt5-Qt5 PyQt5_sip 2>/dev/null || true
	touch $(STAMP)

system-deps:
	@if ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-cursor; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
		else \
			echo "install these Debian packages for napari tests: $(APT_PACKAGES)"; \
		fi; \
	fi

test: venv system-deps
	$(XRUN) $(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv system-deps
	$(XRUN) $(VENV)/bin/polarstem demo -o $(DEMO_OUT)
	@echo "demo outputs in $(DEMO_OUT)/"

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build dist src/*.egg-info
