"""Before the model runs: the calibration to classify with, the scan's lattice and mode, and each
block's inputs (selected positions, cell means or voters, preprocessed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..anomaly import fingerprint
from ..errors import PolarstemError
from ..io import Calibration, Dataset4D
from ..lattice import Lattice, calibration_lattice, find_lattice
from ..ruler import complete_calibration, measure_ruler, sample_frames
from ..virtual import VirtualDetector, detector_geometry, virtual_images
from .params import MODES
from .vote import VoteContext, vote_needs

#: Extra inner radius (px) of the lattice finder's second ADF annulus: room for descan (``scan_lattice``).
LATTICE_DESCAN_MARGIN_PX = 4.0


def calibrate_from_patterns(dataset: Dataset4D) -> tuple[Calibration, list[str]]:
    """The calibration to classify with (the file's, completed and checked by the bright-field disk
    of a few hundred of its patterns, ``polarstem.ruler``) and one sentence per finding."""
    try:
        ruler = measure_ruler(sample_frames(dataset))
    except (ValueError, MemoryError, OSError):
        ruler = None
    return complete_calibration(dataset.calibration, ruler)


def scan_lattice(dataset: Dataset4D, progress=None, cancel=None,
                 calibration: Calibration | None = None) -> tuple[Lattice | None, np.ndarray | None]:
    """The lattice from the virtual ADF image (atomic columns show best in ADF), and that image.

    The annulus first hugs the bright-field disk (from 1.1 disk radii: the best column contrast). When
    that image shows no lattice, a second one, made in the same pass, starts
    ``LATTICE_DESCAN_MARGIN_PX`` further out: a descan offset of up to ±3 px (physics.md) that varies
    from pattern to pattern moves the disk edge into an annulus that hugs it, and on a small detector
    (43 px, disk radius 10 px) that flicker buries the lattice (not found with a random 3 px descan;
    found with the margin). Last, a bright-field image whose detector stays that margin inside the
    disk's edge: the columns show in bright field too, and no descan within the margin moves the disk's
    edge into it (on the 64 px sample with a random 3 px descan the thin outer annulus left is too
    weak at 2e4 electrons, the bright field is not).
    """
    try:
        geometry = detector_geometry(dataset, calibration=calibration)  # the ruler is not measured twice
        inner = 1.1 * geometry.disk_radius_px
        inners = [inner]
        if inner + LATTICE_DESCAN_MARGIN_PX < 0.9 * min(dataset.detector_shape) / 2:  # room for the wider margin
            inners.append(inner + LATTICE_DESCAN_MARGIN_PX)
        detectors = [VirtualDetector("adf", inner=r, units="px") for r in inners]
        bf_outer = geometry.disk_radius_px - LATTICE_DESCAN_MARGIN_PX
        if bf_outer >= 0.5 * geometry.disk_radius_px:  # a bright-field disk well inside the disk's edge
            detectors.append(VirtualDetector("bf", outer=bf_outer, units="px"))
        images = virtual_images(dataset, detectors, geometry=geometry, progress=progress,
                                cancel=cancel)  # one pass for all
    except PolarstemError:
        return None, None
    step = dataset.calibration.scan_step_nm
    step = step if all(step) else None
    first = None
    for image in images:
        lattice = find_lattice(image, step)
        first = lattice if first is None else first
        if lattice is not None and lattice.resolved:
            return lattice, image
    return first or calibration_lattice(step), images[0]


def choose_mode(mode: str, dataset: Dataset4D, lattice: Lattice | None) -> str:
    """``pattern`` or ``cell``: ``auto`` is cell when the scan resolves the lattice."""
    if mode not in MODES:
        raise PolarstemError(f"unknown mode '{mode}' (use one of {', '.join(MODES)})")
    if mode == "auto":
        return "cell" if lattice is not None and lattice.resolved else "pattern"
    if mode == "cell" and (lattice is None or not lattice.resolved):
        raise PolarstemError(
            f"{dataset.name}: cell mode needs a scan that resolves the lattice (no lattice found in the "
            "virtual image); use --mode pattern")
    return mode


@dataclass
class PreparedBlock:
    """One block's model inputs, made in the reader thread.

    ``sel``: the selected positions of the block (inner rows, cols). ``x``: preprocessed inputs, one per
    selected position, or, for a vote, one per pattern of ``vote.need``. ``informative`` / ``usable``:
    per input, what preprocessing judged (``usable`` leaves out the featureless test: such patterns
    vote). ``fingerprint``: each selected position's own coarse pattern (``anomaly.fingerprint``).
    """

    sel: np.ndarray
    x: np.ndarray
    informative: np.ndarray
    usable: np.ndarray
    vote: VoteContext | None
    fingerprint: np.ndarray


def prepare_block(model, frames, inner_rows, inner_cols, mask, window, calibration, vote=None) -> PreparedBlock:
    """Select the requested positions of a block (with halo), average cells or not, preprocess.

    ``vote``: None (no vote), "centred" or "edge" (``polarstem.classify.vote``); without a vote, a
    ``window`` means the ``mean`` cell method: each position's input is its window's mean pattern.
    """
    inner_shape = frames[inner_rows, inner_cols].shape[:2]
    sel = np.ones(inner_shape, bool) if mask is None else np.asarray(mask, bool)
    if window and vote:
        selected = np.zeros(frames.shape[:2], bool)
        selected[inner_rows, inner_cols] = sel
        need = vote_needs(selected, window, vote)
        x, informative, usable = _preprocess(model, frames[need], calibration)
        index = np.full(need.shape, -1, np.int64)
        index[need] = np.arange(int(need.sum()))
        fp = fingerprint(x[index[inner_rows, inner_cols][sel]])  # each position's own pattern
        return PreparedBlock(sel, x, informative, usable, VoteContext(need, inner_rows, inner_cols, vote), fp)
    if window:
        frames = cell_average(frames, window)
    inner = frames[inner_rows, inner_cols]
    x, informative, usable = _preprocess(model, inner[sel], calibration)
    return PreparedBlock(sel, x, informative, usable, None, fingerprint(x))


def _preprocess(model, frames, calibration):
    """(x, informative, usable) from the model's preprocessing (``BaseModel.preprocess``)."""
    x, informative, info = model.preprocess(frames, calibration, return_info=True)
    return x, informative, info["usable"]


def cell_average(frames: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Mean of the raw patterns in a ``window`` (rows, cols) around each scan position (edges: nearest)."""
    from scipy import ndimage

    f = frames.astype(np.float32, copy=False)
    f = np.where(np.isfinite(f), f, 0.0) if f.dtype.kind == "f" and not np.isfinite(f).all() else f
    return ndimage.uniform_filter(f, size=(window[0], window[1], 1, 1), mode="nearest")
