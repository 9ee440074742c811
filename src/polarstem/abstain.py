"""When the model abstains: an honest "uncertain" (-2) instead of a direction it cannot know.

Two questions decide it, each with a threshold set by split-conformal calibration on held-out
simulated KNN (experiment-like corruptions, the acquisitions the model covers), so that a known
small fraction of in-scope positions abstains and everything less typical than that does:

1. Is the data like what the model was trained on? The Mahalanobis distance of the model's
   embedding to the nearest class-conditional Gaussian of the training embeddings (class means,
   one shared covariance: Lee et al., NeurIPS 2018), averaged over the patterns that vote for a
   position (its cell window). Noise, other crystals, other zone axes and defocused probes land far
   from every class.
2. Does one direction clearly win? The pooled probability of the leading class. A non-polar crystal
   seen down a 4-fold axis gives patterns that no direction explains better than its symmetric
   partners, so the vote spreads over them.

A window of n patterns averages n scores, so its spread shrinks with n: the thresholds are
calibrated per window size (1, 4, 9 and 36 patterns: one pattern, and the regular 2 x 2, 3 x 3
and 6 x 6 samplings of a cell) and interpolated in log n.

3. Does the scan as a whole look like KNN? A single KNN pattern can be as unsure as a pattern of
   another crystal (some probe positions carry little information), so the per-position thresholds
   must let such patterns through. A whole scan of them cannot: the median of a scan's window
   scores is compared with the medians of in-scope scans (each calibration row, one structure at one
   thickness seen on a 6 x 6 probe grid per cell, stands for one), again split-conformal. A scan whose
   median confidence lies below, or median distance above, what 99 % of in-scope rows reach is out of
   scope: every position abstains (Si down [001] at 200 kV: median top probability 0.26 against
   0.73 for KNN in pattern mode). The median is taken as the rows' is, over every window with a
   usable pattern, including those the per-position thresholds already withhold: a median of the
   survivors alone would sit above the calibrated one exactly on the scans it should catch.

A model trained across acquisitions reads some far better than others (at 80 kV and little disk
overlap it is unsure of KNN itself). Thresholds pooled over the whole range must then let the hardest
acquisition's patterns through, and a confident non-polar crystal at an easy one passes with them. So
such a model is calibrated one acquisition cell at a time (beam energy x disk overlap, ``CELLS``: a
Mondrian split-conformal calibration, Vovk et al. 2005): the file says its acquisition, and the
thresholds of its cell judge it (:meth:`Abstention.at`). Each cell also records how well the model
reads its held-out rows in the cell vote; :mod:`polarstem.acquisition` withholds a scan whose cell is
read below ``COVERED_ACCURACY``, as it withholds a scan outside a card's stated range.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

#: Window sizes (patterns) the thresholds are calibrated at: one pattern, 2x2, 3x3, 6x6.
WINDOW_SIZES = (1, 4, 9, 36)
#: Fraction of in-scope windows allowed past each threshold at calibration (two tests: <= 2 % together).
ALPHA = 0.01
#: The calibration curve kept in the card: thresholds at these fractions of in-scope windows abstaining.
CURVE_ALPHAS = (0.005, 0.01, 0.02, 0.05, 0.1)
#: A scan whose classified positions are mostly uncertain is not polar KNN at [001], as far as the model can tell.
SCAN_UNCERTAIN_FRACTION = 0.5
#: Acquisition cells of a calibration across acquisitions: beam energy (keV) x disk overlap alpha/(lambda/a)
#: (the two things that change the pattern in reciprocal-lattice units: dynamical contrast and geometry).
CELLS = {"beam_energy_kev": (78.0, 100.0, 160.0, 240.0, 306.0), "disk_overlap": (1.3, 2.0, 2.6, 3.3, 4.2, 6.5)}
#: A cell with fewer held-out calibration rows (structure x thickness) gets no thresholds of its own.
MIN_CELL_ROWS = 20


@dataclass
class Abstention:
    """Class-conditional Gaussians of the training embeddings and the calibrated thresholds."""

    means: np.ndarray  # (8, D)
    cholesky: np.ndarray  # (D, D) lower-triangular L with precision = L L^T
    max_distance: dict = field(default_factory=dict)  # window size -> threshold on the mean distance
    min_confidence: dict = field(default_factory=dict)  # window size -> threshold on the pooled top probability
    curve: dict = field(default_factory=dict)  # window size -> {alpha: (max distance, min confidence)}
    scan_max_distance: dict = field(default_factory=dict)  # window size -> threshold on a scan's median distance
    scan_min_confidence: dict = field(default_factory=dict)  # ... on a scan's median pooled top probability
    cells: list = field(default_factory=list)  # per acquisition cell: its ranges, rows, accuracy and thresholds

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray, shrinkage: float | None = None) -> "Abstention":
        """Class means and a shared, shrunk covariance (Ledoit-Wolf) of training embeddings."""
        from sklearn.covariance import LedoitWolf

        z = np.asarray(embeddings, np.float64)
        y = np.asarray(labels)
        classes = np.unique(y[y >= 0])
        means = np.stack([z[y == k].mean(0) for k in range(int(classes.max()) + 1)])
        centred = z[y >= 0] - means[y[y >= 0]]
        cov = LedoitWolf(assume_centered=True).fit(centred).covariance_ if shrinkage is None else \
            (1 - shrinkage) * np.cov(centred.T) + shrinkage * np.eye(z.shape[1]) * np.trace(np.cov(centred.T)) / z.shape[1]
        precision = np.linalg.inv(cov)
        chol = np.linalg.cholesky((precision + precision.T) / 2)
        return cls(means.astype(np.float32), chol.astype(np.float32))

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        """(N,) Mahalanobis distance to the nearest class mean, divided by sqrt(D): about 1 in scope."""
        z = np.asarray(embeddings, np.float32)
        proj = z @ self.cholesky  # (N, D); means projected likewise
        m = self.means @ self.cholesky
        d2 = ((proj[:, None, :] - m[None]) ** 2).sum(-1).min(axis=1)
        return np.sqrt(d2 / z.shape[1]).astype(np.float32)

    def calibrate(self, distance: np.ndarray, top_probability: np.ndarray, window: int, alpha: float = ALPHA) -> None:
        """Thresholds at ``window`` patterns from in-scope windows' pooled distance and top probability
        (split conformal: the (1 - alpha) quantile with the finite-sample correction)."""
        def at(a):
            return _conformal(distance, top_probability, a)

        self.max_distance[int(window)], self.min_confidence[int(window)] = at(alpha)
        self.curve[int(window)] = {a: at(a) for a in CURVE_ALPHAS}

    def calibrate_scan(self, row_distance: np.ndarray, row_confidence: np.ndarray, window: int,
                       alpha: float = ALPHA) -> None:
        """Scan-level thresholds at ``window`` patterns from in-scope rows' median window scores."""
        self.scan_max_distance[int(window)], self.scan_min_confidence[int(window)] = _conformal(
            row_distance, row_confidence, alpha)

    def scan_out_of_scope(self, distance: np.ndarray, confidence: np.ndarray, n_patterns: np.ndarray,
                          judged: np.ndarray) -> bool:
        """True when the median scores of the ``judged`` positions fall outside what in-scope scans reach."""
        if not self.scan_max_distance or not judged.any():
            return False
        n = float(np.median(np.broadcast_to(n_patterns, judged.shape)[judged]))
        max_d, min_c = _in_log_n(self.scan_max_distance, n), _in_log_n(self.scan_min_confidence, n)
        d, c = np.nanmedian(distance[judged]), np.nanmedian(confidence[judged])
        return bool(d > max_d or c < min_c)

    def thresholds(self, n_patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(max distance, min confidence) for windows of ``n_patterns`` voters, interpolated in log n."""
        return _in_log_n(self.max_distance, n_patterns), _in_log_n(self.min_confidence, n_patterns)

    def uncertain(self, distance: np.ndarray, confidence: np.ndarray, n_patterns: np.ndarray) -> np.ndarray:
        """True where the model abstains (NaN scores abstain too: nothing to judge by)."""
        max_d, min_c = self.thresholds(n_patterns)
        with np.errstate(invalid="ignore"):
            ok = (distance <= max_d) & (confidence >= min_c)
        return ~ok

    @property
    def calibrated(self) -> bool:
        return bool(self.max_distance)

    def at(self, beam_energy_kev: float | None, convergence_mrad: float | None) -> "Abstention":
        """The abstention that judges a scan of this acquisition: its cell's thresholds where the model was
        calibrated per cell and the file says its acquisition, else the pooled ones."""
        cell = find_cell(self.cells, beam_energy_kev, convergence_mrad)
        if cell is None or "max_distance" not in cell:
            return self
        return replace(self, cells=[], **{k: dict(cell[k]) for k in THRESHOLD_KEYS})

    def coverage(self) -> list[dict]:
        """The cells' ranges, held-out rows and cell-vote accuracy: what a card's ``acquisition.cells`` states."""
        return [{k: c[k] for k in CELL_FIELDS} for c in self.cells]

    def to_dict(self) -> dict:
        return {"method": "Mahalanobis distance to class-conditional Gaussians (shared Ledoit-Wolf covariance) "
                          "of the embedding, and the pooled top probability; split-conformal thresholds",
                "means": np.round(self.means, 5).tolist(), "cholesky": _tril_list(self.cholesky),
                "max_distance": {str(k): round(v, 5) for k, v in sorted(self.max_distance.items())},
                "min_confidence": {str(k): round(v, 5) for k, v in sorted(self.min_confidence.items())},
                "alpha": ALPHA,
                "curve": {str(n): {str(a): [round(d, 5), round(c, 5)] for a, (d, c) in sorted(v.items())}
                          for n, v in sorted(self.curve.items())},
                "scan_max_distance": {str(k): round(v, 5) for k, v in sorted(self.scan_max_distance.items())},
                "scan_min_confidence": {str(k): round(v, 5) for k, v in sorted(self.scan_min_confidence.items())},
                "cells": [_cell_to_dict(c) for c in self.cells]}

    @classmethod
    def from_dict(cls, d: dict) -> "Abstention":
        means = np.asarray(d["means"], np.float32)
        dim = means.shape[1]
        chol = np.zeros((dim, dim), np.float32)
        chol[np.tril_indices(dim)] = np.asarray(d["cholesky"], np.float32)
        curve = {int(n): {float(a): tuple(v) for a, v in c.items()} for n, c in d.get("curve", {}).items()}
        return cls(means, chol, {int(k): float(v) for k, v in d.get("max_distance", {}).items()},
                   {int(k): float(v) for k, v in d.get("min_confidence", {}).items()}, curve,
                   {int(k): float(v) for k, v in d.get("scan_max_distance", {}).items()},
                   {int(k): float(v) for k, v in d.get("scan_min_confidence", {}).items()},
                   [_cell_from_dict(c) for c in d.get("cells", [])])


#: The thresholds an acquisition cell has of its own.
THRESHOLD_KEYS = ("max_distance", "min_confidence", "scan_max_distance", "scan_min_confidence")
#: What a card's ``acquisition.cells`` states of each cell.
CELL_FIELDS = ("beam_energy_kev", "disk_overlap", "rows", "accuracy")


def find_cell(cells: list[dict], beam_energy_kev: float | None, convergence_mrad: float | None) -> dict | None:
    """The cell (of a card's or an abstention's ``cells``) holding this acquisition, or None."""
    if not cells or not beam_energy_kev or not convergence_mrad:
        return None
    from .acquisition import disk_overlap

    values = {"beam_energy_kev": float(beam_energy_kev),
              "disk_overlap": disk_overlap(beam_energy_kev, convergence_mrad)}
    for cell in cells:
        if all(cell[k][0] <= v < cell[k][1] for k, v in values.items()):
            return cell
    return None


def cell_of(beam_energy_kev: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """(N,) index of each acquisition's ``CELLS`` cell (energy-major), -1 outside them."""
    e_edges, o_edges = CELLS["beam_energy_kev"], CELLS["disk_overlap"]
    i = np.searchsorted(e_edges, beam_energy_kev, side="right") - 1
    j = np.searchsorted(o_edges, overlap, side="right") - 1
    inside = (i >= 0) & (i < len(e_edges) - 1) & (j >= 0) & (j < len(o_edges) - 1)
    return np.where(inside, i * (len(o_edges) - 1) + j, -1)


def cell_ranges(index: int) -> dict:
    """The beam-energy and disk-overlap ranges of ``CELLS`` cell ``index``."""
    e_edges, o_edges = CELLS["beam_energy_kev"], CELLS["disk_overlap"]
    i, j = divmod(int(index), len(o_edges) - 1)
    return {"beam_energy_kev": [e_edges[i], e_edges[i + 1]], "disk_overlap": [o_edges[j], o_edges[j + 1]]}


def _cell_to_dict(cell: dict) -> dict:
    out = {k: cell[k] for k in CELL_FIELDS}
    for key in THRESHOLD_KEYS:
        if key in cell:
            out[key] = {str(n): round(v, 5) for n, v in sorted(cell[key].items())}
    return out


def _cell_from_dict(d: dict) -> dict:
    out = {k: d[k] for k in CELL_FIELDS}
    for key in THRESHOLD_KEYS:
        if key in d:
            out[key] = {int(n): float(v) for n, v in d[key].items()}
    return out


def _conformal(distance: np.ndarray, top_probability: np.ndarray, alpha: float) -> tuple[float, float]:
    """Split-conformal (max distance, min top probability) letting ``alpha`` of in-scope scores past:
    the (1 - alpha) quantile with the finite-sample correction."""
    n = len(distance)
    q = min(1.0, np.ceil((n + 1) * (1 - alpha)) / n)
    return float(np.quantile(distance, q)), float(np.quantile(top_probability, 1 - q))


def _in_log_n(by_size: dict, n_patterns) -> np.ndarray:
    """A threshold calibrated per window size, at ``n_patterns``: interpolated in log n, clipped to the sizes."""
    sizes = np.array(sorted(by_size), float)
    n = np.clip(np.asarray(n_patterns, float), sizes[0], sizes[-1])
    return np.interp(np.log(n), np.log(sizes), [by_size[int(k)] for k in sizes])


def _tril_list(m: np.ndarray) -> list:
    return [float(f"{v:.6g}") for v in m[np.tril_indices(m.shape[0])]]


def scan_verdict(uncertain: np.ndarray, done: np.ndarray) -> str | None:
    """One sentence when most classified positions of a scan abstain, else None."""
    n = int(done.sum())
    if n == 0:
        return None
    frac = float((uncertain & done).sum()) / n
    if frac < SCAN_UNCERTAIN_FRACTION:
        return None
    return (f"this scan does not look like polar KNN at [001]: the model abstains on {100 * frac:.0f} % of its "
            "positions, which are shown as uncertain (-2) instead of a direction")
