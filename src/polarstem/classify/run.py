"""A run: :func:`iter_classify` yields the maps after every block and, last, the finished result;
:func:`classify_scan` is the same run as one call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from ..acquisition import outside_scope
from ..anomaly import score_anomaly
from ..chunks import ProgressCallback, iter_frame_blocks
from ..device import choose_device, default_batch_size
from ..errors import Cancelled, PolarstemError
from ..io import BLOCK_BYTES, Calibration, Dataset4D
from ..lattice import Lattice
from ..models import load_model
from ..models.symmetry import auto_tta
from ..walls import assign_wall_bands
from .cluster import check_registered, iter_cluster_blocks
from .params import VOTE_KIND, ClassifyParams, RunPlan, weights_mode_for
from .predict import PositionProgress, class_prototypes, predict_block
from .prepare import calibrate_from_patterns, choose_mode, prepare_block, scan_lattice
from .result import ClassificationResult, abstain


def iter_classify(dataset: Dataset4D, params: ClassifyParams | None = None, progress: ProgressCallback | None = None,
                  cancel: threading.Event | None = None) -> Iterator[ClassificationResult]:
    """Classify the selected scan positions, yielding the result after every block that classified
    positions and, last, the finished result (``finished`` True).

    The partial results are the run's own maps, valid where ``done``, filled further by the next
    block: copy what you keep. The finished result has the wall bands, the anomaly score and the
    abstention decided. Setting ``cancel`` (or a KeyboardInterrupt) stops the run after the current
    batch; it still finishes, with ``complete=False``, keeping the positions done. ``progress(done,
    total)`` follows the lattice search (in blocks), then the positions (blocks on a cluster).
    """
    t0 = time.perf_counter()
    params = (params or ClassifyParams()).checked(dataset.scan_shape)
    calibration, notes = calibrate_from_patterns(dataset)
    lattice, background = params.lattice, None
    if lattice is None:  # cell windows need it, and the anomaly score's phase model in every mode
        try:
            lattice, background = scan_lattice(dataset, progress=progress, cancel=cancel, calibration=calibration)
        except (Cancelled, KeyboardInterrupt):  # stopped before any position was classified
            yield ClassificationResult.empty(dataset.scan_shape, mode="pattern" if params.mode == "auto" else params.mode,
                                             complete=False, notes=list(notes))
            return
    plan = _plan(dataset, params, calibration, lattice)
    result = _start_result(dataset, params, plan, lattice, background, notes)
    try:
        if plan.roi is not None and not plan.roi.any():
            pass  # a resumed run with nothing left to do
        elif params.scheduler:
            check_registered(plan.name)
            yield from iter_cluster_blocks(result, dataset, plan, params.chunk_bytes, params.scheduler, progress,
                                           cancel)
        else:
            yield from _iter_local_blocks(result, dataset, plan, params.chunk_bytes, progress, cancel)
        result.complete = True
    except (Cancelled, KeyboardInterrupt):
        result.complete = False
    _finish(result, plan, params, t0)
    yield result


def classify_scan(
    dataset: Dataset4D,
    model: str | object = "cnn",
    mode: str = "auto",
    roi: np.ndarray | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    lattice: Lattice | None = None,
    progress: ProgressCallback | None = None,
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
    """Classify every selected scan position (:class:`ClassifyParams` says what each argument does).

    Cancelling returns the result so far (``complete=False``); ``on_block(result)`` sees each partial
    result of :func:`iter_classify`."""
    params = ClassifyParams(model=model, mode=mode, cell_method=cell_method, roi=roi, device=device,
                            batch_size=batch_size, tta=tta, lattice=lattice, anomaly=anomaly, wall_bands=wall_bands,
                            chunk_bytes=chunk_bytes, scheduler=scheduler, resume_from=resume_from)
    runs = iter_classify(dataset, params, progress=progress, cancel=cancel)
    result = next(runs)
    while not result.finished:
        try:
            if on_block is not None:
                on_block(result)
            result = next(runs)
        except (Cancelled, KeyboardInterrupt) as exc:  # stopped inside on_block: the run ends as on a cancel
            result = runs.throw(exc)
    runs.close()
    return result


def _plan(dataset: Dataset4D, params: ClassifyParams, calibration: Calibration, lattice: Lattice | None) -> RunPlan:
    """Settle the mode, the cell window, the positions left, the device and the model."""
    mode = choose_mode(params.mode, dataset, lattice)
    weights_mode = weights_mode_for(mode, params.cell_method)
    roi = params.roi
    previous = params.resume_from
    if previous is not None:
        if previous.classes.shape != dataset.scan_shape or previous.mode != mode:
            raise PolarstemError("the partial result to resume does not match this scan or mode")
        roi = ~previous.done if roi is None else (roi & ~previous.done)
    device = choose_device(params.device)
    n_todo = int(roi.sum()) if roi is not None else int(np.prod(dataset.scan_shape))
    tta = params.tta if params.tta is not None else auto_tta(n_todo, device)
    model = params.model
    if isinstance(model, str):
        name = model
        model = load_model(name, mode=weights_mode, device=device)
    else:
        name = getattr(model, "card", {}).get("name", type(model).__name__)
        if hasattr(model, "to"):
            model.to(device)
    batch_size = params.batch_size or default_batch_size(device,
                                                         int(np.prod(getattr(model, "input_shape", (64, 64)))))
    return RunPlan(model=model, name=name, mode=mode, weights_mode=weights_mode,
                   vote=VOTE_KIND.get(params.cell_method) if mode == "cell" else None,
                   window=lattice.window if (mode == "cell" and lattice is not None) else None,
                   roi=roi, device=device, tta=tta, batch_size=batch_size, calibration=calibration,
                   prototypes=class_prototypes(model))


def _start_result(dataset: Dataset4D, params: ClassifyParams, plan: RunPlan, lattice: Lattice | None,
                  background: np.ndarray | None, notes: list[str]) -> ClassificationResult:
    """The empty maps of the run (the resumed run's maps when continuing one), with what the run records."""
    card = getattr(plan.model, "card", {}) or {}
    run_params = {"mode": plan.mode, "batch_size": plan.batch_size, "roi": plan.roi is not None,
                  "weights_mode": plan.weights_mode, "tta": plan.tta,
                  **({"cell_method": params.cell_method} if plan.mode == "cell" else {})}
    result = ClassificationResult.empty(
        dataset.scan_shape, mode=plan.mode, lattice=lattice, model=plan.name, model_sha256=card.get("sha256", ""),
        device=plan.device, background=background, params=run_params, complete=False, finished=False)
    if params.resume_from is not None:
        result.continue_from(params.resume_from)
    result.notes = list(notes)
    result.params["calibration"] = plan.calibration.to_dict()
    return result


def _iter_local_blocks(result: ClassificationResult, dataset: Dataset4D, plan: RunPlan, chunk_bytes: int,
                       progress: ProgressCallback | None, cancel: threading.Event | None) -> Iterator[ClassificationResult]:
    """Classify block by block here, a reader thread preparing the next block; yield ``result`` after
    each block that classified positions. Progress in positions, also within a block."""
    report = PositionProgress(progress, plan.positions(dataset.scan_shape))

    def prepare(block):
        """Runs in the reader thread: select positions, average cells or not, preprocess."""
        return prepare_block(plan.model, block.frames, block.inner_rows, block.inner_cols, block.mask, plan.window,
                             plan.calibration, plan.vote)

    for block in iter_frame_blocks(dataset, mask=plan.roi, budget=chunk_bytes, cancel=cancel, halo=plan.halo,
                                   transform=prepare):
        base, n_sel = report.done, int(block.prepared.sel.sum())

        def on_batch(k, n, base=base, n_sel=n_sel):
            report(base + n_sel * k // max(n, 1))

        try:
            out = predict_block(plan.model, block.prepared, plan.batch_size, plan.window, cancel, plan.tta, on_batch)
        except Cancelled as exc:  # keep what the block finished
            if getattr(exc, "block", None) is not None and len(exc.block.proba):
                result.store(block.rows, block.cols, exc.block, plan.prototypes)
            raise
        report(base + n_sel, force=True)
        if out.proba is None:
            continue
        result.store(block.rows, block.cols, out, plan.prototypes)
        yield result


def _finish(result: ClassificationResult, plan: RunPlan, params: ClassifyParams, t0: float) -> None:
    """Wall bands (cell mode), the anomaly score and the abstention, on the maps of the positions done."""
    if plan.window and result.done.any():
        result.params["wall_bands"] = "assigned" if params.wall_bands else "kept"
        if params.wall_bands:
            classes, changed = assign_wall_bands(result.classes, result.proba, result.done, plan.window)
            result.classes = classes.astype(result.classes.dtype)
            result.params["wall_band_positions"] = int(changed.sum())
    result.seconds = time.perf_counter() - t0
    if params.anomaly and result.done.any():
        result.anomaly = score_anomaly(result)
    card = getattr(plan.model, "card", None) or {}  # the loaded model's own card: no registry read per run
    abstention = getattr(plan.model, "abstention", None)
    if abstention is not None:  # a model calibrated per acquisition cell: the thresholds of the file's
        abstention = abstention.at(plan.calibration.beam_energy_kev, plan.calibration.convergence_mrad)
    abstain(result, abstention, outside_scope(plan.name, card.get("acquisition"), plan.calibration))
    result.finished = True
