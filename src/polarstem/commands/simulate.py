"""``polarstem simulate CONFIG.yaml -o OUT``: labeled KNN 4D-STEM data from abTEM multislice."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a labeled KNN 4D-STEM dataset (abTEM multislice)")
    p.add_argument("config", help="YAML config (see configs/simulate/)")
    p.add_argument("-o", "--output", required=True, help="output folder (re-running resumes it)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--scheduler", help="dask.distributed scheduler address, e.g. tcp://host:8786")
    p.add_argument("--max-tasks", type=int, help="stop after this many new tasks (rate checks); resumable")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import PolarstemError
    from ..simulate.config import load_config
    from ..simulate.runner import simulate

    if args.workers < 1:
        raise PolarstemError(f"--workers must be at least 1, got {args.workers}")
    cfg = load_config(args.config)
    m = simulate(cfg, args.output, workers=args.workers, scheduler=args.scheduler, progress=not args.quiet,
                 config_path=str(args.config), max_tasks=args.max_tasks)
    summary = {k: m[k] for k in ("status", "shape", "tasks_done", "n_tasks", "patterns_done")}
    summary["patterns_per_s"] = m["last_run"]["patterns_per_s"]
    summary["output"] = str(args.output)
    print(json.dumps(summary), file=sys.stdout)
    return 0
