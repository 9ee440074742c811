"""Labeled test folders cut from simulated training-layout sets, for the benchmark.

A simulated set (``polarstem simulate``, training layout) has one row per (structure, thickness) and one
column per probe position; the positions of a row cover one unit cell. From it the benchmark cuts:

- *pattern* test sets: N single patterns, subsampled with a seed;
- *cell* test sets: the mean of a row (a position-averaged CBED over one cell, what ``cell`` mode
  classifies), subsampled by row;

optionally corrupted (dose, blur, background, descan; :mod:`polarstem.simulate.corruptions`), and writes
each as a labeled folder in the conventions' format (``data.npy`` + calibration sidecar, ``labels.npy``,
``manifest.json`` and per-pattern ``thickness_nm.npy``, ``probe_frac.npy``, ``tilt_mrad.npy``), so
``polarstem evaluate FOLDER`` reads exactly what the benchmark scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PolarstemError
from ..fileio import save_npy, write_json
from ..io import Calibration, Dataset4D, load


@dataclass
class SimSource:
    """A simulated training-layout folder: the lazy data plus the per-pattern truth, (rows, cols) each."""

    folder: Path
    dataset: Dataset4D
    labels: np.ndarray  # int (rows, cols), -1 = unfinished or not polar
    thickness: np.ndarray | None  # nm (rows, cols)
    probe_frac: np.ndarray | None  # (rows, cols, 2) = (x, y) fraction of the cell
    tilt_mrad: np.ndarray | None  # (rows, cols) mistilt magnitude
    manifest: dict = field(default_factory=dict)

    @property
    def calibration(self) -> Calibration:
        return self.dataset.calibration

    @property
    def complete_rows(self) -> np.ndarray:
        """Rows whose every probe position is finished (a partial simulation leaves -1 rows)."""
        return np.nonzero((self.labels >= 0).all(axis=1))[0]

    def training_thickness_range(self) -> tuple[float, float] | None:
        """The thickness range (nm) the simulation config asked for, if it gave a range."""
        th = ((self.manifest.get("config") or {}).get("training") or {}).get("thickness_nm")
        if isinstance(th, list) and len(th) == 2:
            return float(th[0]), float(th[1])
        if self.thickness is not None and (self.labels >= 0).any():
            t = self.thickness[self.labels >= 0]
            return float(t.min()), float(t.max())
        return None

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Raw frames of whole rows, (len(rows), cols, ky, kx) float32, reading each row once."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0,) + self.dataset.shape[1:], np.float32)
        order = np.argsort(rows)
        data = np.asarray(self.dataset.data[rows[order]].compute(scheduler="synchronous"), dtype=np.float32)
        out = np.empty_like(data)
        out[order] = data
        return out

    def read_patterns(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Raw frames at (rows[i], cols[i]), (N, ky, kx) float32."""
        uniq, inv = np.unique(rows, return_inverse=True)
        block = self.read_rows(uniq)
        return block[inv, cols]

    @property
    def probe_grid(self) -> int | None:
        """Side g of the regular g x g probe grid every row holds (one unit cell), else None."""
        from ..simulate.config import probe_grid

        return probe_grid(self.manifest, self.labels.shape[1])


def open_source(folder) -> SimSource:
    """Open a simulated training-layout folder (finished or still running)."""
    folder = Path(folder)
    if not (folder / "labels.npy").exists():
        raise PolarstemError(f"{folder}: not a simulated labeled folder (no labels.npy)")
    ds = load(folder)
    rows, cols = ds.scan_shape
    labels = np.load(folder / "labels.npy", allow_pickle=False).reshape(rows, cols).astype(np.int64)
    manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else {}

    def opt(name, shape):
        p = folder / name
        return np.load(p, allow_pickle=False).reshape(shape).astype(np.float32) if p.exists() else None

    thickness = opt("thickness_nm.npy", (rows, cols))
    probe = opt("probe_frac.npy", (rows, cols, 2))
    tilt = None
    if (folder / "structures.json").exists() and (folder / "structure.npy").exists():
        structures = json.loads((folder / "structures.json").read_text())
        mag = {int(s["index"]): float(np.hypot(*s.get("optics", {}).get("tilt_mrad", [0.0, 0.0]))) for s in structures}
        sid = np.load(folder / "structure.npy", allow_pickle=False).reshape(rows, cols)
        tilt = np.vectorize(lambda i: mag.get(int(i), np.nan), otypes=[np.float32])(sid)
    if not ds.calibration.mrad_per_px:
        raise PolarstemError(f"{folder}: the simulated data carry no mrad/px calibration")
    return SimSource(folder, ds, labels, thickness, probe, tilt, manifest)


# --------------------------------------------------------------------------------------------------
# selection


def in_window(values: np.ndarray | None, window) -> np.ndarray:
    """``lo <= v < hi`` (True everywhere without values or window)."""
    if values is None or window is None:
        return np.ones(np.shape(values) if values is not None else (), bool)
    lo, hi = float(window[0]), float(window[1])
    return (values >= lo) & (values < hi)


def pick_patterns(src: SimSource, window, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` finished single patterns with thickness in ``window``: (rows, cols), sorted by row."""
    ok = src.labels >= 0
    if src.thickness is not None and window is not None:
        ok &= in_window(src.thickness, window)
    rr, cc = np.nonzero(ok)
    if len(rr) > n:
        keep = np.sort(rng.choice(len(rr), n, replace=False))
        rr, cc = rr[keep], cc[keep]
    return rr, cc


def pick_cells(src: SimSource, window, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` complete rows (one structure at one thickness) with thickness in ``window``."""
    rows = src.complete_rows
    if src.thickness is not None and window is not None:
        rows = rows[in_window(src.thickness[rows, 0], window)]
    if len(rows) > n:
        rows = np.sort(rng.choice(rows, n, replace=False))
    return rows


# --------------------------------------------------------------------------------------------------
# corruptions


def corruption(kind: str, strength: float, patterns_per_input: int = 1):
    """The transform of one benchmark condition; ``patterns_per_input`` > 1 for cell averages.

    A cell average is the sum of ``patterns_per_input`` exposures, so its dose is that many times a
    single pattern's (a sum of Poisson counts is Poisson); blur and background are linear and commute
    with the mean; the descan offset is common to the patterns of a cell (it drifts slowly).
    ``combined`` at strength s: blur s px, background 0.05 s, descan 3 s px, then 1e4 / s electrons.
    ``unseen`` at strength s: detector effects the training augmentation never draws, at 1e5 electrons:
    point-spread tails (0.2 s of the signal in a Lorentzian of 3 px), an uncorrected flat field (gain
    spread 0.05 s) and read noise of 2 s counts; a test of robustness beyond the augmentation.
    """
    from ..simulate.corruptions import (
        Compose,
        DescanShift,
        DetectorBlur,
        InelasticBackground,
        PixelGain,
        PoissonDose,
        PsfTails,
        ReadoutNoise,
    )

    s = float(strength)
    if kind == "ideal":
        return None
    if kind == "dose":
        return Compose([PoissonDose(s * patterns_per_input)])
    if kind == "blur_px":
        return Compose([DetectorBlur(s)])
    if kind == "background":
        return Compose([InelasticBackground(s, 8.0)])
    if kind == "descan_px":
        return Compose([DescanShift(s)])
    if kind == "combined":
        return Compose([DetectorBlur(s), InelasticBackground(0.05 * s, 8.0), DescanShift(3.0 * s),
                        PoissonDose(1e4 / s * patterns_per_input)])
    if kind == "unseen":
        return Compose([PsfTails(0.2 * s, 3.0), PoissonDose(1e5 * patterns_per_input), PixelGain(0.05 * s),
                        ReadoutNoise(2.0 * s)])
    raise PolarstemError(f"unknown corruption '{kind}' (use dose, blur_px, background, descan_px, combined, unseen)")


def apply_corruption(frames: np.ndarray, kind: str, strength: float, seed, patterns_per_input: int = 1) -> np.ndarray:
    t = corruption(kind, strength, patterns_per_input)
    return frames if t is None else t(frames, np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------------
# writing a labeled folder


def write_testset(folder, frames: np.ndarray, labels: np.ndarray, calibration: Calibration,
                  per_pattern: dict | None = None, info: dict | None = None) -> Path:
    """A labeled folder ``polarstem evaluate`` reads: N patterns laid out as an (N, 1) scan, or, for
    frames of shape (N, M, ky, kx) (the M probe positions of N cells), an (N, M) grid whose rows
    share their label and per-row values."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(frames)
    m = frames.shape[1] if frames.ndim == 4 else 1
    data = np.ascontiguousarray(np.asarray(frames, np.float32).reshape((n, m) + frames.shape[-2:]))

    save_npy(folder / "data.npy", data)
    cal = calibration.to_dict()
    cal["scan_step_nm"] = [None, None]  # independent patterns, not a scan
    write_json(folder / "data.json", cal, indent=None)
    save_npy(folder / "labels.npy", np.repeat(np.asarray(labels, np.int8).reshape(n, 1), m, axis=1))
    for name, arr in (per_pattern or {}).items():
        if arr is not None:
            a = np.asarray(arr)
            save_npy(folder / f"{name}.npy", np.repeat(a.reshape((n, 1) + a.shape[1:]), m, axis=1))
    layout = "rows = independent inputs, 1 col" if m == 1 else f"rows = independent cells, {m} probe positions each"
    manifest = {"format": "polarstem-testset", "data_file": "data.npy", "layout": layout,
                "n": n, **(info or {})}
    write_json(folder / "manifest.json", manifest, indent=1)
    return folder
