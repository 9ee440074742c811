"""Anomaly score: "this place is irregular", as opposed to "this pattern is hard".

Some probe positions inside the unit cell carry too little information, so a per-pattern classifier
is less confident there, and its mistakes repeat with the lattice (the reference study's periodic
misclassification). A defect breaks the lattice instead. The score therefore compares each position
with the *other positions at the same place in the unit cell* (its phase bin, from the lattice):

1. confidence deficit: how far the confidence falls below the median confidence of its phase bin,
   in units of that bin's robust spread (MAD);
2. embedding distance: how far the embedding lies from its class prototype, against the same
   statistic of the phase bin;
3. class irregularity: the fraction of a cell-sized neighbourhood disagreeing with the position's
   class, against its phase bin (domain walls are straight and thin; a defect is a blob).

Each term is clipped at 0 (only "worse than usual" counts), the three are averaged and smoothed over
one unit cell, because a crystal defect spans at least a cell. Without a lattice there is one bin.
See docs/anomaly.md.
"""

from __future__ import annotations

import numpy as np

from .lattice import Lattice


def _robust_z(values: np.ndarray, bins: np.ndarray, valid: np.ndarray, floor: float) -> np.ndarray:
    """(value - median of its bin) / (1.4826 MAD of its bin), NaN outside ``valid``."""
    z = np.full(values.shape, np.nan, dtype=np.float64)
    ok = valid & np.isfinite(values)
    if not ok.any():
        return z
    all_vals = values[ok]
    g_med = np.median(all_vals)
    g_mad = 1.4826 * np.median(np.abs(all_vals - g_med))
    for b in np.unique(bins[ok]):
        sel = ok & (bins == b)
        v = values[sel]
        if v.size >= 5:
            med = np.median(v)
            mad = 1.4826 * np.median(np.abs(v - med))
        else:  # too few positions in this bin: global statistics
            med, mad = g_med, g_mad
        z[sel] = (v - med) / max(mad, g_mad * 0.25, floor)
    return z


def class_disagreement(classes: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Fraction of positions in a ``window`` neighbourhood whose class differs from the centre's."""
    from scipy import ndimage

    out = np.zeros(classes.shape, dtype=np.float64)
    valid = classes >= 0
    n_valid = ndimage.uniform_filter(valid.astype(np.float64), size=window, mode="nearest")
    for k in np.unique(classes[valid]):
        same = ndimage.uniform_filter((classes == k).astype(np.float64), size=window, mode="nearest")
        here = classes == k
        with np.errstate(invalid="ignore", divide="ignore"):
            out[here] = 1.0 - same[here] / np.maximum(n_valid[here], 1e-9)
    out[~valid] = np.nan
    return out


def score_anomaly(result, lattice: Lattice | None = None) -> np.ndarray:
    """Anomaly map (float32, NaN where not classified) for a :class:`~polarstem.infer.ClassificationResult`."""
    from scipy import ndimage

    lattice = lattice or result.lattice
    shape = result.classes.shape
    valid = result.done & (result.classes >= 0)
    bins = lattice.phase_bins(shape) if lattice is not None else np.zeros(shape, int)
    window = lattice.window if lattice is not None else (3, 3)
    window = (max(3, window[0]), max(3, window[1]))

    terms = [np.clip(-_robust_z(result.confidence.astype(np.float64), bins, valid, 0.02), 0, None)]
    if np.isfinite(result.embedding_distance[valid]).any():
        terms.append(np.clip(_robust_z(result.embedding_distance.astype(np.float64), bins, valid, 1e-3), 0, None))
    terms.append(np.clip(_robust_z(class_disagreement(result.classes, window), bins, valid, 0.05), 0, None))
    stacked = np.stack(terms)
    n = np.isfinite(stacked).sum(axis=0)
    score = np.where(n > 0, np.nansum(stacked, axis=0) / np.maximum(n, 1), 0.0)
    score = np.where(valid, score, 0.0)
    # smooth over one unit cell, normalising by the valid fraction so ROI edges are not penalised
    num = ndimage.uniform_filter(score, size=window, mode="nearest")
    den = ndimage.uniform_filter(valid.astype(np.float64), size=window, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = num / den
    return np.where(valid, smooth, np.nan).astype(np.float32)
