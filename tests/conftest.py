"""Shared test fixtures: a virtual X display for napari tests, and the real detector files.

Real files live in ``shared/realdata`` beside the clone (as CI lays it out) or under
``$POLARSTEM_REALDATA``; tests that need them skip when neither exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest


def _realdata_root() -> Path:
    env = os.environ.get("POLARSTEM_REALDATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "realdata"


def _needs_display(session) -> bool:
    return any("make_napari_viewer" in getattr(item, "fixturenames", ()) or item.get_closest_marker("gui")
               for item in session.items)


@pytest.fixture(scope="session", autouse=True)
def virtual_display(request):
    """Start Xvfb and point DISPLAY at it when napari tests run without a display.

    A real X server (not Qt's offscreen platform) so that screenshots of whole windows work.
    Without Xvfb, Qt falls back to the offscreen platform. ``make test`` runs under ``xvfb-run``
    already; this is for a plain ``pytest`` in a terminal without X.
    """
    if os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM") or not _needs_display(request.session):
        yield os.environ.get("DISPLAY")
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        yield None
        return
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        number = fh.readline().strip()
    if not number:
        proc.kill()
        pytest.fail("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number}"
    # Stop Xvfb only after this process has exited: Qt aborts the process if its X server goes away
    # while it is still connected, and pytest prints its summary after session fixtures end.
    subprocess.Popen(["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill {proc.pid}"],
                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield os.environ["DISPLAY"]


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The ``rosettasciio`` folder of the shared real detector files."""
    root = _realdata_root() / "rosettasciio"
    if not root.exists():
        pytest.skip(f"real detector files not found at {root} (set POLARSTEM_REALDATA)")
    return root


@pytest.fixture(scope="session")
def merlin_dir(realdata, tmp_path_factory) -> Path:
    """The Merlin archives unzipped, one folder per archive (named after the archive)."""
    out = tmp_path_factory.mktemp("merlin")
    for archive in sorted((realdata / "quantumdetector").glob("*.zip")):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out / archive.stem)
    return out
