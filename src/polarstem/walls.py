"""Domain walls in a cell-mode class map: thin bands of the in-between direction.

A probe on a wall between two domains sees both: its pattern, and every cell window that holds it,
looks like the *sum* of the two projected polarizations. At the wall between a [110] (class 1) and a
[-110] (class 3) domain the model therefore reports [010] (class 2), the bisecting direction, in a
band one to three scan positions (up to a cell) thick (measured on validation scan B: whole wall
rows came out as class 2; docs/classify.md). Such a band is the wall, not a domain:
:func:`assign_wall_bands` gives each of its positions to the adjacent domain the position's own
vote favours.

A band qualifies only when all of this holds: it is at most one unit cell thick (an opening with a
square one position larger than the cell removes it), it is not the thin edge of a domain of its
own class (a thin part touching the thick body of a domain of the same class is that domain), the
two domains within one cell of it are real domains (connected regions of at least two cells that
are not thin themselves), and the band's direction lies within 30° of the sum of the two domains'
directions. A thin region that is not between two such domains (a defect, a band of an unrelated
direction, a 180° wall) is left alone.

The own-class rule comes from validation scan Q: a non-polar block that the vote calls [100] covers
more than two cells, so it counts as a domain; without the rule the one-cell strip of the clean [110]
domain between it and a [-110] domain is taken for the wall band between [-110] and [100] (whose sum
lies 22.5° from [110]) and given to the block's class: 30 positions wrong (0.945 away from the
defects without the rule, 0.987 with it). The rule holds for bands between two domains only; an edge band (below)
may still be a domain's thin edge (a protrusion across a wall at the scan border, which it cleans
up on scan M). Its price: a bisecting band that touches a real domain of its own class (a triple
junction with that domain) is kept.

At the scan edge the far domain of a wall may lie outside the scan (a wall along the border, as the
periodic supercell of a simulation puts there, or a scan that stops at a wall). An *edge band* (a
thin region lying wholly within one cell of the border, with one real domain beside it and no
other) goes to that domain when its direction is within 90° of the band's: the band's direction is
then the sum of that domain's and an unseen one's. Bands more than 90° from every domain beside
them stay. A real domain at most one cell thick is at the limit of what cell windows resolve anyway.
"""

from __future__ import annotations

import numpy as np

from .classes import CLASS_DIRECTIONS

#: How far (degrees) a band's direction may lie from the sum of its two domains' directions.
BISECTOR_TOLERANCE_DEG = 30.0
#: An edge band's direction may lie at most this far (degrees) from the domain it is given to.
EDGE_TOLERANCE_DEG = 90.0
#: A domain covers at least this many unit cells.
DOMAIN_CELLS = 2
#: A band is thin when an opening with a square of (cell + THICK_EXTRA) px removes it: at most one
#: cell thick (a wall's mixed zone spans the windows that straddle it, up to a cell; measured: the
#: bisecting band at scan B's 1|3 wall came out three positions, one cell, thick for one network).
THICK_EXTRA = 1


def domains(classes: np.ndarray, valid: np.ndarray, window: tuple[int, int], score: np.ndarray | None = None,
            max_median_score: float | None = None) -> np.ndarray:
    """Positions in a domain: a 4-connected region of one class covering at least ``DOMAIN_CELLS``
    cells of ``window`` (px), and, given a per-position ``score``, whose median score is at most
    ``max_median_score`` (the region looks regular itself)."""
    from scipy import ndimage

    cell = int(window[0]) * int(window[1])
    big = np.zeros(classes.shape, bool)
    for k in np.unique(classes[valid]):
        lab, n = ndimage.label((classes == k) & valid)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        ok = sizes >= DOMAIN_CELLS * cell
        if score is not None:
            ok &= np.asarray(ndimage.median(score, lab, index=np.arange(n + 1)), float) <= max_median_score
        ok[0] = False
        big |= ok[lab]
    return big


def _thin_regions(classes: np.ndarray, valid: np.ndarray, big: np.ndarray,
                  cell: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(thin, own_edge): positions of any class at most one cell thick, and those of them that are
    the thin edge of a domain of their own class (touching its thick body), which the two-domain
    rule must not take for a wall band (validation scan Q, module docstring)."""
    from scipy import ndimage

    wy, wx = cell
    square = np.ones((wy + THICK_EXTRA, wx + THICK_EXTRA), bool)
    thin = np.zeros(classes.shape, bool)
    own_edge = np.zeros(classes.shape, bool)
    eight = np.ones((3, 3), bool)
    for k in np.unique(classes[valid]):
        m = (classes == k) & valid
        t = m & ~ndimage.binary_opening(m, structure=square)
        thin |= t
        if t.any():
            lab, _ = ndimage.label(t, structure=eight)
            body = ndimage.binary_dilation(big & m & ~t, structure=eight)
            own_edge |= t & np.isin(lab, np.unique(lab[body & t]))
    return thin, own_edge


def _edge_bands(classes: np.ndarray, thin: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    """Thin regions lying wholly within one cell of the border: the walls whose far domain may lie
    outside the scan."""
    from scipy import ndimage

    wy, wx = cell
    edge_zone = np.ones(classes.shape, bool)
    edge_zone[wy:-wy, wx:-wx] = False
    edge_band = np.zeros(classes.shape, bool)
    eight = np.ones((3, 3), bool)
    for k in np.unique(classes[thin]):
        lab, n = ndimage.label(thin & (classes == k), structure=eight)
        inside = np.bincount(lab[~edge_zone], minlength=n + 1)
        whole = inside == 0
        whole[0] = False
        edge_band |= whole[lab]
    return edge_band


def _bisected_class(own: int, near: list[int], p: np.ndarray, cos_tol: float) -> int | None:
    """The class, among every pair of ``near`` domains whose direction sum lies within the
    tolerance of ``own``, that the position's probabilities ``p`` favour most; None without such
    a pair."""
    best, best_p = None, -1.0
    for i, a in enumerate(near):
        for b in near[i + 1:]:
            s = CLASS_DIRECTIONS[a] + CLASS_DIRECTIONS[b]
            norm = float(np.linalg.norm(s))
            if norm < 1e-6 or float(s @ CLASS_DIRECTIONS[own]) / norm < cos_tol:
                continue  # opposite domains (no bisector) or a band that is not between them
            for k in (a, b):
                if p[k] > best_p:
                    best, best_p = k, float(p[k])
    return best


def assign_wall_bands(classes: np.ndarray, proba: np.ndarray, valid: np.ndarray,
                      window: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(new class map, mask of the reassigned positions) for a cell-mode ``classes`` map.

    ``proba`` (H, W, 8) are the positions' pooled probabilities: a band position goes to whichever of
    its two domains' classes it gives the higher probability (an edge band: of the domains beside it
    within 90°). ``window`` is the cell window (px).
    """
    classes = np.asarray(classes)
    valid = np.asarray(valid, bool) & (classes >= 0)
    wy, wx = max(2, int(window[0])), max(2, int(window[1]))
    big = domains(classes, valid, (wy, wx))
    thin, own_edge = _thin_regions(classes, valid, big, (wy, wx))
    domain = big & ~thin
    edge_band = _edge_bands(classes, thin, (wy, wx))
    out = classes.copy()
    changed = np.zeros(classes.shape, bool)
    cos_tol = np.cos(np.deg2rad(BISECTOR_TOLERANCE_DEG))
    cos_edge = np.cos(np.deg2rad(EDGE_TOLERANCE_DEG)) - 1e-9
    h, w = classes.shape
    for y, x in zip(*np.nonzero(thin)):
        ys, xs = slice(max(0, y - wy), min(h, y + wy + 1)), slice(max(0, x - wx), min(w, x + wx + 1))
        near = np.unique(classes[ys, xs][domain[ys, xs]])
        own = int(classes[y, x])
        near = [int(k) for k in near if k != own]
        pairs_of = [] if own_edge[y, x] else near  # a domain's own thin edge is no band between two others
        best = _bisected_class(own, pairs_of, proba[y, x], cos_tol)
        if best is None and edge_band[y, x] and len(near) == 1:  # the wall's other domain is outside the scan
            if float(CLASS_DIRECTIONS[near[0]] @ CLASS_DIRECTIONS[own]) >= cos_edge:
                best = near[0]
        if best is not None:
            out[y, x] = best
            changed[y, x] = True
    return out, changed
