"""End-to-end classification throughput against the model's pure forward pass, and peak memory.

    .venv/bin/python benchmarks/classify.py [--model cnn] [--mode pattern] [--scan 128] [--det 128]
                                            [--threads 2] [--chunk-mb 16] [--tta 8] [--device auto]

Writes a memory-mapped scan of random Poisson patterns with a bright-field disk (scan x scan
positions, det x det detector, uint16), then in a fresh process, on the best device present (or
``--device``; on a GPU the network runs under mixed precision from pinned memory):
1. pure forward pass: ``model.predict`` on preprocessed tensors already in memory, with the same
   symmetry images (``--tta``) and batch size as the end-to-end run;
2. end to end: ``classify_scan`` over the file (read + preprocess + infer, chunk by chunk);
and prints patterns/s for both (and network images/s: patterns x symmetry images), their ratio, and
the process's peak RSS against the chunk budget.
Uses the shipped weights when the model has them, else the same architecture untrained (the speed
does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r'''
import json, resource, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from polarstem.io import load
from polarstem.classify import classify_scan
from polarstem.models import load_model, read_card
from polarstem.models.registry import MODEL_DEFS
try:
    model = load_model(args["model"], mode=args["mode"])
    source = "shipped weights"
except Exception:
    from polarstem.models.base import NetModel
    from polarstem.models.nets import create_model
    d = MODEL_DEFS[args["model"]]
    model = NetModel(create_model(d["arch"]), {"name": args["model"], "mode": args["mode"],
                     "input_grid": {"size": 64, "mrad_per_px": 1.0}})
    source = "untrained (no weights shipped)"
ds = load(args["file"])
bs = args["batch"]
frames = np.asarray(ds.data[:4].compute()).reshape(-1, *ds.detector_shape)[:bs * 4]
x, _ = model.preprocess(frames, ds.calibration)
from polarstem.device import choose_device
from polarstem.classify import predict_batches
device = choose_device(args["device"])
model.to(device)
tta = args["tta"]
predict_batches(model, x[:bs], bs, tta=tta)  # warm-up
t0 = time.perf_counter(); n = 0
while time.perf_counter() - t0 < 5:
    predict_batches(model, x[:bs], bs, tta=tta); n += bs
if device.startswith("cuda"):
    torch.cuda.synchronize()
forward = n / (time.perf_counter() - t0)
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
res = classify_scan(ds, model=model, mode=args["mode"], device=device, batch_size=bs, tta=tta,
                    chunk_bytes=args["chunk_mb"] * 2**20, anomaly=False,
                    lattice=None if args["mode"] != "cell" else __import__("polarstem.lattice", fromlist=["Lattice"]).Lattice((4.0, 4.0)))
e2e = res.n_patterns / res.seconds
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"forward": forward, "end_to_end": e2e, "peak_mb": peak, "rss_before_mb": rss_before,
                  "n": res.n_patterns, "source": source, "device": device}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--mode", default="pattern", choices=["pattern", "cell"])
    ap.add_argument("--scan", type=int, default=128)
    ap.add_argument("--det", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk-mb", type=int, default=16)
    ap.add_argument("--tta", type=int, default=8, choices=[1, 2, 4, 8], help="symmetry images per pattern")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(args.scan, args.scan, args.det, args.det))
        rng = np.random.default_rng(0)
        yy, xx = np.indices((args.det, args.det))
        lam = 100 * (np.hypot(yy - args.det / 2, xx - args.det / 2) < args.det / 6) + 3
        for r in range(args.scan):
            mm[r] = rng.poisson(lam, (args.scan, args.det, args.det))
        mm.flush()
        del mm
        path.with_suffix(".json").write_text(json.dumps({"scan_step_nm": 0.1, "mrad_per_px": 64 / args.det,
                                                         "beam_energy_kev": 200, "convergence_mrad": 20}))
        size_mb = args.scan ** 2 * args.det ** 2 * 2 / 2**20
        payload = json.dumps({"file": str(path), "model": args.model, "mode": args.mode, "threads": args.threads,
                              "batch": args.batch, "chunk_mb": args.chunk_mb, "tta": args.tta,
                              "device": args.device})
        out = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-2000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"model {args.model} ({r['source']}), mode {args.mode}, device {r['device']}, {args.threads} threads, "
          f"batch {args.batch} images, {args.tta} symmetry images per pattern")
    print(f"scan {args.scan}x{args.scan}, detector {args.det}x{args.det} uint16: {size_mb:.0f} MiB on disk, "
          f"chunk budget {args.chunk_mb} MiB")
    print(f"forward pass on preloaded tensors: {r['forward']:.0f} patterns/s ({r['forward'] * args.tta:.0f} images/s)")
    print(f"end to end (read + preprocess + infer): {r['end_to_end']:.0f} patterns/s "
          f"({r['end_to_end'] * args.tta:.0f} images/s) -> ratio {r['end_to_end'] / r['forward']:.2f}")
    print(f"peak RSS {r['peak_mb']:.0f} MiB (before the scan: {r['rss_before_mb']:.0f} MiB; "
          f"data {size_mb / max(r['peak_mb'] - r['rss_before_mb'], 1):.1f}x the memory it added)")


if __name__ == "__main__":
    main()
