"""Open 4D-STEM files lazily, with their calibrations, as one :class:`Dataset4D`.

Every RosettaSciIO format works (Merlin .mib, .blo, .hspy/.zspy, EMD, ARINA, TopSpin, ...), plus plain
``.npy`` (memory-mapped) and zarr arrays, and labeled-dataset folders (``labels.npy`` + a data file).
Nothing is read into memory here: the array is a dask array whose chunks hold whole patterns.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NotFourDError, PolarstemError

#: Target size of one dask chunk: small enough for fine progress, ROI skipping and cancel; the scan
#: walk (:mod:`polarstem.chunks`) merges neighbouring chunks into blocks of ``BLOCK_BYTES`` to read.
CHUNK_BYTES = 16 * 2**20
BLOCK_BYTES = 64 * 2**20

#: Units RosettaSciIO files use for reciprocal-space detector axes, mapped to 1/Å.
_INVERSE_LENGTH_TO_INV_ANGSTROM = {
    "1/nm": 0.1, "nm^-1": 0.1, "1 / nm": 0.1, "nm-1": 0.1,
    "1/a": 1.0, "1/å": 1.0, "a^-1": 1.0, "å^-1": 1.0, "1 / å": 1.0, "1/angstrom": 1.0,
    "1/m": 1e-10, "1/pm": 100.0,
}
_LENGTH_TO_NM = {"nm": 1.0, "å": 0.1, "a": 0.1, "angstrom": 0.1, "pm": 1e-3, "µm": 1e3, "um": 1e3, "m": 1e9}


def electron_wavelength_angstrom(energy_kev):
    """Relativistic electron wavelength (Å) at the given beam energy (keV): a float for a number, an
    array for an array."""
    m0c2 = 510.99895  # keV
    hc = 12.398419843320026  # keV·Å
    e = np.asarray(energy_kev, float)
    lam = hc / np.sqrt(e * (2 * m0c2 + e))
    return float(lam) if lam.ndim == 0 else lam


@dataclass(frozen=True)
class Calibration:
    """Calibrations of a 4D-STEM dataset. ``None`` means the file does not say."""

    scan_step_nm: tuple[float | None, float | None] = (None, None)  # (rows, cols)
    mrad_per_px: float | None = None
    beam_energy_kev: float | None = None
    convergence_mrad: float | None = None
    scan_units: str | None = None  # units as the file gave them, when not convertible to nm
    detector_scale: tuple[float, float] = (1.0, 1.0)  # (rows, cols) in detector_units
    detector_units: str | None = None
    detector_center_px: tuple[float, float] | None = None  # (row, col) of the 0-mrad point, if known

    @property
    def scan_step_x_nm(self) -> float | None:
        return self.scan_step_nm[1]

    def scan_scale(self) -> tuple[float, float]:
        """(row, col) step for napari's ``scale``: nm when known, else 1 (pixels)."""
        return tuple(1.0 if s is None else float(s) for s in self.scan_step_nm)  # type: ignore[return-value]

    def with_(self, **changes: Any) -> Calibration:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scan_step_nm"] = list(self.scan_step_nm)
        d["detector_scale"] = list(self.detector_scale)
        d["detector_center_px"] = None if self.detector_center_px is None else list(self.detector_center_px)
        return d


@dataclass
class Dataset4D:
    """A lazy 4D-STEM dataset: ``data`` is (scan_rows, scan_cols, det_rows, det_cols) as a dask array."""

    data: Any  # dask.array.Array
    calibration: Calibration = field(default_factory=Calibration)  # in use: the file's, or as the user gave
    source: str = ""
    metadata: dict = field(default_factory=dict)
    file_calibration: Calibration | None = None  # what the file said, once the user gave values
    calibration_given: dict = field(default_factory=dict)  # {entry: {"given": v, "file": v}}

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.shape[:2]  # type: ignore[return-value]

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.shape[2:]  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def name(self) -> str:
        return Path(self.source).name if self.source else "dataset"

    def info(self) -> dict:
        """The summary ``polarstem info`` prints (JSON-serialisable)."""
        cal = self.calibration
        step = cal.scan_step_nm
        return {
            "file": self.source,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "scan_step_nm": step[1] if step[1] is not None else step[0],
            "scan_step_nm_rows_cols": list(step),
            "scan_units": cal.scan_units or ("nm" if step[1] is not None else None),
            "mrad_per_px": cal.mrad_per_px,
            "beam_energy_kev": cal.beam_energy_kev,
            "convergence_mrad": cal.convergence_mrad,
            "detector_scale": list(cal.detector_scale),
            "detector_units": cal.detector_units,
            "calibration_given": dict(self.calibration_given),
            "chunks": [list(int(c) for c in ch) for ch in self.data.chunks],
            "chunk_shape": [int(c[0]) for c in self.data.chunks],
            "nbytes": int(np.prod(self.shape)) * self.dtype.itemsize,
        }

    def subset(self, rows: slice, cols: slice) -> Dataset4D:
        """A lazy view of part of the scan with the same calibrations."""
        return replace(self, data=self.data[rows, cols])


# --------------------------------------------------------------------------------------------------
# calibration entered by the user (CLI flags, napari docks): it overrides what the file says

#: The calibration a user can enter, with its unit and the range a sane value lies in (a value outside
#: is almost always a unit mix-up, e.g. eV for keV or rad for mrad).
CALIBRATION_ENTRIES = {
    "beam_energy_kev": ("beam energy", "keV", 1.0, 3000.0),
    "convergence_mrad": ("convergence semi-angle", "mrad", 0.01, 500.0),
    "mrad_per_px": ("detector sampling", "mrad/px", 1e-5, 100.0),
    "scan_step_nm": ("scan step", "nm", 1e-5, 1e6),
}


def calibration_with(calibration: Calibration, given: dict[str, float | None]) -> Calibration:
    """``calibration`` with the values the user gave (keys of :data:`CALIBRATION_ENTRIES`; None = keep).

    A new beam energy also converts a reciprocal-length detector axis (1/nm, 1/Å) to mrad/px again,
    unless the detector sampling is given too. Raises :class:`PolarstemError` for a value that is not
    a positive number in its sane range.
    """
    changes: dict[str, Any] = {}
    for key, value in given.items():
        if key not in CALIBRATION_ENTRIES:
            raise PolarstemError(f"unknown calibration entry '{key}'")
        if value is None:
            continue
        what, unit, lo, hi = CALIBRATION_ENTRIES[key]
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise PolarstemError(f"{what}: '{value}' is not a number ({unit})") from None
        if not (math.isfinite(v) and lo <= v <= hi):
            raise PolarstemError(f"{what} {v:g} {unit} is outside {lo:g}-{hi:g} {unit} (check the unit)")
        changes[key] = v
    if "scan_step_nm" in changes:
        changes["scan_step_nm"] = (changes["scan_step_nm"], changes["scan_step_nm"])
        changes["scan_units"] = None
    if "beam_energy_kev" in changes and "mrad_per_px" not in changes:
        converted = detector_mrad_per_px(calibration.detector_scale[-1], calibration.detector_units,
                                         changes["beam_energy_kev"])
        if converted is not None:
            changes["mrad_per_px"] = converted
    return calibration.with_(**changes)


def apply_calibration(ds: Dataset4D, given: dict[str, float | None] | None) -> Dataset4D:
    """Use the calibration values the user gave for ``ds`` (in place; returns ``ds``).

    ``given`` replaces what was given before: a key left out (or None) goes back to the file's value.
    ``ds.calibration_given`` records, for each value given, the value in use and what the file said,
    so ``info`` and the provenance show both.
    """
    if ds.file_calibration is None:
        ds.file_calibration = ds.calibration
    wanted = {k: v for k, v in (given or {}).items() if v is not None}
    cal = calibration_with(ds.file_calibration, wanted)
    in_file = ds.file_calibration.to_dict()
    in_use = cal.to_dict()
    ds.calibration = cal
    ds.calibration_given = {k: {"given": _entry(in_use, k), "file": _entry(in_file, k)} for k in wanted}
    return ds


def _entry(cal: dict, key: str):
    """One entry of a calibration dict, the scan step as one number (the column step)."""
    v = cal.get(key)
    if key == "scan_step_nm" and v is not None:
        v = v[1] if v[1] is not None else v[0]
    return v


_GIVEN_IN_CONTEXT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("polarstem_calibration", default=None)


@contextlib.contextmanager
def using_calibration(given: dict[str, float | None] | None):
    """Within the block, :func:`load` applies ``given`` to every dataset it opens.

    For code that opens the file itself (``polarstem evaluate`` through :func:`polarstem.evaluate.evaluate`).
    """
    token = _GIVEN_IN_CONTEXT.set({k: v for k, v in (given or {}).items() if v is not None} or None)
    try:
        yield
    finally:
        _GIVEN_IN_CONTEXT.reset(token)


# --------------------------------------------------------------------------------------------------
# chunking


def frame_chunks(shape: tuple[int, ...], itemsize: int, budget: int = CHUNK_BYTES) -> tuple[int, int, int, int]:
    """Chunk shape holding whole patterns: full scan rows where they fit, about ``budget`` bytes."""
    sy, sx, ky, kx = shape
    frame = max(1, ky * kx * itemsize)
    frames = max(1, budget // frame)
    if frames >= sx:
        return (max(1, min(sy, frames // sx)), sx, ky, kx)
    return (1, max(1, frames), ky, kx)


def as_frame_chunked(data: Any, budget: int = CHUNK_BYTES) -> Any:
    """Rechunk a dask array so that each chunk holds whole diffraction patterns."""
    import dask.array as da

    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=frame_chunks(data.shape, np.dtype(data.dtype).itemsize, budget))
        return data
    if data.chunks[2] == (data.shape[2],) and data.chunks[3] == (data.shape[3],):
        return data
    return data.rechunk(frame_chunks(data.shape, np.dtype(data.dtype).itemsize, budget))


# --------------------------------------------------------------------------------------------------
# loading


def load(path: str | os.PathLike, navigation_shape: tuple[int, int] | None = None,
         chunk_bytes: int = CHUNK_BYTES, calibration: dict[str, float | None] | None = None) -> Dataset4D:
    """Open a 4D-STEM file lazily.

    ``navigation_shape`` (rows, cols) reshapes a flat stack of frames into a scan, for Merlin files
    whose header does not say. ``calibration`` holds values the user gave (keys of
    :data:`CALIBRATION_ENTRIES`), which override the file's (:func:`apply_calibration`). A Merlin
    ``.hdr`` opens its ``.mib``. Raises :class:`PolarstemError` with a one-line message for anything
    that is not a readable 4D-STEM dataset.
    """
    p = Path(path)
    if calibration is None:
        calibration = _GIVEN_IN_CONTEXT.get()
    if p.suffix.lower() == ".hdr":
        mib = p.with_suffix(".mib")
        if not mib.exists():
            raise PolarstemError(f"{p}: a Merlin header without its data file {mib.name}")
        p = mib
    if not p.exists():
        raise PolarstemError(f"{p}: no such file")
    if p.is_dir() and not _is_zarr_dir(p):
        inner = _data_file_in_folder(p)
        return load(inner, navigation_shape=navigation_shape, chunk_bytes=chunk_bytes, calibration=calibration)
    if p.is_file() and p.stat().st_size == 0:
        raise PolarstemError(f"{p}: the file is empty (0 bytes)")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            ds = _load_npy(p, chunk_bytes)
        elif suffix == ".zarr" or (p.is_dir() and _is_zarr_dir(p) and suffix != ".zspy"):
            _check_zarr_chunks(p)
            ds = _load_zarr(p)
        else:
            if suffix == ".zspy" and p.is_dir():
                _check_zarr_chunks(p)
            ds = _load_rsciio(p, navigation_shape)
    except PolarstemError:
        raise
    except MemoryError:
        raise PolarstemError(f"{p}: not enough memory to open the file lazily") from None
    except Exception as exc:  # readers raise anything on corrupt input; report it in one line
        raise PolarstemError(f"{p}: cannot read the file ({_one_line(exc)})") from exc
    if navigation_shape is not None and ds.data.ndim == 4 and tuple(ds.scan_shape) != tuple(navigation_shape):
        ds = _reshape_navigation(ds, navigation_shape, p)
    ds.data = as_frame_chunked(ds.data, chunk_bytes)
    if calibration:
        apply_calibration(ds, calibration)
    return ds


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _is_zarr_dir(p: Path) -> bool:
    return p.is_dir() and any((p / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))


def _data_file_in_folder(p: Path) -> Path:
    """The 4D data file of a labeled-dataset folder (as ``polarstem simulate`` writes)."""
    manifest = p / "manifest.json"
    if manifest.exists():
        try:
            name = json.loads(manifest.read_text()).get("data_file")
        except (OSError, ValueError) as exc:
            raise PolarstemError(f"{manifest}: unreadable manifest ({_one_line(exc)})") from None
        if name and (p / name).exists():
            return p / name
    exts = {".hspy", ".zspy", ".h5", ".hdf5", ".emd", ".mib", ".blo", ".npy", ".zarr", ".app5"}
    skip = {"labels.npy", "defects.npy", "positions.npy", "thickness.npy"}
    candidates = sorted(c for c in p.iterdir() if c.suffix.lower() in exts and c.name not in skip)
    if not candidates:
        raise PolarstemError(f"{p}: a folder with no 4D-STEM data file in it")
    return candidates[0]


def _load_npy(p: Path, chunk_bytes: int = CHUNK_BYTES) -> Dataset4D:
    import dask.array as da

    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise PolarstemError(f"{p}: not a plain numeric .npy array ({_one_line(exc)})") from None
    _check_4d(arr.shape, p)
    source = NpyFrames(p, arr) if arr.flags.c_contiguous else arr
    data = da.from_array(source, chunks=frame_chunks(arr.shape, arr.dtype.itemsize, chunk_bytes), name=f"npy-{p}-{chunk_bytes}",
                         asarray=False, fancy=False)
    cal = _sidecar_calibration(p)
    return Dataset4D(data=data, calibration=cal, source=str(p))


class NpyFrames:
    """Array-like over a C-ordered 4D ``.npy`` file that reads blocks with ``pread``.

    A memory map would do, but every page it touches counts against the process until the kernel
    evicts it; plain reads go through the page cache instead, so memory stays at one block.
    """

    def __init__(self, path: Path, mm: np.memmap):
        self.path = str(path)
        self.shape = tuple(mm.shape)
        self.dtype = mm.dtype
        self.ndim = 4
        self.offset = int(mm.offset)
        self._frame_bytes = int(np.prod(self.shape[2:])) * self.dtype.itemsize

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        rows = range(*key[0].indices(self.shape[0])) if isinstance(key[0], slice) else [int(key[0])]
        c0, c1, step = key[1].indices(self.shape[1]) if isinstance(key[1], slice) else (int(key[1]), int(key[1]) + 1, 1)
        ncols = len(range(c0, c1))
        out = np.empty((len(rows), ncols) + self.shape[2:], dtype=self.dtype)
        with open(self.path, "rb", buffering=0) as fh:
            for i, r in enumerate(rows):
                # contiguous columns straight into the output; strided columns frame by frame
                spans = [(c0, c1)] if step == 1 else [(c, c + 1) for c in range(c0, c1, step)]
                for j, (a, b) in enumerate(spans):
                    target = out[i] if step == 1 else out[i, j : j + 1]
                    fh.seek(self.offset + (r * self.shape[1] + a) * self._frame_bytes)
                    if fh.readinto(memoryview(target).cast("B")) != (b - a) * self._frame_bytes:
                        raise PolarstemError(f"{self.path}: the file is shorter than its header says (truncated)")
        result = out[(slice(None), slice(None)) + key[2:]]
        if not isinstance(key[0], slice):
            result = result[0]
        if not isinstance(key[1], slice):
            result = result[:, 0] if isinstance(key[0], slice) else result[0]
        return result


def _load_zarr(p: Path) -> Dataset4D:
    import dask.array as da
    import zarr

    node = zarr.open(str(p), mode="r")
    if not hasattr(node, "shape"):
        arrays = [a for _, a in node.arrays()] if hasattr(node, "arrays") else []
        arrays = [a for a in arrays if len(a.shape) == 4] or arrays
        if not arrays:
            raise PolarstemError(f"{p}: a zarr group with no arrays")
        node = arrays[0]
    _check_4d(tuple(node.shape), p)
    data = da.from_zarr(node)
    cal = _sidecar_calibration(p)
    attrs = dict(getattr(node, "attrs", {}) or {})
    if "calibration" in attrs:
        cal = _calibration_from_dict(attrs["calibration"], cal)
    return Dataset4D(data=data, calibration=cal, source=str(p))


def _simulation_in_progress(p: Path) -> bool:
    """True for the data store of a ``polarstem simulate`` folder that is still being written (its
    unfinished blocks are absent on purpose and read as zeros; labels say which rows are done)."""
    try:
        man = json.loads((p.parent / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return man.get("format") == "polarstem-simulation" and man.get("status") != "complete"


def _check_zarr_chunks(p: Path) -> None:
    """Refuse a zarr directory store (``.zspy``, ``.zarr``) with data chunks missing or cut short.

    zarr reads a missing chunk as its fill value (zeros), so a store that lost a chunk in a copy
    would otherwise open "fine" and give wrong maps. Only the arrays of 3 or more dimensions are
    checked: a chunk must exist for every block, and a Blosc-compressed chunk must be as long as its
    header says (one 16-byte read per chunk; decompression errors elsewhere surface on reading).
    """
    import zarr

    if _simulation_in_progress(p):  # `polarstem simulate` writes its chunks one task at a time
        return
    try:
        root = zarr.open(str(p), mode="r")
        arrays = [root] if hasattr(root, "shape") else [a for _, a in root.arrays(recurse=True)]
    except Exception:  # noqa: BLE001 - not a store this zarr can list; the reader reports it
        return
    for a in arrays:
        if len(a.shape) < 3:
            continue
        folder = p / a.path if a.path else p
        chunk_files = [f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".z")]
        missing = int(a.nchunks) - len(chunk_files)
        if missing > 0:
            raise PolarstemError(f"{p}: {missing} of {a.nchunks} data chunks are missing from the store "
                                 f"(an incomplete copy?); they would read as zeros")
        if getattr(a.compressor, "codec_id", None) != "blosc":
            continue
        for f in chunk_files:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                header = fh.read(16)
            expected = int.from_bytes(header[12:16], "little") if len(header) == 16 else -1
            if expected != size:
                raise PolarstemError(f"{p}: data chunk {f.relative_to(p)} is cut short ({size} of "
                                     f"{max(expected, 16)} bytes): the store is corrupt")


def _sidecar_calibration(p: Path) -> Calibration:
    """Calibration for plain arrays from ``<name>.json`` beside them (keys as in :class:`Calibration`)."""
    side = p.with_suffix(".json")
    if not side.exists():
        return Calibration()
    try:
        return _calibration_from_dict(json.loads(side.read_text()), Calibration())
    except (OSError, ValueError, TypeError) as exc:
        raise PolarstemError(f"{side}: unreadable calibration sidecar ({_one_line(exc)})") from None


def _calibration_from_dict(d: dict, base: Calibration) -> Calibration:
    known = {f for f in Calibration.__dataclass_fields__}
    kw = {k: v for k, v in d.items() if k in known}
    for key in ("scan_step_nm", "detector_scale", "detector_center_px"):
        if key in kw and kw[key] is not None:
            v = kw[key]
            kw[key] = tuple(v) if isinstance(v, (list, tuple)) else (v, v)
    return replace(base, **kw)


def _rsciio_plugin_for(p: Path) -> dict:
    from rsciio import IO_PLUGINS

    ext = p.suffix.lower().lstrip(".")
    matches = [pl for pl in IO_PLUGINS if ext in [e.lower() for e in pl.get("file_extensions", [])]]
    if ext in ("h5", "hdf5"):  # py4DSTEM and other EMD files often end in .h5
        matches += [pl for pl in IO_PLUGINS if pl["name"] == "EMD" and pl not in matches]
    if not matches:
        raise PolarstemError(f"{p}: unknown file type '.{ext}' (no RosettaSciIO reader for it)")
    if len(matches) > 1:
        # .h5/.hdf5/.emd are claimed by several readers: try them in turn
        preferred = ["HSPY", "EMD", "Arina", "NeXus", "USID", "Delmic", "Tofwerk"]
        matches.sort(key=lambda pl: preferred.index(pl["name"]) if pl["name"] in preferred else 99)
    return {"candidates": matches}


def _read_with_rsciio(p: Path) -> list[dict]:
    plugins = _rsciio_plugin_for(p)["candidates"]
    errors = []
    for plugin in plugins:
        kwargs: dict = {"lazy": True}  # a navigation shape is applied afterwards, checked against the frames
        try:
            module = importlib.import_module(plugin["api"])
            if "show_progressbar" in inspect.signature(module.file_reader).parameters:
                kwargs["show_progressbar"] = False  # a reader's own bar would leak into `polarstem info`
            try:
                return module.file_reader(str(p), **kwargs)
            except NotImplementedError:
                # some readers (ARINA in rsciio 0.15) cannot read lazily: read eagerly, data are small then
                kwargs["lazy"] = False
                return module.file_reader(str(p), **kwargs)
        except Exception as exc:  # noqa: BLE001 - try the next reader, report all if none works
            errors.append(f"{plugin['name']}: {_one_line(exc)}")
    raise PolarstemError(f"{p}: cannot read the file ({'; '.join(errors)})")


def _check_blockfile_header(p: Path) -> None:
    """Refuse a .blo whose header promises more frames than the file holds, before rsciio maps it.

    (A random or truncated header can claim a scan of billions of frames; mapping that takes minutes.)
    """
    from rsciio.blockfile._api import get_header_dtype_list

    dtype = np.dtype(get_header_dtype_list("<"))
    size = p.stat().st_size
    if size < dtype.itemsize:
        raise PolarstemError(f"{p}: too short for a blockfile header ({size} bytes)")
    header = np.fromfile(p, dtype=dtype, count=1)[0]
    nx, ny, dp = int(header["NX"]), int(header["NY"]), int(header["DP_SZ"])
    need = int(header["Data_offset_2"]) + nx * ny * (6 + dp * dp)
    if nx == 0 or ny == 0 or dp == 0 or need > size:
        raise PolarstemError(f"{p}: the blockfile header claims {ny}x{nx} patterns of {dp}x{dp} px "
                             f"({need} bytes) but the file holds {size} bytes (truncated or not a blockfile)")


def _load_rsciio(p: Path, navigation_shape) -> Dataset4D:
    import dask.array as da

    if p.suffix.lower() == ".blo":
        _check_blockfile_header(p)

    results = _read_with_rsciio(p)
    if not results:
        raise PolarstemError(f"{p}: the file holds no data")
    # a file may hold several signals (e.g. EMD); take the first 4D one, else describe the first
    chosen = None
    for r in results:
        if _is_4d_signal(r):
            chosen = r
            break
    if chosen is None:
        chosen = _first_reshapable(results, navigation_shape)
    if chosen is None:
        what = describe_signal(results[0])
        if navigation_shape is not None and results[0]["data"].ndim == 3:
            n = results[0]["data"].shape[0]
            rows, cols = navigation_shape
            raise PolarstemError(f"{p}: navigation shape {rows}x{cols} does not fit the {n} frames in the file")
        hint = "; give --navigation-shape ROWS COLS if it is a scan" if "stack of" in what else ""
        raise NotFourDError(f"{p}: {what}, not 4D-STEM{hint}")
    data = chosen["data"]
    axes = chosen["axes"]
    nav = [a for a in axes if a.get("navigate", True)]
    sig = [a for a in axes if not a.get("navigate", True)]
    if (len(sig) != 2 or not any("navigate" in a for a in axes)) and data.ndim == 4:
        # some writers (py4DSTEM EMD) flag every axis as signal: the last two are the detector
        nav, sig = list(axes[:2]), list(axes[2:])
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=frame_chunks(data.shape, np.dtype(data.dtype).itemsize))
    cal = _calibration_from_rsciio(nav, sig, chosen.get("metadata", {}) or {})
    md = {"original_metadata": _json_safe(chosen.get("original_metadata", {})),
          "metadata": _json_safe(chosen.get("metadata", {}))}
    return Dataset4D(data=data, calibration=cal, source=str(p), metadata=md)


def _is_4d_signal(r: dict) -> bool:
    data = r["data"]
    if data.ndim != 4:
        return False
    axes = r.get("axes", [])
    if not any("navigate" in a for a in axes):
        return True  # ARINA gives no navigate flags: numpy order is (scan, scan, det, det)
    n_sig = sum(1 for a in axes if not a.get("navigate", True))
    return n_sig in (2, 4)  # 4: py4DSTEM EMD flags all axes as signal


def _first_reshapable(results, navigation_shape):
    """A 3D stack of frames becomes 4D when a navigation shape is given."""
    if navigation_shape is None:
        return None
    for r in results:
        data = r["data"]
        if data.ndim == 3 and int(np.prod(navigation_shape)) == data.shape[0]:
            rows, cols = (int(n) for n in navigation_shape)
            r = dict(r)
            r["data"] = data.reshape((rows, cols) + tuple(data.shape[1:]))
            sig = [a for a in r["axes"] if not a.get("navigate", True)] or list(r["axes"][1:])
            r["axes"] = [{"size": rows, "navigate": True}, {"size": cols, "navigate": True}] + sig
            return r
    return None


def describe_signal(r: dict) -> str:
    """Say in words what a file holds, e.g. '5x5 spectrum image with 4000 channels'."""
    data = r["data"]
    axes = r.get("axes", [])
    nav = [int(a["size"]) for a in axes if a.get("navigate", True)]
    sig = [int(a["size"]) for a in axes if not a.get("navigate", True)]
    navs = "x".join(str(n) for n in nav[::-1])  # HyperSpy convention: columns first
    if len(sig) == 1:
        kind = f"spectrum image with {sig[0]} channels" if nav else f"single spectrum with {sig[0]} channels"
        return f"{navs} {kind}" if nav else kind
    if len(sig) == 2:
        img = f"{sig[0]}x{sig[1]} image"
        if not nav:
            return f"a single {img}"
        if len(nav) == 1:
            return f"a stack of {nav[0]} {sig[0]}x{sig[1]} images (3D, no 2D scan)"
        return f"a {len(nav)}D scan ({' x '.join(map(str, nav))}) of {sig[0]}x{sig[1]} images"
    return f"a {data.ndim}D array of shape {tuple(int(s) for s in data.shape)}"


def _calibration_from_rsciio(nav: list[dict], sig: list[dict], metadata: dict) -> Calibration:
    tem = (metadata.get("Acquisition_instrument", {}) or {}).get("TEM", {}) or {}
    energy = _positive_or_none(tem.get("beam_energy"))
    conv = _positive_or_none(tem.get("convergence_angle"))
    steps: list[float | None] = []
    scan_units = None
    for a in nav[:2]:
        u = str(a.get("units") or "").strip()
        scale = _positive_or_none(a.get("scale"))
        factor = _LENGTH_TO_NM.get(u.lower().replace("angstrom", "å")) if u else None
        if u == "Å":
            factor = 0.1
        if factor is not None and scale is not None:
            steps.append(scale * factor)
        else:
            steps.append(None)
            if u and u not in ("<undefined>",):
                scan_units = u
    while len(steps) < 2:
        steps.append(None)
    det_scale = tuple(float(a.get("scale", 1.0) or 1.0) for a in sig[:2]) or (1.0, 1.0)
    det_units = str(sig[-1].get("units") or "").strip() if sig else ""
    mrad = detector_mrad_per_px(det_scale[-1], det_units, energy)
    center = None
    if sig and det_units and all(a.get("offset") is not None for a in sig[:2]):
        offs = [float(a.get("offset") or 0.0) for a in sig[:2]]
        guess = tuple(-o / s for o, s in zip(offs, det_scale))
        sizes = [int(a["size"]) for a in sig[:2]]
        if any(o != 0 for o in offs) and all(0 <= c < n for c, n in zip(guess, sizes)):
            center = guess
    return Calibration(
        scan_step_nm=(steps[0], steps[1]),
        mrad_per_px=mrad,
        beam_energy_kev=energy,
        convergence_mrad=conv,
        scan_units=scan_units,
        detector_scale=(float(det_scale[0]), float(det_scale[-1])),
        detector_units=det_units or None,
        detector_center_px=center,
    )


def detector_mrad_per_px(scale: float, units: str | None, beam_energy_kev: float | None) -> float | None:
    """Detector sampling in mrad/px from an axis scale and its units (reciprocal lengths need the energy)."""
    if not units:
        return None
    u = units.strip().lower().replace("angstrom", "å").replace("ångström", "å").replace(" ", "")
    if u == "mrad":
        return float(scale)
    if u in ("rad", "angle"):  # TopSpin writes "Angle" for radians
        return float(scale) * 1e3
    if u in ("µrad", "urad"):
        return float(scale) * 1e-3
    if u in ("deg", "°"):
        return float(np.deg2rad(scale)) * 1e3
    inv = _INVERSE_LENGTH_TO_INV_ANGSTROM.get(u) or _INVERSE_LENGTH_TO_INV_ANGSTROM.get(u.replace("a", "å"))
    if inv is not None and beam_energy_kev:
        return float(scale) * inv * electron_wavelength_angstrom(beam_energy_kev) * 1e3
    return None


def _positive_or_none(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _check_4d(shape: tuple[int, ...], p: Path) -> None:
    if len(shape) != 4:
        what = {1: "a 1D array", 2: "a single 2D image", 3: "a 3D stack"}.get(len(shape), f"a {len(shape)}D array")
        raise NotFourDError(f"{p}: {what} of shape {tuple(shape)}, not 4D-STEM (scan_rows, scan_cols, det_rows, det_cols)")


def _reshape_navigation(ds: Dataset4D, navigation_shape, p: Path) -> Dataset4D:
    rows, cols = (int(n) for n in navigation_shape)
    n = ds.shape[0] * ds.shape[1]
    if rows * cols != n:
        raise PolarstemError(f"{p}: navigation shape {rows}x{cols} does not fit the {n} frames in the file")
    data = ds.data.reshape((rows, cols) + ds.detector_shape)
    return replace(ds, data=data)


def _json_safe(obj, depth: int = 0):
    if depth > 8:
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in obj[:64]]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.size <= 64:
        return obj.tolist()
    return str(obj)[:200]


# --------------------------------------------------------------------------------------------------
# saving (used by the simulator and tests): a HyperSpy file that RosettaSciIO reads back


def dataset_axes(shape: tuple[int, ...], calibration: Calibration) -> list[dict]:
    """RosettaSciIO axes dicts for a (scan_rows, scan_cols, det_rows, det_cols) array."""
    sy, sx, ky, kx = shape
    step_y, step_x = calibration.scan_step_nm
    mrad = calibration.mrad_per_px
    # without an angle calibration, a reciprocal-length one (1/Å: patterns of several beam energies) is kept
    scale, units = (mrad, "mrad") if mrad else (calibration.detector_scale[-1], calibration.detector_units)
    if not units:
        scale, units = 1.0, "px"
    cy, cx = calibration.detector_center_px or ((ky - 1) / 2, (kx - 1) / 2)
    det = lambda name, n, c: {  # noqa: E731
        "name": name, "size": n, "navigate": False, "scale": scale, "offset": -c * scale, "units": units,
    }
    return [
        {"name": "y", "size": sy, "navigate": True, "scale": step_y or 1.0, "offset": 0.0,
         "units": "nm" if step_y else "px"},
        {"name": "x", "size": sx, "navigate": True, "scale": step_x or 1.0, "offset": 0.0,
         "units": "nm" if step_x else "px"},
        det("ky", ky, cy),
        det("kx", kx, cx),
    ]


def dataset_metadata(calibration: Calibration, title: str = "") -> dict:
    tem = {}
    if calibration.beam_energy_kev:
        tem["beam_energy"] = float(calibration.beam_energy_kev)
    if calibration.convergence_mrad:
        tem["convergence_angle"] = float(calibration.convergence_mrad)
    return {
        "General": {"title": title},
        "Signal": {"signal_type": "", "quantity": "Intensity (counts)"},
        "Acquisition_instrument": {"TEM": tem} if tem else {},
    }


def save(path: str | os.PathLike, data: Any, calibration: Calibration, title: str = "",
         overwrite: bool = True) -> Path:
    """Write a 4D array (numpy or dask) with calibrations as ``.hspy`` or ``.zspy``, chunk by chunk.

    The file is written under a temporary name and renamed, so a crash never leaves a half file.
    """
    import shutil

    p = Path(path)
    ext = p.suffix.lower()
    if ext not in (".hspy", ".zspy"):
        raise PolarstemError(f"{p}: can only write .hspy or .zspy 4D files")
    import dask.array as da
    import hyperspy.api as hs

    signal = hs.signals.Signal2D(data, axes=dataset_axes(tuple(data.shape), calibration),
                                 metadata=dataset_metadata(calibration, title))
    if isinstance(data, da.Array):
        signal = signal.as_lazy()
    tmp = p.with_name(p.name + ".partial" + ext)
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    signal.save(str(tmp), overwrite=True)
    if p.exists():
        if not overwrite:
            raise PolarstemError(f"{p}: exists already")
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    os.replace(tmp, p)
    return p
