"""Long jobs behind the polarstem widgets. They only yield typed updates and never touch Qt.

A widget runs one of the generators below in ``napari.qt.threading.thread_worker`` and reacts to what
it yields: :class:`Progress`, then results (:class:`PatternReady`, :class:`ImageReady`), then at most
one of :class:`JobFailed` / :class:`JobCancelled`. The core functions report progress through a
callback; :func:`stream_job` turns those callbacks into yielded updates by running the job in its
own thread and forwarding through a queue, so any chunked core function can be wrapped the same way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import Cancelled, PolarstemError
from ..io import Dataset4D
from ..virtual import DetectorGeometry, VirtualDetector, detector_geometry, mean_pattern, virtual_image


@dataclass(frozen=True)
class Progress:
    stage: str  # what is being computed, e.g. "mean pattern", "BF image"
    done: int
    total: int


@dataclass(frozen=True)
class PatternReady:
    pattern: np.ndarray  # mean diffraction pattern, (det_rows, det_cols)
    geometry: DetectorGeometry
    disk_found: bool  # False: no bright-field disk, geometry falls back to the detector centre


@dataclass(frozen=True)
class ImageReady:
    detector: VirtualDetector
    image: np.ndarray  # (scan_rows, scan_cols); for "com", (2, scan_rows, scan_cols) = (com_y, com_x)


@dataclass(frozen=True)
class JobFailed:
    message: str  # one line, for a notification


@dataclass(frozen=True)
class JobCancelled:
    pass


Update = Progress | PatternReady | ImageReady | JobFailed | JobCancelled
Emit = Callable[[object], None]

_DONE = object()


def stream_job(job: Callable[[Emit], None]) -> Iterator[object]:
    """Run ``job(emit)`` in a thread and yield what it emits; errors become one-line updates.

    ``job`` passes progress callbacks that call ``emit`` into the core functions; this generator
    (running in the worker thread) yields each update as it arrives, so the widget sees progress live.
    """
    updates: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            job(updates.put)
        except Cancelled:
            updates.put(JobCancelled())
        except PolarstemError as exc:
            updates.put(JobFailed(str(exc)))
        except MemoryError:
            updates.put(JobFailed("not enough memory for this computation"))
        except Exception as exc:  # noqa: BLE001 - shown as one line, never a traceback
            updates.put(JobFailed(f"{type(exc).__name__}: {' '.join(str(exc).split())}"))
        finally:
            updates.put(_DONE)

    thread = threading.Thread(target=run, name="polarstem-job", daemon=True)
    thread.start()
    while (update := updates.get()) is not _DONE:
        yield update
    thread.join()


def geometry_or_centre(dataset: Dataset4D, pattern: np.ndarray | None = None) -> tuple[DetectorGeometry, bool]:
    """Detector geometry from the bright-field disk, or the detector centre when there is no disk.

    Some files (flat or dark patterns) have no disk to find; the widgets still work there, with BF
    covering the whole detector (total intensity) until the user gives radii in px.
    """
    try:
        return detector_geometry(dataset, pattern), True
    except PolarstemError:
        ky, kx = dataset.detector_shape
        cal = dataset.calibration
        center = cal.detector_center_px or ((ky - 1) / 2, (kx - 1) / 2)
        radius = float(np.hypot(ky, kx))  # covers every pixel
        return DetectorGeometry(center=(float(center[0]), float(center[1])), disk_radius_px=radius,
                                mrad_per_px=cal.mrad_per_px), False


def detector_label(detector: VirtualDetector) -> str:
    """Short text naming a detector, e.g. "ADF 20-80 mrad", for layer metadata and status lines."""
    kind = detector.kind.upper() if detector.kind != "com" else "CoM"
    inner, outer, u = detector.inner, detector.outer, detector.units
    if detector.kind == "bf":
        return f"BF {outer:g} {u}" if outer is not None else "BF"
    if detector.kind == "adf":
        lo = "auto" if inner is None else f"{inner:g}"
        hi = "edge" if outer is None else f"{outer:g}"
        return f"ADF {lo}-{hi} {u}"
    return kind


def virtual_detector_updates(dataset: Dataset4D, detector: VirtualDetector | None, cancel: threading.Event,
                             geometry: DetectorGeometry | None = None,
                             pattern: np.ndarray | None = None) -> Iterator[object]:
    """Generator for ``thread_worker``: the mean pattern (if not given), then the virtual image.

    With ``detector`` None only the mean pattern and geometry are computed.

    Pass the ``geometry`` and ``pattern`` already known for the dataset to skip their pass over the
    file; the widget keeps them in :class:`polarstem._napari._state.DatasetState`.
    """

    def job(emit: Emit) -> None:
        nonlocal geometry, pattern
        if pattern is None:
            pattern = mean_pattern(dataset, progress=lambda d, t: emit(Progress("mean pattern", d, t)),
                                   cancel=cancel)
            found = True
            if geometry is None:
                geometry, found = geometry_or_centre(dataset, pattern)
            emit(PatternReady(pattern, geometry, found))
        if geometry is None:
            geometry, found = geometry_or_centre(dataset, pattern)
            emit(PatternReady(pattern, geometry, found))
        if detector is None:
            return
        stage = f"{detector_label(detector)} image"
        image = virtual_image(dataset, detector, geometry=geometry,
                              progress=lambda d, t: emit(Progress(stage, d, t)), cancel=cancel)
        emit(ImageReady(detector, image))

    yield from stream_job(job)


def read_pattern(dataset: Dataset4D, row: int, col: int) -> np.ndarray:
    """One diffraction pattern, read in a worker (it may mean reading a whole chunk of the file)."""
    return np.asarray(dataset.data[row, col].compute(scheduler="synchronous"), dtype=np.float64)
