"""One way to walk a 4D dataset: blocks of whole patterns, read ahead of the computation.

Virtual images, mean patterns, classification and anomaly scoring all go through the block grid
here, so they share the reader, the memory budget, progress reporting and cancellation (LiberTEM's
"function of a chunk of frames plus a merge"). Two walks:

- :func:`iter_frame_blocks` yields each block to the caller while one thread reads the next
  (classification: the caller's model uses the other core);
- :func:`map_frame_blocks` runs a function of a block on every core and yields its results
  (virtual images: the function is the whole computation). A plain ``.npy`` file is not copied:
  the function sees the file's pages, which are dropped from the process after each block.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import Cancelled, PolarstemError
from .io import BLOCK_BYTES, CHUNK_BYTES, Dataset4D

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
        raise _read_error(dataset, rows, cols, exc) from exc


def block_grid(dataset: Dataset4D, budget: int = BLOCK_BYTES,
               mask: np.ndarray | None = None) -> list[tuple[slice, slice]]:
    """Rectangles of the scan, aligned with the dask chunks, each about ``budget`` bytes; with a
    ``mask`` (scan_rows, scan_cols), only those holding a selected position."""
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
    if mask is not None:
        blocks = [(r, c) for r, c in blocks if mask[r, c].any()]
    return blocks


def _scan_mask(mask, dataset: Dataset4D) -> np.ndarray | None:
    """``mask`` as a bool array of the scan's shape (None stays None), or a one-line error."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != dataset.scan_shape:
        raise PolarstemError(f"ROI mask shape {mask.shape} does not match the scan {dataset.scan_shape}")
    return mask


def with_halo(rows: slice, cols: slice, halo: tuple[int, int],
              scan_shape: tuple[int, int]) -> tuple[slice, slice, slice, slice]:
    """The block ``rows`` x ``cols`` widened by ``halo`` (rows, cols) where the scan allows: (outer rows,
    outer cols, inner rows, inner cols), the inner slices locating the block inside the outer region."""
    (hy, hx), (sy, sx) = halo, scan_shape
    r0, r1 = max(0, rows.start - hy), min(sy, rows.stop + hy)
    c0, c1 = max(0, cols.start - hx), min(sx, cols.stop + hx)
    return (slice(r0, r1), slice(c0, c1), slice(rows.start - r0, rows.stop - r0),
            slice(cols.start - c0, cols.stop - c0))


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
    mask = _scan_mask(mask, dataset)
    blocks = block_grid(dataset, budget, mask)
    total = len(blocks)

    def read(rc) -> FrameBlock:
        r, c = rc
        outer_rows, outer_cols, inner_rows, inner_cols = with_halo(r, c, halo, dataset.scan_shape)
        frames = read_region(dataset, outer_rows, outer_cols)
        block = FrameBlock(r, c, frames, None if mask is None else mask[r, c], inner_rows, inner_cols)
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


def map_frame_blocks(
    dataset: Dataset4D,
    fn: Callable[[FrameBlock], object],
    mask: np.ndarray | None = None,
    budget: int = CHUNK_BYTES,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[slice, slice, object]]:
    """Run ``fn(block)`` on every block of the scan in ``workers`` threads; yield ``(rows, cols, result)``.

    Results come in scan order, so ``progress`` counts up. ``block.frames`` is valid only during the
    call (a view of the file's pages or a buffer the thread reuses): ``fn`` reduces it and keeps
    nothing. Each thread reads its own blocks (:func:`block_reader`), and at most two blocks per
    worker are in flight, so memory stays at a few ``budget``-sized blocks whatever the file size.
    ``fn`` must release the GIL for the workers to run at once (numpy, numba ``nogil``). ``cancel``
    is checked between blocks and raises :class:`Cancelled`; blocks yielded before stay valid.
    ``mask`` skips blocks with no selected position, as in :func:`iter_frame_blocks`.
    """
    mask = _scan_mask(mask, dataset)
    blocks = block_grid(dataset, budget, mask)
    run = _block_runner(dataset, fn, mask, block_reader(dataset), cancel)
    n = max(1, int(workers or available_cores()))
    if progress:
        progress(0, len(blocks))
    if n == 1 or len(blocks) <= 1:
        yield from _map_in_this_thread(blocks, run, progress, cancel)
    else:
        yield from _map_in_threads(blocks, run, n, progress, cancel)


def _block_runner(dataset: Dataset4D, fn: Callable[[FrameBlock], object], mask: np.ndarray | None,
                  reader, cancel: threading.Event | None) -> Callable[[tuple[slice, slice]], object]:
    """``run(rc)``: read the block ``rc`` with ``reader``, apply ``fn`` and release the block's
    pages or buffer whatever happens. A block started after ``cancel`` is skipped (None): the
    consumer raises :class:`Cancelled` before it would use the result."""

    def run(rc: tuple[slice, slice]) -> object:
        r, c = rc
        if cancel is not None and cancel.is_set():
            return None  # not computed; the consumer raises Cancelled before it would use this
        try:
            frames = reader.read(r, c)
        except PolarstemError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt files fail only when read, with any exception
            raise _read_error(dataset, r, c, exc) from exc
        try:
            return fn(FrameBlock(r, c, frames, None if mask is None else mask[r, c]))
        finally:
            del frames
            reader.release(r, c)

    return run


def _map_in_this_thread(blocks: list[tuple[slice, slice]], run: Callable[[tuple[slice, slice]], object],
                        progress: ProgressCallback | None,
                        cancel: threading.Event | None) -> Iterator[tuple[slice, slice, object]]:
    """:func:`map_frame_blocks` with one worker or one block: no pool to start."""
    total = len(blocks)
    for i, rc in enumerate(blocks):
        _check(cancel)
        yield rc[0], rc[1], run(rc)
        if progress:
            progress(i + 1, total)


def _map_in_threads(blocks: list[tuple[slice, slice]], run: Callable[[tuple[slice, slice]], object], n: int,
                    progress: ProgressCallback | None,
                    cancel: threading.Event | None) -> Iterator[tuple[slice, slice, object]]:
    """:func:`map_frame_blocks` on ``n`` threads, at most ``2 n`` blocks in flight (the memory
    bound), results in scan order; blocks not started when the walk stops are dropped."""
    total = len(blocks)
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="polarstem-map") as pool:
        todo = iter(blocks)
        pending: deque = deque()

        def submit() -> None:
            rc = next(todo, None)
            if rc is not None:
                pending.append((rc, pool.submit(run, rc)))

        for _ in range(2 * n):
            submit()
        try:
            for i in range(total):
                _check(cancel)
                rc, future = pending.popleft()
                result = future.result()
                _check(cancel)
                submit()
                yield rc[0], rc[1], result
                if progress:
                    progress(i + 1, total)
        finally:
            for _, future in pending:
                future.cancel()


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# block readers: the fastest safe way to get a block of this file into a thread


def block_reader(dataset: Dataset4D):
    """How :func:`map_frame_blocks` reads ``dataset``: the first of these that applies.

    - :class:`MappedArray`: raw C-ordered data at an offset in a file (``.npy``, contiguous
      uncompressed HDF5): views of a memory map, no copy;
    - :class:`HDF5Chunks`: chunked HDF5, unfiltered or with gzip and/or shuffle (as HyperSpy writes
      ``.hspy``): raw chunks read beside the HDF5 library and decoded on every core;
    - :class:`ZarrChunkFiles`: uncompressed zarr in a directory: chunk files mapped, no copy;
    - :class:`ArrayBlocks`: a zarr, h5py or numpy array the dask array wraps, sliced directly
      (compressed zarr: the codecs release the GIL, so every core decodes);
    - :class:`DaskBlocks`: anything else, through dask (:func:`read_region`).

    The first three apply only while ``dataset.data`` is the file's array as loaded (no slicing,
    rechunking or arithmetic since), which :func:`array_source` checks.
    """
    for kind in (MappedArray, HDF5Chunks, ZarrChunkFiles, ArrayBlocks):
        reader = kind.for_dataset(dataset)
        if reader is not None:
            return reader
    return DaskBlocks(dataset)


def array_source(data) -> object | None:
    """The array-like a dask array reads directly (``da.from_array(source)``, nothing applied since), else None."""
    graph = getattr(data, "dask", None)
    name = getattr(data, "name", None)
    layers = getattr(graph, "layers", None)
    if not isinstance(name, str) or layers is None or set(layers) != {name, f"original-{name}"}:
        return None
    try:
        source = layers[f"original-{name}"][f"original-{name}"]
    except (KeyError, TypeError):
        return None
    shape, dtype = getattr(source, "shape", None), getattr(source, "dtype", None)
    if shape is None or dtype is None or tuple(shape) != tuple(data.shape) or np.dtype(dtype) != data.dtype:
        return None
    return source


class DaskBlocks:
    """Blocks computed by dask, one synchronous graph per block."""

    def __init__(self, dataset: Dataset4D):
        self.dataset = dataset

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return read_region(self.dataset, rows, cols)

    def release(self, rows: slice, cols: slice) -> None:
        pass


class ArrayBlocks:
    """Blocks sliced straight from the zarr, h5py or numpy array behind the dask array (no graph per block)."""

    def __init__(self, source):
        self.source = source

    @classmethod
    def for_dataset(cls, dataset: Dataset4D) -> ArrayBlocks | None:
        src = array_source(dataset.data)
        module = type(src).__module__.split(".")[0]
        # types whose reads are safe from several threads at once (h5py serialises its own)
        if isinstance(src, np.ndarray) or module in ("zarr", "h5py") or type(src).__name__ == "NpyFrames":
            return cls(src)
        return None

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return np.asarray(self.source[rows, cols])

    def release(self, rows: slice, cols: slice) -> None:
        pass


class MappedArray:
    """Zero-copy views of the blocks of raw C-ordered data at ``offset`` in a file.

    The file is mapped read-only once; a block is a strided view of the mapping, and its pages are
    dropped from the process when the block is released (they stay in the page cache), so resident
    memory is that of the blocks in flight, not of the file.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, offset: int):
        with open(path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)
        self._frame = int(np.prod(self.shape[2:])) * self.dtype.itemsize
        if len(self._map) < self.offset + self.shape[0] * self.shape[1] * self._frame:
            raise ValueError("the file is shorter than the array")

    @classmethod
    def for_dataset(cls, dataset: Dataset4D) -> MappedArray | None:
        """The mapping for a whole ``.npy`` file (memory map or polarstem's reader) or a contiguous,
        unfiltered HDF5 dataset, as loaded; else None."""
        src = array_source(dataset.data)
        path = offset = None
        if isinstance(src, np.memmap) and src.flags.c_contiguous:
            path, offset = src.filename, src.offset
        elif type(src).__name__ == "NpyFrames":
            path, offset = getattr(src, "path", None), getattr(src, "offset", None)
        elif type(src).__module__.startswith("h5py") and getattr(src, "chunks", 0) is None:
            try:  # contiguous layout without filters: the data are one run of bytes in the file
                path, offset = src.file.filename, src.id.get_offset()
            except Exception:  # noqa: BLE001 - external links, virtual datasets, ... read the usual way
                return None
        if not path or offset is None:
            return None
        try:
            return cls(str(path), dataset.shape, dataset.dtype, int(offset))
        except (OSError, ValueError):
            return None  # unreadable or truncated: the ordinary reader reports it

    def _span(self, rows: slice, cols: slice) -> tuple[int, int]:
        sx = self.shape[1]
        start = self.offset + (rows.start * sx + cols.start) * self._frame
        end = self.offset + ((rows.stop - 1) * sx + cols.stop) * self._frame
        return start, end

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """The block (rows, cols, det_rows, det_cols) as a read-only view of the file."""
        start, _ = self._span(rows, cols)
        sx, ky, kx = self.shape[1:]
        item = self.dtype.itemsize
        shape = (rows.stop - rows.start, cols.stop - cols.start, ky, kx)
        return np.ndarray(shape, self.dtype, buffer=self._map, offset=start,
                          strides=(sx * self._frame, self._frame, kx * item, item))

    def release(self, rows: slice, cols: slice) -> None:
        """Drop the block's pages from the process (a later view maps them again from the page cache)."""
        start, end = self._span(rows, cols)
        start -= start % mmap.PAGESIZE
        try:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (AttributeError, OSError, ValueError):
            pass  # no madvise here: the kernel evicts the pages under memory pressure instead


_DEFLATE, _SHUFFLE = 1, 2  # HDF5 filter ids


class _StoredChunks:
    """Blocks assembled from the file's own chunks, each read by :meth:`_chunk` in the calling thread.

    A block that is one chunk is returned as that chunk (no copy); larger blocks are copied into a
    buffer the thread reuses. The dask chunks (hence the blocks) must be whole storage chunks, each
    spanning whole patterns.
    """

    def __init__(self, source, shape: tuple[int, ...]):
        self.source = source
        self.shape = tuple(int(s) for s in shape)
        self.chunk = tuple(int(c) for c in source.chunks)
        self.dtype = np.dtype(source.dtype)
        self._local = threading.local()

    @staticmethod
    def _aligned(dataset: Dataset4D, chunk: tuple[int, ...]) -> bool:
        if tuple(chunk[2:]) != tuple(dataset.detector_shape):
            return False
        for axis in (0, 1):
            edges = np.cumsum(dataset.data.chunks[axis])[:-1]
            if np.any(edges % chunk[axis]):
                return False
        return True

    def _chunk(self, origin: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def _stored_fill(self, origin: tuple[int, int]) -> np.ndarray:
        """A chunk through the library itself (never written: its fill value)."""
        r, c = origin
        part = np.asarray(self.source[r:r + self.chunk[0], c:c + self.chunk[1]])
        out = np.zeros(self.chunk, self.dtype)
        out[: part.shape[0], : part.shape[1]] = part
        return out

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        cy, cx = self.chunk[:2]
        one_chunk = rows.stop - rows.start <= cy and cols.stop - cols.start <= cx
        if one_chunk and rows.start % cy == 0 and cols.start % cx == 0:
            return self._chunk((rows.start, cols.start))[: rows.stop - rows.start, : cols.stop - cols.start]
        shape = (rows.stop - rows.start, cols.stop - cols.start) + self.shape[2:]
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.shape != shape:
            buf = self._local.buf = np.empty(shape, self.dtype)
        for r in range(rows.start, rows.stop, cy):
            for c in range(cols.start, cols.stop, cx):
                part = self._chunk((r, c))
                nr, nc = min(cy, rows.stop - r), min(cx, cols.stop - c)
                buf[r - rows.start: r - rows.start + nr, c - cols.start: c - cols.start + nc] = part[:nr, :nc]
        return buf

    def release(self, rows: slice, cols: slice) -> None:
        pass  # chunk views unmap themselves when the block's arrays go


class HDF5Chunks(_StoredChunks):
    """Blocks of a chunked HDF5 dataset (unfiltered, gzip and/or shuffle), decoded outside the HDF5 library.

    The HDF5 library runs its filters one call at a time (h5py holds a global lock), so a threaded
    reader gets one core of decompression, and its shuffle filter is slow. Here each raw chunk is
    fetched under that lock (a plain file read) and inflated (libdeflate, or ``zlib``; both release
    the GIL) and unshuffled (compiled) in the calling thread, on every core.
    """

    def __init__(self, dset, filters: list[int], shape: tuple[int, ...]):
        super().__init__(dset, shape)
        self.filters = filters  # pipeline order, as written

    @classmethod
    def for_dataset(cls, dataset: Dataset4D) -> HDF5Chunks | None:
        src = array_source(dataset.data)
        if not type(src).__module__.startswith("h5py") or getattr(src, "chunks", None) is None:
            return None
        try:
            plist = src.id.get_create_plist()
            filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        except Exception:  # noqa: BLE001
            return None
        if any(f not in (_DEFLATE, _SHUFFLE) for f in filters) or len(set(filters)) != len(filters):
            return None  # other filters (lzf, plugins, checksums) are HDF5's business
        if not cls._aligned(dataset, tuple(src.chunks)):
            return None
        return cls(src, filters, dataset.shape)

    def _chunk(self, origin: tuple[int, int]) -> np.ndarray:
        """One stored chunk (chunk_rows, chunk_cols, ky, kx), edges included as stored.

        Decoded into two buffers this thread reuses (valid until its next chunk).
        """
        try:
            mask, raw = self.source.id.read_direct_chunk((origin[0], origin[1], 0, 0))
        except (KeyError, OSError, RuntimeError, ValueError):
            return self._stored_fill(origin)
        nbytes = int(np.prod(self.chunk)) * self.dtype.itemsize
        for i in reversed(range(len(self.filters))):
            if mask & (1 << i):
                continue  # this filter was skipped for this chunk
            if self.filters[i] == _DEFLATE:
                raw = _inflate(raw, self._buffer("inflated", nbytes))
            else:
                raw = _unshuffle(np.frombuffer(raw, np.uint8), self.dtype, self._buffer("unshuffled", nbytes))
        return np.frombuffer(raw, self.dtype, count=nbytes // self.dtype.itemsize).reshape(self.chunk)

    def _buffer(self, name: str, nbytes: int) -> np.ndarray:
        buf = getattr(self._local, name, None)
        if buf is None or buf.size != nbytes:
            buf = np.empty(nbytes, np.uint8)
            setattr(self._local, name, buf)
        return buf


def _inflate(raw: bytes, out: np.ndarray):
    """zlib-wrapped deflate data into ``out``: libdeflate (imagecodecs, 3-5x faster here) when there, else zlib."""
    try:
        import imagecodecs

        return imagecodecs.deflate_decode(raw, out=out)
    except ImportError:
        return zlib.decompress(raw)


class ZarrChunkFiles(_StoredChunks):
    """Blocks of an uncompressed zarr array in a directory store: each chunk file is memory-mapped (no copy)."""

    @classmethod
    def for_dataset(cls, dataset: Dataset4D) -> ZarrChunkFiles | None:
        src = array_source(dataset.data)
        if type(src).__module__.split(".")[0] != "zarr":
            return None
        store_path = getattr(getattr(src, "store", None), "path", None)
        if (getattr(src, "compressor", 1) is not None or getattr(src, "filters", 1) or getattr(src, "order", "") != "C"
                or not isinstance(store_path, str) or not hasattr(src, "_chunk_key")):
            return None
        if not cls._aligned(dataset, tuple(src.chunks)):
            return None
        return cls(src, dataset.shape)

    def _chunk(self, origin: tuple[int, int]) -> np.ndarray:
        key = self.source._chunk_key((origin[0] // self.chunk[0], origin[1] // self.chunk[1], 0, 0))
        path = os.path.join(self.source.store.path, *key.split("/"))
        nbytes = int(np.prod(self.chunk)) * self.dtype.itemsize
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size != nbytes:
                    raise PolarstemError(f"{path}: chunk of {os.fstat(fh.fileno()).st_size} bytes, expected {nbytes}")
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            return self._stored_fill(origin)
        return np.ndarray(self.chunk, self.dtype, buffer=mapped)


def _unshuffle(raw: np.ndarray, dtype: np.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """Undo HDF5's shuffle filter (byte planes back to interleaved values), into ``out`` (uint8) if given."""
    size = dtype.itemsize
    if size == 1:
        return raw
    n = raw.size // size
    out = np.empty(raw.size, np.uint8) if out is None or out.size != raw.size else out
    try:
        if sys.byteorder != "little":
            raise ImportError("the compiled unshuffle puts values together little-endian")
        from .frame_kernels import unshuffle

        unshuffle(raw[: n * size], size, out[: n * size])
    except ImportError:
        out[: n * size].reshape(n, size)[:] = raw[: n * size].reshape(size, n).T
    out[n * size:] = raw[n * size:]  # HDF5 leaves a tail that is not a whole value as it was
    return out


def _read_error(dataset: Dataset4D, rows, cols, exc: BaseException) -> PolarstemError:
    msg = " ".join(str(exc).split())[:200] or type(exc).__name__
    return PolarstemError(f"{dataset.source or 'dataset'}: cannot read scan data at rows {_span(rows)}, "
                          f"cols {_span(cols)} (truncated or corrupt file? {msg})")


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")


def _span(index) -> str:
    if isinstance(index, slice):
        if index.start is None and index.stop is None:
            return "all"
        return f"{index.start or 0}-{(index.stop or 0) - 1}"
    return str(index)
