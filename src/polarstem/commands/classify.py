"""``polarstem classify``, ``polarstem view`` and ``polarstem demo``."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from .data import _navigation_shape, _tqdm_progress, add_calibration_options, add_navigation_shape, calibration_given


def register(sub) -> None:
    p = sub.add_parser("classify", help="polarization class, confidence and anomaly maps of a scan")
    p.add_argument("file")
    add_navigation_shape(p)
    add_calibration_options(p)
    p.add_argument("--model", default=None, help="registered model name (see `polarstem models`; default: the best)")
    p.add_argument("--mode", choices=["auto", "pattern", "cell"], default="auto")
    add_cell_options(p)
    p.add_argument("--roi", help="boolean .npy mask (scan_rows, scan_cols) of the positions to classify")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--scheduler", help="dask.distributed scheduler address (tcp://HOST:PORT) to run on a cluster")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoint in the output folder")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=classify)

    p = sub.add_parser("view", help="open a file in napari with the polarstem widgets")
    p.add_argument("file", nargs="?")
    add_navigation_shape(p)
    add_calibration_options(p)
    p.set_defaults(func=view)

    p = sub.add_parser("demo", help="classify the bundled sample and write maps and a screenshot")
    p.add_argument("-o", "--output", default="demo_output")
    p.add_argument("--model", default=None, help="model (default: the best shipped model)")
    p.add_argument("--no-screenshot", action="store_true")
    p.set_defaults(func=demo)


def add_cell_options(parser) -> None:
    """The options of how a scan is classified that ``classify`` and ``evaluate`` share."""
    parser.add_argument("--cell-method", choices=["vote", "vote-centred", "mean"], default="vote",
                        help="cell mode: vote the pattern model over the most consistent cell window containing "
                             "each position (default), over the centred window, or classify the window's mean")
    parser.add_argument("--tta", type=int, nargs="?", const=8, default=None, choices=[1, 2, 4, 8], metavar="N",
                        help="symmetry averaging: 1 (off), 2 (each pattern and its 180° rotation, 2x time), 4 or 8 "
                             "(all square-symmetry images, 8x time; `--tta` alone); default: 8, or 2 for more "
                             "than 20,000 patterns on a CPU (evaluate --mode pattern: always 8)")
    parser.add_argument("--keep-wall-bands", action="store_true",
                        help="cell mode: keep the thin bands of the in-between direction the model reports on "
                             "domain walls (default: give them to the adjacent domains, docs/classify.md)")


def load_roi(path: str, scan_shape) -> np.ndarray:
    from ..errors import PolarstemError

    try:
        roi = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PolarstemError(f"{path}: cannot read the ROI mask ({exc})") from None
    if roi.shape != tuple(scan_shape):
        raise PolarstemError(f"{path}: ROI mask shape {roi.shape} does not match the scan {tuple(scan_shape)}")
    if roi.dtype != bool and not np.isin(roi, [0, 1]).all():
        raise PolarstemError(f"{path}: ROI mask must be boolean (or 0/1)")
    return roi.astype(bool)


def run_classification(file, output, model=None, mode="auto", roi=None, device="auto", batch_size=None,
                       navigation_shape=None, scheduler=None, resume=False, checkpoint_every=30.0,
                       cell_method="vote", tta=None, wall_bands=True, calibration=None):
    """Load, classify with a progress bar, and export the folder; returns (dataset, result).

    While it runs, the maps so far are saved to a checkpoint in the output folder every
    ``checkpoint_every`` seconds and on interruption; ``resume`` continues from it. ``calibration``
    holds values the user gave, which override the file's (:func:`polarstem.io.apply_calibration`).
    """
    import time

    from ..acquisition import default_model
    from ..classify import classify_scan, weights_mode_for
    from ..export import export_result, load_checkpoint, remove_checkpoint, save_checkpoint
    from ..fileio import sha256_path
    from ..io import load
    from ..models import read_card

    ds = load(file, navigation_shape=navigation_shape, calibration=calibration)
    model = model or default_model(calibration=ds.calibration)  # a model validated at this acquisition
    roi_mask = load_roi(roi, ds.scan_shape) if roi else None
    warn_acquisition(ds, model)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    # the data file read (a folder's data file, a .hdr's .mib), however the path was spelled
    key = {"input_sha256": sha256_path(ds.source), "calibration": ds.calibration.to_dict(),
           "model": model, "mode": mode, "cell_method": cell_method,
           "tta": "auto" if tta is None else int(tta), "wall_bands": wall_bands,
           "roi_sha256": None if roi_mask is None else __import__("hashlib").sha256(roi_mask.tobytes()).hexdigest()}
    previous = None
    if resume:
        previous = load_checkpoint(out, key, ds.scan_shape)
        if previous is None:
            print("no matching checkpoint: starting from the beginning", file=sys.stderr)
        else:
            print(f"resuming: {int(previous.done.sum())} positions already classified", file=sys.stderr)
    last = [time.monotonic()]

    def on_block(result):
        if time.monotonic() - last[0] >= checkpoint_every:
            last[0] = time.monotonic()
            save_checkpoint(out, result, key)

    if previous is not None:
        try:
            previous.model_sha256 = read_card(model, weights_mode_for(previous.mode, cell_method)).get("sha256", "")
        except Exception:  # noqa: BLE001 - an unknown model is reported by classify_scan below
            pass
    with stop_on_ctrl_c() as cancel:
        result = classify_scan(ds, model=model, mode=mode if previous is None else previous.mode, roi=roi_mask,
                               device=device, batch_size=batch_size,
                               progress=_tqdm_progress(f"classify ({model})", unit="pos"), scheduler=scheduler,
                               resume_from=previous, on_block=on_block, cell_method=cell_method, tta=tta,
                               wall_bands=wall_bands, cancel=cancel)
    if result.complete:
        remove_checkpoint(out)
    else:
        save_checkpoint(out, result, key)
    export_result(out, result, ds, background=result.background, input_sha256=key["input_sha256"])
    return ds, result


@contextlib.contextmanager
def stop_on_ctrl_c():
    """A cancel event that the first Ctrl-C sets (the run stops after the current batch and keeps what
    it finished, written as a checkpoint); a second Ctrl-C interrupts at once."""
    import signal
    import threading

    cancel = threading.Event()

    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("\nstopping after the current batch (Ctrl-C again to quit at once)", file=sys.stderr)

    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)


def warn_acquisition(ds, model_name: str) -> None:
    """Print the model card's warnings for a dataset acquired outside the model's ranges."""
    from ..acquisition import acquisition_warnings

    for w in acquisition_warnings(model_name, ds.calibration, ds.detector_shape):
        print(f"warning: {w}", file=sys.stderr)


def classify(args) -> int:
    ds, result = run_classification(args.file, args.output, args.model, args.mode, args.roi, args.device,
                                    args.batch_size, _navigation_shape(args), args.scheduler, args.resume,
                                    cell_method=args.cell_method, tta=args.tta,
                                    wall_bands=not args.keep_wall_bands, calibration=calibration_given(args))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if result.verdict:
        print(f"warning: {result.verdict}", file=sys.stderr)
    status = "complete" if result.complete else "interrupted (partial maps written; --resume continues)"
    rate = result.n_patterns / result.seconds if result.seconds else 0.0
    uncertain = int(result.uncertain.sum()) if result.uncertain is not None else 0
    print(f"{status}: {result.n_patterns} positions in {result.seconds:.1f} s ({rate:.0f}/s), "
          f"{result.mode_label}, device {result.device}, {uncertain} uncertain; maps in {args.output}",
          file=sys.stderr)
    return 0 if result.complete else 130


def view(args) -> int:
    from .._napari.app import open_viewer

    open_viewer(args.file, navigation_shape=_navigation_shape(args), calibration=calibration_given(args), run=True)
    return 0


def demo(args) -> int:
    from ..acquisition import default_model
    from ..sample import sample_dataset_path

    sample = sample_dataset_path()
    model = args.model or default_model()
    out = Path(args.output)
    ds, result = run_classification(sample, out / "maps", model)
    print(f"classified the sample {sample.name} with '{model}' ({result.mode} mode): maps in {out / 'maps'}",
          file=sys.stderr)
    if not args.no_screenshot:
        from .._napari.app import demo_screenshot

        shot = demo_screenshot(sample, out / "screenshot.png", model=model)
        print(f"screenshot: {shot}", file=sys.stderr)
    return 0
