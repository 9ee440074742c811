"""Fitting a model's abstention (:mod:`polarstem.abstain`): the class-conditional Gaussians of its
embedding and the conformal thresholds, on a probe-grid set with the training corruptions."""

from __future__ import annotations

import numpy as np

from ..abstain import MIN_CELL_ROWS, THRESHOLD_KEYS, WINDOW_SIZES, Abstention, cell_of, cell_ranges
from ..acquisition import disk_overlap
from ..errors import PolarstemError
from ..preprocess import InputGrid
from .augment import DEFAULT_AUGMENT, corrupt_and_preprocess
from .data import SimSet, probe_grid_side, thickness_split


def fit_abstention(model, sim: SimSet, grid: InputGrid, aug: dict | None = None, seed: int = 0, fit_rows: int = 600,
                   calibration_rows: int = 600, tta: int = 8, ranges: dict | None = None, by_cell: bool = False,
                   calibration: SimSet | None = None, log=print) -> Abstention:
    """Fit the class-conditional Gaussians of ``model``'s embedding on training-split rows of a probe-grid
    set and calibrate the thresholds on rows it never trained on, both with experiment-like corruptions,
    as a scan's cell windows pool them (``abstain.WINDOW_SIZES``): the rows of a separate ``calibration``
    set (other structures: what split conformal asks for), else ``sim``'s validation thicknesses.
    ``ranges`` ({"beam_energy_kev": [lo, hi], "convergence_mrad": [lo, hi]}, a card's): only rows of a set
    simulated across acquisitions that lie inside them count as in scope. ``by_cell``: calibrate each
    acquisition cell (``abstain.CELLS``) on its own rows too, and measure its cell-vote accuracy
    (:func:`calibrate_cells`; every calibration row in range is then used, not ``calibration_rows``).

    Returns the :class:`polarstem.abstain.Abstention` (also set on ``model``)."""
    cal_sim = sim if calibration is None else calibration
    g = probe_grid_side(sim)
    for s_ in (sim, cal_sim):
        if not g or g % 6 or probe_grid_side(s_) != g:
            raise PolarstemError(f"{s_.folder}: calibrating the abstention needs sets with a 6 x 6 probe grid per cell")
    if by_cell and (cal_sim.energy is None or cal_sim.convergence is None):
        raise PolarstemError(f"{cal_sim.folder}: calibrating per acquisition cell needs a set simulated across "
                             "acquisitions")
    aug = dict(DEFAULT_AUGMENT, **(aug or {}))
    n_pos = g * g
    rng = np.random.default_rng(seed)
    n_cal = len(cal_sim) if by_cell else calibration_rows
    fit_pick, cal_pick = _fit_and_calibration_rows(sim, n_pos, fit_rows, n_cal, rng, _rows_in_range(sim, n_pos, ranges))
    if calibration is not None:
        cal_pick = _pick(rng, np.nonzero((calibration.labels[::n_pos] >= 0)
                                         & _rows_in_range(calibration, n_pos, ranges))[0], n_cal)
    _, emb_fit, y_fit = _row_outputs(model, sim, fit_pick, n_pos, grid, aug, rng, tta=False)
    abst = Abstention.fit(emb_fit.reshape(-1, emb_fit.shape[-1]), np.repeat(y_fit, n_pos))
    proba, emb, y_cal = _row_outputs(model, cal_sim, cal_pick, n_pos, grid, aug, rng, tta=tta)
    dist = abst.distance(emb.reshape(-1, emb.shape[-1])).reshape(len(cal_pick), g, g)
    logp = np.log(np.clip(proba, 1e-6, 1.0)).reshape(len(cal_pick), g, g, -1)
    _calibrate_windows(abst, dist, logp, log)
    if by_cell:
        calibrate_cells(abst, cal_sim.energy[cal_pick * n_pos], cal_sim.convergence[cal_pick * n_pos], dist, logp,
                        y_cal, log)
    model.abstention = abst
    return abst


def write_into_card(card: dict, abst: Abstention, **provenance) -> None:
    """The abstention into a model card, and the cells it was calibrated in into the card's acquisition
    (which decides where the model is trusted: cells of an earlier calibration are dropped)."""
    card["abstention"] = abst.to_dict() | provenance
    card.setdefault("acquisition", {}).pop("cells", None)
    if abst.cells:
        card["acquisition"]["cells"] = abst.coverage()


def calibrate_cells(abst: Abstention, energy: np.ndarray, convergence: np.ndarray, dist: np.ndarray,
                    logp: np.ndarray, labels: np.ndarray, log=print) -> None:
    """Mondrian split conformal: the thresholds of every acquisition cell with at least ``MIN_CELL_ROWS``
    calibration rows, from its rows alone, and the share of its rows the cell vote (all 36 patterns)
    reads correctly and does not withhold. Per row: ``energy`` (keV), ``convergence`` (mrad), ``labels``,
    the (g, g) distances ``dist`` and (g, g, 8) log-probabilities ``logp`` of its probe grid."""
    g = dist.shape[1]
    cells = cell_of(energy, disk_overlap(energy, convergence))
    abst.cells = []
    for index in np.unique(cells[cells >= 0]):
        mine = cells == index
        if mine.sum() < MIN_CELL_ROWS:
            continue
        part = Abstention(abst.means, abst.cholesky)
        _calibrate_windows(part, dist[mine], logp[mine])
        cell = dict(cell_ranges(index), rows=int(mine.sum()), **{k: getattr(part, k) for k in THRESHOLD_KEYS})
        d36, p36 = _grid_windows(dist[mine], logp[mine], g, g * g)
        vote = logp[mine].reshape(int(mine.sum()), -1, logp.shape[-1]).mean(axis=1).argmax(axis=1)
        kept = (d36 <= cell["max_distance"][g * g]) & (p36 >= cell["min_confidence"][g * g])
        cell["accuracy"] = round(float(((vote == labels[mine]) & kept).mean()), 4)
        abst.cells.append(cell)
        log(f"abstention cell {cell['beam_energy_kev']} keV x overlap {cell['disk_overlap']}: {cell['rows']} rows, "
            f"cell vote {cell['accuracy']:.3f}; at {g * g} patterns top probability >= {cell['min_confidence'][g * g]:.3f}")


def _calibrate_windows(abst: Abstention, dist: np.ndarray, logp: np.ndarray, log=None) -> None:
    """The thresholds at every window size (``abstain.WINDOW_SIZES``) from the rows' (g, g) distances and
    (g, g, 8) log-probabilities: per window, and on each row's median (the scan-level test)."""
    g, rows = dist.shape[1], len(dist)
    for n in WINDOW_SIZES:
        d_w, p_w = _grid_windows(dist, logp, g, n)
        abst.calibrate(d_w, p_w, n)  # _grid_windows stacks the rows' windows offset by offset
        abst.calibrate_scan(np.median(d_w.reshape(-1, rows), axis=0), np.median(p_w.reshape(-1, rows), axis=0), n)
        if log is not None:
            log(f"abstention at {n} patterns: distance <= {abst.max_distance[n]:.3f}, "
                f"top probability >= {abst.min_confidence[n]:.3f} ({len(d_w)} windows); scan medians: distance <= "
                f"{abst.scan_max_distance[n]:.3f}, top probability >= {abst.scan_min_confidence[n]:.3f} ({rows} rows)")


def _rows_in_range(sim: SimSet, n_pos: int, ranges: dict | None) -> np.ndarray:
    """Rows whose beam energy and convergence lie inside ``ranges`` (all rows without ranges or per-row values)."""
    keep = np.ones(len(sim) // n_pos, bool)
    for key, values in (("beam_energy_kev", sim.energy), ("convergence_mrad", sim.convergence)):
        if ranges and key in ranges and values is not None:
            lo, hi = ranges[key]
            keep &= (values[::n_pos] >= lo) & (values[::n_pos] <= hi)
    if not keep.any():
        raise PolarstemError(f"{sim.folder}: no rows inside the acquisition ranges {ranges}")
    return keep


def _fit_and_calibration_rows(sim: SimSet, n_pos: int, fit_rows: int, calibration_rows: int,
                              rng: np.random.Generator, in_range: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (structure x thickness) to fit on, from the training thicknesses, and rows to calibrate on,
    from the validation ones (with too few thicknesses: a seventh of the structures held out)."""
    val = thickness_split(sim.thickness[::n_pos], 4)
    if not val.any():  # too few thicknesses: hold out a seventh of the structures instead
        structures = sim.structure[::n_pos]
        held = rng.choice(np.unique(structures), max(1, len(np.unique(structures)) // 7), replace=False)
        val = np.isin(structures, held)
    labeled = (sim.labels[::n_pos] >= 0) & in_range
    val_rows, tr_rows = np.nonzero(val & labeled)[0], np.nonzero(~val & labeled)[0]
    return _pick(rng, tr_rows, fit_rows), _pick(rng, val_rows, calibration_rows)


def _pick(rng: np.random.Generator, rows: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``rows``, drawn without replacement, in order."""
    return np.sort(rng.choice(rows, min(n, len(rows)), replace=False))


def _row_outputs(model, sim: SimSet, rows: np.ndarray, n_pos: int, grid: InputGrid, aug: dict,
                 rng: np.random.Generator, tta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(proba (rows, n_pos, 8), embeddings (rows, n_pos, D), labels (rows,)) of corrupted patterns, 16 rows at a time."""
    probs, embs, ys = [], [], []
    for i in range(0, len(rows), 16):
        r = rows[i:i + 16]
        index = (r[:, None] * n_pos + np.arange(n_pos)[None]).reshape(-1)
        frames = np.asarray(sim.frames[index])
        mrad, energy, conv = sim.acquisition(index)
        x, _ = corrupt_and_preprocess(frames, mrad, rng, aug, False, grid, group=n_pos, energy=energy,
                                      convergence=conv)
        out = model.predict(x, tta=tta)
        probs.append(out["proba"].reshape(len(r), n_pos, -1))
        embs.append(out["embedding"].reshape(len(r), n_pos, -1))
        ys.append(sim.labels[r * n_pos])
    return np.concatenate(probs), np.concatenate(embs), np.concatenate(ys)


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
