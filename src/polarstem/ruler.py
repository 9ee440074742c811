"""The ruler every convergent-beam pattern carries: the bright-field disk's radius, in detector pixels.

The undiffracted disk has the radius of the convergence semi-angle alpha, whatever the specimen does
inside it. Its edge is the strongest circle in a scan's patterns, so it is measured to about 1 % from
the mean edge strength of a few hundred of them (each pattern's own edges, averaged: interference
between overlapping disks changes inside the disk from pattern to pattern, the edge does not move).
With alpha from the file it gives the detector sampling; with the sampling, alpha; with both, a check.

The reciprocal-lattice spacing lambda / a is a second ruler in principle. In these patterns the
diffracted disks are weak beside the undiffracted one and overlap it 1.4-6 times over, and neither a
circle Hough transform nor a fit of disk edges on a lattice found it reliably on simulated KNN
patterns across the judged range (docs/acquisitions.md), so the beam energy has to come from the
file or the user (``--beam-energy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .io import Calibration

#: Relative disagreement between the file's calibration and the measured disk that is reported.
MISMATCH = 0.05
#: Frames the ruler reads (spread over the scan).
RULER_FRAMES = 256


@dataclass(frozen=True)
class Ruler:
    """What the patterns measure, in detector pixels of the file."""

    disk_radius_px: float  # alpha
    center_px: tuple[float, float]  # (row, col) of the disk centre, median over the frames read
    edge_contrast: float  # edge strength at the radius over the median edge strength (about 1: no disk)

    @property
    def trusted(self) -> bool:
        return self.disk_radius_px >= 3 and self.edge_contrast >= 2.0

    def to_dict(self) -> dict:
        return {"disk_radius_px": round(self.disk_radius_px, 3), "edge_contrast": round(self.edge_contrast, 2),
                "center_px": [round(float(c), 2) for c in self.center_px], "trusted": bool(self.trusted)}


def mean_edge_map(frames: np.ndarray, sigma: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """(mean edge strength with every frame's disk moved to the median centre, median centre (row, col)).

    Edge strength is the gradient magnitude of the smoothed, variance-stabilised pattern."""
    from scipy import ndimage

    from .preprocess import _as_float_frames, clean_pixels, find_disk_centers, resample

    f, _ = _as_float_frames(frames)
    f = clean_pixels(f)
    f = np.sqrt(np.maximum(f, 0) / np.maximum(f.reshape(len(f), -1).mean(axis=1), 1e-12)[:, None, None])
    centers, _ = find_disk_centers(f)
    ref = np.median(centers, axis=0)
    if f.shape[1] == f.shape[2]:  # move every disk onto the median centre (descan varies over a scan)
        f = resample(f, centers - ref + (f.shape[1] - 1) / 2.0, 1.0, f.shape[1], 1.0)
    f = ndimage.gaussian_filter(f, (0, sigma, sigma), mode="nearest")
    edges = np.hypot(ndimage.sobel(f, 1, mode="nearest"), ndimage.sobel(f, 2, mode="nearest")).mean(axis=0)
    return edges, ref


def measure_ruler(frames: np.ndarray) -> Ruler | None:
    """The bright-field disk of (N, ky, kx) frames: the radius at which the azimuthally averaged edge
    strength about the disk centre peaks (searched at 0.7-1.3 times the thresholded disk's radius)."""
    from .preprocess import find_disk_centers

    f = np.asarray(frames)
    if f.ndim != 3 or len(f) == 0 or min(f.shape[1:]) < 8:
        return None
    edges, center = mean_edge_map(f)
    _, radius = find_disk_centers(np.asarray(f, np.float32).mean(axis=0, keepdims=True))
    r0 = float(radius[0])
    if not np.isfinite(edges).all() or r0 < 2:
        return None
    yy, xx = np.indices(edges.shape)
    r = np.hypot(yy - center[0], xx - center[1])
    radii = r0 * np.linspace(0.7, 1.3, 121)
    profile = np.array([edges[np.abs(r - q) < 0.75].mean() if (np.abs(r - q) < 0.75).any() else 0.0 for q in radii])
    i = int(np.argmax(profile))
    contrast = float(profile[i] / max(float(np.median(edges)), 1e-12))
    return Ruler(disk_radius_px=float(radii[i]), center_px=(float(center[0]), float(center[1])), edge_contrast=contrast)


def sample_frames(dataset, n: int = RULER_FRAMES) -> np.ndarray:
    """Up to ``n`` frames from a block at the centre of the scan (one small contiguous read, whatever
    the file's chunking)."""
    sy, sx = dataset.scan_shape
    side = max(1, int(np.ceil(np.sqrt(n))))
    hy, hx = min(sy, side), min(sx, max(1, n // min(sy, side)))
    r0, c0 = (sy - hy) // 2, (sx - hx) // 2
    block = np.asarray(dataset.data[r0:r0 + hy, c0:c0 + hx])
    return block.reshape((-1,) + tuple(dataset.detector_shape))


def complete_calibration(calibration: Calibration, ruler: Ruler | None) -> tuple[Calibration, list[str]]:
    """The calibration to classify with, and one sentence per finding of the ruler.

    The file's values are kept; the measured disk fills in the detector sampling (from the file's
    convergence) or the convergence (from the file's sampling) when one is missing, and checks
    them when both are given.
    """
    notes: list[str] = []
    if ruler is None or not ruler.trusted:
        return calibration, notes
    cal = calibration
    if cal.mrad_per_px and cal.convergence_mrad:
        measured = ruler.disk_radius_px * cal.mrad_per_px
        if abs(measured / cal.convergence_mrad - 1) > MISMATCH:
            notes.append(f"the bright-field disk measures {measured:.1f} mrad at {cal.mrad_per_px:.4g} mrad/px, "
                         f"the calibration says {cal.convergence_mrad:g} mrad: one of the two is wrong "
                         "(set --mrad-per-px or --convergence)")
    elif cal.convergence_mrad:
        mrad = cal.convergence_mrad / ruler.disk_radius_px
        cal = cal.with_(mrad_per_px=mrad)
        notes.append(f"detector sampling {mrad:.4g} mrad/px measured from the bright-field disk "
                     f"({ruler.disk_radius_px:.1f} px for {cal.convergence_mrad:g} mrad; the file does not give it)")
    elif cal.mrad_per_px:
        alpha = ruler.disk_radius_px * cal.mrad_per_px
        cal = cal.with_(convergence_mrad=alpha)
        notes.append(f"convergence semi-angle {alpha:.1f} mrad measured from the bright-field disk "
                     f"({ruler.disk_radius_px:.1f} px at {cal.mrad_per_px:.4g} mrad/px; the file does not give it)")
    return cal, notes
