"""Patterns per second of ``polarstem simulate`` on this machine, 1 worker vs 2 workers.

    .venv/bin/python benchmarks/simulate.py [--config configs/simulate/canonical.yaml] [--tasks 4]

Runs the first ``--tasks`` structures of the config (default: canonical.yaml, 128 patterns per
structure) into temporary folders with 1 and with 2 local worker processes, checks the two outputs
are identical, and prints one JSON line per run. Other processes on the machine slow it down.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "simulate" / "canonical.yaml"))
    ap.add_argument("--tasks", type=int, default=4, help="structures (tasks) per run")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    from polarstem.io import load
    from polarstem.simulate.config import load_config
    from polarstem.simulate.runner import plan, simulate

    cfg = load_config(args.config)
    p = plan(cfg)
    per_task = p["chunk_rows"] * p["shape"][1]
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            out = Path(tmp) / f"w{w}"
            t0 = time.perf_counter()
            simulate(cfg, out, workers=w, progress=False, max_tasks=args.tasks)
            dt = time.perf_counter() - t0
            n = args.tasks * per_task
            rows = args.tasks * p["chunk_rows"]
            outputs[w] = np.asarray(load(out).data[:rows].compute())
            print(json.dumps({"config": Path(args.config).name, "workers": w, "patterns": n,
                              "seconds": round(dt, 2), "patterns_per_s": round(n / dt, 2),
                              "detector": p["shape"][2:], "cpus": os.cpu_count(),
                              "loadavg_1min": round(os.getloadavg()[0], 2)}))
            sys.stdout.flush()
    ref = outputs[args.workers[0]]
    same = all(np.array_equal(ref, o) for o in outputs.values())
    print(json.dumps({"identical_across_worker_counts": bool(same)}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
