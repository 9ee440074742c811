"""Classify a lazy 4D-STEM dataset, chunk by chunk, into class / confidence / anomaly maps.

The scan is walked by :func:`polarstem.chunks.iter_frame_blocks`: a reader thread loads and
preprocesses the next block while the model runs on the current one, so the whole array is never in
memory. Two modes (see docs/classify.md):

- ``pattern``: every pattern on its own (sub-unit-cell resolution, some positions in the cell carry
  too little information);
- ``cell``: each position is classified from the unit-cell-sized window of patterns around it: one
  cell of resolution, far more reliable. Three ways (``cell_method``): ``vote`` (default) averages
  the pattern model's log-probabilities over a cell window (every pattern is judged with the
  knowledge of its own probe position, then the cell's patterns vote), choosing among the cell-sized
  windows that contain the position the one whose patterns agree best (edge-preserving, like a
  Kuwahara filter: at a domain wall the window that stays inside one domain wins instead of one
  straddling the wall); ``vote-centred`` always uses the window centred on the position; ``mean``
  classifies the mean raw pattern of the window with the model's cell weights. A scan samples the
  cell at a few fixed sub-cell positions, so a window's mean pattern is far from a converged
  position average (17-20 % for a 3 x 3 grid, docs/simulation.md): the centred vote measured 0.77 /
  0.94 on the sample and validation scan A where ``mean`` gave 0.16 / 0.55 (first weights); the
  edge-preserving vote lifted the second release's resnet from 0.924 / 0.946 / 0.728 (centred) to
  0.981 / 0.959 / 0.802 on the sample and validation scans A / B. ``auto`` uses ``cell`` when the
  scan resolves the lattice.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .anomaly import fingerprint
from .chunks import iter_frame_blocks
from .classes import N_CLASSES, NO_CLASS, UNCERTAIN
from .errors import Cancelled, PolarstemError
from .io import BLOCK_BYTES, Dataset4D
from .lattice import Lattice, calibration_lattice, find_lattice

MODES = ("auto", "pattern", "cell")
CELL_METHODS = ("vote", "vote-centred", "mean")
#: How each voting cell method picks its window (see the module docstring).
_VOTE_KIND = {"vote": "edge", "vote-centred": "centred"}


def weights_mode_for(mode: str, cell_method: str) -> str:
    """Which weights a run uses: a cell-mode vote runs the *pattern* weights on every pattern."""
    return "pattern" if mode == "cell" and cell_method in _VOTE_KIND else mode


@dataclass
class ClassificationResult:
    """Maps of shape (scan_rows, scan_cols) for one run; valid where ``done`` is True."""

    classes: np.ndarray  # int8, -1 = not classified
    confidence: np.ndarray  # float32 max probability, NaN where not classified
    margin: np.ndarray  # float32 top-1 minus top-2 probability
    proba: np.ndarray  # float32 (rows, cols, 8)
    embedding_distance: np.ndarray  # float32 distance of the embedding to its class prototype
    informative: np.ndarray  # bool: preprocessing judged the input informative (the filter map)
    done: np.ndarray  # bool: positions that were classified
    anomaly: np.ndarray | None = None  # float32, filled by score_anomaly
    fingerprint: np.ndarray | None = None  # float16 (rows, cols, F): coarse model input (anomaly.fingerprint)
    usable: np.ndarray | None = None  # bool: not broken (featureless counts as usable; such patterns vote)
    background: np.ndarray | None = None  # virtual ADF image, when the lattice search made one
    distance: np.ndarray | None = None  # float32 pooled distance of the embedding to the training data (abstain.py)
    votes: np.ndarray | None = None  # float32 patterns pooled per position (1 in pattern mode)
    uncertain: np.ndarray | None = None  # bool: the model abstains there (the class map holds -2)
    verdict: str | None = None  # one sentence when most of the scan is uncertain
    notes: list = field(default_factory=list)  # what the ruler found about the calibration, and the like
    mode: str = "pattern"
    lattice: Lattice | None = None
    model: str = ""
    model_sha256: str = ""
    device: str = "cpu"
    complete: bool = True
    seconds: float = 0.0
    n_patterns: int = 0
    params: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, scan_shape: tuple[int, int], **kw) -> "ClassificationResult":
        nan = lambda: np.full(scan_shape, np.nan, np.float32)  # noqa: E731
        return cls(
            classes=np.full(scan_shape, NO_CLASS, np.int8), confidence=nan(), margin=nan(),
            proba=np.full(scan_shape + (N_CLASSES,), np.nan, np.float32), embedding_distance=nan(),
            informative=np.zeros(scan_shape, bool), done=np.zeros(scan_shape, bool), usable=np.zeros(scan_shape, bool),
            distance=nan(), votes=nan(), **kw,
        )

    @property
    def mode_label(self) -> str:
        """The mode as a status line shows it, saying when the cell came from the calibration alone."""
        if self.mode == "cell" and self.lattice is not None and self.lattice.source == "calibration":
            return "cell mode (lattice from the scan calibration: the ADF image shows none)"
        return f"{self.mode} mode"

    def maps(self) -> dict[str, np.ndarray]:
        """All maps by name, as written to ``maps.hspy``."""
        out = {"class": self.classes, "confidence": self.confidence, "margin": self.margin,
               "embedding_distance": self.embedding_distance,
               "informative": self.informative.astype(np.uint8), "done": self.done.astype(np.uint8)}
        if self.anomaly is not None:
            out["anomaly"] = self.anomaly
        if self.distance is not None:
            out["distance_to_training"] = self.distance
        if self.uncertain is not None:
            out["uncertain"] = self.uncertain.astype(np.uint8)
        return out


#: Extra inner radius (px) of the lattice finder's second ADF annulus: room for descan (``scan_lattice``).
LATTICE_DESCAN_MARGIN_PX = 4.0


def choose_mode(mode: str, dataset: Dataset4D, lattice: Lattice | None) -> str:
    if mode not in MODES:
        raise PolarstemError(f"unknown mode '{mode}' (use one of {', '.join(MODES)})")
    if mode == "auto":
        return "cell" if lattice is not None and lattice.resolved else "pattern"
    if mode == "cell" and (lattice is None or not lattice.resolved):
        raise PolarstemError(
            f"{dataset.name}: cell mode needs a scan that resolves the lattice (no lattice found in the "
            "virtual image); use --mode pattern")
    return mode


def scan_lattice(dataset: Dataset4D, progress=None, cancel=None) -> tuple[Lattice | None, np.ndarray | None]:
    """The lattice from the virtual ADF image (atomic columns show best in ADF), and that image.

    The annulus first hugs the bright-field disk (from 1.1 disk radii: the best column contrast). When
    that image shows no lattice, a second one, made in the same pass, starts
    ``LATTICE_DESCAN_MARGIN_PX`` further out: a descan offset of up to ±3 px (physics.md) that varies from pattern to pattern moves the disk edge
    into an annulus that hugs it, and on a small detector (the sample: 43 px, disk radius 10 px) that
    flicker buries the lattice (not found with a random 3 px descan; found with the margin).
    """
    from .virtual import VirtualDetector, detector_geometry, virtual_images

    try:
        geometry = detector_geometry(dataset)
        inner = 1.1 * geometry.disk_radius_px
        inners = [inner]
        if inner + LATTICE_DESCAN_MARGIN_PX < 0.9 * min(dataset.detector_shape) / 2:  # room for the wider margin
            inners.append(inner + LATTICE_DESCAN_MARGIN_PX)
        images = virtual_images(dataset, [VirtualDetector("adf", inner=r, units="px") for r in inners],
                                geometry=geometry, progress=progress, cancel=cancel)  # one pass for both
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


def classify_scan(
    dataset: Dataset4D,
    model: str | object = "cnn",
    mode: str = "auto",
    roi: np.ndarray | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    lattice: Lattice | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    on_block: Callable[[ClassificationResult], None] | None = None,
    anomaly: bool = True,
    chunk_bytes: int = BLOCK_BYTES,
    scheduler: str | None = None,
    resume_from: ClassificationResult | None = None,
    cell_method: str = "vote",
    tta: bool | int | None = None,
    wall_bands: bool = True,
) -> ClassificationResult:
    """Classify every selected scan position. Cancelling returns the result so far (``complete=False``).

    With ``scheduler`` (a dask.distributed address) the blocks are classified on the cluster's
    workers, each loading the model by name (hash-checked) from its own installation; the maps are
    the same as a local run. ``resume_from`` (the partial result of an interrupted run with the same
    model and mode) keeps its classified positions and classifies only the rest. ``tta``: how many
    symmetry images of each pattern are averaged (1, 2, 4 or 8; None = automatic, ``symmetry.auto_tta``:
    8, or 2 for large jobs on a CPU). ``wall_bands`` (cell mode): give the thin bands of the bisecting
    direction that the model reports on domain walls to the adjacent domains (``polarstem.walls``).
    """
    from .device import choose_device, default_batch_size
    from .models import load_model
    from .models.symmetry import auto_tta, tta_elements

    t0 = time.perf_counter()
    if tta is not None:
        try:
            tta = len(tta_elements(tta))
        except (TypeError, ValueError) as exc:
            raise PolarstemError(str(exc)) from None
    if roi is not None:
        roi = np.asarray(roi, dtype=bool)
        if roi.shape != dataset.scan_shape:
            raise PolarstemError(f"ROI mask shape {roi.shape} does not match the scan {dataset.scan_shape}")
        if not roi.any():
            raise PolarstemError("the ROI selects no scan positions")
    calibration, notes = calibrate_from_patterns(dataset)
    background = None
    if lattice is None:  # cell windows need it, and the anomaly score's phase model in every mode
        try:
            lattice, background = scan_lattice(dataset, progress=progress, cancel=cancel)
        except (Cancelled, KeyboardInterrupt):  # stopped before any position was classified
            return ClassificationResult.empty(dataset.scan_shape, mode="pattern" if mode == "auto" else mode,
                                              complete=False, notes=list(notes))
    mode = choose_mode(mode, dataset, lattice)
    if cell_method not in CELL_METHODS:
        raise PolarstemError(f"unknown cell method '{cell_method}' (use one of {', '.join(CELL_METHODS)})")
    vote = _VOTE_KIND.get(cell_method) if mode == "cell" else None
    weights_mode = weights_mode_for(mode, cell_method)
    if resume_from is not None:
        if resume_from.classes.shape != dataset.scan_shape or resume_from.mode != mode:
            raise PolarstemError("the partial result to resume does not match this scan or mode")
        todo = ~resume_from.done if roi is None else (roi & ~resume_from.done)
        roi = todo
    dev = choose_device(device)
    if tta is None:
        tta = auto_tta(int(roi.sum()) if roi is not None else int(np.prod(dataset.scan_shape)), dev)
    if isinstance(model, str):
        name = model
        model = load_model(name, mode=weights_mode, device=dev)
    else:
        name = getattr(model, "card", {}).get("name", type(model).__name__)
        if hasattr(model, "to"):
            model.to(dev)
    bs = batch_size or default_batch_size(dev, int(np.prod(getattr(model, "input_shape", (64, 64)))))
    card = getattr(model, "card", {}) or {}
    result = ClassificationResult.empty(
        dataset.scan_shape, mode=mode, lattice=lattice, model=name, model_sha256=card.get("sha256", ""),
        device=dev, background=background,
        params={"mode": mode, "batch_size": bs, "roi": roi is not None, "weights_mode": weights_mode, "tta": tta,
                **({"cell_method": cell_method} if mode == "cell" else {})},
    )
    if resume_from is not None:
        if resume_from.model_sha256 and resume_from.model_sha256 != result.model_sha256:
            raise PolarstemError("the partial result to resume was made with other model weights")
        for key in ("classes", "confidence", "margin", "proba", "embedding_distance", "informative", "done"):
            setattr(result, key, getattr(resume_from, key).copy())
        if resume_from.usable is not None:
            result.usable = resume_from.usable.copy()
        if resume_from.fingerprint is not None:
            result.fingerprint = resume_from.fingerprint.copy()
        result.n_patterns = int(result.done.sum())
        for key in ("distance", "votes"):
            if getattr(resume_from, key, None) is not None:
                setattr(result, key, getattr(resume_from, key).copy())
        # the leading class where the interrupted run had written -2 (abstention is decided again at the end)
        was_uncertain = result.done & (result.classes == UNCERTAIN)
        result.classes[was_uncertain] = np.nanargmax(np.nan_to_num(result.proba[was_uncertain], nan=-1.0), axis=-1)
    result.notes = list(notes)
    result.params["calibration"] = calibration.to_dict()
    window = lattice.window if (mode == "cell" and lattice is not None) else None
    halo = vote_halo(window, vote)
    prototypes = _prototypes(model)

    def prepare(block):
        """Runs in the reader thread: select positions, average cells, preprocess."""
        return prepare_block(model, block.frames, block.inner_rows, block.inner_cols, block.mask, window, calibration,
                             vote)

    try:
        if roi is not None and not roi.any():
            pass  # a resumed run with nothing left to do
        elif scheduler:
            if not isinstance(name, str) or name not in _registered_names():
                raise PolarstemError("a cluster run needs a registered model name (workers load it themselves)")
            _classify_on_cluster(result, dataset, name, weights_mode, roi, window, halo, chunk_bytes, bs, scheduler,
                                 prototypes, progress, cancel, on_block, vote, tta, calibration)
        else:
            total = int(roi.sum()) if roi is not None else int(np.prod(dataset.scan_shape))
            report = PositionProgress(progress, total)
            for block in iter_frame_blocks(
                dataset, mask=roi, budget=chunk_bytes, cancel=cancel, halo=halo, transform=prepare,
            ):
                base, n_sel = report.done, int(block.prepared[0].sum())
                try:
                    out = predict_block(model, block.prepared, bs, window, cancel, tta,
                                        on_batch=lambda k, n, b=base, m=n_sel: report(b + m * k // max(n, 1)))
                except Cancelled as exc:  # keep what the block finished
                    if getattr(exc, "block", None) is not None and len(exc.block.proba):
                        _store(result, block.rows, block.cols, exc.block, prototypes)
                        result.n_patterns += len(exc.block.proba)
                    raise
                report(base + n_sel, force=True)
                if out.proba is None:
                    continue
                _store(result, block.rows, block.cols, out, prototypes)
                result.n_patterns += int(out.sel.sum())
                if on_block is not None:
                    on_block(result)
    except (Cancelled, KeyboardInterrupt):
        result.complete = False
    if mode == "cell" and window and result.done.any():
        result.params["wall_bands"] = "assigned" if wall_bands else "kept"
        if wall_bands:
            from .walls import assign_wall_bands

            classes, changed = assign_wall_bands(result.classes, result.proba, result.done, window)
            result.classes = classes.astype(result.classes.dtype)
            result.params["wall_band_positions"] = int(changed.sum())
    result.seconds = time.perf_counter() - t0
    if anomaly and result.done.any():
        from .anomaly import score_anomaly

        result.anomaly = score_anomaly(result)
    abstain(result, getattr(model, "abstention", None))
    return result


def calibrate_from_patterns(dataset: Dataset4D):
    """The calibration to classify with (the file's, completed and checked by the bright-field disk
    of a few hundred of its patterns, ``polarstem.ruler``) and one sentence per finding."""
    from .ruler import complete_calibration, measure_ruler, sample_frames

    try:
        ruler = measure_ruler(sample_frames(dataset))
    except (ValueError, MemoryError, OSError):
        ruler = None
    return complete_calibration(dataset.calibration, ruler)


def abstain(result: ClassificationResult, abstention) -> None:
    """Mark the positions where the model abstains: -2 in the class map, ``uncertain`` True.

    Positions without an informative pattern (broken: non-finite, empty, no bright-field disk; or,
    in a cell window, no pattern whose disk stands out from its surroundings: noise, a blank
    detector) always abstain; with the model's
    calibrated thresholds (``polarstem.abstain``) so do positions whose patterns lie far from the
    training data or where no direction clearly wins. Runs after the wall bands and the anomaly
    score, which read the model's leading class everywhere."""
    from .abstain import scan_verdict

    done = result.done
    unc = done & ~result.informative
    if result.usable is not None:
        unc |= done & ~result.usable
    if abstention is not None and abstention.calibrated and result.distance is not None:
        votes = np.where(np.isfinite(result.votes), result.votes, 1.0) if result.votes is not None else 1.0
        unc |= done & abstention.uncertain(result.distance, result.confidence, votes)
    result.uncertain = unc
    result.classes = np.where(unc, np.int8(UNCERTAIN), result.classes).astype(np.int8)
    result.verdict = scan_verdict(unc, done)
    result.params["uncertain_fraction"] = round(float(unc.sum() / max(1, done.sum())), 4)


def vote_halo(window, vote=None) -> tuple[int, int]:
    """Rows/columns a block needs beyond its own positions: half a window, or a whole window minus one
    for the edge-preserving vote (its candidate windows reach w - 1 positions away)."""
    if not window:
        return (0, 0)
    if vote == "edge":
        return tuple(max(w // 2 + 1, w - 1) for w in window)
    return (window[0] // 2 + 1, window[1] // 2 + 1)


def prepare_block(model, frames, inner_rows, inner_cols, mask, window, calibration, vote=None):
    """Select the requested positions of a block (with halo), average cells or not, preprocess.

    ``vote``: None (no vote), "centred" or "edge" (see the module docstring). Returns (sel, x,
    informative, usable, ctx): ``sel`` the selected inner positions; ``usable`` the informative mask
    without the featureless test (those patterns vote); for a vote, ctx is (need, inner_rows,
    inner_cols, vote), ``need`` marking every block position whose pattern lies in a window the vote
    may use (x holds those); else None.
    """
    inner_shape = frames[inner_rows, inner_cols].shape[:2]
    sel = np.ones(inner_shape, bool) if mask is None else np.asarray(mask, bool)
    if window and vote:
        from scipy import ndimage

        need = np.zeros(frames.shape[:2], bool)
        need[inner_rows, inner_cols] = sel
        if vote == "edge":  # the windows containing a position span w - 1 positions either side
            need = ndimage.maximum_filter(need, size=(2 * window[0] - 1, 2 * window[1] - 1), mode="constant")
        else:
            need = _window_sum(need.astype(np.float32), window) > 0.5
        x, informative, usable = _preprocess(model, frames[need], calibration)
        index = np.full(need.shape, -1, np.int64)
        index[need] = np.arange(int(need.sum()))
        fp = fingerprint(x[index[inner_rows, inner_cols][sel]])  # each position's own pattern
        return sel, x, informative, usable, (need, inner_rows, inner_cols, vote), fp
    if window:
        frames = cell_average(frames, window)
    inner = frames[inner_rows, inner_cols]
    x, informative, usable = _preprocess(model, inner[sel], calibration)
    return sel, x, informative, usable, None, fingerprint(x)


def _preprocess(model, frames, calibration):
    """(x, informative, usable) from the model's preprocessing (``BaseModel.preprocess``)."""
    x, informative, info = model.preprocess(frames, calibration, return_info=True)
    return x, informative, info["usable"]


def _window_sum(values: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Sum over a ``window`` around each position (zeros beyond the block), same alignment as
    :func:`cell_average`; trailing axes are carried along."""
    from scipy import ndimage

    size = tuple(window) + (1,) * (values.ndim - 2)
    return ndimage.uniform_filter(values, size=size, mode="constant") * (window[0] * window[1])


@dataclass
class BlockPrediction:
    """What one block's positions get: per selected position (``sel``) of the block."""

    sel: np.ndarray
    proba: np.ndarray | None
    emb: np.ndarray | None
    informative: np.ndarray
    usable: np.ndarray
    fingerprint: np.ndarray | None
    distance: np.ndarray | None = None  # distance of the embedding to the training data (pooled in a vote)
    votes: np.ndarray | None = None  # patterns pooled per position


def _distance(model, emb):
    """Per-pattern distance of the embedding to the training data (None without calibrated abstention)."""
    abstention = getattr(model, "abstention", None)
    return abstention.distance(emb) if (abstention is not None and emb is not None) else None


class PositionProgress:
    """``progress(done, total)`` in scan positions, at most every ``interval`` seconds (and at the end)."""

    def __init__(self, progress, total: int, interval: float = 0.25):
        self.progress, self.total, self.interval = progress, int(total), interval
        self.done, self._last = 0, 0.0
        if progress:
            progress(0, self.total)

    def __call__(self, done: int, force: bool = False) -> None:
        self.done = min(self.total, int(done))
        now = time.monotonic()
        if self.progress and (force or now - self._last >= self.interval):
            self._last = now
            self.progress(self.done, self.total)


def predict_block(model, prepared, batch_size, window, cancel=None, tta=False, on_batch=None) -> BlockPrediction:
    """Predictions of one prepared block; a vote pools its window first (the fingerprint stays each
    position's own). ``on_batch(done, total)`` follows the block's forward passes."""
    sel, x, informative, usable, ctx, fp = prepared
    try:
        proba, emb = predict_batches(model, x, batch_size, cancel, tta, on_batch)
    except Cancelled as exc:  # without a vote, the positions done so far are kept
        if ctx is None and getattr(exc, "partial", None) is not None:
            proba, emb = exc.partial
            k = len(proba)
            keep = np.zeros(sel.size, bool)
            keep[np.flatnonzero(sel.ravel())[:k]] = True
            exc.block = BlockPrediction(keep.reshape(sel.shape), proba, emb, informative[:k], usable[:k],
                                        None if fp is None else fp[:k], _distance(model, emb),
                                        np.ones(k, np.float32))
        raise
    dist = _distance(model, emb)
    if proba is None or ctx is None:
        return BlockPrediction(sel, proba, emb, informative, usable, fp, dist,
                               None if proba is None else np.ones(len(proba), np.float32))
    proba, emb, informative, usable, dist, votes = vote_windows(ctx, sel, proba, emb, informative, window,
                                                                 voters=usable, distance=dist)
    return BlockPrediction(sel, proba, emb, informative, usable, fp, dist, votes)


def vote_windows(ctx, sel, proba, emb, informative, window, voters=None, distance=None):
    """Pool per-pattern predictions over each selected position's cell window.

    The class scores are the mean log-probabilities of the window's usable patterns (a product of
    experts, renormalised); the embedding is their mean. Broken patterns (non-finite, empty, too few
    counts, no disk) do not vote; featureless ones (low disk contrast) do: measured on the
    validation scans, letting them vote raised scan A 0.993 -> 1.000 away from defects (AUC 0.918 ->
    0.961) and C 0.992 -> 0.997, and changed nothing on the sample and B (docs/classify.md). A
    window without any informative pattern is still flagged uninformative (the filter map). Returns
    (proba, emb, informative, usable, distance, votes) of the selected positions: ``distance`` is the
    voters' mean of the per-pattern ``distance`` (None when not given), ``votes`` how many voted;
    ``voters`` default: ``informative``.
    """
    need, inner_rows, inner_cols, vote = ctx
    logp, ok = _log_votes(proba, informative if voters is None else voters)
    shape = need.shape
    grid_logp = np.zeros(shape + (proba.shape[1],), np.float32)
    grid_logp[need] = logp
    e = np.zeros(shape + (emb.shape[1],), np.float32)
    e[need] = emb * ok[:, None]
    w = np.zeros(shape, np.float32)
    w[need] = ok
    flag = np.zeros(shape, np.float32)
    flag[need] = np.asarray(informative, np.float32)
    dist = np.zeros(shape, np.float32)
    if distance is not None:
        dist[need] = np.nan_to_num(distance) * ok
    s_logp, s_n, s_emb = _window_sum(grid_logp, window), _window_sum(w, window), _window_sum(e, window)
    s_flag, s_dist = _window_sum(flag, window), _window_sum(dist, window)
    if vote == "edge":
        qy, qx = best_windows(s_logp, s_n, window)
        s_logp, s_n, s_emb, s_flag, s_dist = s_logp[qy, qx], s_n[qy, qx], s_emb[qy, qx], s_flag[qy, qx], s_dist[qy, qx]

    def inner(a):
        return a[inner_rows, inner_cols][sel]

    n = inner(s_n)
    emb_out = inner(s_emb) / np.maximum(n, 1e-6)[:, None]
    dist_out = None
    if distance is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            dist_out = np.where(n > 0.5, inner(s_dist) / n, np.nan).astype(np.float32)
    return (_pooled_proba(inner(s_logp), n), emb_out.astype(np.float32), inner(s_flag) > 0.5, n > 0.5, dist_out,
            n.astype(np.float32))


def best_windows(logp_sum: np.ndarray, n: np.ndarray, window) -> tuple[np.ndarray, np.ndarray]:
    """For every position, the centre (qy, qx) of the cell window containing it whose patterns agree
    best: the highest mean log-probability of its leading class. The centred window wins ties.

    ``logp_sum`` (H, W, 8) and ``n`` (H, W) are window sums centred on each position (as
    :func:`_window_sum` makes them); returns index arrays (H, W) into them.
    """
    h, w_ = n.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(n > 0.5, (logp_sum / np.maximum(n, 1e-6)[..., None]).max(axis=-1), -np.inf)
    yy, xx = np.indices((h, w_))
    qy, qx = yy.copy(), xx.copy()
    best = score.copy()
    # a window cut by the scan edge (or an ROI) holds fewer votes: it competes only when at least half full
    score = np.where(n >= 0.5 * window[0] * window[1], score, -np.inf)
    # window(q) covers q - w//2 .. q + (w - 1 - w//2): the centres whose window holds p
    for dy in range(-(window[0] - 1 - window[0] // 2), window[0] // 2 + 1):
        for dx in range(-(window[1] - 1 - window[1] // 2), window[1] // 2 + 1):
            if dy == 0 and dx == 0:
                continue
            cy, cx = yy + dy, xx + dx
            inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w_)
            cand = np.full((h, w_), -np.inf)
            cand[inside] = score[cy[inside], cx[inside]]
            better = cand > best
            best[better] = cand[better]
            qy[better], qx[better] = cy[better], cx[better]
    return qy, qx


def vote_cells(proba, informative, voters=None):
    """The vote of :func:`vote_windows` over whole cells: ``proba`` (cells, positions, 8),
    ``informative`` and ``voters`` (cells, positions; default the informative ones) -> (proba (cells, 8),
    informative (cells,): any informative pattern)."""
    logp, ok = _log_votes(proba, informative if voters is None else voters)
    n = ok.sum(axis=1)
    return _pooled_proba(logp.sum(axis=1), n), np.asarray(informative, bool).any(axis=1)


def _log_votes(proba, informative):
    """Log-probabilities of the informative patterns (zero for the others) and the 0/1 weights."""
    ok = np.asarray(informative, bool).astype(np.float32)
    return np.log(np.clip(proba, 1e-6, 1.0)) * ok[..., None], ok


def _pooled_proba(logp_sum, n):
    """Softmax of the mean log-probability (a product of experts, renormalised)."""
    m = logp_sum / np.maximum(n, 1e-6)[..., None]
    p = np.exp(m - m.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)


def predict_batches(model, x, batch_size, cancel=None, tta=False, on_batch=None):
    """Probabilities and embeddings of preprocessed inputs, batch by batch (cancel between batches).

    ``tta`` averages each input's log-probabilities over that many square-symmetry images (as much
    cost); a batch holds ``batch_size`` images in all, so it takes about as long whatever ``tta`` is
    (progress and cancel stay responsive). ``on_batch(done, total)`` follows the inputs done."""
    from .models.symmetry import tta_elements

    step = max(1, batch_size // len(tta_elements(tta)))
    probs, embs = [], []
    for start in range(0, len(x), step):
        if cancel is not None and cancel.is_set():
            exc = Cancelled("cancelled by the user")
            exc.partial = (np.concatenate(probs), np.concatenate(embs)) if probs else None  # the inputs done
            raise exc
        out = model.predict(x[start : start + step], batch_size=batch_size, tta=tta)
        probs.append(out["proba"])
        embs.append(out["embedding"])
        if on_batch is not None:
            on_batch(min(len(x), start + step), len(x))
    if not probs:
        return None, None
    return np.concatenate(probs).astype(np.float32), np.concatenate(embs).astype(np.float32)


def _registered_names() -> list[str]:
    from .models import model_names

    return model_names()


def _classify_remote(frames, inner_rows, inner_cols, mask, window, calibration, name, mode, batch_size, vote=None,
                     tta=False) -> BlockPrediction:
    """One block on a cluster worker: load the model there (cached per process) and classify."""
    from .models import load_model

    model = load_model(name, mode=mode, device="cpu")
    prepared = prepare_block(model, frames, inner_rows, inner_cols, mask, window, calibration, vote)
    return predict_block(model, prepared, batch_size, window, tta=tta)


def _classify_on_cluster(result, dataset, name, mode, roi, window, halo, chunk_bytes, batch_size, scheduler,
                         prototypes, progress, cancel, on_block, vote=None, tta=False, calibration=None) -> None:
    """Submit one task per block to a dask.distributed scheduler and fill the maps as they finish."""
    from distributed import Client, as_completed

    from .chunks import block_grid

    blocks = block_grid(dataset, chunk_bytes)
    if roi is not None:
        blocks = [(r, c) for r, c in blocks if roi[r, c].any()]
    sy, sx = dataset.scan_shape
    hy, hx = halo
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise PolarstemError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from None
    with client:
        futures = {}
        for r, c in blocks:
            r0, r1 = max(0, r.start - hy), min(sy, r.stop + hy)
            c0, c1 = max(0, c.start - hx), min(sx, c.stop + hx)
            frames = dataset.data[r0:r1, c0:c1]
            inner = (slice(r.start - r0, r.stop - r0), slice(c.start - c0, c.stop - c0))
            mask = None if roi is None else roi[r, c]
            fut = client.compute(frames)
            task = client.submit(_classify_remote, fut, inner[0], inner[1], mask, window,
                                 calibration or dataset.calibration,
                                 name, mode, batch_size, vote, tta, pure=False)
            futures[task] = (r, c)
        if progress:
            progress(0, len(futures))
        done = 0
        try:
            for fut in as_completed(list(futures)):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled by the user")
                out = fut.result()
                r, c = futures[fut]
                if out.proba is not None:
                    _store(result, r, c, out, prototypes)
                    result.n_patterns += int(out.sel.sum())
                done += 1
                if progress:
                    progress(done, len(futures))
                if on_block is not None:
                    on_block(result)
        finally:
            client.cancel(list(futures))


def _store(result, rows, cols, out: BlockPrediction, prototypes) -> None:
    """Write one block's predictions into the result maps."""
    sel, proba, emb, informative, usable, fp = out.sel, out.proba, out.emb, out.informative, out.usable, out.fingerprint
    if fp is not None and len(fp):
        if result.fingerprint is None or result.fingerprint.shape[-1] != fp.shape[-1]:
            result.fingerprint = np.full(result.classes.shape + (fp.shape[-1],), np.nan, np.float16)
        result.fingerprint[rows, cols][sel] = fp
    cls = np.argmax(proba, axis=1)
    top2 = np.sort(proba, axis=1)[:, -2:]
    sub = lambda arr: arr[rows, cols]  # noqa: E731 - views into the result maps
    sub(result.classes)[sel] = cls.astype(np.int8)
    sub(result.confidence)[sel] = top2[:, 1]
    sub(result.margin)[sel] = top2[:, 1] - top2[:, 0]
    sub(result.proba)[sel] = proba
    sub(result.informative)[sel] = np.asarray(informative, bool)
    if result.usable is not None:
        sub(result.usable)[sel] = np.asarray(usable, bool)
    sub(result.done)[sel] = True
    if out.distance is not None:
        sub(result.distance)[sel] = out.distance
    if out.votes is not None:
        sub(result.votes)[sel] = out.votes
    if prototypes is not None:
        dist = np.linalg.norm(emb - prototypes[cls], axis=1)
    else:
        dist = np.full(len(cls), np.nan, np.float32)
    sub(result.embedding_distance)[sel] = dist


def _prototypes(model) -> np.ndarray | None:
    """Class prototypes in the model's embedding space (N_CLASSES, D), if the model has them."""
    proto = getattr(model, "prototypes", None)
    if callable(proto):
        proto = proto()
    return None if proto is None else np.asarray(proto, dtype=np.float32)


def cell_average(frames: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Mean of the raw patterns in a ``window`` (rows, cols) around each scan position (edges: nearest)."""
    from scipy import ndimage

    f = frames.astype(np.float32, copy=False)
    f = np.where(np.isfinite(f), f, 0.0) if f.dtype.kind == "f" and not np.isfinite(f).all() else f
    return ndimage.uniform_filter(f, size=(window[0], window[1], 1, 1), mode="nearest")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (their hashes in name order), for provenance."""
    from .models.registry import sha256_file

    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)
    h = hashlib.sha256()
    for q in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(sha256_file(q).encode())
    return h.hexdigest()
