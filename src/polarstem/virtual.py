"""Virtual detectors (bright field, annular dark field, centre of mass) and the mean pattern.

All of them walk the scan through :func:`polarstem.chunks.map_frame_blocks`: every core reads and
reduces its own blocks (a ``.npy`` file without a copy, gzip HDF5 decoded on every core), each
pattern is read once for all the detectors asked for, and the sums run in compiled loops
(:mod:`polarstem.frame_kernels`). Memory stays at a few blocks whatever the size of the file;
progress is reported and the walk can be cancelled between blocks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .chunks import FrameBlock, ProgressCallback, map_frame_blocks, read_region
from .errors import CalibrationError, PolarstemError
from .io import Calibration, Dataset4D
from .ruler import measure_ruler, sample_frames

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


def detector_geometry(dataset: Dataset4D, pattern: np.ndarray | None = None,
                      calibration: Calibration | None = None) -> DetectorGeometry:
    """The detector geometry from the calibration (``calibration``, e.g. one the ruler already completed,
    else the dataset's), completed from the mean pattern where needed."""
    cal = calibration or dataset.calibration
    if pattern is None:
        pattern = sampled_mean_pattern(dataset)
    cy, cx, r = find_bright_field_disk(pattern)
    # The bright-field disk is the convergence angle, whatever the specimen does inside it: with both
    # calibrations its radius is known; else the ruler's edge measurement (polarstem.ruler), which a
    # bright channelling spot inside the disk does not fool as the mean pattern's threshold can
    if cal.mrad_per_px and cal.convergence_mrad:
        r = cal.convergence_mrad / cal.mrad_per_px
    else:
        ruler = measure_ruler(sample_frames(dataset))
        if ruler is not None and ruler.trusted:
            r = ruler.disk_radius_px
    center = cal.detector_center_px or (cy, cx)
    mrad = cal.mrad_per_px
    if mrad is None and cal.convergence_mrad and r > 0:
        mrad = cal.convergence_mrad / r
    return DetectorGeometry(center=(float(center[0]), float(center[1])), disk_radius_px=r, mrad_per_px=mrad)


def detector_mask(det: VirtualDetector, shape: tuple[int, int], geometry: DetectorGeometry) -> np.ndarray:
    """The (det_rows, det_cols) 0/1 weights of a detector: the BF disk, the ADF annulus, or the CoM region.

    A ``com`` detector weighs the whole pattern, or the annulus ``inner``..``outer`` when given
    (``outer`` at the BF disk edge gives a bright-field CoM, ``inner`` outside it a dark-field one).
    """
    yy, xx = np.indices(shape, dtype=np.float64)
    rr = np.hypot(yy - geometry.center[0], xx - geometry.center[1])
    if det.kind == "bf":
        outer = geometry.to_px(det.outer, det.units)
        outer = geometry.disk_radius_px if outer is None else outer
        return (rr <= outer).astype(np.float32)
    inner = geometry.to_px(det.inner, det.units)
    outer = geometry.to_px(det.outer, det.units)
    if det.kind == "adf":
        inner = 1.1 * geometry.disk_radius_px if inner is None else inner
    inner = 0.0 if inner is None else inner
    outer = np.inf if outer is None else outer
    mask = (rr >= inner) & (rr <= outer)
    if not mask.any():
        raise PolarstemError(f"the annulus {inner:.1f}-{outer:.1f} px lies outside the {shape} detector")
    return mask.astype(np.float32)


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
    return virtual_image_list(dataset, [det], geometry=geometry, progress=progress, cancel=cancel)[0]


def virtual_images(
    dataset: Dataset4D,
    detectors: list[VirtualDetector],
    geometry: DetectorGeometry | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Several BF/ADF images in one pass over the scan: (len(detectors), scan_rows, scan_cols)."""
    if any(d.kind == "com" for d in detectors):
        raise PolarstemError("virtual_images takes masked detectors (bf, adf); use virtual_image_list for com")
    images = virtual_image_list(dataset, detectors, geometry=geometry, progress=progress, cancel=cancel)
    return np.stack(images)


#: Scans smaller than this are summed by numpy: importing and loading the compiled loops (~0.5 s,
#: a few seconds the first time they compile) would cost more than they save.
COMPILED_MIN_BYTES = 64 * 2**20

#: Patterns per kernel call: a few hundred kB, so every detector's loop finds them in the L2 cache.
_SUB_BLOCK_BYTES = 512 * 2**10


def virtual_image_list(
    dataset: Dataset4D,
    detectors: list[VirtualDetector],
    geometry: DetectorGeometry | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    engine: str = "auto",
    workers: int | None = None,
) -> list[np.ndarray]:
    """Any virtual images (BF, ADF, CoM) in one pass over the scan, each as :func:`virtual_image` gives it.

    The scan is walked by :func:`polarstem.chunks.map_frame_blocks` on every core; each pattern is
    read once and reduced by compiled loops (:mod:`polarstem.frame_kernels`) for every detector.
    ``engine`` is ``"compiled"``, ``"numpy"`` (float64 matrix products, the reference) or
    ``"auto"`` (compiled for scans of ``COMPILED_MIN_BYTES`` and more).
    """
    dets = [VirtualDetector(d) if isinstance(d, str) else d for d in detectors]
    if not dets:
        return []
    kernels = _compiled_kernels(dataset, engine)
    if geometry is None:
        geometry = detector_geometry(dataset)
    w = _detector_weights(dets, dataset.detector_shape, geometry, numpy_planes=kernels is None)
    images = np.empty((len(w.masked),) + dataset.scan_shape)
    first = np.empty((len(w.com), 3) + dataset.scan_shape)  # per CoM detector: total, sum I*y, sum I*x

    def reduce(block: FrameBlock) -> tuple[np.ndarray, np.ndarray]:
        return _block_sums(block.frames, w, kernels)

    for rows, cols, (sums, moments) in map_frame_blocks(dataset, reduce, workers=workers,
                                                        progress=progress, cancel=cancel):
        images[:, rows, cols] = np.moveaxis(sums, -1, 0)
        first[:, :, rows, cols] = np.moveaxis(moments, -1, 1)
    return _images_in_detector_order(len(dets), w, images, first, geometry.mrad_per_px or 1.0)


@dataclass
class _DetectorWeights:
    """What every block is reduced with, computed once per walk: the detectors' weights, split into
    masked (BF, ADF) and centre-of-mass detectors, with their bounding boxes (the compiled loops
    visit only those pixels) and the detector coordinates about the 0-mrad point."""

    shape: tuple[int, int]
    weights: list[np.ndarray]
    boxes: np.ndarray
    masked: list[int]  # indices into the detectors: BF and ADF
    com: list[int]  # indices into the detectors: CoM
    planes: np.ndarray | None  # the masked detectors' weights, stacked
    planes_box: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    all_planes: np.ndarray | None  # the numpy engine's float64 planes (None for the compiled loops)


def _detector_weights(dets: list[VirtualDetector], shape: tuple[int, int], geometry: DetectorGeometry,
                      numpy_planes: bool) -> _DetectorWeights:
    """The weights of ``dets`` on a ``shape`` detector; ``numpy_planes`` adds the planes the numpy
    engine multiplies with (three per CoM detector: weight, weight * y, weight * x)."""
    weights = [detector_mask(d, shape, geometry) for d in dets]
    boxes = np.array([_bounding_box(w) for w in weights], dtype=np.int64)
    masked = [i for i, d in enumerate(dets) if d.kind != "com"]
    com = [i for i, d in enumerate(dets) if d.kind == "com"]
    planes = np.stack([weights[i] for i in masked]) if masked else None
    ys = np.arange(shape[0], dtype=np.float64) - geometry.center[0]
    xs = (np.arange(shape[1], dtype=np.float64) - geometry.center[1]).astype(np.float32)
    all_planes = None
    if numpy_planes:
        all_planes = [weights[i] for i in masked]
        for i in com:
            all_planes += [weights[i], weights[i] * ys[:, None], weights[i] * xs[None, :]]
        all_planes = np.stack(all_planes).astype(np.float64)
    return _DetectorWeights(shape, weights, boxes, masked, com, planes, boxes[masked], ys, xs, all_planes)


def _block_sums(f: np.ndarray, w: _DetectorWeights, kernels) -> tuple[np.ndarray, np.ndarray]:
    """(sums (rows, cols, masked detectors), moments (CoM detectors, rows, cols, 3)) of a block of
    patterns ``f``: by numpy when ``kernels`` is None, else by the compiled loops."""
    nr, nc = f.shape[:2]
    n_masked, n_com = len(w.masked), len(w.com)
    if kernels is None:
        out = _plane_sums_numpy(f.reshape((nr * nc,) + w.shape), w.all_planes).reshape(nr, nc, -1)
        return out[..., :n_masked], out[..., n_masked:].reshape(nr, nc, n_com, 3).transpose(2, 0, 1, 3)
    sums = np.empty((nr, nc, n_masked))
    moments = np.empty((n_com, nr, nc, 3))
    step = max(1, _SUB_BLOCK_BYTES // max(1, f[0, 0].nbytes))
    for r in range(nr):
        for c0 in range(0, nc, step):
            sub = _kernel_input(f[r, c0:c0 + step])
            if n_masked:
                kernels.plane_sums(sub, w.planes, w.planes_box, sums[r, c0:c0 + step])
            for j, i in enumerate(w.com):
                kernels.moment_sums(sub, w.weights[i], w.boxes[i], w.xs, w.ys, moments[j, r, c0:c0 + step])
    return sums, moments


def _images_in_detector_order(n: int, w: _DetectorWeights, images: np.ndarray, first: np.ndarray,
                              scale: float) -> list[np.ndarray]:
    """The ``n`` detectors' images in the order they were asked for: the masked sums as they are,
    each CoM as its first moments over its total, times ``scale`` (mrad per px, or 1)."""
    result: list[np.ndarray] = [np.empty(0)] * n
    for j, i in enumerate(w.masked):
        result[i] = images[j]
    for j, i in enumerate(w.com):
        with np.errstate(invalid="ignore", divide="ignore"):
            result[i] = first[j, 1:] / first[j, :1] * scale
    return result


def _plane_sums_numpy(frames: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """(n, k) sums of (n, ky, kx) patterns times (k, ky, kx) planes in float64, non-finite pixels as 0."""
    f = _finite(frames.reshape(frames.shape[0], -1)).astype(np.float64)
    return f @ planes.reshape(planes.shape[0], -1).T


def _bounding_box(weight: np.ndarray) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) of the non-zero weights (an empty box for none)."""
    rows = np.flatnonzero(weight.any(axis=1))
    cols = np.flatnonzero(weight.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _kernel_input(frames: np.ndarray) -> np.ndarray:
    """Patterns (n, ky, kx) as the compiled loops take them: C-ordered, native byte order, real numbers."""
    if frames.dtype.kind not in "uif" or not frames.dtype.isnative:
        frames = frames.astype(np.float32 if frames.dtype.kind not in "ui" else frames.dtype.newbyteorder("="))
    return np.ascontiguousarray(frames)


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
    engine: str = "auto",
) -> np.ndarray:
    """Mean diffraction pattern over the scan (or the positions where ``mask`` is True), on every core."""
    kernels = _compiled_kernels(dataset, engine)
    ky, kx = dataset.detector_shape

    def reduce(block: FrameBlock) -> tuple[np.ndarray, int]:
        f = block.frames
        if block.mask is not None:
            sel = f[block.mask]  # the ROI's patterns only
            return _finite(sel).sum(axis=0, dtype=np.float64), sel.shape[0]
        if kernels is None:
            return _finite(f).sum(axis=(0, 1), dtype=np.float64), f.shape[0] * f.shape[1]
        total = np.zeros((ky, kx))
        for r in range(f.shape[0]):
            kernels.pattern_sum(_kernel_input(f[r]), total)
        return total, f.shape[0] * f.shape[1]

    total = np.zeros((ky, kx))
    count = 0
    for _, _, (part, n) in map_frame_blocks(dataset, reduce, mask=mask, progress=progress, cancel=cancel):
        total += part
        count += n
    if count == 0:
        raise PolarstemError("no scan positions selected")
    return total / count


def _compiled_kernels(dataset: Dataset4D, engine: str):
    """:mod:`polarstem.frame_kernels`, or None where numpy does the sums (small scans, no numba)."""
    if engine not in ("auto", "compiled", "numpy"):
        raise PolarstemError(f"unknown engine '{engine}' (use auto, compiled or numpy)")
    if engine == "auto":
        nbytes = int(np.prod(dataset.shape)) * dataset.dtype.itemsize
        engine = "compiled" if nbytes >= COMPILED_MIN_BYTES else "numpy"
    if engine == "numpy":
        return None
    try:
        from . import frame_kernels
    except ImportError:  # numba missing or broken: numpy gives the same sums, slower
        return None
    return frame_kernels


def _finite(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return np.where(np.isfinite(a), a, 0)
    return a


def annulus_edge_warning(detector: VirtualDetector, geometry: DetectorGeometry,
                         det_shape: tuple[int, int]) -> str | None:
    """A sentence when a BF disk or ADF annulus reaches beyond the detector edge, else None.

    Beyond the nearest edge the detector integrates only part of each ring, so the image is not the
    annulus the numbers say. ("auto" outer angles stop at the edge by definition.)
    """
    if detector.kind not in ("bf", "adf") or detector.outer is None:
        return None
    outer = geometry.to_px(detector.outer, detector.units)
    cy, cx = geometry.center
    edge = min(cy + 0.5, cx + 0.5, det_shape[0] - 0.5 - cy, det_shape[1] - 0.5 - cx)
    if outer <= edge + 1e-9:
        return None
    unit = detector.units
    edge_text = f"{edge:.1f} px" if unit == "px" else f"{edge * geometry.mrad_per_px:.3g} mrad"
    what = "ADF annulus" if detector.kind == "adf" else "BF disk"
    return (f"the {what} (outer {detector.outer:g} {unit}) reaches beyond the detector edge ({edge_text} from "
            f"the centre at the nearest edge): part of it is not recorded")
