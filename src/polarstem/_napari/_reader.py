"""napari reader: a 4D-STEM file opens as its virtual bright-field image, calibrated in nm.

The layer keeps the lazy dataset in ``metadata["polarstem_dataset"]`` so the widgets can compute
other detectors and classify without reading the file again. Problems the user can fix (not 4D,
corrupt, wrong scan shape) become a one-line napari notification, never a traceback.
"""

from __future__ import annotations

import math
import os
import re
import weakref
from pathlib import Path

import numpy as np

from ..errors import PolarstemError
from ..io import Dataset4D, load
from ._state import DATASET_KEY, DETECTOR_KEY, state_events, state_for
from ._workers import ImageReady, JobFailed, PatternReady, detector_label, geometry_or_centre, virtual_detector_updates

#: File types the reader is offered for (keep in step with ``filename_patterns`` in napari.yaml).
EXTENSIONS = (".mib", ".hdr", ".blo", ".hspy", ".zspy", ".emd", ".h5", ".hdf5", ".app5", ".npy", ".zarr",
              ".dm4", ".tvips")
#: Datasets up to this size get their bright-field image while opening; larger ones in the background.
SYNC_BYTES = 256 * 2**20


def napari_get_reader(path):
    """Return :func:`read_4dstem` for paths that may be 4D-STEM, None for what clearly is not ours."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(is_candidate(Path(p)) for p in paths):
        return None
    return read_4dstem


def is_candidate(p: Path) -> bool:
    """Cheap check: a known extension, a ``polarstem simulate`` folder, or a zarr folder.

    A ``.npy`` whose header says it is not 4D (or 3D, a possible frame stack) is left to other readers.
    """
    if p.is_dir():
        return (p / "manifest.json").exists() or p.suffix.lower() in (".zarr", ".zspy") or any(
            (p / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))
    suffix = p.suffix.lower()
    if suffix not in EXTENSIONS:
        return False
    if suffix == ".npy" and p.is_file():
        try:
            shape = np.load(p, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError):
            return True  # ours to report as unreadable
        return len(shape) == 4
    return True


def read_4dstem(path) -> list[tuple]:
    """Open each path as a virtual bright-field image layer; report failures as notifications."""
    from napari.utils.notifications import show_error

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers = []
    for p in paths:
        try:
            ds = open_dataset(Path(p))
            layers.append(virtual_image_layer(ds, name=Path(p).name))
        except PolarstemError as exc:
            show_error(str(exc))
        except (OSError, ValueError, MemoryError) as exc:  # e.g. a file truncated after its header
            show_error(f"{p}: cannot read the file ({type(exc).__name__}: {' '.join(str(exc).split())})")
    # napari's "read, but nothing to add" sentinel: no second reader, no traceback dialog
    return layers or [(None,)]


def open_dataset(p: Path) -> Dataset4D:
    """:func:`polarstem.io.load` (which also opens a Merlin ``.hdr``'s ``.mib``), plus what a file
    dialog cannot ask for: a stack of N frames without a scan shape opens as a square scan when N is
    a perfect square (with a warning, since the file does not say).
    """
    from napari.utils.notifications import show_warning

    try:
        return load(p)
    except PolarstemError as exc:
        m = re.search(r"a stack of (\d+) ", str(exc))
        n = int(m.group(1)) if m else 0
        side = math.isqrt(n)
        if n < 4 or side * side != n:
            raise
        ds = load(p, navigation_shape=(side, side))
        show_warning(f"{p.name}: the file gives no scan shape; opened its {n} frames as a {side}x{side} scan")
        return ds


def layer_kwargs(ds: Dataset4D, name: str, detector_text: str) -> dict:
    """Image-layer keyword arguments: scan calibration as ``scale``/``units``, the dataset in metadata."""
    cal = ds.calibration
    units = "nm" if all(s is not None for s in cal.scan_step_nm) else "pixel"
    return {
        "name": name,
        "scale": cal.scan_scale(),
        "units": (units, units),
        "colormap": "gray",
        "metadata": {DATASET_KEY: ds, DETECTOR_KEY: detector_text},
    }


def virtual_image_layer(ds: Dataset4D, name: str | None = None, background: bool | None = None):
    """The bright-field image of ``ds`` as a layer-data tuple (or an Image layer being filled in).

    Small datasets are computed here; larger ones (``background``) get a blank image at once and the
    bright field fills in from a worker thread, so opening a big file never freezes the viewer.
    """
    name = name or ds.name
    state = state_for(ds)
    state.geometry, found = geometry_or_centre(ds)  # from a sample of rows: fast on any file
    state.geometry_found = found
    if not found:
        from napari.utils.notifications import show_warning

        show_warning(f"{name}: no bright-field disk found in the patterns; showing the total intensity")
    detector = state.detector
    nbytes = int(np.prod(ds.shape)) * ds.dtype.itemsize
    if background is None:
        background = nbytes > SYNC_BYTES
    if not background:
        from ..virtual import virtual_image

        image = virtual_image(ds, detector, geometry=state.geometry)
        return (image.astype(np.float32), layer_kwargs(ds, name, detector_label(detector)), "image")
    from napari.layers import Image

    kwargs = layer_kwargs(ds, name, detector_label(detector) + " (computing)")
    kwargs["contrast_limits"] = (0.0, 1.0)
    # a Layer object (napari accepts them from readers) so the worker can fill in this very layer
    layer = Image(np.zeros(ds.scan_shape, np.float32), **kwargs)
    _fill_in_background(layer, ds)
    return layer


def _fill_in_background(layer, ds: Dataset4D) -> None:
    """Compute the bright field in a worker and put it in ``layer`` when done (if it still exists)."""
    import threading

    from napari.qt.threading import thread_worker
    from napari.utils import progress
    from napari.utils.notifications import show_error

    state = state_for(ds)
    layer_ref = weakref.ref(layer)
    bar = progress(total=0, desc=f"opening {ds.name}")

    def on_update(update) -> None:
        if hasattr(update, "done") and hasattr(update, "total"):
            bar.total = update.total
            bar.n = update.done
            bar.refresh()
        elif isinstance(update, PatternReady):
            state.mean_pattern = update.pattern
            state_events.changed.emit(state)
        elif isinstance(update, ImageReady):
            target = layer_ref()
            if target is not None:
                target.data = update.image.astype(np.float32)
                target.metadata[DETECTOR_KEY] = detector_label(update.detector)
                target.reset_contrast_limits()
        elif isinstance(update, JobFailed):
            show_error(f"{ds.name}: {update.message}")

    worker = thread_worker(virtual_detector_updates, start_thread=False)(
        ds, state.detector, threading.Event(), geometry=state.geometry, pattern=None)
    def on_finished() -> None:
        bar.close()
        state.busy = False
        state_events.changed.emit(state)

    worker.yielded.connect(on_update)
    worker.finished.connect(on_finished)
    state.busy = True
    worker.start()
