"""The long job behind the "Polarization map" widget: it only yields typed updates, never touches Qt.

Progress and failures use the shared update types of :mod:`._workers`; a classification adds
:class:`ClassifyPartial` (maps so far, at most once a second) and :class:`ClassifyDone`. A cancelled
run ends with ``ClassifyDone`` too, its result marked ``complete=False`` and valid where ``done``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from ._workers import Progress, stream_job


@dataclass(frozen=True)
class ClassifyPartial:
    result: object  # polarstem.classify.ClassificationResult, valid where result.done


@dataclass(frozen=True)
class ClassifyDone:
    result: object


def classify_updates(dataset, model: str, mode: str, roi: np.ndarray | None, device: str,
                     cancel: threading.Event, partial_every: float = 1.0, chunk_bytes: int | None = None,
                     tta: int | None = None, wall_bands: bool = True):
    """Generator for ``thread_worker``: runs :func:`~polarstem.classify.classify_scan` and yields updates."""
    from ..classify import classify_scan

    def job(emit) -> None:
        last = [0.0]

        def on_block(result) -> None:
            now = time.monotonic()
            if now - last[0] >= partial_every:
                last[0] = now
                emit(ClassifyPartial(result))

        kw = {"chunk_bytes": chunk_bytes} if chunk_bytes else {}
        result = classify_scan(dataset, model=model, mode=mode, roi=roi, device=device, cancel=cancel,
                               progress=lambda d, t: emit(Progress("classify", d, t)), on_block=on_block, tta=tta,
                               wall_bands=wall_bands, **kw)
        emit(ClassifyDone(result))

    yield from stream_job(job)  # a generator function, so thread_worker makes a GeneratorWorker
