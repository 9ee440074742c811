"""The centre-of-mass (DPC) vector map: direction as a colour wheel, magnitude as brightness.

The centre of mass of each diffraction pattern moves with the in-plane electric (and magnetic)
field the probe sees, projected through the specimen. The scan coils also move the whole pattern
on the detector (descan), slowly and almost linearly across the scan; a plane fitted to each
component and subtracted removes it, together with any field that is uniform over the scan (the
two cannot be told apart from the data). The cell-averaged map is the mean vector over the
unit-cell window around each position, which removes the atomic-scale swing of the field inside
every cell and leaves what differs from cell to cell.

What it does not show here: the direction of the polarization. Measured on simulated KNN scans with
known domains, the plane-corrected, cell-averaged CoM direction agrees with the true polarization
class on only about a quarter of the positions (docs/com.md), near chance for eight classes; the
classifiers exist for that. Hue follows the class colours: a vector pointing at 45°·k from +x
(column) towards +y (row) has the colour of class k.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .chunks import ProgressCallback
from .errors import PolarstemError
from .io import Dataset4D
from .lattice import Lattice, calibration_lattice, find_lattice
from .virtual import DetectorGeometry, VirtualDetector, detector_geometry, virtual_image_list

#: Saturation and value of the class colours (polarstem.classes.direction_colors): a vector of full
#: length along class k's direction is drawn in class k's colour.
_SATURATION, _VALUE = 0.85, 0.95


@dataclass
class ComVectorMap:
    """Centre-of-mass vectors of a scan, descan removed.

    ``vectors`` and ``cell_vectors`` are (2, scan_rows, scan_cols) = (y, x) components in ``units``
    (mrad when the detector is calibrated, else px); ``cell_vectors`` is None without a resolved
    lattice. ``descan`` holds the plane removed from each component: value = c0 + c1*row + c2*col.
    """

    vectors: np.ndarray
    cell_vectors: np.ndarray | None
    descan: np.ndarray  # (2, 3)
    units: str
    lattice: Lattice | None
    detector: VirtualDetector

    def rgb(self, cell: bool = False, vmax: float | None = None) -> np.ndarray:
        """(scan_rows, scan_cols, 3) float32 in [0, 1]: hue = direction, brightness = magnitude / ``vmax``."""
        v = self.cell_vectors if cell else self.vectors
        if v is None:
            raise PolarstemError("no unit-cell average: the scan shows no resolved lattice")
        return vector_rgb(v[0], v[1], vmax)


def com_vector_map(
    dataset: Dataset4D,
    detector: VirtualDetector | str = "com",
    geometry: DetectorGeometry | None = None,
    lattice: Lattice | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ComVectorMap:
    """The CoM vector map of ``dataset``, per position and averaged over each unit cell.

    One pass over the file gives the CoM and an ADF image; the lattice (for the cell average) is
    found in the ADF image, or taken from the scan calibration at 2-2.5 steps per cell, unless one is
    given. ``detector`` is a ``com`` detector: the whole pattern, or an annulus (bright- or dark-field CoM).
    """
    det = VirtualDetector(detector) if isinstance(detector, str) else detector
    if det.kind != "com":
        raise PolarstemError(f"a CoM vector map needs a 'com' detector, not '{det.kind}'")
    if geometry is None:
        geometry = detector_geometry(dataset)
    com, adf = virtual_image_list(dataset, [det, VirtualDetector("adf")], geometry=geometry,
                                  progress=progress, cancel=cancel)
    vectors, descan = remove_descan(com)
    if lattice is None:
        step = dataset.calibration.scan_step_nm
        step = step if all(step) else None
        lattice = find_lattice(adf, step) or calibration_lattice(step)
    cell = cell_average(vectors, lattice.window) if lattice is not None and lattice.resolved else None
    return ComVectorMap(vectors=vectors, cell_vectors=cell, descan=descan,
                        units="mrad" if geometry.mrad_per_px else "px", lattice=lattice, detector=det)


def remove_descan(com: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract a least-squares plane (c0 + c1*row + c2*col) from each of the (2, rows, cols) components.

    Positions without a CoM (no counts) are left out of the fit and stay NaN. Returns the corrected
    components and the (2, 3) plane coefficients.
    """
    com = np.asarray(com, dtype=np.float64)
    if com.ndim != 3 or com.shape[0] != 2:
        raise PolarstemError(f"CoM components must be (2, rows, cols), got {com.shape}")
    rows, cols = np.indices(com.shape[1:], dtype=np.float64)
    design = np.stack([np.ones(rows.size), rows.ravel(), cols.ravel()], axis=1)
    out = np.empty_like(com)
    coeffs = np.zeros((2, 3))
    for k in range(2):
        v = com[k].ravel()
        ok = np.isfinite(v)
        if ok.sum() >= 3:
            coeffs[k] = np.linalg.lstsq(design[ok], v[ok], rcond=None)[0]
        elif ok.any():
            coeffs[k, 0] = v[ok].mean()
        out[k] = (v - design @ coeffs[k]).reshape(com.shape[1:])
    return out, coeffs


def cell_average(vectors: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Mean of each component over the ``window`` (rows, cols) around each position (edges: nearest; NaN left out)."""
    from scipy import ndimage

    v = np.asarray(vectors, dtype=np.float64)
    ok = np.isfinite(v).all(axis=0)
    size = (max(1, int(window[0])), max(1, int(window[1])))
    weight = ndimage.uniform_filter(ok.astype(np.float64), size=size, mode="nearest")
    out = np.empty_like(v)
    for k in range(v.shape[0]):
        summed = ndimage.uniform_filter(np.where(ok, v[k], 0.0), size=size, mode="nearest")
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k] = np.where(weight > 0, summed / weight, np.nan)
    return out


def vector_rgb(vy: np.ndarray, vx: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """RGB (float32, [0, 1]) of vectors: hue from the direction, as the class colours; value from the length.

    ``vmax`` (the length drawn at full brightness) defaults to the 99th percentile of the lengths.
    Missing vectors are black.
    """
    from matplotlib.colors import hsv_to_rgb

    vy = np.asarray(vy, dtype=np.float64)
    vx = np.asarray(vx, dtype=np.float64)
    mag = np.hypot(vy, vx)
    ok = np.isfinite(mag)
    if vmax is None:
        vmax = float(np.percentile(mag[ok], 99)) if ok.any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    hue = (np.arctan2(vy, vx) / (2 * np.pi)) % 1.0
    value = _VALUE * np.clip(np.where(ok, mag, 0.0) / vmax, 0.0, 1.0)
    hsv = np.stack([np.where(ok, hue, 0.0), np.full(hue.shape, _SATURATION), value], axis=-1)
    return hsv_to_rgb(hsv).astype(np.float32)


def colour_wheel(size: int = 64) -> np.ndarray:
    """The legend: (size, size, 3) RGB of vectors from the centre, length 1 at the rim, black outside."""
    c = (size - 1) / 2
    yy, xx = np.indices((size, size), dtype=np.float64)
    vy, vx = (yy - c) / c, (xx - c) / c
    rgb = vector_rgb(vy, vx, vmax=1.0)
    rgb[np.hypot(vy, vx) > 1.0] = 0.0
    return rgb
