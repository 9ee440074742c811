"""Classification on a dask.distributed cluster: one task per block, each worker loading the model by
name (hash-checked) from its own installation; the maps are those of a local run."""

from __future__ import annotations

from collections.abc import Iterator

from ..chunks import block_grid, with_halo
from ..errors import Cancelled, PolarstemError
from ..io import Dataset4D
from ..models import load_model, model_names
from .params import RunPlan
from .predict import BlockPrediction, predict_block
from .prepare import prepare_block
from .result import ClassificationResult


def check_registered(name) -> None:
    """A cluster run names its model: the workers load it themselves."""
    if not isinstance(name, str) or name not in model_names():
        raise PolarstemError("a cluster run needs a registered model name (workers load it themselves)")


def _classify_remote(frames, inner_rows, inner_cols, mask, window, calibration, name, mode, batch_size, vote=None,
                     tta=False) -> BlockPrediction:
    """One block on a cluster worker: load the model there (cached per process) and classify."""
    model = load_model(name, mode=mode, device="cpu")
    prepared = prepare_block(model, frames, inner_rows, inner_cols, mask, window, calibration, vote)
    return predict_block(model, prepared, batch_size, window, tta=tta)


def iter_cluster_blocks(result: ClassificationResult, dataset: Dataset4D, plan: RunPlan, chunk_bytes: int,
                        scheduler: str, progress=None, cancel=None) -> Iterator[ClassificationResult]:
    """Submit one task per block to the scheduler and fill ``result`` as they finish, yielding it after
    each. ``progress(done, total)`` counts blocks."""
    from distributed import Client, as_completed

    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise PolarstemError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from None
    with client:
        futures = {}
        for r, c in block_grid(dataset, chunk_bytes, plan.roi):
            outer_rows, outer_cols, inner_rows, inner_cols = with_halo(r, c, plan.halo, dataset.scan_shape)
            frames = client.compute(dataset.data[outer_rows, outer_cols])
            mask = None if plan.roi is None else plan.roi[r, c]
            task = client.submit(_classify_remote, frames, inner_rows, inner_cols, mask, plan.window,
                                 plan.calibration, plan.name, plan.weights_mode, plan.batch_size, plan.vote, plan.tta,
                                 pure=False)
            futures[task] = (r, c)
        if progress:
            progress(0, len(futures))
        try:
            for done, fut in enumerate(as_completed(list(futures)), start=1):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled by the user")
                out = fut.result()
                if out.proba is not None:
                    result.store(*futures[fut], out, plan.prototypes)
                if progress:
                    progress(done, len(futures))
                yield result
        finally:
            client.cancel(list(futures))
