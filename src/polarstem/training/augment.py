"""Experiment-like corruptions of raw simulated patterns, as training sees them, then the shared
preprocessing; and the finite source (partial spatial coherence) of corrupted copies.

This is the training augmentation, and deliberately not a composition of
:mod:`polarstem.simulate.corruptions`: those transforms make the test sets (descan by
interpolation, blur with zero padding, a convolved background, hot pixels fixed per call), and
training draws its own (the descan and ellipticity folded into one resampling to a random
detector, a fixed Lorentzian background, hot pixels per pattern), so the cached arrays and the
shipped weights rest on exactly these draws.
"""

from __future__ import annotations

import numpy as np

from ..io import Calibration
from ..preprocess import CANONICAL_CONVERGENCE_MRAD, CANONICAL_ENERGY_KEV, InputGrid, _axis_weights, preprocess
from ..simulate.coherence import source_blur_grid

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
        f = _blur_and_background(f, mrad_per_px, rng, a)
    out = _detector_frames(f, mrad_per_px, det_mrad, det_px, rng, a, ideal)
    if ideal:
        return out * 1e6, det_mrad
    return _counts(out, det_px, rng, a), det_mrad


def _blur_and_background(f: np.ndarray, mrad_per_px: float, rng: np.random.Generator, a: dict) -> np.ndarray:
    """Detector blur (sigma per pattern) and a Lorentzian background (25 mrad wide, a fraction per pattern)."""
    from scipy import ndimage

    n, ky, kx = f.shape
    sig = rng.uniform(*a["blur_px"], size=n)
    for i in np.nonzero(sig > 0.05)[0]:
        f[i] = ndimage.gaussian_filter(f[i], sig[i])
    bg = rng.uniform(*a["background"], size=n)
    yy, xx = np.indices((ky, kx), dtype=np.float32)
    r2 = ((yy - (ky - 1) / 2) ** 2 + (xx - (kx - 1) / 2) ** 2) * mrad_per_px ** 2
    lor = 1.0 / (1.0 + r2 / (25.0 ** 2))
    lor /= lor.sum()
    return f * (1 - bg)[:, None, None] + bg[:, None, None] * lor[None]


def _detector_frames(f: np.ndarray, mrad_per_px: float, det_mrad: float, det_px: int, rng: np.random.Generator,
                     a: dict, ideal: bool) -> np.ndarray:
    """The patterns on a det_px x det_px detector of det_mrad mrad/px, each with its descan offset and,
    unless ``ideal``, one elliptical distortion for the batch; each frame sums to 1."""
    n, ky, kx = f.shape
    # elliptical distortion and descan: the detector grid samples the pattern at stretched, shifted positions
    centers = np.full((n, 2), [(ky - 1) / 2, (kx - 1) / 2], dtype=np.float64)
    centers += rng.uniform(-a["descan_px"], a["descan_px"], size=(n, 2)) * det_mrad / mrad_per_px
    eps = 0.0 if ideal else rng.uniform(-a["ellipticity"], a["ellipticity"])
    out = np.empty((n, det_px, det_px), np.float32)
    # stretching one axis by (1 + eps): sample rows at a slightly different step than columns
    step_y = det_mrad * (1 + eps)
    wy = _axis_weights(centers[:, 0], ky, det_px, step_y / mrad_per_px)
    wx = _axis_weights(centers[:, 1], kx, det_px, det_mrad / mrad_per_px)
    out[:] = np.matmul(np.matmul(wy, f), wx.transpose(0, 2, 1))
    out = np.maximum(out, 0)
    out /= np.maximum(out.reshape(n, -1).sum(axis=1), 1e-12)[:, None, None]
    return out


def _counts(out: np.ndarray, det_px: int, rng: np.random.Generator, a: dict) -> np.ndarray:
    """Poisson counts at a random dose per pattern, then hot and dead pixels per pattern."""
    n = len(out)
    dose = np.exp(rng.uniform(np.log(a["dose"][0]), np.log(a["dose"][1]), size=n))
    counts = rng.poisson(out * dose[:, None, None]).astype(np.float32)
    for i in range(n):
        nh = int(rng.integers(a["hot_pixels"][0], a["hot_pixels"][1] + 1))
        nd = int(rng.integers(a["dead_pixels"][0], a["dead_pixels"][1] + 1))
        if nh:  # (the hot level is drawn before the positions: the right-hand side is evaluated first)
            counts[i].flat[rng.integers(0, det_px * det_px, nh)] = np.round(counts[i].max() * rng.uniform(3, 20))
        if nd:
            counts[i].flat[rng.integers(0, det_px * det_px, nd)] = 0
    return counts


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


def finite_source(frames: np.ndarray, g: int, sigma_range, rng: np.random.Generator) -> np.ndarray:
    """Raw frames (rows of g x g probe positions, in grid order) as a finite source of a random size
    (one per row, uniform in ``sigma_range`` Å) records them (:func:`polarstem.simulate.coherence.source_blur_grid`)."""
    n, ky, kx = frames.shape
    rows = n // (g * g)
    sigma = rng.uniform(float(sigma_range[0]), float(sigma_range[1]), size=rows)
    f = np.asarray(frames, np.float32).reshape(rows, g, g, ky, kx)
    return source_blur_grid(f, sigma).reshape(n, ky, kx)
