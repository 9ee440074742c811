"""One way to walk a 4D dataset: blocks of whole patterns, read ahead of the computation.

Virtual images, mean patterns, classification and anomaly scoring all go through
:func:`iter_frame_blocks`, so they share the reader, the memory budget, progress reporting and
cancellation (LiberTEM's "function of a chunk of frames plus a merge").
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .errors import Cancelled, PolarstemError
from .io import BLOCK_BYTES, Dataset4D

ProgressCallback = Callable[[int, int], None]


@dataclass
class FrameBlock:
    """A rectangle ``rows`` x ``cols`` of the scan.

    ``frames`` is (rows, cols, det_rows, det_cols), widened by the requested halo where the scan
    allows; ``frames[inner_rows, inner_cols]`` is the block itself. ``prepared`` holds what the
    caller's ``transform`` made of the block in the reader thread.
    """

    rows: slice
    cols: slice
    frames: np.ndarray
    mask: np.ndarray | None = None  # (rows, cols) bool: which positions the caller asked for
    inner_rows: slice = field(default_factory=lambda: slice(None))
    inner_cols: slice = field(default_factory=lambda: slice(None))
    prepared: object = None


def read_region(dataset: Dataset4D, rows, cols) -> np.ndarray:
    """Read part of the scan into memory; a truncated or corrupt file becomes a one-line error."""
    try:
        return np.asarray(dataset.data[rows, cols].compute(scheduler="synchronous"))
    except PolarstemError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt files fail only when read, with any exception
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise PolarstemError(f"{dataset.source or 'dataset'}: cannot read scan data at rows {_span(rows)}, cols {_span(cols)} "
                             f"(truncated or corrupt file? {msg})") from exc


def block_grid(dataset: Dataset4D, budget: int = BLOCK_BYTES) -> list[tuple[slice, slice]]:
    """Rectangles of the scan, aligned with the dask chunks, each about ``budget`` bytes."""
    data = dataset.data
    row_chunks, col_chunks = data.chunks[0], data.chunks[1]
    frame_bytes = int(np.prod(dataset.detector_shape)) * dataset.dtype.itemsize
    # merge whole dask chunks along rows while the block stays under budget
    blocks = []
    col_edges = np.concatenate([[0], np.cumsum(col_chunks)])
    row_edges = np.concatenate([[0], np.cumsum(row_chunks)])
    for c0, c1 in zip(col_edges[:-1], col_edges[1:]):
        r = 0
        while r < len(row_chunks):
            start = row_edges[r]
            end = row_edges[r + 1]
            r += 1
            while r < len(row_chunks) and (row_edges[r + 1] - start) * (c1 - c0) * frame_bytes <= budget:
                end = row_edges[r + 1]
                r += 1
            blocks.append((slice(int(start), int(end)), slice(int(c0), int(c1))))
    return blocks


def iter_frame_blocks(
    dataset: Dataset4D,
    mask: np.ndarray | None = None,
    budget: int = BLOCK_BYTES,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    prefetch: bool = True,
    halo: tuple[int, int] = (0, 0),
    transform: Callable[[FrameBlock], object] | None = None,
) -> Iterator[FrameBlock]:
    """Yield the scan block by block as numpy, reading the next block while the caller works.

    ``mask`` (scan_rows, scan_cols) skips blocks with no selected position. ``cancel`` is checked
    between blocks and raises :class:`Cancelled`; blocks yielded before stay valid. ``halo`` adds
    neighbouring rows/cols (for cell windows); ``transform`` runs in the reader thread (preprocessing
    overlaps the caller's work on the previous block).
    """
    blocks = block_grid(dataset, budget)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != dataset.scan_shape:
            raise PolarstemError(f"ROI mask shape {mask.shape} does not match the scan {dataset.scan_shape}")
        blocks = [(r, c) for r, c in blocks if mask[r, c].any()]
    total = len(blocks)
    hy, hx = halo
    sy, sx = dataset.scan_shape

    def read(rc) -> FrameBlock:
        r, c = rc
        r0, r1 = max(0, r.start - hy), min(sy, r.stop + hy)
        c0, c1 = max(0, c.start - hx), min(sx, c.stop + hx)
        frames = read_region(dataset, slice(r0, r1), slice(c0, c1))
        block = FrameBlock(r, c, frames, None if mask is None else mask[r, c],
                           slice(r.start - r0, r.stop - r0), slice(c.start - c0, c.stop - c0))
        if transform is not None:
            block.prepared = transform(block)
        return block

    if progress:
        progress(0, total)
    if not prefetch or total <= 1:
        for i, rc in enumerate(blocks):
            _check(cancel)
            yield read(rc)
            if progress:
                progress(i + 1, total)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="polarstem-read") as pool:
        future = pool.submit(read, blocks[0])
        try:
            for i in range(total):
                _check(cancel)
                block = future.result()
                if i + 1 < total:
                    future = pool.submit(read, blocks[i + 1])
                yield block
                if progress:
                    progress(i + 1, total)
        finally:
            future.cancel()


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")


def _span(index) -> str:
    if isinstance(index, slice):
        if index.start is None and index.stop is None:
            return "all"
        return f"{index.start or 0}-{(index.stop or 0) - 1}"
    return str(index)
