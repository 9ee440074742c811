"""Find the crystal lattice in a scan: the unit-cell period in scan pixels and each position's phase.

Cell-mode classification averages the patterns of one unit cell (a PACBED), and the anomaly score
compares each position with the others at the same place in the cell; both need the lattice. It is
read off the Fourier transform of a virtual image (or any map that repeats with the lattice), and
checked against the scan step and the pseudo-cubic cell of KNN when the scan is calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Pseudo-cubic cell of KNN (physics.md: 3.95-4.0 Å).
KNN_CELL_NM = 0.3975


@dataclass(frozen=True)
class Lattice:
    """A rectangular lattice aligned with the scan: ``period`` (rows, cols) in scan px, ``origin`` in px."""

    period: tuple[float, float]
    origin: tuple[float, float] = (0.0, 0.0)
    source: str = "fft"

    @property
    def resolved(self) -> bool:
        """True when a unit cell spans at least 2 scan steps each way, so a cell window makes sense."""
        return min(self.period) >= 2.0

    @property
    def window(self) -> tuple[int, int]:
        """Cell-sized window in scan px (odd sizes are not needed: the mean is over one period)."""
        return tuple(max(1, int(round(p))) for p in self.period)  # type: ignore[return-value]

    def phase(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Fractional position (rows, cols) in [0, 1) of each scan position inside its unit cell."""
        rr, cc = np.indices(shape, dtype=np.float64)
        fy = ((rr - self.origin[0]) / self.period[0]) % 1.0
        fx = ((cc - self.origin[1]) / self.period[1]) % 1.0
        return fy, fx

    def phase_bins(self, shape: tuple[int, int], max_bins: int = 8) -> np.ndarray:
        """Integer bin of each position's place in the cell (about one bin per scan px of the cell).

        The bin edges sit halfway between the positions' own phases: with a whole number of steps
        per cell the positions cluster near phases k/n + d, and fixed edges at (k + 1/2)/n would cut
        through a cluster when d is near 1/(2n) (a found origin can put it anywhere), mixing two
        places of the cell in one bin as the found period drifts across the scan (scan C: 4x4
        places in 64 bin-place pairs). ``d`` is the circular mean of the positions' phase offsets.
        """
        fy, fx = self.phase(shape)
        ny = int(np.clip(round(self.period[0]), 1, max_bins))
        nx = int(np.clip(round(self.period[1]), 1, max_bins))
        return _centred_bins(fy[:, 0], ny)[:, None] * nx + _centred_bins(fx[0], nx)[None, :]


def _centred_bins(frac: np.ndarray, n: int) -> np.ndarray:
    """Bins 0..n-1 of fractional phases ``frac``, edges centred between the phases' clusters."""
    t = np.asarray(frac, np.float64) * n
    z = np.exp(2j * np.pi * t).mean()
    d = float(np.angle(z) / (2 * np.pi)) if abs(z) > 1e-6 else 0.0
    return np.rint(t - d).astype(int) % n


def _peak_frequency(power_1d: np.ndarray, n: int, fmin: float, fmax: float) -> tuple[float, float]:
    """Frequency (cycles/px) and strength of the strongest peak of a 1D power spectrum in [fmin, fmax]."""
    freqs = np.fft.rfftfreq(n)
    sel = np.flatnonzero((freqs >= fmin) & (freqs <= fmax))
    if sel.size == 0:
        return float("nan"), 0.0
    k = sel[np.argmax(power_1d[sel])]
    if 0 < k < len(power_1d) - 1:  # parabolic refinement
        a, b, c = np.log(power_1d[k - 1 : k + 2] + 1e-30)
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom != 0 else 0.0
        k = k + float(np.clip(shift, -0.5, 0.5))
    # contrast against the whole non-DC spectrum, not just the search window (which holds the peak)
    wide = power_1d[(freqs >= min(2.0 / n, fmin)) & (freqs <= 0.5)]
    background = np.median(wide) + 1e-30
    return float(k / n), float(power_1d[int(round(k))] / background)


def find_lattice(image: np.ndarray, scan_step_nm: tuple[float | None, float | None] | None = None,
                 cell_nm: float = KNN_CELL_NM, min_contrast: float = 8.0) -> Lattice | None:
    """The lattice of a periodic map, or None when none is found (or the scan does not resolve it)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 4:
        return None
    img = np.where(np.isfinite(img), img, np.nanmean(img) if np.isfinite(img).any() else 0.0)
    img = img - img.mean()
    if not np.any(img):
        return None
    win = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    spec = np.abs(np.fft.fft2(img * win)) ** 2
    periods = []
    strengths = []
    for axis in (0, 1):
        n = img.shape[axis]
        # power along this axis' frequencies, summed over the other axis' low frequencies
        p = spec.sum(axis=1 - axis)[: n // 2 + 1]
        step = None if scan_step_nm is None else scan_step_nm[axis]
        if step:
            expected = cell_nm / step
            if expected < 2.0:
                return None  # a unit cell is less than 2 scan steps: not resolved
            fmin, fmax = 1.0 / (expected * 1.25), min(0.5, 1.0 / (expected * 0.8))
        else:
            fmin, fmax = 2.0 / n, 0.5
        f, strength = _peak_frequency(p, n, fmin, fmax)
        if not np.isfinite(f) or f <= 0:
            return None
        periods.append(1.0 / f)
        strengths.append(strength)
    # a real lattice stands far above the spectrum's median; noise does not (a known step halves the bar)
    if min(strengths) < (min_contrast / 2 if scan_step_nm else min_contrast):
        return None
    # origin: put phase 0 on the brightest columns
    rr, cc = np.indices(img.shape)
    origin = []
    for axis, per in enumerate(periods):
        coord = rr if axis == 0 else cc
        z = np.sum(img * np.exp(-2j * np.pi * coord / per))
        origin.append(float((-np.angle(z) / (2 * np.pi)) * per % per))
    return Lattice(period=(periods[0], periods[1]), origin=(origin[0], origin[1]),
                   source="fft" if not scan_step_nm else "fft+calibration")


#: Below this many scan steps per cell, a lattice the ADF image does not show comes from the calibration.
NYQUIST_CALIBRATION_STEPS = 2.5


def calibration_lattice(step_nm) -> Lattice | None:
    """The KNN lattice from the scan calibration alone, when a cell spans 2 to
    ``NYQUIST_CALIBRATION_STEPS`` scan steps each way; else None.

    At two steps per cell the probe positions can sit symmetrically about the atomic columns (an
    offset of a/4: every position then sees the same neighbourhood), and the virtual ADF image has no
    contrast at the cell frequency, which is its Nyquist frequency. The cell windows still pool one
    pattern of each place in the cell, so the calibration's period is enough for them (validation
    scan N, the simulator's default 2 steps per cell at offset a/4: no lattice found, pattern mode
    0.939 away from defects; with the calibration's lattice, cell mode 1.000). At finer sampling a lattice the
    image does not show is not assumed: the scan may not be of KNN, or its calibration may be off.
    """
    if not step_nm or not all(step_nm):
        return None
    period = tuple(KNN_CELL_NM / float(s) for s in step_nm)
    if not all(2.0 <= p < NYQUIST_CALIBRATION_STEPS for p in period):
        return None
    return Lattice(period=period, origin=(0.0, 0.0), source="calibration")  # type: ignore[arg-type]
