"""Anomaly score: "this place is irregular", as opposed to "this pattern is hard".

Some probe positions inside the unit cell carry too little information, so a per-pattern classifier
is less confident there, and its mistakes repeat with the lattice (the reference study's periodic
misclassification). A defect breaks the lattice instead. The score therefore compares each position
with the *other positions at the same place in the unit cell* (its phase bin, from the lattice):

1. confidence deficit: how far the confidence falls below the median confidence of its phase bin,
   in units of that bin's robust spread (MAD);
2. embedding distance: how far the embedding lies from its class prototype, against the same
   statistic of the phase bin (weight 0.25: alone it separates defects less well);
3. pattern residual: how far the position's own pattern (its :func:`fingerprint`, the
   model input at 4x4-px blocks) lies from the median pattern of its (class, phase bin) group off
   the walls, against that group's own spread (weight ``FINGERPRINT_WEIGHT``); positions whose own
   pattern is not usable (zeroed input) neither get this term nor count in a group's reference. Thin-crystal O
   vacancies barely move the confidence but do move the pattern.

Each term is clipped at 0 (only "worse than usual" counts). Domain walls are not defects, but the
cell vote's windows there mix two domains, so terms 1 and 2 rise there too: positions within one
cell of the boundary between two domains (``walls.domains``: connected regions of one class of at
least two cells, here also healthy: median score at most ``WALL_DOMAIN_HEALTH``) count only what
exceeds the ``WALL_EXCESS_QUANTILE`` (0.9) quantile of terms 1-2 over all wall positions of the
scan: a clean wall's mixed windows spread its values, a defect on the wall (a non-polar block the
vote calls one of the two domains) stands above that spread. Term 3 is each position's own
pattern, which the vote does not mix, so wall positions keep it from ``WALL_PATTERN_MIN_DISTANCE`` px
off the other domain on: a defect on a wall is still seen, as it would not be if the wall were
discounted whole. A defect inside a domain shows as low confidence or an
unusual pattern there, or as small islands of other classes, which no large domain explains. Bands
along the scan edge thinner than half a cell keep their score only as far as it continues inward
(:func:`limit_edge_bands`). The sum is then smoothed over one unit cell, because a crystal defect
spans at least a cell. Without a lattice there is one bin.

Measured (resnet, edge-preserving cell vote, defect ROC AUC on the sample / validation scans A / B):
confidence + embedding terms 0.80 / 0.83 / 0.97; with the wall discount 0.92 / 0.91 / 0.96. A
class-disagreement term is not used: it lights up every domain wall (0.70 -> 0.67, 0.81 -> 0.79,
0.97 -> 0.95 with it). docs/classify.md has the figures of every term on every validation scan.
"""

from __future__ import annotations

import numpy as np

from .lattice import Lattice
from .walls import domains

#: Weight of the embedding-distance term against the confidence deficit.
EMBEDDING_WEIGHT = 0.25
#: Within one cell of a wall between two domains, terms 1-2 count only above this quantile of their
#: values over all wall positions of the scan (set on validation scans F, G, H). A clean wall's mixed
#: windows raise them; a defect on the wall rises further.
WALL_EXCESS_QUANTILE = 0.9
#: A domain must also look healthy: the median of its positions' score at most this (robust z units).
WALL_DOMAIN_HEALTH = 1.0
#: Cap the score of thin bands along the scan edge by the score further in (:func:`limit_edge_bands`).
EDGE_BANDS = True
#: Weight of the fingerprint residual (:func:`fingerprint`): how far a position's own pattern lies from
#: the median pattern of its (class, phase bin) group off the walls, in robust z units of that part.
#: 0.5 was chosen on validation scans A-F and checked on G and H (docs/classify.md).
FINGERPRINT_WEIGHT = 0.5
#: The fingerprint is the model input averaged over FINGERPRINT_BIN x FINGERPRINT_BIN pixel blocks.
FINGERPRINT_BIN = 4
#: Wall positions at least this far (scan px) from the other domain keep their pattern term: the
#: probe's own pattern there is its cell's, only the vote's window mixes the two domains.
WALL_PATTERN_MIN_DISTANCE = 2


def limit_edge_bands(score: np.ndarray, valid: np.ndarray, period: tuple[float, float]) -> np.ndarray:
    """At each scan edge, the outermost band thinner than half a cell keeps its score only as far as
    the anomaly continues inward: each band position is capped by the largest score of the next
    cell's worth of positions inward along its column (row).

    A crystal defect spans at least a cell, so one that reaches the scan edge continues inward. A band
    that lights up alone is a cut: a sliver of a domain beyond a wall that hugs the edge (the model
    sees both sides and reports neither with confidence), which the class map cannot resolve and which
    is not a defect.
    """
    out = np.array(score, dtype=np.float64, copy=True)
    for axis, p in ((0, float(period[0])), (1, float(period[1]))):
        k, w = int(np.ceil(p / 2.0)) - 1, int(round(p))
        n = out.shape[axis]
        if k < 1 or n < 2 * (k + w):
            continue
        for band, inner in ((slice(0, k), slice(k, k + w)), (slice(n - k, n), slice(n - k - w, n - k))):
            idx = (band, slice(None)) if axis == 0 else (slice(None), band)
            jdx = (inner, slice(None)) if axis == 0 else (slice(None), inner)
            cap = np.max(np.where(valid[jdx], score[jdx], 0.0), axis=axis, keepdims=True)
            out[idx] = np.minimum(out[idx], cap)
    return out


def domain_walls(classes: np.ndarray, valid: np.ndarray, window: tuple[int, int],
                 score: np.ndarray | None = None) -> np.ndarray:
    """Positions of a domain that lie within one cell of a domain of another class.

    A domain is what :func:`polarstem.walls.domains` finds (a 4-connected region of one class of at
    least two cells) and, given the per-position ``score``, whose median score is at most
    ``WALL_DOMAIN_HEALTH``. The
    islands a defect leaves in the class map are smaller, and a large misclassified region around a
    defect is not healthy, so neither makes walls (without the health rule, a model that
    misclassified the domain around scan B's O-vacancy block lost its AUC there: 0.96 -> 0.78).
    """
    return _walls_of(domains(classes, valid, window, score, WALL_DOMAIN_HEALTH), classes, window)


def _walls_of(big: np.ndarray, classes: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Positions of the domains ``big`` within one ``window`` of a domain of another class."""
    from scipy import ndimage

    reach = np.ones((2 * int(window[0]) + 1, 2 * int(window[1]) + 1), bool)
    wall = np.zeros(classes.shape, bool)
    for k in np.unique(classes[big]):
        wall |= ndimage.binary_dilation(big & (classes == k), structure=reach) & (classes != k)
    return wall & big


def fingerprint(x: np.ndarray) -> np.ndarray:
    """(N, F) float16 coarse copy of preprocessed patterns (N, H, W): ``FINGERPRINT_BIN``-px block
    means, F = (H // FINGERPRINT_BIN) * (W // FINGERPRINT_BIN) (144 for 48 px). Small enough to keep
    for every scan position (0.3 kB each), and it keeps what a thin crystal's O vacancies change: in
    validation scan C the oracle per-position ROC AUC of its residual is 0.71 against 0.73 for the
    full pattern."""
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or not len(x):
        return np.zeros((len(x), 0), np.float16)
    b = FINGERPRINT_BIN
    h, w = x.shape[1] // b * b, x.shape[2] // b * b
    out = x[:, :h, :w].reshape(len(x), h // b, b, w // b, b).mean((2, 4))
    return out.reshape(len(x), -1).astype(np.float16)


def _residual_z(f: np.ndarray, group: np.ndarray, ref: np.ndarray, valid: np.ndarray,
                min_size: int) -> np.ndarray:
    """Distance of each position's fingerprint to the median fingerprint of the ``ref`` positions of
    its group, as robust z against the ``ref`` positions' own distances; 0 where the group's ``ref``
    has fewer than ``min_size`` positions. Clipped at 0.

    A group's spread is floored at a quarter of the median spread of all groups (as :func:`_robust_z`
    does) and at 1 % of the patterns' typical distance to the scan's median pattern: in a noise-free
    simulation with one phonon configuration the clean positions of a group can be identical, and a
    spread of 0 made any other position's z astronomical (the bundled sample scan: 1e10 at one
    position, which the cell smoothing spread over a cell)."""
    z = np.zeros(group.shape)
    ok = valid & (group >= 0) & np.isfinite(f).all(axis=-1)
    stats = []
    for g in np.unique(group[ok]):
        sel = ok & (group == g)
        r_sel = sel & ref
        if r_sel.sum() < min_size:
            continue
        med = np.median(f[r_sel], axis=0)
        dist = np.linalg.norm(f[sel] - med, axis=-1)
        d_ref = np.linalg.norm(f[r_sel] - med, axis=-1)
        m = np.median(d_ref)
        stats.append((sel, dist, m, 1.4826 * np.median(np.abs(d_ref - m))))
    if not stats:
        return z
    typical = float(np.median([s[3] for s in stats]))
    fv = f[ok]  # for a scan whose groups are all noise-free
    spread = float(np.median(np.linalg.norm(fv - np.median(fv, axis=0), axis=-1)))
    scale_floor = max(0.25 * typical, 0.01 * spread, 1e-6)
    for sel, dist, m, mad in stats:
        z[sel] = (dist - m) / max(mad, scale_floor)
    return np.clip(z, 0, None)


def wall_distance(classes: np.ndarray, valid: np.ndarray, window: tuple[int, int],
                  score: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(wall mask as :func:`domain_walls`, distance in scan px of each position to the nearest
    position of another domain; inf where there is none)."""
    from scipy import ndimage

    big = domains(classes, valid, window, score, WALL_DOMAIN_HEALTH)  # once, for both
    wall = _walls_of(big, classes, window)
    dist = np.full(classes.shape, np.inf)
    if not wall.any():
        return wall, dist
    for k in np.unique(classes[big]):
        d = ndimage.distance_transform_edt(~(big & (classes == k)))
        dist = np.where(classes != k, np.minimum(dist, d), dist)
    return wall, dist


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


def score_anomaly(result, lattice: Lattice | None = None) -> np.ndarray:
    """Anomaly map (float32, NaN where not classified) for a :class:`~polarstem.classify.ClassificationResult`."""
    from scipy import ndimage

    lattice = lattice or result.lattice
    shape = result.classes.shape
    valid = result.done & (result.classes >= 0)
    bins = lattice.phase_bins(shape) if lattice is not None else np.zeros(shape, int)
    window = lattice.window if lattice is not None else (3, 3)
    window = (max(3, window[0]), max(3, window[1]))

    score = np.clip(-_robust_z(result.confidence.astype(np.float64), bins, valid, 0.02), 0, None)
    if np.isfinite(result.embedding_distance[valid]).any():
        dist = np.clip(_robust_z(result.embedding_distance.astype(np.float64), bins, valid, 1e-3), 0, None)
        score = score + EMBEDDING_WEIGHT * np.nan_to_num(dist)
    score = np.where(valid, np.nan_to_num(score), 0.0)
    wall, dist = wall_distance(result.classes, valid, window, score)
    fp = getattr(result, "fingerprint", None)
    pattern = np.zeros(shape)
    if FINGERPRINT_WEIGHT > 0 and fp is not None and fp.shape[:2] == shape and fp.shape[-1] > 0:
        group = result.classes.astype(np.int64) * 64 + bins
        # only positions with a usable pattern of their own (preprocessing zeroes the input of an unusable
        # one, so its fingerprint is all zeros; in cell mode ``result.usable`` is the window's): a group of
        # zeros as reference made the one usable member of its group an outlier
        own = valid & (np.abs(fp).reshape(*shape, -1).max(axis=-1) > 0)
        pattern = FINGERPRINT_WEIGHT * _residual_z(fp.astype(np.float32), group, ~wall & own, own, 5)
    # walls: the vote's mixed windows raise terms 1 and 2 there (only the excess over the walls' own
    # spread counts), not the position's own pattern
    wall_excess = np.zeros(shape)
    if (wall & valid).any():
        wall_excess = np.clip(score - np.quantile(score[wall & valid], WALL_EXCESS_QUANTILE), 0, None)
    wall_score = wall_excess + np.where(dist >= WALL_PATTERN_MIN_DISTANCE, pattern, 0.0)
    score = np.where(wall, wall_score, score + pattern)
    if EDGE_BANDS and lattice is not None and lattice.resolved:
        score = np.where(valid, limit_edge_bands(score, valid, lattice.period), 0.0)
    # smooth over one unit cell, normalising by the valid fraction so ROI edges are not penalised
    num = ndimage.uniform_filter(score, size=window, mode="nearest")
    den = ndimage.uniform_filter(valid.astype(np.float64), size=window, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = num / den
    return np.where(valid, smooth, np.nan).astype(np.float32)
