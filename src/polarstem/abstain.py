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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Window sizes (patterns) the thresholds are calibrated at: one pattern, 2x2, 3x3, 6x6.
WINDOW_SIZES = (1, 4, 9, 36)
#: Fraction of in-scope windows allowed past each threshold at calibration (two tests: <= 2 % together).
ALPHA = 0.01
#: The calibration curve kept in the card: thresholds at these fractions of in-scope windows abstaining.
CURVE_ALPHAS = (0.005, 0.01, 0.02, 0.05, 0.1)
#: A scan whose classified positions are mostly uncertain is not polar KNN at [001], as far as the model can tell.
SCAN_UNCERTAIN_FRACTION = 0.5


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
                "scan_min_confidence": {str(k): round(v, 5) for k, v in sorted(self.scan_min_confidence.items())}}

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
                   {int(k): float(v) for k, v in d.get("scan_min_confidence", {}).items()})


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
