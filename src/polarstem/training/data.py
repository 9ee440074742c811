"""Training data: simulated labeled folders (:class:`SimSet`), the raw inputs of each mode (single
patterns, or cell means as a scan's window makes them), and the preprocessed, cached arrays the
networks train on (:func:`build_arrays`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PolarstemError
from ..fileio import atomic_path
from ..io import Calibration, electron_wavelength_angstrom, load
from ..preprocess import CANONICAL_CONVERGENCE_MRAD, CANONICAL_ENERGY_KEV, InputGrid
from ..simulate.coherence import MIN_GRID
from ..simulate.config import probe_grid
from .augment import cell_augment, corrupt_and_preprocess, finite_source
from .cache import arrays_file, fingerprint, folder_stamp

#: Bumped when the way the arrays of a mode are made changes (a new cache key).
ARRAYS_VERSION = {"pattern": "v3", "cell": "v5"}


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
        k = float(self.manifest["calibration"]["inv_angstrom_per_px"])
        e = self.energy[index]
        lam = electron_wavelength_angstrom(e)
        return k * lam * 1e3, e, self.convergence[index]


def load_simset(folder) -> SimSet:
    """A simulated labeled folder (``manifest.json``, data file, ``labels.npy``, per-pattern arrays)."""
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
    thick = _per_pattern(folder, ["thickness_nm.npy", "thickness.npy"])
    struct = _per_pattern(folder, ["structure.npy", "structure_id.npy"])
    thick = np.zeros(n) if thick is None else thick
    struct = np.arange(n) if struct is None else struct
    probe = None
    if (folder / "probe_frac.npy").exists():
        p = np.load(folder / "probe_frac.npy", allow_pickle=False)
        probe = p.reshape(-1, 2).astype(np.float32) if p.size == 2 * n else None
    cal = ds.calibration
    energy = _per_pattern(folder, ["energy_kev.npy"])
    convergence = _per_pattern(folder, ["convergence_mrad.npy"])
    reciprocal = "inv_angstrom_per_px" in (manifest.get("calibration") or {})
    if not cal.mrad_per_px and not (reciprocal and energy is not None and convergence is not None):
        raise PolarstemError(f"{folder}: the simulated data carry no mrad/px calibration")
    if not reciprocal:
        energy = convergence = None
    sim = SimSet(ds.data.reshape(n, ky, kx), labels, thick.astype(float), struct.astype(np.int64), cal, folder,
                 manifest, probe, energy, convergence)
    rows = _finished_rows(folder, manifest, sy)
    if rows is not None:  # a set still being simulated: train on the structures finished so far
        if not len(rows):
            raise PolarstemError(f"{folder}: the simulation has not finished any structure yet")
        sim = _keep_rows(sim, ds.data, rows)
    return sim


def _per_pattern(folder: Path, names: list[str]) -> np.ndarray | None:
    """The first of ``names`` present in ``folder``, flattened (one value per pattern)."""
    for n in names:
        p = folder / n
        if p.exists():
            return np.load(p, allow_pickle=False).reshape(-1)
    return None


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


def _keep_rows(sim: SimSet, data, rows: np.ndarray) -> SimSet:
    """``sim`` restricted to the scan ``rows`` of its (rows, cols, ky, kx) ``data``."""
    sx, ky, kx = data.shape[1:]
    keep = (rows[:, None] * sx + np.arange(sx)[None]).reshape(-1)
    take = lambda a: None if a is None else a[keep]  # noqa: E731
    return SimSet(data[rows].reshape(len(keep), ky, kx), sim.labels[keep], sim.thickness[keep], sim.structure[keep],
                  sim.calibration, sim.folder, sim.manifest, take(sim.probe), take(sim.energy), take(sim.convergence))


def probe_grid_side(sim: SimSet) -> int | None:
    """Side g of the regular g x g probe grid of every row of a simulated training set, else None."""
    try:
        n_pos = int(sim.manifest["shape"][1])
    except (KeyError, TypeError, ValueError):
        return None
    g = probe_grid(sim.manifest, n_pos)
    return g if g and len(sim) % n_pos == 0 else None


# --------------------------------------------------------------------------------------------------
# thickness bins and the validation split


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


def thickness_split(thickness: np.ndarray, val_every: int) -> np.ndarray:
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


def bin_centres(thickness: np.ndarray, idx: np.ndarray) -> list:
    """The thickness bins (nm, rounded) the inputs at ``idx`` fall in."""
    b, centres = thickness_bins(thickness)
    return [round(float(centres[i]), 1) for i in np.unique(b[idx])]


# --------------------------------------------------------------------------------------------------
# the preprocessed, cached training arrays


def build_arrays(sim: SimSet, mode: str, grid: InputGrid, copies: int, aug: dict, seed: int,
                 cell_subsets: bool = True, progress: bool = True, corrupted_only: bool = False) -> dict:
    """Preprocessed inputs for ``mode``: x (M, H, W) float16, y, thickness, group, copy index, informative,
    probe (M, 2) position in the cell (NaN when unknown or for cell means).

    Every block of raw inputs is written once per copy, block after block (copy 0 ideal, unless
    ``corrupted_only``). Cached in ``$POLARSTEM_CACHE/train/`` by a fingerprint of the data folder,
    mode, grid and augmentation.
    """
    aug_key = cell_augment(aug) if mode == "cell" else aug
    key = fingerprint(str(sim.folder.resolve()), folder_stamp(sim.folder), mode, grid.to_dict(), copies, aug_key,
                      seed, cell_subsets, corrupted_only, ARRAYS_VERSION[mode])
    cache = arrays_file(mode, key)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        if "probe" not in out:  # arrays cached before positions were kept: same order, rebuild them
            out["probe"] = _probe_in_array_order(sim, mode, copies, len(out["y"]))
        return out
    rng = np.random.default_rng(seed)
    if mode == "cell":
        aug = cell_augment(aug)
    out = _make_arrays(sim, mode, grid, copies, aug, rng, cell_subsets, progress, corrupted_only)
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **out)
    return out


def _make_arrays(sim: SimSet, mode: str, grid: InputGrid, copies: int, aug: dict, rng: np.random.Generator,
                 cell_subsets: bool, progress: bool, corrupted_only: bool) -> dict:
    """The arrays :func:`build_arrays` caches, made from the raw inputs with one random stream."""
    src_grid = source_grid(sim, mode, aug)
    # a finite source mixes the patterns of a probe-grid row: blocks then hold whole rows
    chunk = src_grid**2 * max(1, 512 // src_grid**2) if src_grid else 512
    parts = {k: [] for k in ("x", "y", "thickness", "group", "copy", "informative", "probe")}
    bar = progress_bar(len(sim) if mode == "pattern" else None, f"preprocess {mode}", progress)
    start = 0  # pattern mode yields the set in order
    for frames, y, t, g in raw_inputs(sim, mode, cell_subsets, rng, chunk=chunk):
        if mode == "pattern" and sim.probe is not None:
            probe = sim.probe[start:start + len(y)]
        else:
            probe = np.full((len(y), 2), np.nan, np.float32)
        mrad, energy, convergence = sim.acquisition(raw_index(sim, mode, start, y, g))
        start += len(y)
        for c in range(copies):
            ideal = c == 0 and not corrupted_only
            f = frames if (ideal or not src_grid) else finite_source(frames, src_grid, aug["source_sigma_a"], rng)
            x, ok = corrupt_and_preprocess(f, mrad, rng, aug, ideal, grid, group=512 if mode == "pattern" else 32,
                                           energy=energy, convergence=convergence)
            for k, v in (("x", x.astype(np.float16)), ("y", y), ("thickness", t), ("group", g),
                         ("copy", np.full(len(y), c)), ("informative", ok), ("probe", probe)):
                parts[k].append(v)
        bar.update(len(y))
    bar.close()
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["probe"] = out["probe"].astype(np.float32)
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


def concat_arrays(parts: list[dict]) -> dict:
    """Training arrays of several simulated folders as one (groups kept apart)."""
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    offsets = np.cumsum([0] + [int(p["group"].max()) + 1 for p in parts[:-1]])
    out["group"] = np.concatenate([p["group"] + o for p, o in zip(parts, offsets)])
    return out


def source_grid(sim: SimSet, mode: str, aug: dict) -> int:
    """Side g of the probe grid when the corrupted copies get a finite source (``augment:
    source_sigma_a: [low, high]`` in Å, pattern mode, a set with a regular grid of >= 6 x 6 probe
    positions per cell), else 0."""
    if mode != "pattern" or not aug.get("source_sigma_a"):
        return 0
    lo, hi = (float(v) for v in aug["source_sigma_a"])
    if not 0 <= lo <= hi:
        raise PolarstemError(f"augment: source_sigma_a must be [low, high] in Å with 0 <= low <= high, got {aug['source_sigma_a']}")
    g = probe_grid_side(sim)
    # a coarser grid (4 x 4: 1 A steps) samples the position dependence too coarsely for a source of
    # a few tenths of an angstrom: such a set keeps the point source
    return g if g is not None and g >= MIN_GRID else 0


def _probe_in_array_order(sim: SimSet, mode: str, copies: int, n: int, chunk: int = 512) -> np.ndarray:
    """Probe positions in the order :func:`build_arrays` writes pattern inputs (per chunk, every copy)."""
    if mode != "pattern" or sim.probe is None or n != copies * len(sim):
        return np.full((n, 2), np.nan, np.float32)
    parts = [np.tile(sim.probe[i:i + chunk], (copies, 1)) for i in range(0, len(sim), chunk)]
    return np.concatenate(parts).astype(np.float32)


def progress_bar(total, desc, enabled=True):
    """A tqdm bar (updated at most every 5 s) in patterns, or a silent one."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=5.0, unit="pat")


# --------------------------------------------------------------------------------------------------
# raw inputs: single patterns, or cell means


def raw_inputs(sim: SimSet, mode: str, cell_subsets: bool, rng, chunk: int = 512):
    """Yield (raw frames, labels, thickness, group) blocks: single patterns or per-group means."""
    if mode == "pattern":
        for i in range(0, len(sim), chunk):
            f = np.asarray(sim.frames[i:i + chunk].compute() if hasattr(sim.frames, "compute") else sim.frames[i:i + chunk])
            yield f, sim.labels[i:i + chunk], sim.thickness[i:i + chunk], sim.structure[i:i + chunk]
        return
    g = probe_grid_side(sim)
    if g:
        yield from _grid_window_inputs(sim, g, cell_subsets, rng)
        return
    yield from _fold_mean_inputs(sim, cell_subsets, rng)


def raw_index(sim: SimSet, mode: str, start: int, y: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Index of a raw pattern behind each input of a :func:`raw_inputs` block (for its acquisition):
    pattern mode yields the set in order; cell inputs of a probe-grid set are rows (``group``)."""
    if mode == "pattern":
        return np.arange(start, start + len(y))
    if sim.energy is None:
        return np.zeros(len(y), np.int64)  # one acquisition for the whole set
    g = probe_grid_side(sim)
    if not g:
        raise PolarstemError(f"{sim.folder}: cell inputs of a set across acquisitions need a probe grid")
    return np.asarray(group, np.int64) * g * g


def _fold_mean_inputs(sim: SimSet, cell_subsets: bool, rng):
    """Cell inputs of a set without a probe grid: the mean over the probe positions of each (structure,
    thickness), and with ``cell_subsets`` means of subsets of 4 random folds of them."""
    n = len(sim)
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
