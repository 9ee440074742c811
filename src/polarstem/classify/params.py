"""What a classification run is asked to do (:class:`ClassifyParams`) and what it settles before its
first block (:class:`RunPlan`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import PolarstemError
from ..io import BLOCK_BYTES, Calibration
from ..lattice import Lattice
from ..models.symmetry import tta_elements
from .result import ClassificationResult
from .vote import vote_halo

MODES = ("auto", "pattern", "cell")
CELL_METHODS = ("vote", "vote-centred", "mean")
#: How each voting cell method picks its window (``polarstem.classify.vote``); ``mean`` does not vote.
VOTE_KIND = {"vote": "edge", "vote-centred": "centred"}


def weights_mode_for(mode: str, cell_method: str) -> str:
    """Which weights a run uses: a cell-mode vote runs the *pattern* weights on every pattern."""
    return "pattern" if mode == "cell" and cell_method in VOTE_KIND else mode


@dataclass
class ClassifyParams:
    """The parameters of one run: the choices of ``polarstem classify`` and the Polarization map dock.

    - ``model``: a registered name (its weights for the mode are loaded) or a loaded model.
    - ``mode``: ``auto`` (``cell`` when the scan resolves the lattice), ``pattern`` or ``cell``.
    - ``cell_method``: ``vote`` (edge-preserving vote), ``vote-centred`` or ``mean`` (package docstring).
    - ``roi``: (scan rows, cols) bool, the positions to classify; None: all.
    - ``device``: ``auto``, ``cpu``, ``cuda`` or ``mps``; ``batch_size``: images per forward pass (None: by device).
    - ``tta``: symmetry images averaged per pattern, 1, 2, 4 or 8 (True: 8; None: ``symmetry.auto_tta``,
      8, or 2 for large jobs on a CPU).
    - ``lattice``: the scan's lattice; None: found in the virtual ADF image.
    - ``anomaly``: compute the anomaly score. ``wall_bands`` (cell mode): give the thin bands of the
      bisecting direction that the model reports on domain walls to the adjacent domains (``polarstem.walls``).
    - ``chunk_bytes``: memory budget of one block of patterns.
    - ``scheduler``: a dask.distributed address: the blocks are classified on the cluster's workers,
      each loading the model by name (hash-checked) from its own installation; the maps are the same.
    - ``resume_from``: the partial result of an interrupted run with the same model and mode: its
      classified positions are kept and only the rest classified.
    """

    model: str | object = "cnn"
    mode: str = "auto"
    cell_method: str = "vote"
    roi: np.ndarray | None = None
    device: str = "auto"
    batch_size: int | None = None
    tta: bool | int | None = None
    lattice: Lattice | None = None
    anomaly: bool = True
    wall_bands: bool = True
    chunk_bytes: int = BLOCK_BYTES
    scheduler: str | None = None
    resume_from: ClassificationResult | None = None

    def checked(self, scan_shape: tuple[int, int]) -> ClassifyParams:
        """A copy with ``tta`` as a count and ``roi`` as a bool mask; a one-line error for a wrong choice."""
        tta = self.tta
        if tta is not None:
            try:
                tta = len(tta_elements(tta))
            except (TypeError, ValueError) as exc:
                raise PolarstemError(str(exc)) from None
        roi = self.roi
        if roi is not None:
            roi = np.asarray(roi, dtype=bool)
            if roi.shape != tuple(scan_shape):
                raise PolarstemError(f"ROI mask shape {roi.shape} does not match the scan {tuple(scan_shape)}")
            if not roi.any():
                raise PolarstemError("the ROI selects no scan positions")
        if self.mode not in MODES:
            raise PolarstemError(f"unknown mode '{self.mode}' (use one of {', '.join(MODES)})")
        if self.cell_method not in CELL_METHODS:
            raise PolarstemError(f"unknown cell method '{self.cell_method}' (use one of {', '.join(CELL_METHODS)})")
        return replace(self, tta=tta, roi=roi)


@dataclass
class RunPlan:
    """What a run settled before its first block: the mode, the window, the model and how it runs."""

    model: object
    name: str  # registry name (a cluster's workers load the model by it), or the model's own name
    mode: str  # "pattern" or "cell"
    weights_mode: str
    vote: str | None  # "edge", "centred", or None (no vote)
    window: tuple[int, int] | None  # the cell window (rows, cols) in cell mode
    roi: np.ndarray | None  # the positions still to classify; None: all
    device: str
    tta: int
    batch_size: int
    calibration: Calibration
    prototypes: np.ndarray | None  # class prototypes in the model's embedding space, if it has them

    @property
    def halo(self) -> tuple[int, int]:
        """Rows and columns each block reads beyond its own positions (``vote.vote_halo``)."""
        return vote_halo(self.window, self.vote)

    def positions(self, scan_shape: tuple[int, int]) -> int:
        """How many scan positions the run classifies."""
        return int(self.roi.sum()) if self.roi is not None else int(np.prod(scan_shape))
