"""The model registry: names -> architecture, weights file, sha256 and model card.

Shipped weights live in ``polarstem/weights/``: ``<name>-<mode>.safetensors`` (networks) or ``.npz``
(PCA + kNN, plain arrays), a card ``<name>-<mode>.json`` beside each, and ``index.json`` listing every
file with its sha256. Loading checks the hash *before* reading a byte of the weights, so a tampered or
truncated file fails with a one-line :class:`ModelFileError`. Nothing here imports torch: listing the
models (the CLI, the napari model picker) stays instant.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from ..errors import ModelFileError, PolarstemError
from ..fileio import sha256_file, write_json

MODES = ("pattern", "cell")

#: Every model the project defines; which of them have weights is in ``index.json``.
MODEL_DEFS: dict[str, dict] = {
    "resnet": {"family": "ResNet", "regime": "classification", "kind": "net", "arch": "resnet18",
               "summary": "ResNet-18 topology (width 32, 1-channel input, 2x2-pooled head, ~11 MB)"},
    "vgg": {"family": "VGG", "regime": "classification", "kind": "net", "arch": "vgg11",
            "summary": "VGG-11 conv stacks (width 16) with an average-pool head (3x3)"},
    "cnn": {"family": "CNN", "regime": "classification", "kind": "net", "arch": "cnn",
            "summary": "compact custom CNN, four conv blocks (16-32-64-128), 3x3-pooled head"},
    "pca-knn": {"family": "PCA-kNN", "regime": "classification", "kind": "pca_knn", "arch": None,
                "summary": "PCA + k-nearest neighbours (scikit-learn), stored as plain arrays"},
    "resnet-proto": {"family": "ResNet", "regime": "prototype", "kind": "net", "arch": "resnet18", "prototype": True,
                     "summary": "ResNet-18 trained in the prototype-representation regime"},
    "resnet-regression": {"family": "ResNet", "regime": "regression", "kind": "net", "arch": "resnet18",
                          "summary": "ResNet-18 trained in the regression regime (direction vector, von Mises loss)"},
    "cnn-proto": {"family": "CNN", "regime": "prototype", "kind": "net", "arch": "cnn", "prototype": True,
                  "summary": "compact CNN trained in the prototype-representation regime"},
    # the rest of the study's family x regime grid (configs/train/<name>.yaml; a model is shipped when its
    # weights are in the package) and the study's own pipeline (benchmarks/seeds.py only, never shipped)
    "vgg-proto": {"family": "VGG", "regime": "prototype", "kind": "net", "arch": "vgg11", "prototype": True,
                  "summary": "VGG-11 trained in the prototype-representation regime"},
    "vgg-regression": {"family": "VGG", "regime": "regression", "kind": "net", "arch": "vgg11",
                       "summary": "VGG-11 trained in the regression regime (direction vector, von Mises loss)"},
    "cnn-regression": {"family": "CNN", "regime": "regression", "kind": "net", "arch": "cnn",
                       "summary": "compact CNN trained in the regression regime (direction vector, von Mises loss)"},
    "study-resnet50": {"family": "ResNet", "regime": "classification", "kind": "net", "arch": "resnet50",
                       "summary": "the reference study's pipeline: 64 px raw crop about the centre of mass, ResNet-50"},
    "study-vgg16": {"family": "VGG", "regime": "classification", "kind": "net", "arch": "vgg16",
                    "summary": "the reference study's pipeline: 64 px raw crop about the centre of mass, VGG-16"},
    "study-input-cnn": {"family": "CNN", "regime": "classification", "kind": "net", "arch": "cnn",
                        "summary": "the compact CNN on the study's input (64 px raw crop about the centre of mass)"},
}

_CACHE: dict[tuple, object] = {}
_LOCK = threading.Lock()


def package_weights_dir() -> Path:
    """The folder of the shipped weights inside the package (``src/polarstem/weights`` in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "weights"


def weights_dir() -> Path:
    """The folder of the shipped weights (inside the package), or ``$POLARSTEM_WEIGHTS`` when set."""
    env = os.environ.get("POLARSTEM_WEIGHTS")
    return Path(env) if env else package_weights_dir()


def read_index(folder: Path | None = None) -> dict:
    """``index.json`` of a weights folder: {"files": {"<name>-<mode>": {"file", "card", "sha256"}}}."""
    folder = Path(folder) if folder else weights_dir()
    p = folder / "index.json"
    if not p.exists():
        return {"files": {}}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{p}: unreadable model index ({exc})") from None


def write_index(folder: Path | None = None) -> dict:
    """Rebuild ``index.json`` from the cards and weights present in ``folder`` (after training)."""
    folder = Path(folder) if folder else weights_dir()
    files = {}
    for card_path in sorted(folder.glob("*.json")):
        if card_path.name == "index.json":
            continue
        card = json.loads(card_path.read_text())
        wfile = folder / card["weights_file"]
        if not wfile.exists():
            continue
        files[f"{card['name']}-{card['mode']}"] = {
            "name": card["name"], "mode": card["mode"], "file": wfile.name, "card": card_path.name,
            "sha256": sha256_file(wfile), "bytes": wfile.stat().st_size,
        }
    index = {"format": 1, "files": files}
    write_json(folder / "index.json", index, indent=1)  # two trainings may finish at once: never a half index
    return index


def read_card(name: str, mode: str, folder: Path | None = None) -> dict:
    folder = Path(folder) if folder else weights_dir()
    entry = read_index(folder)["files"].get(f"{name}-{mode}")
    if entry is None:
        raise ModelFileError(f"model '{name}' has no weights for mode '{mode}'")
    p = folder / entry["card"]
    try:
        card = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{p}: unreadable model card ({exc})") from None
    card["sha256"] = entry["sha256"]
    return card


def list_models(folder: Path | None = None) -> list[dict]:
    """Registry entries: name, family, summary, modes with weights, acquisition ranges, held-out accuracy."""
    folder = Path(folder) if folder else weights_dir()
    index = read_index(folder)["files"]
    out = []
    for name, d in MODEL_DEFS.items():
        modes = [m for m in MODES if f"{name}-{m}" in index]
        entry = {"name": name, "family": d["family"], "regime": d["regime"], "summary": d["summary"],
                 "prototype": bool(d.get("prototype")), "modes": modes, "available": bool(modes),
                 "weights": {m: {"file": index[f"{name}-{m}"]["file"], "sha256": index[f"{name}-{m}"]["sha256"]}
                             for m in modes}}
        if modes:
            try:
                card = read_card(name, modes[0], folder)
            except ModelFileError:
                card = {}
            entry["acquisition"] = card.get("acquisition", {})
            entry["limits"] = card.get("limits")
            if "baseline" in card:
                entry["baseline"] = bool(card["baseline"])
            entry["input_grid"] = card.get("input_grid", {})
            cards = {m: _safe_card(name, m, folder) for m in modes}
            entry["accuracy"] = {m: cards[m].get("heldout", {}).get("accuracy") for m in modes}
            entry["accuracy_8_images"] = {m: _symmetry8_accuracy(cards[m]) for m in modes}
        out.append(entry)
    return out


def default_inference_accuracy(entry: dict) -> float | None:
    """A registry entry's per-pattern held-out accuracy as the tools run it by default (8 symmetry
    images) where its card has that figure, else with one image; what the default model is chosen by."""
    acc8 = (entry.get("accuracy_8_images") or {}).get("pattern")
    acc = acc8 if isinstance(acc8, (int, float)) else (entry.get("accuracy") or {}).get("pattern")
    return float(acc) if isinstance(acc, (int, float)) else None


def _symmetry8_accuracy(card: dict) -> float | None:
    """Held-out per-pattern accuracy with the 8 symmetry images the tools average by default, on the
    card's own held-out folder (a ``heldout_other`` entry with ``tta``), or None."""
    training = card.get("training") if isinstance(card.get("training"), dict) else {}
    config = training.get("config") if isinstance(training.get("config"), dict) else {}
    heldout = config.get("heldout")
    for entry in (card.get("heldout_other") or {}).values():
        if isinstance(entry, dict) and entry.get("tta") and entry.get("data") == heldout:
            acc = (entry.get("ideal") or {}).get("accuracy")
            if isinstance(acc, (int, float)):
                return float(acc)
    return None


def _safe_card(name, mode, folder):
    try:
        return read_card(name, mode, folder)
    except ModelFileError:
        return {}


def model_names() -> list[str]:
    return list(MODEL_DEFS)


def verified_weights_path(name: str, mode: str, folder: Path | None = None) -> Path:
    """The weights file of ``name``/``mode`` after checking its sha256 against the index."""
    folder = Path(folder) if folder else weights_dir()
    entry = read_index(folder)["files"].get(f"{name}-{mode}")
    if entry is None:
        have = [k for k in read_index(folder)["files"]]
        raise ModelFileError(f"no weights for model '{name}' in mode '{mode}' (available: {', '.join(have) or 'none'})")
    p = folder / entry["file"]
    if not p.exists():
        raise ModelFileError(f"{p}: weights file missing")
    digest = sha256_file(p)
    if digest != entry["sha256"]:
        raise ModelFileError(f"{p}: sha256 {digest[:12]}... does not match the registry ({entry['sha256'][:12]}...): "
                             "the file is corrupt or was changed; reinstall the package")
    return p


def load_model(name: str, mode: str = "pattern", device: str = "cpu", folder: Path | None = None):
    """A ready-to-use model (``preprocess``, ``predict``, ``card``, ``input_shape``, ``to``); cached.

    The hash is checked before loading; networks load on CPU and then move to ``device``.
    """
    if name not in MODEL_DEFS:
        raise PolarstemError(f"unknown model '{name}' (known: {', '.join(MODEL_DEFS)})")
    if mode not in MODES:
        raise PolarstemError(f"unknown mode '{mode}' (use one of {', '.join(MODES)})")
    folder = Path(folder) if folder else weights_dir()
    key = (name, mode, str(folder), str(device))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        path = verified_weights_path(name, mode, folder)
        card = read_card(name, mode, folder)
        if MODEL_DEFS[name]["kind"] == "pca_knn":
            from .pca_knn import PcaKnnModel

            model = PcaKnnModel.from_file(path, card)
        else:
            from .base import NetModel

            model = NetModel.from_file(path, card).to(device)
        _CACHE[key] = model
        return model


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
