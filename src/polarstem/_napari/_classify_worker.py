"""The long job behind the "Polarization map" widget: it only yields typed updates, never touches Qt."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np


@dataclass
class ClassifyProgress:
    done: int
    total: int


@dataclass
class ClassifyPartial:
    result: object  # polarstem.infer.ClassificationResult, valid where result.done


@dataclass
class ClassifyDone:
    result: object


@dataclass
class ClassifyFailed:
    message: str


def classify_updates(dataset, model: str, mode: str, roi: np.ndarray | None, device: str,
                     cancel: threading.Event, partial_every: float = 1.0):
    """Generator for ``thread_worker``: runs :func:`classify_scan` and yields progress/partial/done updates.

    The classification runs in its own thread and reports through a queue, so this generator can
    yield as it goes; cancelling returns the partial result through ``ClassifyDone``.
    """
    import time

    from ..errors import PolarstemError
    from ..infer import classify_scan

    updates: queue.Queue = queue.Queue()
    last = [0.0]

    def on_block(result):
        now = time.monotonic()
        if now - last[0] >= partial_every:
            last[0] = now
            updates.put(ClassifyPartial(result))

    def run():
        try:
            result = classify_scan(dataset, model=model, mode=mode, roi=roi, device=device, cancel=cancel,
                                   progress=lambda d, t: updates.put(ClassifyProgress(d, t)), on_block=on_block)
            updates.put(ClassifyDone(result))
        except PolarstemError as exc:
            updates.put(ClassifyFailed(str(exc)))
        except Exception as exc:  # noqa: BLE001 - shown to the user as one line, not a traceback
            updates.put(ClassifyFailed(f"classification failed: {type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=run, name="polarstem-classify", daemon=True)
    thread.start()
    while True:
        update = updates.get()
        yield update
        if isinstance(update, (ClassifyDone, ClassifyFailed)):
            break
    thread.join()
