"""``polarstem models``, ``polarstem train`` and ``polarstem evaluate``."""

from __future__ import annotations

import json

from .classify import add_cell_options
from .data import add_calibration_options, calibration_given


def register(sub) -> None:
    p = sub.add_parser("models", help="list the pretrained models and their cards")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=_models)

    p = sub.add_parser("train", help="train a model from a YAML config (configs/train/*.yaml)")
    p.add_argument("config")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--mode", choices=["pattern", "cell"], action="append", help="train only this mode")
    p.add_argument("--data", help="simulated training folder(s), comma-separated (overrides the config)")
    p.add_argument("--warm-start", dest="warm_start", help="start from this shipped model's weights (fine-tuning)")
    p.add_argument("--heldout", help="simulated held-out folder (overrides the config)")
    p.add_argument("--max-minutes", type=float, help="time budget of the pattern mode (overrides the config)")
    p.add_argument("--threads", type=int, help="torch CPU threads (overrides the config)")
    p.add_argument("--out", help="weights folder (default: the package's weights/)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="accuracy of a model on a labeled 4D-STEM dataset")
    p.add_argument("file")
    add_calibration_options(p)
    p.add_argument("--labels", help="labels.npy (default: beside the file)")
    p.add_argument("--defects", help="defects.npy (bool): adds anomaly_auc and accuracy_outside_defects")
    p.add_argument("--model", default=None, help="registered model name (default: the best, as classify uses)")
    p.add_argument("--mode", default="auto", choices=["pattern", "cell", "auto"],
                   help="pattern: each pattern on its own; cell: a vote over cell windows; auto (default, as "
                        "classify): cell when the scan resolves the lattice, else pattern (a grid of "
                        "independent patterns never does)")
    add_cell_options(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evaluate)


def _models(args) -> int:
    from ..models import list_models

    entries = list_models()
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    from ..acquisition import default_model

    default = default_model(entries)
    for e in entries:
        acc8 = (e.get("accuracy_8_images") or {}).get("pattern")
        parts = []
        for m, a in (e.get("accuracy") or {}).items():
            label = "cell-mean" if m == "cell" else m
            if not isinstance(a, float):
                parts.append(f"{label} -")
                continue
            # with the 8 symmetry images classify / evaluate average by default, where the card has it
            extra = f" (8 images {acc8:.2f})" if m == "pattern" and isinstance(acc8, float) else ""
            parts.append(f"{label} {a:.2f}{extra}")
        accs = ", ".join(parts)
        modes = ",".join(e["modes"]) or "no weights"
        mark = "  [default]" if e["name"] == default else ""
        print(f"{e['name']:<17} {e['family']:<8} [{modes}] {e['summary']}" + (f"  (held-out acc: {accs})" if accs else "")
              + mark)
    return 0


def _train(args) -> int:
    from ..training import TrainConfig, run

    cfg = TrainConfig.from_yaml(args.config)
    if args.mode:
        cfg.modes = list(args.mode)
    for key in ("data", "heldout", "max_minutes", "threads", "out", "warm_start"):
        if getattr(args, key, None) is not None:
            setattr(cfg, key, getattr(args, key))
    if isinstance(cfg.data, str) and "," in cfg.data:
        cfg.data = [d.strip() for d in cfg.data.split(",") if d.strip()]
    run(cfg, progress=not args.no_progress)
    return 0


def _evaluate(args) -> int:
    from ..evaluate import evaluate
    from ..io import using_calibration

    given = calibration_given(args)
    with using_calibration(given):  # evaluate opens the file itself
        res = evaluate(args.file, args.labels, args.model, args.mode, args.defects, args.device,
                       cell_method=args.cell_method, tta=args.tta, wall_bands=not args.keep_wall_bands)
    if given:
        res["calibration_given"] = given
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{res['model']} ({res['mode']}): accuracy {res['accuracy']} on {res['n']} labeled patterns")
        print("per class: " + " ".join("-" if a is None else f"{a:.2f}" for a in res["per_class"]))
        for k in ("accuracy_outside_defects", "accuracy_outside_defects_and_wall_planes", "anomaly_auc"):
            if k in res:
                print(f"{k}: {res[k]}")
    return 0
