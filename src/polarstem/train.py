"""Train the shipped models on simulated data: ``polarstem train CONFIG.yaml``.

The chain: simulated raw patterns (a labeled folder as ``polarstem simulate`` writes) -> experiment-like
corruptions (dose, blur, background, detector resampling and descan, hot/dead pixels) -> the shared
preprocessing -> a cached array of canonical inputs (``.cache/train/``, reused by every model of the same
mode) -> training with the square symmetry as exact augmentation, early stopping on a validation split
by thickness, checkpoints every epoch (a rerun resumes), temperature calibration on the validation split,
then held-out accuracy per thickness, weights (safetensors / npz) and a model card.

``pattern`` mode learns single patterns; ``cell`` mode learns position-averaged patterns (PACBED): the
mean over the probe grid of one (structure, thickness), and means of random subsets of it, so that a
cell-sized window of a real scan that does not sample the cell evenly still looks familiar.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .classes import N_CLASSES
from .errors import PolarstemError
from .io import Calibration
from .preprocess import CANONICAL_CONVERGENCE_MRAD, CANONICAL_ENERGY_KEV, InputGrid, preprocess, resample

CACHE = Path(os.environ.get("POLARSTEM_CACHE", ".cache"))

#: Acquisition ranges the shipped models are meant for (physics.md, "canonical acquisition").
ACQUISITION = {
    "beam_energy_kev": [195.0, 205.0],
    "convergence_mrad": [17.0, 23.0],
    "zone_axis": "[001]pc",
    "thickness_nm": [4.0, 45.0],
    "mistilt_mrad": [0.0, 1.5],
    "defocus_nm": [-5.0, 5.0],
    "dose_electrons_per_pattern": [1e4, None],
    "detector_px": [64, 256],
    "mrad_per_px": [0.5, 2.0],
    "descan_px": 3,
    "elliptical_distortion": 0.01,
}


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    """One training run; the YAML keys are these field names."""

    name: str = "cnn"  # registry name
    arch: str | None = "cnn"  # None for pca-knn
    arch_kwargs: dict = field(default_factory=dict)
    prototype: dict | None = None  # {"per_class": 4, "scale": 16} -> prototype regime
    warm_start: str | None = None  # registry name (or a .safetensors file) whose trained backbone starts this one
    modes: list = field(default_factory=lambda: ["pattern", "cell"])
    data: str | list = ".cache/sim/canonical"  # one simulated folder or several
    heldout: str | None = ".cache/sim/heldout"
    grid: dict = field(default_factory=lambda: {"size": 64, "mrad_per_px": 1.0, "intensity": "sqrt"})
    augment: dict = field(default_factory=dict)
    copies: int = 2  # augmented copies of every raw pattern (copy 0 is only resampled)
    cell_subsets: bool = True
    val_every: int = 4  # every 4th distinct thickness goes to validation
    epochs: int = 20
    cell_epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    aux_weight: float = 0.0  # > 0: auxiliary regression of probe position and thickness (AUX_TARGETS)
    consistency: float = 0.0  # > 0 (prototype regime): paired ideal/corrupted views, prototype-assignment term
    steps: int | None = None  # fixed number of optimiser steps (equal-footing comparisons); else the time budget
    patience: int = 4
    max_minutes: float = 30.0  # time budget of the pattern mode
    cell_max_minutes: float = 8.0
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    pca_components: int = 50
    knn_neighbors: int = 10
    knn_max_train: int = 40000
    abstention: bool = False  # fit and calibrate the abstention (polarstem.abstain) on the first data folder
    acquisition: dict = field(default_factory=dict)  # ranges the card states (default: ACQUISITION)
    out: str = "src/polarstem/weights"

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        import yaml

        p = Path(path)
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PolarstemError(f"{p}: unreadable training config ({' '.join(str(exc).split())[:160]})") from None
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise PolarstemError(f"{p}: unknown keys {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --------------------------------------------------------------------------------------------------
# data


@dataclass
class SimSet:
    """Raw simulated patterns, flattened: frames (N, ky, kx) lazy, per-pattern labels and parameters."""

    frames: object  # dask array (N, ky, kx)
    labels: np.ndarray
    thickness: np.ndarray
    structure: np.ndarray
    calibration: Calibration
    folder: Path
    manifest: dict
    probe: np.ndarray | None = None  # (N, 2) probe position (x, y) in the cell, fractions; None if unknown
    energy: np.ndarray | None = None  # (N,) beam energy (keV) of sets simulated across acquisitions
    convergence: np.ndarray | None = None  # (N,) convergence semi-angle (mrad), likewise

    def __len__(self) -> int:
        return len(self.labels)

    def acquisition(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw mrad/px, beam energy keV, convergence mrad) of the patterns at ``index``.

        Sets stored in reciprocal-lattice units (several beam energies) carry 1/Å per pixel and
        per-pattern energies; the others one calibration for all."""
        index = np.asarray(index)
        if self.energy is None:
            cal = self.calibration
            return (np.full(index.shape, float(cal.mrad_per_px)), np.full(index.shape, cal.beam_energy_kev or CANONICAL_ENERGY_KEV),
                    np.full(index.shape, cal.convergence_mrad or CANONICAL_CONVERGENCE_MRAD))
        from .io import electron_wavelength_angstrom

        k = float(self.manifest["calibration"]["inv_angstrom_per_px"])
        e = self.energy[index]
        lam = np.array([electron_wavelength_angstrom(v) for v in e]) if e.ndim else electron_wavelength_angstrom(float(e))
        return k * lam * 1e3, e, self.convergence[index]


def _per_pattern(folder: Path, names: list[str], shape) -> np.ndarray | None:
    for n in names:
        p = folder / n
        if p.exists():
            return np.load(p, allow_pickle=False).reshape(-1)
    return None


def load_simset(folder) -> SimSet:
    """A simulated labeled folder (``manifest.json``, data file, ``labels.npy``, per-pattern arrays)."""
    from .io import load

    folder = Path(folder)
    if not folder.exists():
        raise PolarstemError(f"{folder}: no simulated data there (run polarstem simulate first)")
    ds = load(folder)
    manifest = {}
    if (folder / "manifest.json").exists():
        manifest = json.loads((folder / "manifest.json").read_text())
    sy, sx, ky, kx = ds.shape
    labels = np.load(folder / "labels.npy", allow_pickle=False).reshape(-1).astype(np.int64)
    n = sy * sx
    thick = _per_pattern(folder, ["thickness_nm.npy", "thickness.npy"], n)
    struct = _per_pattern(folder, ["structure.npy", "structure_id.npy"], n)
    if thick is None:
        thick = np.zeros(n)
    if struct is None:
        struct = np.arange(n)
    probe = None
    if (folder / "probe_frac.npy").exists():
        p = np.load(folder / "probe_frac.npy", allow_pickle=False)
        probe = p.reshape(-1, 2).astype(np.float32) if p.size == 2 * n else None
    cal = ds.calibration
    energy = _per_pattern(folder, ["energy_kev.npy"], n)
    convergence = _per_pattern(folder, ["convergence_mrad.npy"], n)
    reciprocal = "inv_angstrom_per_px" in (manifest.get("calibration") or {})
    if not cal.mrad_per_px and not (reciprocal and energy is not None and convergence is not None):
        raise PolarstemError(f"{folder}: the simulated data carry no mrad/px calibration")
    if not reciprocal:
        energy = convergence = None
    frames = ds.data.reshape(n, ky, kx)
    thick, struct = thick.astype(float), struct.astype(np.int64)
    rows = _finished_rows(folder, manifest, sy)
    if rows is not None:  # a set still being simulated: train on the structures finished so far
        if not len(rows):
            raise PolarstemError(f"{folder}: the simulation has not finished any structure yet")
        keep = (rows[:, None] * sx + np.arange(sx)[None]).reshape(-1)
        frames = ds.data[rows].reshape(len(keep), ky, kx)
        labels, thick, struct = labels[keep], thick[keep], struct[keep]
        probe = probe[keep] if probe is not None else None
        energy = energy[keep] if energy is not None else None
        convergence = convergence[keep] if convergence is not None else None
    return SimSet(frames, labels, thick, struct, cal, folder, manifest, probe, energy, convergence)


def _finished_rows(folder: Path, manifest: dict, n_rows: int) -> np.ndarray | None:
    """Scan rows of the finished tasks of an unfinished training set, None when the set is complete."""
    if manifest.get("status", "complete") == "complete" or manifest.get("kind") != "training":
        return None
    try:
        done = json.loads((folder / "progress.json").read_text())["done"]
    except (OSError, ValueError, KeyError):
        raise PolarstemError(f"{folder}: the simulation is unfinished and its progress.json is unreadable") from None
    per = int(manifest["chunk_rows"])
    rows = [r for i in sorted(int(d) for d in done) for r in range(i * per, min((i + 1) * per, n_rows))]
    return np.asarray(rows, dtype=np.int64)


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _folder_stamp(folder: Path) -> dict:
    return {str(p.name): p.stat().st_mtime for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# augmentation: experiment-like corruptions of raw simulated patterns


DEFAULT_AUGMENT = {
    "dose": [1e4, 1e6],  # electrons per pattern, log-uniform (copy 0 of every pattern stays ideal)
    "blur_px": [0.0, 1.0],
    "background": [0.0, 0.05],  # fraction of the intensity in a smooth Lorentzian background
    "descan_px": 3.0,
    "detector_mrad_per_px": [0.6, 1.8],
    "detector_px": [64, 160],
    "ellipticity": 0.01,
    "hot_pixels": [0, 4],
    "dead_pixels": [0, 4],
    "calibration_error": 0.0,  # relative error of the detector sampling the model is told (corrupted copies)
}


#: A cell window averages at least ~16 scan positions (one 0.4 nm cell at <= 0.1 nm steps): its dose.
CELL_DOSE_FACTOR = 16.0


def cell_augment(aug: dict) -> dict:
    """Augmentation settings for position-averaged inputs: the dose of a whole cell window."""
    a = dict(DEFAULT_AUGMENT, **(aug or {}))
    a["dose"] = [a["dose"][0] * CELL_DOSE_FACTOR, a["dose"][1] * CELL_DOSE_FACTOR]
    return a


def corrupt(frames: np.ndarray, mrad_per_px: float, rng: np.random.Generator, aug: dict | None = None,
            ideal: bool = False) -> tuple[np.ndarray, float]:
    """Experiment-like versions of raw simulated frames -> (detector frames, detector mrad/px).

    Per pattern: blur, a smooth background, elliptical distortion and a descan offset, then resampling
    to a random detector (size, mrad/px), Poisson counts at a random dose, hot and dead pixels. With
    ``ideal`` only the resampling to another detector and the descan offset are applied.
    """
    from scipy import ndimage

    a = dict(DEFAULT_AUGMENT, **(aug or {}))
    n, ky, kx = frames.shape
    f = np.asarray(frames, dtype=np.float32)
    f = f / np.maximum(f.reshape(n, -1).sum(axis=1), 1e-12)[:, None, None]
    lo, hi = a["detector_mrad_per_px"]
    det_mrad = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    fov = min(ky, kx) * mrad_per_px  # never ask for angles the simulation does not have
    det_px = int(rng.integers(a["detector_px"][0], a["detector_px"][1] + 1))
    det_px = max(32, min(det_px, int(fov / det_mrad)))
    if not ideal:
        sig = rng.uniform(*a["blur_px"], size=n)
        for i in np.nonzero(sig > 0.05)[0]:
            f[i] = ndimage.gaussian_filter(f[i], sig[i])
        bg = rng.uniform(*a["background"], size=n)
        yy, xx = np.indices((ky, kx), dtype=np.float32)
        r2 = ((yy - (ky - 1) / 2) ** 2 + (xx - (kx - 1) / 2) ** 2) * mrad_per_px ** 2
        lor = 1.0 / (1.0 + r2 / (25.0 ** 2))
        lor /= lor.sum()
        f = f * (1 - bg)[:, None, None] + bg[:, None, None] * lor[None]
    # elliptical distortion and descan: the detector grid samples the pattern at stretched, shifted positions
    centers = np.full((n, 2), [(ky - 1) / 2, (kx - 1) / 2], dtype=np.float64)
    centers += rng.uniform(-a["descan_px"], a["descan_px"], size=(n, 2)) * det_mrad / mrad_per_px
    eps = 0.0 if ideal else rng.uniform(-a["ellipticity"], a["ellipticity"])
    out = np.empty((n, det_px, det_px), np.float32)
    # stretching one axis by (1 + eps): sample rows at a slightly different step than columns
    step_y = det_mrad * (1 + eps)
    from .preprocess import _axis_weights

    wy = _axis_weights(centers[:, 0], ky, det_px, step_y / mrad_per_px)
    wx = _axis_weights(centers[:, 1], kx, det_px, det_mrad / mrad_per_px)
    out[:] = np.matmul(np.matmul(wy, f), wx.transpose(0, 2, 1))
    out = np.maximum(out, 0)
    out /= np.maximum(out.reshape(n, -1).sum(axis=1), 1e-12)[:, None, None]
    if ideal:
        return out * 1e6, det_mrad
    dose = np.exp(rng.uniform(np.log(a["dose"][0]), np.log(a["dose"][1]), size=n))
    counts = rng.poisson(out * dose[:, None, None]).astype(np.float32)
    for i in range(n):
        nh = int(rng.integers(a["hot_pixels"][0], a["hot_pixels"][1] + 1))
        nd = int(rng.integers(a["dead_pixels"][0], a["dead_pixels"][1] + 1))
        if nh:
            counts[i].flat[rng.integers(0, det_px * det_px, nh)] = np.round(counts[i].max() * rng.uniform(3, 20))
        if nd:
            counts[i].flat[rng.integers(0, det_px * det_px, nd)] = 0
    return counts, det_mrad


def corrupt_and_preprocess(frames: np.ndarray, mrad_per_px, rng: np.random.Generator, aug: dict,
                           ideal: bool, grid: InputGrid, group: int = 32, energy=None,
                           convergence=None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`corrupt` then :func:`preprocess`, drawing a new detector (size, mrad/px) every ``group`` patterns.

    ``mrad_per_px``, ``energy`` and ``convergence`` are one value for all frames or one per frame
    (sets simulated across acquisitions); a group never mixes acquisitions. Corrupted copies tell
    the preprocessing a detector sampling off by up to ``aug["calibration_error"]`` (relative), as a
    real camera-length calibration is.
    """
    n = len(frames)
    per = lambda v, d: np.broadcast_to(np.asarray(d if v is None else v, np.float64), (n,))  # noqa: E731
    mrad, e, conv = per(mrad_per_px, None), per(energy, CANONICAL_ENERGY_KEV), per(convergence, CANONICAL_CONVERGENCE_MRAD)
    err = float((aug or {}).get("calibration_error", 0.0) or 0.0)
    starts = np.flatnonzero(np.r_[True, (np.diff(mrad) != 0) | (np.diff(e) != 0) | (np.diff(conv) != 0)])
    bounds = [b for s0, s1 in zip(starts, np.r_[starts[1:], n]) for b in range(s0, s1, group)] + [n]
    xs, oks = [], []
    for i, j in zip(bounds[:-1], bounds[1:]):
        det, det_mrad = corrupt(frames[i:j], float(mrad[i]), rng, aug, ideal=ideal)
        told = det_mrad if ideal or err <= 0 else det_mrad * (1 + rng.uniform(-err, err))
        cal = Calibration(mrad_per_px=told, convergence_mrad=float(conv[i]), beam_energy_kev=float(e[i]))
        x, ok = preprocess(det, cal, grid)
        xs.append(x)
        oks.append(ok)
    return np.concatenate(xs), np.concatenate(oks)


# --------------------------------------------------------------------------------------------------
# building the preprocessed, cached training arrays


def thickness_bins(thickness: np.ndarray, gap_nm: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Cluster thicknesses that differ by less than ``gap_nm`` (one exit plane of structures whose cell
    size differs slightly), or 5 nm bins when thicknesses are continuous: (bin per pattern, mean per bin)."""
    t = np.asarray(thickness, float)
    values = np.unique(t)
    if len(values) == 0:
        return np.zeros(0, int), np.zeros(0)
    starts = np.concatenate([[True], np.diff(values) > gap_nm])
    if starts.sum() < 4 and values[-1] - values[0] > 10:  # continuous thicknesses: 5 nm bins instead
        starts = np.concatenate([[True], np.diff(np.floor(values / 5.0)) > 0])
    cluster_of_value = np.cumsum(starts) - 1
    b = cluster_of_value[np.searchsorted(values, t)]
    centres = np.array([t[b == i].mean() for i in range(int(b.max()) + 1)])
    return b, centres


def _thickness_split(thickness: np.ndarray, val_every: int) -> np.ndarray:
    """True for validation: every ``val_every``-th thickness bin, never the thinnest or thickest."""
    b, centres = thickness_bins(thickness)
    nb = len(centres)
    if nb < 3:
        return np.zeros(len(b), bool)
    inner = np.arange(1, nb - 1)
    val_bins = inner[(np.arange(len(inner)) % val_every) == (val_every // 2)]
    if len(val_bins) == 0:
        val_bins = np.array([nb // 2])
    return np.isin(b, val_bins)


def build_arrays(sim: SimSet, mode: str, grid: InputGrid, copies: int, aug: dict, seed: int,
                 cell_subsets: bool = True, progress: bool = True, corrupted_only: bool = False) -> dict:
    """Preprocessed inputs for ``mode``: x (M, H, W) float16, y, thickness, group, copy index, informative,
    probe (M, 2) position in the cell (NaN when unknown or for cell means).

    Cached in ``.cache/train/`` by a fingerprint of the data folder, mode, grid and augmentation.
    """
    aug_key = cell_augment(aug) if mode == "cell" else aug
    version = "v3" if mode == "pattern" else "v5"  # bumped when the way arrays are made changes
    key = _fingerprint(str(sim.folder.resolve()), _folder_stamp(sim.folder), mode, grid.to_dict(), copies, aug_key,
                       seed, cell_subsets, corrupted_only, version)
    cache = CACHE / "train" / f"arrays-{mode}-{key}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        if "probe" not in out:  # arrays cached before positions were kept: same order, rebuild them
            out["probe"] = _probe_in_array_order(sim, mode, copies, len(out["y"]))
        return out
    rng = np.random.default_rng(seed)
    if mode == "cell":
        aug = cell_augment(aug)
    src_grid = source_grid(sim, mode, aug)
    # a finite source mixes the patterns of a probe-grid row: blocks then hold whole rows
    chunk = src_grid**2 * max(1, 512 // src_grid**2) if src_grid else 512
    raw_iter = _raw_inputs(sim, mode, cell_subsets, rng, chunk=chunk)
    xs, ys, ts, gs, cs, oks, ps = [], [], [], [], [], [], []
    total = len(sim) if mode == "pattern" else None
    bar = _progress(total, f"preprocess {mode}", progress)
    start = 0  # pattern mode yields the set in order
    for frames, y, t, g in raw_iter:
        if mode == "pattern" and sim.probe is not None:
            probe = sim.probe[start:start + len(y)]
        else:
            probe = np.full((len(y), 2), np.nan, np.float32)
        mrad, energy, convergence = sim.acquisition(_raw_index(sim, mode, start, y, g))
        start += len(y)
        for c in range(copies):
            ideal = c == 0 and not corrupted_only
            f = frames if (ideal or not src_grid) else finite_source(frames, src_grid, aug["source_sigma_a"], rng)
            x, ok = corrupt_and_preprocess(f, mrad, rng, aug, ideal, grid, group=512 if mode == "pattern" else 32,
                                           energy=energy, convergence=convergence)
            xs.append(x.astype(np.float16))
            ys.append(y); ts.append(t); gs.append(g); cs.append(np.full(len(y), c)); oks.append(ok); ps.append(probe)
        bar.update(len(y))
    bar.close()
    out = {"x": np.concatenate(xs), "y": np.concatenate(ys), "thickness": np.concatenate(ts),
           "group": np.concatenate(gs), "copy": np.concatenate(cs), "informative": np.concatenate(oks),
           "probe": np.concatenate(ps).astype(np.float32)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".partial")
    with open(tmp, "wb") as fh:
        np.savez(fh, **out)
    os.replace(tmp, cache)
    return out


def _raw_index(sim: SimSet, mode: str, start: int, y: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Index of a raw pattern behind each input of a :func:`_raw_inputs` block (for its acquisition):
    pattern mode yields the set in order; cell inputs of a probe-grid set are rows (``group``)."""
    if mode == "pattern":
        return np.arange(start, start + len(y))
    if sim.energy is None:
        return np.zeros(len(y), np.int64)  # one acquisition for the whole set
    g = _probe_grid(sim)
    if not g:
        raise PolarstemError(f"{sim.folder}: cell inputs of a set across acquisitions need a probe grid")
    return np.asarray(group, np.int64) * g * g


def source_grid(sim: SimSet, mode: str, aug: dict) -> int:
    """Side g of the probe grid when the corrupted copies get a finite source (``augment:
    source_sigma_a: [low, high]`` in Å, pattern mode, a set with a regular grid of >= 6 x 6 probe
    positions per cell), else 0."""
    if mode != "pattern" or not aug.get("source_sigma_a"):
        return 0
    lo, hi = (float(v) for v in aug["source_sigma_a"])
    if not 0 <= lo <= hi:
        raise PolarstemError(f"augment: source_sigma_a must be [low, high] in Å with 0 <= low <= high, got {aug['source_sigma_a']}")
    from .simulate.coherence import MIN_GRID

    g = _probe_grid(sim)
    # a coarser grid (4 x 4: 1 A steps) samples the position dependence too coarsely for a source of
    # a few tenths of an angstrom: such a set keeps the point source
    return g if g is not None and g >= MIN_GRID else 0


def finite_source(frames: np.ndarray, g: int, sigma_range, rng: np.random.Generator) -> np.ndarray:
    """Raw frames (rows of g x g probe positions, in grid order) as a finite source of a random size
    (one per row, uniform in ``sigma_range`` Å) records them (:func:`polarstem.simulate.coherence.source_blur_grid`)."""
    from .simulate.coherence import source_blur_grid

    n, ky, kx = frames.shape
    rows = n // (g * g)
    sigma = rng.uniform(float(sigma_range[0]), float(sigma_range[1]), size=rows)
    f = np.asarray(frames, np.float32).reshape(rows, g, g, ky, kx)
    return source_blur_grid(f, sigma).reshape(n, ky, kx)


def _probe_in_array_order(sim: SimSet, mode: str, copies: int, n: int, chunk: int = 512) -> np.ndarray:
    """Probe positions in the order :func:`build_arrays` writes pattern inputs (per chunk, every copy)."""
    if mode != "pattern" or sim.probe is None or n != copies * len(sim):
        return np.full((n, 2), np.nan, np.float32)
    parts = [np.tile(sim.probe[i:i + chunk], (copies, 1)) for i in range(0, len(sim), chunk)]
    return np.concatenate(parts).astype(np.float32)


def _raw_inputs(sim: SimSet, mode: str, cell_subsets: bool, rng, chunk: int = 512):
    """Yield (raw frames, labels, thickness, group) blocks: single patterns or per-group means."""
    n = len(sim)
    if mode == "pattern":
        for i in range(0, n, chunk):
            f = np.asarray(sim.frames[i:i + chunk].compute() if hasattr(sim.frames, "compute") else sim.frames[i:i + chunk])
            yield f, sim.labels[i:i + chunk], sim.thickness[i:i + chunk], sim.structure[i:i + chunk]
        return
    g = _probe_grid(sim)
    if g:
        yield from _grid_window_inputs(sim, g, cell_subsets, rng)
        return
    # cell: mean over the probe positions of each (structure, thickness); 4 folds give subset means too
    t_round = np.round(sim.thickness, 3)
    keys = np.stack([sim.structure, (t_round * 1000).astype(np.int64)], 1)
    uniq, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    n_folds = 4
    fold = rng.integers(0, n_folds, size=n)
    ky, kx = sim.frames.shape[1:]
    sums = np.zeros((len(uniq), n_folds, ky, kx), np.float64)
    counts = np.zeros((len(uniq), n_folds))
    for i in range(0, n, 2048):
        f = np.asarray(sim.frames[i:i + 2048].compute() if hasattr(sim.frames, "compute") else sim.frames[i:i + 2048], np.float64)
        f /= np.maximum(f.reshape(len(f), -1).sum(axis=1), 1e-12)[:, None, None]
        np.add.at(sums, (group[i:i + 2048], fold[i:i + 2048]), f)
        np.add.at(counts, (group[i:i + 2048], fold[i:i + 2048]), 1)
    first = np.zeros(len(uniq), dtype=np.int64)
    first[group[::-1]] = np.arange(n)[::-1]
    lab, thk = sim.labels[first], sim.thickness[first]
    subsets = [tuple(range(n_folds))]
    if cell_subsets:
        subsets += [tuple(j for j in range(n_folds) if j != k) for k in range(n_folds)]
        subsets += [(0, 1), (2, 3), (0, 2), (1, 3)]
    for sub in subsets:
        s = sums[:, list(sub)].sum(axis=1)
        c = counts[:, list(sub)].sum(axis=1)
        ok = c > 0
        means = (s[ok] / c[ok][:, None, None]).astype(np.float32)
        yield means, lab[ok], thk[ok], np.nonzero(ok)[0]


def _probe_grid(sim: SimSet) -> int | None:
    """Side g of the regular g x g probe grid of every row of a simulated training set, else None."""
    from .simulate.config import probe_grid

    try:
        n_pos = int(sim.manifest["shape"][1])
    except (KeyError, TypeError, ValueError):
        return None
    g = probe_grid(sim.manifest, n_pos)
    return g if g and len(sim) % n_pos == 0 else None


def _grid_window_inputs(sim: SimSet, g: int, subgrids: bool, rng, rows_per_block: int = 64):
    """Cell inputs as a scan makes them: means over regular sub-grids of each row's g x g probe grid.

    A scan samples the cell on a coarse grid (e.g. 3 x 3 positions at a/3 steps), and such a mean is
    far from a converged position average (17-20 % for a 3 x 3 grid, docs/simulation.md), so the
    model must see the same kind of mean: the full grid, every stride-s sub-grid with at least 3 x 3
    positions (s dividing g), and two random 2 x 2 sub-grids (coarse scans are rarer). Without
    ``subgrids``: the full grid only.
    """
    n_pos = g * g
    n_rows = len(sim) // n_pos
    strides = [s for s in range(2, g) if g % s == 0] if subgrids else []
    ky, kx = sim.frames.shape[1:]
    for r0 in range(0, n_rows, rows_per_block):
        r1 = min(n_rows, r0 + rows_per_block)
        f = sim.frames[r0 * n_pos:r1 * n_pos]
        f = np.asarray(f.compute() if hasattr(f, "compute") else f, np.float64)
        f /= np.maximum(f.reshape(len(f), -1).sum(axis=1), 1e-12)[:, None, None]
        f = f.reshape(r1 - r0, g, g, ky, kx)
        first = np.arange(r0, r1) * n_pos
        lab, thk, rows = sim.labels[first], sim.thickness[first], np.arange(r0, r1)
        yield f.mean(axis=(1, 2)).astype(np.float32), lab, thk, rows
        for s in strides:
            offsets = [(oy, ox) for oy in range(s) for ox in range(s)]
            if g // s == 2:
                offsets = [offsets[i] for i in rng.choice(len(offsets), min(2, len(offsets)), replace=False)]
            for oy, ox in offsets:
                yield f[:, oy::s, ox::s].mean(axis=(1, 2)).astype(np.float32), lab, thk, rows


def _progress(total, desc, enabled=True):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=5.0, unit="pat")


# --------------------------------------------------------------------------------------------------
# training a network


def _set_threads(threads):
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def _d4_batch(xb, yb, rng, generators, probe=None):
    """One random symmetry element per batch (a batch-wide op is as good and much cheaper).

    With ``probe`` (N, 2) positions (x, y) in the cell, also returns them moved by the same element:
    the A column at the cell origin is a centre of the projected lattice's square symmetry.
    """
    from .models.symmetry import ELEMENTS, class_permutation, transform

    e = ELEMENTS[int(rng.integers(0, len(ELEMENTS)))]
    perm = class_permutation(e, generators)
    if probe is None:
        return transform(xb, e), perm[yb]
    return transform(xb, e), perm[yb], transform_positions(probe, e)


def transform_positions(probe: np.ndarray, element) -> np.ndarray:
    """Positions (x = column, y = row) under the D4 element that ``symmetry.transform`` applies to
    patterns: a quarter turn of np.rot90 maps (x, y) -> (y, -x), the transpose (x, y) -> (y, x)."""
    r, t = element
    x, y = probe[:, 0], probe[:, 1]
    for _ in range(r):
        x, y = y, -x
    if t:
        x, y = y, x
    return np.stack([x, y], 1) % 1.0


#: What the auxiliary head regresses (``TrainConfig.aux_weight`` > 0): the probe position in the cell
#: as cos/sin of 2 pi x and 2 pi y (periodic, no wrap-around jump) and the thickness, centred and scaled.
AUX_TARGETS = ("cos 2pi x", "sin 2pi x", "cos 2pi y", "sin 2pi y", "(thickness - 25 nm) / 12 nm")


def aux_targets(probe: np.ndarray, thickness: np.ndarray) -> np.ndarray:
    ang = 2 * np.pi * probe
    return np.stack([np.cos(ang[:, 0]), np.sin(ang[:, 0]), np.cos(ang[:, 1]), np.sin(ang[:, 1]),
                     (np.asarray(thickness, np.float32) - 25.0) / 12.0], 1).astype(np.float32)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the validation negative log-likelihood (golden search)."""
    if len(y) == 0:
        return 1.0

    def nll(t):
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(len(y)), y].mean()

    lo, hi = np.log(0.05), np.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(60):
        if nll(np.exp(a)) < nll(np.exp(b)):
            hi = b
        else:
            lo = a
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    return float(np.exp((lo + hi) / 2))


def train_network(cfg: TrainConfig, mode: str, arrays: dict, generators: dict, progress: bool = True,
                  max_steps: int | None = None, log=print):
    """Train one network on cached arrays; returns (net, history, temperature, val metrics)."""
    import torch
    import torch.nn.functional as F

    from .models.nets import create_model
    from .models.prototype import assignment_consistency, init_prototypes, prototype_loss

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x, y, thick = arrays["x"], arrays["y"], arrays["thickness"]
    probe_all = arrays.get("probe")
    use_aux = cfg.aux_weight > 0 and probe_all is not None and mode == "pattern"
    keep = (y >= 0) & arrays["informative"]
    val = _thickness_split(thick, cfg.val_every) & keep
    tr = keep & ~val
    if not val.any():  # too few thicknesses: hold out a random 15 % of groups instead
        groups = np.unique(arrays["group"])
        vg = rng.choice(groups, size=max(1, len(groups) // 7), replace=False)
        val = np.isin(arrays["group"], vg) & keep
        tr = keep & ~val
    tr_idx, val_idx = np.nonzero(tr)[0], np.nonzero(val)[0]
    if len(tr_idx) == 0:
        raise PolarstemError("no training patterns left after filtering")
    pool, per_step = tr_idx, cfg.batch_size  # what an epoch permutes, and how many of them one step takes
    if cfg.consistency > 0:
        if not cfg.prototype:
            raise PolarstemError("consistency > 0 is part of the prototype regime: set prototype: {per_class: 4, scale: 16}")
        partner = copy_partners(arrays["copy"])
        pool = tr_idx[partner[tr_idx] >= 0]
        pool = pool[tr[partner[pool]]]  # both views usable and in the training split
        per_step = max(1, cfg.batch_size // 2)
        if len(pool) == 0:
            raise PolarstemError("consistency > 0 needs copies: 2 (an ideal and a corrupted view of each pattern)")
    net = create_model(cfg.arch, prototype=cfg.prototype, **cfg.arch_kwargs)
    base_net = net.base if hasattr(net, "base") else net
    if use_aux and getattr(base_net, "aux", None) is None:
        raise PolarstemError("aux_weight > 0 needs arch_kwargs aux_dim: 5 (probe position and thickness)")
    device = torch.device(cfg.device)
    ckdir = CACHE / "train" / f"{cfg.name}-{mode}"
    ckdir.mkdir(parents=True, exist_ok=True)
    warm_prototypes = bool(cfg.warm_start) and _warm_start(net, cfg.warm_start, mode, log)
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = cfg.epochs if mode == "pattern" else cfg.cell_epochs
    budget_s = 60.0 * (cfg.max_minutes if mode == "pattern" else cfg.cell_max_minutes)
    steps_per_epoch = max(1, len(pool) // per_step)
    round_steps = max(1, min(steps_per_epoch, 300))  # validate and checkpoint every round
    # the schedule (warm-up, cosine decay) spans what the time budget allows, measured on the first round
    state = {"step": 0, "total_steps": cfg.steps if cfg.steps else epochs * steps_per_epoch, "best_acc": -1.0, "bad_rounds": 0,
             "history": [], "seconds": 0.0, "order_seed": int(rng.integers(1 << 31))}
    ck = ckdir / "last.pt"
    fp = _run_fingerprint(cfg, mode, arrays)
    resumed = False
    if ck.exists() and max_steps is None:
        saved = torch.load(ck, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == fp:
            net.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            state = json.loads(saved["state"])
            resumed = True
            log(f"resumed {cfg.name}/{mode} at step {state['step']}")
    if cfg.prototype and not resumed and not warm_prototypes:  # (a stale checkpoint must not skip this)
        z = _embed_numpy(net, x[tr_idx[:4000]], device)
        init_prototypes(net, z, y[tr_idx[:4000]], cfg.seed)
    val_check = val_idx if len(val_idx) <= 4000 else np.random.default_rng(cfg.seed).choice(val_idx, 4000, replace=False)
    warmup = 0.05

    def lr_at(step):
        t = step / max(1, state["total_steps"])
        if t < warmup:
            return cfg.lr * (0.1 + 0.9 * t / warmup)
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / (1 - warmup)))))

    patience_rounds = max(2, cfg.patience * max(1, steps_per_epoch // round_steps))
    steps = 0
    while state["step"] < state["total_steps"]:
        t_round = time.time()
        net.train()
        losses = []
        bar = _progress(round_steps * cfg.batch_size, f"{cfg.name}/{mode} step {state['step']}/{state['total_steps']}", progress)
        for _ in range(round_steps):
            epoch, pos = divmod(state["step"], steps_per_epoch)
            order = np.random.default_rng(state["order_seed"] + epoch).permutation(pool)
            idx = order[pos * per_step:(pos + 1) * per_step]
            if cfg.consistency > 0:  # ideal views first, then their corrupted partners
                idx = np.concatenate([idx, partner[idx]])
            brng = np.random.default_rng((state["order_seed"], state["step"]))
            if use_aux:
                xb, yb, pb = _d4_batch(x[idx].astype(np.float32), y[idx], brng, generators, probe_all[idx])
            else:
                xb, yb = _d4_batch(x[idx].astype(np.float32), y[idx], brng, generators)
            xt = torch.from_numpy(xb)[:, None].to(device)
            yt = torch.from_numpy(yb).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(state["step"])
            z = base_net.embed(xt)
            if cfg.prototype:
                logits = net.head(z)
                loss = prototype_loss(net, logits, z, yt)
                if cfg.consistency > 0:
                    loss = loss + cfg.consistency * assignment_consistency(net, z, len(idx) // 2)
            else:
                logits = base_net.head(z)
                loss = F.cross_entropy(logits, yt, label_smoothing=cfg.label_smoothing)
            if use_aux:
                target = torch.from_numpy(aux_targets(pb, thick[idx])).to(device)
                known = torch.isfinite(target).all(dim=1)
                if bool(known.any()):
                    loss = loss + cfg.aux_weight * F.mse_loss(base_net.aux(z[known]), target[known])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(len(idx))
            state["step"] += 1
            steps += 1
            if state["step"] >= state["total_steps"] or (max_steps is not None and steps >= max_steps):
                break
        bar.close()
        state["seconds"] += time.time() - t_round
        if len(state["history"]) == 0 and max_steps is None and not cfg.steps:
            rate = state["step"] / max(state["seconds"], 1e-6)  # steps per second, incl. validation later
            state["total_steps"] = int(min(state["total_steps"], max(round_steps, 0.9 * rate * budget_s)))
            log(f"{cfg.name}/{mode}: {rate * cfg.batch_size:.0f} inputs/s -> {state['total_steps']} steps "
                f"({state['total_steps'] / steps_per_epoch:.2f} epochs) in the {budget_s / 60:.0f} min budget")
        logits_v = _logits_numpy(net, x[val_check], device)
        acc = float((logits_v.argmax(1) == y[val_check]).mean()) if len(val_check) else float("nan")
        state["history"].append({"step": state["step"], "epoch": round(state["step"] / steps_per_epoch, 3),
                                 "loss": float(np.mean(losses)) if losses else None, "val_accuracy": acc,
                                 "minutes": round(state["seconds"] / 60, 2)})
        log(f"{cfg.name}/{mode} step {state['step']}/{state['total_steps']} (epoch {state['step'] / steps_per_epoch:.2f}): "
            f"loss {np.mean(losses) if losses else float('nan'):.4f} val acc {acc:.4f}")
        if acc > state["best_acc"]:
            state["best_acc"], state["bad_rounds"] = acc, 0
            _save_state_dict(net, ckdir / "best.safetensors")
        else:
            state["bad_rounds"] += 1
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "state": json.dumps(state),
                    "fingerprint": fp}, ck)
        if max_steps is not None and steps >= max_steps:
            break
        if state["bad_rounds"] >= patience_rounds:
            log(f"{cfg.name}/{mode}: early stop (no validation gain for {patience_rounds} rounds)")
            break
    if (ckdir / "best.safetensors").exists() and max_steps is None:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(ckdir / "best.safetensors"), device="cpu"))
        net.to(device)
    logits_v = _logits_numpy(net, x[val_idx], device)
    temp = fit_temperature(logits_v, y[val_idx])
    val_acc = float((logits_v.argmax(1) == y[val_idx]).mean()) if len(val_idx) else float("nan")
    return net.cpu().eval(), state["history"], temp, {"val_accuracy": val_acc, "n_train": int(len(tr_idx)),
                                                      "n_val": int(len(val_idx)),
                                                      "val_thickness_nm": _bin_centres(thick, val_idx)}


def _concat_arrays(parts: list[dict]) -> dict:
    """Training arrays of several simulated folders as one (groups kept apart)."""
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    offsets = np.cumsum([0] + [int(p["group"].max()) + 1 for p in parts[:-1]])
    out["group"] = np.concatenate([p["group"] + o for p, o in zip(parts, offsets)])
    return out


def copy_partners(copy: np.ndarray) -> np.ndarray:
    """For each copy-0 (ideal) input, the index of its copy-1 (corrupted) version of the same raw pattern; -1
    elsewhere. :func:`build_arrays` writes each block of raw patterns once per copy, block after block."""
    copy = np.asarray(copy)
    partner = np.full(len(copy), -1, np.int64)
    if len(copy) == 0:
        return partner
    change = np.flatnonzero(np.diff(copy)) + 1
    starts, ends = np.r_[0, change], np.r_[change, len(copy)]
    for s0, e0, s1, e1 in zip(starts[:-1], ends[:-1], starts[1:], ends[1:]):
        if copy[s0] == 0 and copy[s1] == 1 and e0 - s0 == e1 - s1:
            partner[s0:e0] = np.arange(s1, e1)
    return partner


def _bin_centres(thick, idx) -> list:
    b, centres = thickness_bins(thick)
    return [round(float(centres[i]), 1) for i in np.unique(b[idx])]


def _run_fingerprint(cfg, mode, arrays) -> str:
    return _fingerprint(cfg.to_dict(), mode, int(len(arrays["y"])), float(np.asarray(arrays["x"][:8], np.float32).sum()))


def _save_state_dict(net, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def _warm_start(net, name: str, mode: str, log) -> bool:
    """Start from a shipped network's weights (a prototype net takes the plain net's backbone).

    Returns True when the weights brought trained prototypes along (a prototype net continued), so
    that they are not re-initialised from class means."""
    from safetensors.torch import load_file

    from .models.registry import verified_weights_path

    if str(name).endswith(".safetensors"):  # a candidate's weights file (e.g. .cache/candidates/...)
        path = Path(name)
        if not path.exists():
            raise PolarstemError(f"warm start: {path} does not exist")
    else:
        try:
            path = verified_weights_path(name, mode)
        except PolarstemError as exc:
            log(f"no warm start ({exc})")
            return False
    state = load_file(str(path), device="cpu")
    has_prototypes = False
    if hasattr(net, "base") and any(k.startswith("base.") for k in state):  # a prototype net, prototypes too
        missing, _ = net.load_state_dict(state, strict=False)
        has_prototypes = not any(k.startswith("head.") for k in missing)
    elif hasattr(net, "base"):  # prototype net: the plain net's backbone and neck, not its linear head
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, _ = net.base.load_state_dict(state, strict=False)
    else:  # fine-tuning a plain net (e.g. on more data)
        missing, _ = net.load_state_dict(state, strict=False)
    log(f"warm start from {name}/{mode} ({len(state)} tensors, missing {len(missing)})")
    return has_prototypes


def _batched_numpy(fn, x, device, batch: int, width: int) -> np.ndarray:
    """``fn`` (a torch forward) over ``x`` in batches, as one float32 numpy array."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.asarray(x[i:i + batch], np.float32))[:, None].to(device)
            out.append(fn(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def _logits_numpy(net, x, device, batch=512) -> np.ndarray:
    net.eval()
    return _batched_numpy(net, x, device, batch, N_CLASSES)


def _embed_numpy(net, x, device, batch=512) -> np.ndarray:
    net.eval()
    embed = net.base.embed if hasattr(net, "base") else net.embed
    return _batched_numpy(embed, x, device, batch, 0)


# --------------------------------------------------------------------------------------------------
# PCA + kNN


def train_pca_knn(cfg: TrainConfig, arrays: dict, generators: dict, log=print):
    """Fit the Pipeline on D4-expanded training inputs; temperature on the thickness validation split."""
    from .models.pca_knn import make_pipeline, vote_logits
    from .models.symmetry import ELEMENTS, class_permutation, transform

    rng = np.random.default_rng(cfg.seed)
    x, y, thick = arrays["x"], arrays["y"], arrays["thickness"]
    keep = (y >= 0) & arrays["informative"]
    val = _thickness_split(thick, cfg.val_every) & keep
    tr = keep & ~val
    if not val.any():
        val = keep & (rng.random(len(y)) < 0.15)
        tr = keep & ~val
    tr_idx = np.nonzero(tr)[0]
    per = max(1, cfg.knn_max_train // len(ELEMENTS))
    if len(tr_idx) > per:
        tr_idx = rng.choice(tr_idx, per, replace=False)
    xs, ys = [], []
    for e in ELEMENTS:
        xs.append(transform(x[tr_idx].astype(np.float32), e).reshape(len(tr_idx), -1))
        ys.append(class_permutation(e, generators)[y[tr_idx]])
    X, Y = np.concatenate(xs), np.concatenate(ys)
    pipe = make_pipeline(min(cfg.pca_components, X.shape[0] - 1, X.shape[1]), cfg.knn_neighbors, cfg.seed)
    t0 = time.time()
    pipe.fit(X, Y)
    log(f"pca-knn fit on {len(X)} inputs in {time.time() - t0:.1f} s")
    vx = x[val].astype(np.float32).reshape(int(val.sum()), -1)
    logits, _ = vote_logits(pipe, vx)
    temp = fit_temperature(logits, y[val])
    val_acc = float((logits.argmax(1) == y[val]).mean()) if val.any() else float("nan")
    log(f"pca-knn val accuracy {val_acc:.4f}")
    return pipe, temp, {"val_accuracy": val_acc, "n_train": int(len(X)), "n_val": int(val.sum())}


# --------------------------------------------------------------------------------------------------
# held-out evaluation, cards, the whole run


def heldout_accuracy(model, sim: SimSet | None, mode: str, grid: InputGrid, seed: int = 123,
                     max_patterns: int = 4000, aug: dict | None = None) -> dict:
    """Accuracy per thickness on held-out simulations, ideal and with experiment-like corruptions."""
    if sim is None:
        return {}
    rng = np.random.default_rng(seed)
    if mode == "cell":
        aug = cell_augment(aug or {})
    res = {}
    for cond in ("ideal", "corrupted"):
        xs, ys, ts = [], [], []
        count = 0
        if mode == "pattern" and len(sim) > max_patterns:  # a random sample across all structures
            pick = np.sort(np.random.default_rng(seed).choice(len(sim), max_patterns, replace=False))
            source = [(np.asarray(sim.frames[pick[i:i + 1000]]), sim.labels[pick[i:i + 1000]],
                       sim.thickness[pick[i:i + 1000]], None) for i in range(0, len(pick), 1000)]
        else:
            source = _raw_inputs(sim, mode, cell_subsets=False, rng=np.random.default_rng(seed))
        start = 0
        for frames, y, t, g in source:
            index = pick[start:start + len(y)] if g is None else _raw_index(sim, mode, start, y, g)
            start += len(y)
            mrad, energy, convergence = sim.acquisition(index)
            x, ok = corrupt_and_preprocess(frames, mrad, rng, aug, cond == "ideal", grid, energy=energy,
                                           convergence=convergence)
            xs.append(x); ys.append(y); ts.append(t)
            count += len(y)
        x, y, t = np.concatenate(xs), np.concatenate(ys), np.concatenate(ts)
        pred = model.predict(x)["proba"].argmax(1)
        keep = y >= 0
        per_t = {}
        bins, centres = thickness_bins(t)
        for i, tv in enumerate(centres):
            sel = keep & (bins == i)
            if sel.any():
                per_t[f"{tv:.1f}"] = round(float((pred[sel] == y[sel]).mean()), 4)
        res[cond] = {"accuracy": round(float((pred[keep] == y[keep]).mean()), 4), "n": int(keep.sum()),
                     "per_thickness_nm": per_t}
    return res


def make_card(cfg: TrainConfig, mode: str, weights_file: str, grid: InputGrid, temperature: float,
              train_info: dict, heldout: dict, sim: SimSet, generators: dict, architecture: dict | None,
              history=None, extra: dict | None = None) -> dict:
    from .models.registry import MODEL_DEFS

    d = MODEL_DEFS.get(cfg.name, {})
    card = {
        "name": cfg.name, "family": d.get("family"), "mode": mode, "summary": d.get("summary"),
        "weights_file": weights_file, "format": "npz" if weights_file.endswith(".npz") else "safetensors",
        "architecture": architecture, "input_grid": grid.to_dict(), "temperature": round(float(temperature), 4),
        "symmetry_generators": generators,
        "acquisition": dict(ACQUISITION, **cfg.acquisition,
                            canonical={"beam_energy_kev": CANONICAL_ENERGY_KEV,
                                       "convergence_mrad": CANONICAL_CONVERGENCE_MRAD}),
        "training": {"config": cfg.to_dict(), "data": cfg.data if isinstance(cfg.data, (list, tuple)) else str(sim.folder),
                     "n_patterns_raw": len(sim),
                     "data_manifest": {k: v for k, v in sim.manifest.items() if isinstance(v, (str, int, float, list, dict))},
                     **train_info, "history": history or []},
        "heldout": heldout_summary(heldout),
        "heldout_detail": heldout,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card.update(extra or {})
    return card


def heldout_summary(heldout: dict) -> dict:
    if not heldout:
        return {}
    return {"accuracy": heldout.get("ideal", {}).get("accuracy"),
            "accuracy_corrupted": heldout.get("corrupted", {}).get("accuracy")}


def class_mean_embeddings(model, arrays: dict, per_class: int = 500) -> list:
    """(8, D) mean embedding of each class over (up to ``per_class``) training inputs, rounded for the card."""
    y = arrays["y"]
    means = []
    for k in range(N_CLASSES):
        idx = np.nonzero((y == k) & arrays["informative"])[0][:per_class]
        if len(idx) == 0:
            return None
        emb = model.predict(arrays["x"][idx].astype(np.float32))["embedding"]
        means.append(np.round(emb.mean(0), 5).tolist())
    return means


def write_synthetic_simset(folder, n_structures: int = 8, n_positions: int = 16, thicknesses=(5, 10, 15, 20, 25, 30),
                           det_px: int = 64, mrad_per_px: float = 1.5, seed: int = 0, signal: float = 0.3) -> Path:
    """A cheap stand-in for a simulated labeled folder (tests, smoke runs): same layout, fake physics.

    Each pattern is a 20 mrad bright-field disk whose intensity tilts along the class direction
    (strength oscillating with thickness, as dynamical contrast does) plus a larger probe-position
    dependent pattern shared by all classes: single patterns are hard, position averages easy.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = (det_px - 1) / 2
    yy, xx = (np.indices((det_px, det_px)) - c) * mrad_per_px
    r = np.hypot(yy, xx)
    disk = (r <= 20.0).astype(np.float32)
    frames, labels, thick, struct, pos = [], [], [], [], []
    basis = [np.cos(0.31 * (i + 1) * xx + 0.17 * (i + 2) * yy + i) for i in range(4)]
    for s in range(n_structures):
        k = s % N_CLASSES
        ang = np.pi / 4 * k
        tilt = (np.cos(ang) * xx + np.sin(ang) * yy) / 20.0
        for t in thicknesses:
            amp = signal * np.sin(t / 8.0 + 0.5)
            for p in range(n_positions):
                phase = 2 * np.pi * p / n_positions
                probe = sum(np.cos(phase * (i + 1) + i) * b for i, b in enumerate(basis)) * 0.15
                img = disk * (1.0 + amp * tilt + probe) + 0.02 * np.exp(-r / 30.0)
                frames.append(np.maximum(img, 0) * 1000.0)
                labels.append(k); thick.append(t); struct.append(s); pos.append(p)
    n = len(frames)
    cols = n_positions
    rows = n // cols
    data = np.stack(frames).astype(np.float32).reshape(rows, cols, det_px, det_px)
    np.save(folder / "data.npy", data)
    (folder / "data.json").write_text(json.dumps({"mrad_per_px": mrad_per_px, "beam_energy_kev": 200.0,
                                                  "convergence_mrad": 20.0}))
    np.save(folder / "labels.npy", np.asarray(labels, np.int8).reshape(rows, cols))
    np.save(folder / "thickness_nm.npy", np.asarray(thick, np.float32).reshape(rows, cols))
    np.save(folder / "structure.npy", np.asarray(struct, np.int32).reshape(rows, cols))
    (folder / "manifest.json").write_text(json.dumps({"data_file": "data.npy", "synthetic": True}))
    return folder


def class_mean_generators(arrays: dict, log=print) -> dict:
    """Class permutations of the symmetry generators: the conventions, checked against the data.

    Class means of single patterns differ too little for a reliable measurement, so the measurement
    only warns; the conventions are used (a simulator is checked for them with matched pairs).
    """
    from .models.symmetry import CONVENTION_GENERATORS, measure_generators

    y = arrays["y"]
    if all((y == k).any() for k in range(N_CLASSES)):
        means = np.stack([arrays["x"][y == k][:5000].astype(np.float32).mean(0) for k in range(N_CLASSES)])
        gens, err = measure_generators(means)
        if gens != CONVENTION_GENERATORS:
            log(f"WARNING: class means suggest other symmetry permutations {gens} (error {err:.3f}); using the conventions")
    return dict(CONVENTION_GENERATORS)


def run(cfg: TrainConfig, progress: bool = True, log=print) -> list[dict]:
    """Train every mode of one config, write weights + card + index; returns the cards."""
    from .models.registry import write_index

    if cfg.threads and cfg.arch:
        _set_threads(cfg.threads)
    grid = InputGrid.from_dict(cfg.grid)
    aug = dict(DEFAULT_AUGMENT, **cfg.augment)
    folders = cfg.data if isinstance(cfg.data, (list, tuple)) else [cfg.data]
    sims = [load_simset(f) for f in folders]
    sim = sims[0]
    held = load_simset(cfg.heldout) if cfg.heldout and Path(cfg.heldout).exists() else None
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cards = []
    for mode in cfg.modes:
        log(f"== {cfg.name} / {mode}: {sum(len(s) for s in sims)} raw patterns from {', '.join(str(s.folder) for s in sims)}")
        parts = [build_arrays(s, mode, grid, cfg.copies, aug, cfg.seed, cfg.cell_subsets, progress) for s in sims]
        arrays = parts[0] if len(parts) == 1 else _concat_arrays(parts)
        del parts  # the per-folder arrays are copied into ``arrays``: keep one copy (GBs with several folders)
        log(f"{len(arrays['y'])} inputs, {int((~arrays['informative']).sum())} flagged uninformative")
        gens = class_mean_generators(arrays, log)
        t0 = time.time()
        if cfg.arch is None:
            from .models.pca_knn import PcaKnnModel, save_npz

            pipe, temp, info = train_pca_knn(cfg, arrays, gens, log)
            fname = f"{cfg.name}-{mode}.npz"
            save_npz(pipe, out_dir / fname)
            architecture = {"kind": "pca_knn", "n_components": int(pipe.named_steps["pca"].n_components_),
                            "n_neighbors": int(pipe.named_steps["knn"].n_neighbors)}
            card = make_card(cfg, mode, fname, grid, temp, info, {}, sim, gens, architecture)
            model = PcaKnnModel(pipe, card)
            history = None
        else:
            from .models.base import NetModel
            from .models.nets import n_parameters

            net, history, temp, info = train_network(cfg, mode, arrays, gens, progress, log=log)
            fname = f"{cfg.name}-{mode}.safetensors"
            _save_state_dict(net, out_dir / fname)
            architecture = {"arch": cfg.arch, "kwargs": cfg.arch_kwargs, "prototype": cfg.prototype,
                            "parameters": n_parameters(net)}
            card = make_card(cfg, mode, fname, grid, temp, info, {}, sim, gens, architecture, history)
            model = NetModel(net, card)
        info["train_minutes"] = round((time.time() - t0) / 60, 2)
        card["training"]["n_patterns_raw"] = int(sum(len(s_) for s_ in sims))
        card["training"]["n_structures"] = int(sum(len(np.unique(s_.structure)) for s_ in sims))
        card["class_mean_embeddings"] = class_mean_embeddings(model, arrays)
        if cfg.abstention and cfg.arch and mode == "pattern":
            del arrays  # the calibration reads raw patterns again; free the cached inputs first
            card["abstention"] = fit_abstention(model, sim, grid, aug, seed=cfg.seed, log=log).to_dict()
        held_res = heldout_accuracy(model, held, mode, grid, aug=aug)
        card["heldout"] = heldout_summary(held_res)
        card["heldout_detail"] = held_res
        card["training"]["train_minutes"] = info["train_minutes"]
        card["training"]["val_accuracy"] = info.get("val_accuracy")
        _write_json_atomic(out_dir / f"{cfg.name}-{mode}.json", card)
        write_index(out_dir)
        log(f"{cfg.name}/{mode}: val {info.get('val_accuracy')}, held-out {card['heldout']} -> {out_dir / fname}")
        cards.append(card)
    from .models.registry import weights_dir

    if out_dir.resolve() == weights_dir().resolve():  # only the shipped models get docs pages
        write_markdown_cards(out_dir)
    return cards


def add_heldout_to_cards(sim_folder, label: str, weights=None, max_patterns: int = 4000, tta: bool = False,
                         log=print, main: bool = False, names: list | None = None) -> dict:
    """Score every shipped model on another simulated labeled folder and record it in the cards.

    Used for independent checks (e.g. the project simulator's canonical set, which the models never
    saw): the result goes to ``card["heldout_other"][label]``; the index is rebuilt (cards only).
    """
    from .models.registry import clear_cache, load_model, read_index, weights_dir

    folder = Path(weights) if weights else weights_dir()
    sim = load_simset(sim_folder)
    results = {}
    for key, entry in read_index(folder)["files"].items():
        if names and entry["name"] not in names and key not in names:
            continue
        model = load_model(entry["name"], entry["mode"], folder=folder)
        if tta:
            predict = model.predict
            model.predict = lambda x, **kw: predict(x, tta=True)  # noqa: E731
        res = heldout_accuracy(model, sim, entry["mode"], model.grid, max_patterns=max_patterns)
        results[key] = res
        card_path = folder / entry["card"]
        card = json.loads(card_path.read_text())
        if main:
            card["heldout"] = heldout_summary(res)
            card["heldout_detail"] = res
        else:
            card.setdefault("heldout_other", {})[label] = {"data": str(sim_folder), "tta": tta, **res}
        _write_json_atomic(card_path, card)
        log(f"{key}: {label} ideal {res.get('ideal', {}).get('accuracy')} corrupted {res.get('corrupted', {}).get('accuracy')}")
    clear_cache()
    write_markdown_cards(folder)
    return results


def write_markdown_cards(weights: Path, docs: Path = Path("docs/model_cards")) -> None:
    """Render every model's JSON cards as docs/model_cards/<name>.md (when that folder exists)."""
    from .models.registry import read_card, read_index

    if not docs.is_dir():
        return
    by_name: dict[str, list] = {}
    for entry in read_index(weights)["files"].values():
        by_name.setdefault(entry["name"], []).append(read_card(entry["name"], entry["mode"], weights))
    for name, cards in by_name.items():
        cards.sort(key=lambda c: c["mode"] != "pattern")
        (docs / f"{name}.md").write_text(markdown_card(cards))


def _source_note(config: dict) -> str:
    """The finite-source augmentation of a training config, as the card states it (or nothing)."""
    src = (config.get("augment") or {}).get("source_sigma_a")
    if not src:
        return ""
    return (f"; on sets with a >= 6 x 6 probe grid also a finite source of std {src[0]}-{src[1]} Å, "
            "polarstem.simulate.coherence")


def markdown_card(cards: list[dict]) -> str:
    """A model card in Markdown (docs/model_cards/<name>.md) from the JSON cards of its modes."""
    c0 = cards[0]
    arch = c0.get("architecture") or {}
    lines = [f"# Model card: `{c0['name']}`", "", f"{c0.get('summary') or ''}", "",
             f"- Family: {c0.get('family')}; prototype regime: {'yes' if arch.get('prototype') else 'no'}",
             f"- Architecture: `{json.dumps(arch)}`",
             f"- Input grid: {c0['input_grid']['size']} x {c0['input_grid']['size']} px at "
             f"{c0['input_grid']['mrad_per_px']} mrad/px about the bright-field disk centre, "
             f"{c0['input_grid']['intensity']} intensities (see docs/models.md)",
             f"- Training data: `{c0['training'].get('data')}` ({c0['training'].get('n_patterns_raw')} simulated patterns), "
             f"{c0['training']['config'].get('copies')} copies each (copy 0 ideal, the rest with experiment-like corruptions"
             f"{_source_note(c0['training']['config'])}), square-symmetry augmentation", "",
             "## Meant for (acquisition ranges; the plugin warns outside them)", ""]
    for k, v in c0.get("acquisition", {}).items():
        lines.append(f"- {k}: {v}")
    for c in cards:
        h = c.get("heldout_detail") or {}
        lines += ["", f"## Mode `{c['mode']}`", "",
                  f"- Weights: `{c['weights_file']}` (sha256 `{c.get('sha256', '')}`)",
                  f"- Softmax temperature (fitted on the validation thicknesses): {c.get('temperature')}",
                  f"- Validation accuracy (held-out thickness bins {c['training'].get('val_thickness_nm')}): "
                  f"{c['training'].get('val_accuracy')}",
                  f"- Training time: {c['training'].get('train_minutes')} min on CPU"]
        for cond in ("ideal", "corrupted"):
            if cond in h:
                lines += ["", f"Held-out simulations ({cond}): accuracy **{h[cond]['accuracy']}** on {h[cond]['n']} inputs", "",
                          "| thickness (nm) | " + " | ".join(h[cond]["per_thickness_nm"]) + " |",
                          "|---|" + "---|" * len(h[cond]["per_thickness_nm"]),
                          "| accuracy | " + " | ".join(f"{v:.2f}" for v in h[cond]["per_thickness_nm"].values()) + " |"]
        for label, other in (c.get("heldout_other") or {}).items():
            for cond in ("ideal", "corrupted"):
                if cond in other:
                    pt = other[cond]["per_thickness_nm"]
                    lines += ["", f"Independent simulations `{label}` ({other['data']}, {cond}"
                              f"{', test-time symmetry averaging' if other.get('tta') else ''}): accuracy "
                              f"**{other[cond]['accuracy']}** on {other[cond]['n']} inputs", "",
                              "| thickness (nm) | " + " | ".join(pt) + " |", "|---|" + "---|" * len(pt),
                              "| accuracy | " + " | ".join(f"{v:.2f}" for v in pt.values()) + " |"]
    lines += ["", "Limitations: trained on simulations only; see docs/models.md for the domain gap and the filter.", ""]
    return "\n".join(lines)


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------------------------------
# abstention: the embedding's training distribution and conformal thresholds (polarstem.abstain)


def fit_abstention(model, sim: SimSet, grid: InputGrid, aug: dict | None = None, seed: int = 0, fit_rows: int = 600,
                   calibration_rows: int = 600, tta: int = 8, log=print):
    """Fit the class-conditional Gaussians of ``model``'s embedding on training-split rows of a probe-grid
    set and calibrate the thresholds on rows of its validation thicknesses (never trained on), both
    with experiment-like corruptions, as a scan's cell windows pool them (``abstain.WINDOW_SIZES``).

    Returns the :class:`polarstem.abstain.Abstention` (also set on ``model``)."""
    from .abstain import WINDOW_SIZES, Abstention

    g = _probe_grid(sim)
    if not g or g % 6:
        raise PolarstemError(f"{sim.folder}: calibrating the abstention needs a set with a 6 x 6 probe grid per cell")
    aug = dict(DEFAULT_AUGMENT, **(aug or {}))
    n_pos = g * g
    rows_thick = sim.thickness[::n_pos]
    rng = np.random.default_rng(seed)
    val = _thickness_split(rows_thick, 4)
    if not val.any():  # too few thicknesses: hold out a seventh of the structures instead
        structures = sim.structure[::n_pos]
        held = rng.choice(np.unique(structures), max(1, len(np.unique(structures)) // 7), replace=False)
        val = np.isin(structures, held)
    val_rows = np.nonzero(val & (sim.labels[::n_pos] >= 0))[0]
    tr_rows = np.nonzero(~val & (sim.labels[::n_pos] >= 0))[0]
    fit_pick = np.sort(rng.choice(tr_rows, min(fit_rows, len(tr_rows)), replace=False))
    cal_pick = np.sort(rng.choice(val_rows, min(calibration_rows, len(val_rows)), replace=False))

    def rows_out(rows, with_tta):
        probs, embs, ys = [], [], []
        for i in range(0, len(rows), 16):
            r = rows[i:i + 16]
            index = (r[:, None] * n_pos + np.arange(n_pos)[None]).reshape(-1)
            frames = np.asarray(sim.frames[index])
            mrad, energy, conv = sim.acquisition(index)
            x, _ = corrupt_and_preprocess(frames, mrad, rng, aug, False, grid, group=n_pos, energy=energy,
                                          convergence=conv)
            out = model.predict(x, tta=tta if with_tta else False)
            probs.append(out["proba"].reshape(len(r), n_pos, -1))
            embs.append(out["embedding"].reshape(len(r), n_pos, -1))
            ys.append(sim.labels[r * n_pos])
        return np.concatenate(probs), np.concatenate(embs), np.concatenate(ys)

    _, emb_fit, y_fit = rows_out(fit_pick, False)
    abst = Abstention.fit(emb_fit.reshape(-1, emb_fit.shape[-1]), np.repeat(y_fit, n_pos))
    proba, emb, y = rows_out(cal_pick, True)
    dist = abst.distance(emb.reshape(-1, emb.shape[-1])).reshape(len(cal_pick), g, g)
    logp = np.log(np.clip(proba, 1e-6, 1.0)).reshape(len(cal_pick), g, g, -1)
    for n in WINDOW_SIZES:
        d_w, p_w = _grid_windows(dist, logp, g, n)
        abst.calibrate(d_w, p_w, n)
        log(f"abstention at {n} patterns: distance <= {abst.max_distance[n]:.3f}, "
            f"top probability >= {abst.min_confidence[n]:.3f} ({len(d_w)} windows)")
    model.abstention = abst
    return abst


def _grid_windows(dist: np.ndarray, logp: np.ndarray, g: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled distance (mean) and top probability (renormalised mean log-probability) of every window of
    ``n`` = s x s regularly spaced probe positions (stride g / s) of each row's g x g grid, as a scan with
    s steps per cell pools them."""
    s = int(round(np.sqrt(n)))
    if s * s != n or g % s:
        raise ValueError(f"a window of {n} positions is not a regular sub-grid of a {g} x {g} grid")
    stride = g // s
    ds, ps = [], []
    for oy in range(stride):
        for ox in range(stride):
            d = dist[:, oy::stride, ox::stride].reshape(len(dist), -1).mean(axis=1)
            m = logp[:, oy::stride, ox::stride].reshape(len(logp), n, -1).mean(axis=1)
            p = np.exp(m - m.max(axis=1, keepdims=True))
            ds.append(d)
            ps.append((p / p.sum(axis=1, keepdims=True)).max(axis=1))
    return np.concatenate(ds), np.concatenate(ps)
