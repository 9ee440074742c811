"""Speed of the shipped models: preprocessing and forward pass, patterns per second on this machine.

    .venv/bin/python benchmarks/models.py [--threads 2] [--n 2048] [--det 128]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--det", type=int, default=128, help="detector size in px")
    ap.add_argument("--mrad", type=float, default=1.0, help="detector mrad/px")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from polarstem.io import Calibration
    from polarstem.models import list_models, load_model

    rng = np.random.default_rng(0)
    yy, xx = np.indices((args.det, args.det)) - (args.det - 1) / 2
    disk = (np.hypot(yy, xx) * args.mrad <= 20.0) * 50.0 + 0.5
    frames = rng.poisson(np.broadcast_to(disk, (args.n, args.det, args.det))).astype(np.uint16)
    cal = Calibration(mrad_per_px=args.mrad, convergence_mrad=20.0, beam_energy_kev=200.0)
    rows = []
    for entry in list_models():
        for mode in entry["modes"]:
            m = load_model(entry["name"], mode=mode)
            m.preprocess(frames[:64], cal)
            t0 = time.perf_counter()
            x, ok = m.preprocess(frames, cal)
            t_pre = time.perf_counter() - t0
            m.predict(x[:256])
            t0 = time.perf_counter()
            m.predict(x)
            t_fwd = time.perf_counter() - t0
            rows.append({"model": entry["name"], "mode": mode, "input": list(m.input_shape),
                         "preprocess_per_s": round(args.n / t_pre), "predict_per_s": round(args.n / t_fwd),
                         "end_to_end_per_s": round(args.n / (t_pre + t_fwd))})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
