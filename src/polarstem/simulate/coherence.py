"""A finite electron source (partial spatial coherence) for simulated patterns.

A multislice simulation images a point source: every pattern belongs to one exact probe position. A
real probe is the demagnified image of a source of finite size, and it jitters (stage drift, scan
noise, vibration), so the detector records the *incoherent* average of the coherent patterns of
probe positions spread around the nominal one, modelled here as a Gaussian of standard deviation
``sigma`` (a few tenths of an ångström on an aberration-corrected 200 kV instrument). With an
atomic-size probe the pattern changes within a fraction of an ångström (physics.md), so this
average removes part of what a per-pattern classifier reads; measured on unseen simulated
structures (heldout6g, 8 symmetry images), the seventh-release ``resnet`` drops from 0.896 to 0.744
at sigma = 0.25 Å and to 0.553 at 0.4 Å (docs/simulation.md, "Finite source"). No detector-side
corruption does this.

Training sets hold a regular g x g grid of probe positions per unit cell of a periodic crystal, so
the pattern is a periodic function of the probe position sampled on that grid;
:func:`source_blur_grid` applies the Gaussian in its Fourier series (exact for a position
dependence band-limited to the grid, a smooth interpolation otherwise; g >= 6 samples a/6 = 0.66 Å).
:func:`source_blur_scan` does the same for a scan, whose positions are not periodic.
"""

from __future__ import annotations

import numpy as np

from ..lattice import KNN_CELL_NM

#: The coarsest probe grid (positions per cell edge) that samples a source of a few tenths of an
#: ångström: a/6 = 0.66 Å steps; 4 x 4 grids (1 Å) are too coarse.
MIN_GRID = 6


def grid_weights(g: int, sigma_frac: float | np.ndarray) -> np.ndarray:
    """Fourier weights (..., g, g) of a Gaussian of std ``sigma_frac`` (fractions of the cell) on a
    periodic g x g probe grid (the Fourier transform of a periodised Gaussian)."""
    q = np.fft.fftfreq(g, d=1.0 / g)  # cycles per cell
    q2 = q[:, None] ** 2 + q[None, :] ** 2
    s = np.asarray(sigma_frac, dtype=np.float64)[..., None, None]
    return np.exp(-2.0 * np.pi**2 * s**2 * q2)


def source_blur_grid(patterns: np.ndarray, sigma_a: float | np.ndarray, cell_a: float = KNN_CELL_NM * 10) -> np.ndarray:
    """Patterns of a finite source from those of a point source on a periodic probe grid.

    ``patterns``: (..., g, g, ky, kx), the probe positions of one unit cell on a regular grid (row =
    y, column = x); ``sigma_a``: source standard deviation in Å, a number or one per leading index
    (shape ``patterns.shape[:-4]``); ``cell_a``: the cell edge in Å. Returns float32, same shape. The
    mean over the grid (a cell average) is unchanged, except where a position dependence sharper than
    the grid resolves rings below zero: those few values are clipped to zero.
    """
    p = np.asarray(patterns)
    if p.ndim < 4 or p.shape[-4] != p.shape[-3]:
        raise ValueError(f"patterns must be (..., g, g, ky, kx) on a square probe grid, got {p.shape}")
    sigma = np.asarray(sigma_a, dtype=np.float64)
    if np.any(sigma < 0) or not np.all(np.isfinite(sigma)):
        raise ValueError("the source size must be finite and >= 0")
    if not np.any(sigma > 0):
        return p.astype(np.float32, copy=True)
    g = p.shape[-4]
    w = grid_weights(g, np.broadcast_to(sigma, p.shape[:-4]) / float(cell_a))[..., None, None]
    spec = np.fft.fft2(p.astype(np.float64), axes=(-4, -3))
    out = np.fft.ifft2(spec * w, axes=(-4, -3)).real
    return np.clip(out, 0.0, None).astype(np.float32)


def source_blur_scan(data: np.ndarray, sigma_a: float, step_a: float | tuple[float, float]) -> np.ndarray:
    """A scan (sy, sx, ky, kx) as a finite source of std ``sigma_a`` (Å) records it, with scan steps
    ``step_a`` (Å, one or per axis): a Gaussian average over scan positions, done in the Fourier
    series of the scan mirrored at its edges (no wrap-around from the far edge)."""
    d = np.asarray(data, dtype=np.float64)
    if d.ndim != 4:
        raise ValueError(f"a scan is (sy, sx, ky, kx), got {d.shape}")
    if sigma_a < 0 or not np.isfinite(sigma_a):
        raise ValueError("the source size must be finite and >= 0")
    if sigma_a == 0:
        return d.astype(np.float32)
    sy, sx = (step_a, step_a) if np.isscalar(step_a) else step_a
    ext = np.concatenate([d, d[::-1]], axis=0)
    ext = np.concatenate([ext, ext[:, ::-1]], axis=1)
    fy = np.fft.fftfreq(ext.shape[0], d=sy)  # cycles per Å
    fx = np.fft.fftfreq(ext.shape[1], d=sx)
    w = np.exp(-2.0 * np.pi**2 * sigma_a**2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    out = np.fft.ifft2(np.fft.fft2(ext, axes=(0, 1)) * w[:, :, None, None], axes=(0, 1)).real
    return np.clip(out[: d.shape[0], : d.shape[1]], 0.0, None).astype(np.float32)
