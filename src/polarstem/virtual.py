"""Virtual detectors (bright field, annular dark field, centre of mass) and the mean pattern.

All of them walk the scan through :func:`polarstem.chunks.iter_frame_blocks`, so they stay within a
fixed memory budget whatever the size of the file, report progress and can be cancelled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .chunks import ProgressCallback, iter_frame_blocks, read_region
from .errors import CalibrationError, PolarstemError
from .io import Dataset4D

KINDS = ("bf", "adf", "com")


@dataclass(frozen=True)
class VirtualDetector:
    """A virtual detector: ``bf`` (disk of radius ``outer``), ``adf`` (annulus inner..outer), ``com``.

    Angles are in ``units`` ("mrad" or "px") about the 0-mrad point. For ``bf`` an ``outer`` of None
    means "the bright-field disk found in the mean pattern"; for ``adf`` a missing inner means "just
    outside the bright-field disk" and a missing outer means "the detector edge".
    """

    kind: str = "bf"
    inner: float | None = None
    outer: float | None = None
    units: str = "mrad"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise PolarstemError(f"unknown virtual detector '{self.kind}' (use one of {', '.join(KINDS)})")
        if self.units not in ("mrad", "px"):
            raise PolarstemError(f"unknown detector angle units '{self.units}' (use mrad or px)")
        for v in (self.inner, self.outer):
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise PolarstemError(f"detector angles must be finite and >= 0, got {v}")
        if self.inner is not None and self.outer is not None and self.outer <= self.inner:
            raise PolarstemError(f"outer angle {self.outer} must be larger than inner angle {self.inner}")


@dataclass(frozen=True)
class DetectorGeometry:
    """Where the 0-mrad point is on the detector, the bright-field disk, and the angular sampling."""

    center: tuple[float, float]  # (row, col) px
    disk_radius_px: float
    mrad_per_px: float | None

    def to_px(self, value: float | None, units: str) -> float | None:
        if value is None or units == "px":
            return value
        if not self.mrad_per_px:
            raise CalibrationError(
                "the detector has no mrad calibration (no mrad/px in the file and no convergence angle "
                "to derive it from the bright-field disk): give the angles in px"
            )
        return value / self.mrad_per_px


def find_bright_field_disk(pattern: np.ndarray) -> tuple[float, float, float]:
    """Centre (row, col) and radius (px) of the bright-field disk in a (mean) diffraction pattern.

    Thresholds halfway between the background and the disk level, keeps the connected region that
    holds the brightest area, and takes its centroid and the radius of a disk of equal area.
    """
    from scipy import ndimage

    p = np.asarray(pattern, dtype=np.float64)
    if p.ndim != 2:
        raise PolarstemError(f"a diffraction pattern must be 2D, got shape {p.shape}")
    if not np.isfinite(p).all():
        p = np.where(np.isfinite(p), p, 0.0)
    smooth = ndimage.gaussian_filter(p, 1.0)
    lo = np.percentile(smooth, 10)
    hi = np.percentile(smooth, 99.5)
    if not hi > lo:
        raise PolarstemError("the pattern is flat: no bright-field disk to find")
    mask = smooth > lo + 0.5 * (hi - lo)
    labels, n = ndimage.label(mask)
    if n == 0:
        raise PolarstemError("no bright-field disk found in the pattern")
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    label = labels[peak] if labels[peak] else np.argmax(np.bincount(labels.ravel())[1:]) + 1
    region = ndimage.binary_fill_holes(labels == label)
    cy, cx = ndimage.center_of_mass(region)
    radius = float(np.sqrt(region.sum() / np.pi))
    return float(cy), float(cx), radius


def detector_geometry(dataset: Dataset4D, pattern: np.ndarray | None = None) -> DetectorGeometry:
    """The detector geometry from the calibration, completed from the mean pattern where needed."""
    cal = dataset.calibration
    if pattern is None:
        pattern = sampled_mean_pattern(dataset)
    cy, cx, r = find_bright_field_disk(pattern)
    center = cal.detector_center_px or (cy, cx)
    mrad = cal.mrad_per_px
    if mrad is None and cal.convergence_mrad and r > 0:
        mrad = cal.convergence_mrad / r
    return DetectorGeometry(center=(float(center[0]), float(center[1])), disk_radius_px=r, mrad_per_px=mrad)


def detector_mask(det: VirtualDetector, shape: tuple[int, int], geometry: DetectorGeometry) -> np.ndarray:
    """The (det_rows, det_cols) weights of a BF or ADF detector."""
    yy, xx = np.indices(shape, dtype=np.float64)
    rr = np.hypot(yy - geometry.center[0], xx - geometry.center[1])
    if det.kind == "bf":
        outer = geometry.to_px(det.outer, det.units)
        outer = geometry.disk_radius_px if outer is None else outer
        return (rr <= outer).astype(np.float32)
    if det.kind == "adf":
        inner = geometry.to_px(det.inner, det.units)
        outer = geometry.to_px(det.outer, det.units)
        inner = 1.1 * geometry.disk_radius_px if inner is None else inner
        outer = np.inf if outer is None else outer
        mask = (rr >= inner) & (rr <= outer)
        if not mask.any():
            raise PolarstemError(f"the annulus {inner:.1f}-{outer:.1f} px lies outside the {shape} detector")
        return mask.astype(np.float32)
    raise PolarstemError(f"'{det.kind}' is not a masked detector")


def virtual_image(
    dataset: Dataset4D,
    detector: VirtualDetector | str = "bf",
    geometry: DetectorGeometry | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """A virtual image, (scan_rows, scan_cols); for ``com``, (2, scan_rows, scan_cols) = (com_y, com_x).

    Centre of mass is in mrad about the 0-mrad point when the detector is calibrated, else in px.
    """
    det = VirtualDetector(detector) if isinstance(detector, str) else detector
    if geometry is None:
        geometry = detector_geometry(dataset)
    ky, kx = dataset.detector_shape
    if det.kind == "com":
        out = np.full((2,) + dataset.scan_shape, np.nan, dtype=np.float64)
        yy, xx = np.indices((ky, kx), dtype=np.float64)
        weights = np.stack([np.ones(ky * kx), (yy - geometry.center[0]).ravel(), (xx - geometry.center[1]).ravel()], 1)
        for block in iter_frame_blocks(dataset, progress=progress, cancel=cancel):
            f = block.frames
            m = _frames_matrix(f) @ weights  # (n, 3): total, sum y, sum x
            with np.errstate(invalid="ignore", divide="ignore"):
                com = m[:, 1:] / m[:, :1]
            scale = geometry.mrad_per_px or 1.0
            out[:, block.rows, block.cols] = (com * scale).T.reshape(2, f.shape[0], f.shape[1])
        return out
    return virtual_images(dataset, [det], geometry=geometry, progress=progress, cancel=cancel)[0]


def virtual_images(
    dataset: Dataset4D,
    detectors: list[VirtualDetector],
    geometry: DetectorGeometry | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Several BF/ADF images in one pass over the scan: (len(detectors), scan_rows, scan_cols)."""
    if any(d.kind == "com" for d in detectors):
        raise PolarstemError("virtual_images takes masked detectors (bf, adf); use virtual_image for com")
    if geometry is None:
        geometry = detector_geometry(dataset)
    ky, kx = dataset.detector_shape
    masks = np.stack([detector_mask(d, (ky, kx), geometry).ravel() for d in detectors], 1)  # (pixels, k)
    used = np.flatnonzero(masks.any(axis=1))  # only the detectors' pixels are read
    weights = masks[used].astype(np.float64)
    out = np.zeros((len(detectors),) + dataset.scan_shape, dtype=np.float64)
    for block in iter_frame_blocks(dataset, progress=progress, cancel=cancel):
        f = block.frames
        inside = _finite(f.reshape(f.shape[0] * f.shape[1], -1)[:, used]).astype(np.float64)
        out[:, block.rows, block.cols] = (inside @ weights).T.reshape(len(detectors), f.shape[0], f.shape[1])
    return out


def sampled_mean_pattern(dataset: Dataset4D, n: int = 1024) -> np.ndarray:
    """Mean of about ``n`` patterns from evenly spaced scan rows: enough to find the disk, fast on any scan."""
    rows, cols = dataset.scan_shape
    n_rows = int(min(rows, max(1, n // cols), 32))
    picked = np.unique(np.linspace(0, rows - 1, n_rows).round().astype(int))
    total = np.zeros(dataset.detector_shape, dtype=np.float64)
    for r in picked:
        total += _finite(read_region(dataset, int(r), slice(None))).sum(axis=0, dtype=np.float64)
    return total / (len(picked) * cols)


def mean_pattern(
    dataset: Dataset4D,
    mask: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Mean diffraction pattern over the scan (or the positions where ``mask`` is True)."""
    total = np.zeros(dataset.detector_shape, dtype=np.float64)
    count = 0
    for block in iter_frame_blocks(dataset, mask=mask, progress=progress, cancel=cancel):
        f = block.frames
        if block.mask is not None:
            sel = f[block.mask]
            total += _finite(sel).sum(axis=0, dtype=np.float64)
            count += sel.shape[0]
        else:
            total += _finite(f).sum(axis=(0, 1), dtype=np.float64)
            count += f.shape[0] * f.shape[1]
    if count == 0:
        raise PolarstemError("no scan positions selected")
    return total / count


def _frames_matrix(frames: np.ndarray) -> np.ndarray:
    """(rows, cols, ky, kx) -> (rows*cols, ky*kx) float64, non-finite values as 0."""
    n = frames.shape[0] * frames.shape[1]
    return _finite(frames.reshape(n, -1)).astype(np.float64, copy=False)


def _finite(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return np.where(np.isfinite(a), a, 0)
    return a
