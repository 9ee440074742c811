"""Classify a lazy 4D-STEM dataset, block by block, into class / confidence / anomaly maps.

The scan is walked by :func:`polarstem.chunks.iter_frame_blocks`: a reader thread loads and prepares
the next block while the model runs on the current one, so the whole array is never in memory.
A run follows the modules in order:

- ``params``: :class:`ClassifyParams`, what the run is asked to do; ``RunPlan``, what it settles;
- ``prepare``: the calibration (checked by the bright-field disk), the lattice and mode, each
  block's preprocessed inputs;
- ``predict``: the model on a block, in batches, with symmetry averaging;
- ``vote``: the cell vote over unit-cell windows;
- ``cluster``: the same blocks on a dask.distributed cluster;
- ``result``: :class:`ClassificationResult`, the maps, and the abstention decision;
- ``run``: :func:`iter_classify` (partial results after every block, the finished one last, as
  LiberTEM's ``run_udf_iter``) and :func:`classify_scan`, the same run as one call.

Two modes (docs/classify.md):

- ``pattern``: every pattern on its own (sub-unit-cell resolution, some positions in the cell carry
  too little information);
- ``cell``: each position is classified from the unit-cell-sized window of patterns around it: one
  cell of resolution, far more reliable. Three ways (``cell_method``): ``vote`` (default) averages
  the pattern model's log-probabilities over a cell window (every pattern is judged with the
  knowledge of its own probe position, then the cell's patterns vote), choosing among the cell-sized
  windows that contain the position the one whose patterns agree best (edge-preserving: at a domain
  wall the window that stays inside one domain wins instead of one straddling the wall);
  ``vote-centred`` always uses the window centred on the position; ``mean`` classifies the mean raw
  pattern of the window with the model's cell weights. A scan samples the cell at a few fixed
  sub-cell positions, so a window's mean pattern is far from a converged position average (17-20 %
  for a 3 x 3 grid, docs/simulation.md, more than classes differ); a vote over patterns, each judged
  by a model trained at every probe position, does not depend on the sampling (the three methods
  measured side by side: docs/classify.md). ``auto`` uses ``cell`` when the scan resolves the lattice.
"""

from .params import CELL_METHODS, MODES, ClassifyParams, RunPlan, weights_mode_for
from .predict import BlockPrediction, PositionProgress, predict_batches, predict_block
from .prepare import (
    LATTICE_DESCAN_MARGIN_PX,
    PreparedBlock,
    calibrate_from_patterns,
    cell_average,
    choose_mode,
    prepare_block,
    scan_lattice,
)
from .result import ClassificationResult, abstain
from .run import classify_scan, iter_classify
from .vote import best_windows, vote_cells, vote_halo, vote_windows

__all__ = [
    "CELL_METHODS", "LATTICE_DESCAN_MARGIN_PX", "MODES", "BlockPrediction", "ClassificationResult", "ClassifyParams",
    "PositionProgress", "PreparedBlock", "RunPlan", "abstain", "best_windows", "calibrate_from_patterns",
    "cell_average", "choose_mode", "classify_scan", "iter_classify", "predict_batches", "predict_block",
    "prepare_block", "scan_lattice", "vote_cells", "vote_halo", "vote_windows", "weights_mode_for",
]
