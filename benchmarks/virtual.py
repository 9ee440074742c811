"""Virtual imaging throughput (GB/s) and peak memory on a large memory-mapped scan.

    .venv/bin/python benchmarks/virtual.py [--gb 4] [--hyperspy]

Makes a sparse .npy of the given size (no disk used for the zeros... plus a few real frames),
runs ``polarstem virtual --kind bf`` in a fresh process, and prints wall time, GB/s and the
child's peak resident memory. With --hyperspy it times HyperSpy's lazy sum over the same masked
detector for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_big_npy(path: Path, gb: float, det: int = 128) -> tuple[int, ...]:
    frames = int(gb * 2**30 / (det * det * 2))
    side = int(np.sqrt(frames))
    shape = (side, side, det, det)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
    yy, xx = np.indices((det, det))
    disk = (np.hypot(yy - det / 2, xx - det / 2) < det / 6).astype(np.uint16) * 100
    mm[0, :] = disk  # one row of real patterns so the BF disk can be found
    mm[-1, :] = disk
    mm.flush()
    del mm
    Path(path).with_suffix(".json").write_text(json.dumps({"scan_step_nm": 0.1, "convergence_mrad": 20.0}))
    return shape


def run_child(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return dt, peak_mb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--hyperspy", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "big.npy"
        shape = make_big_npy(npy, args.gb)
        size_gb = np.prod(shape) * 2 / 2**30
        exe = [sys.executable, "-m", "polarstem.cli"]
        dt, peak = run_child(exe + ["virtual", str(npy), "--kind", "bf", "-o", str(Path(tmp) / "bf.tif")])
        print(f"polarstem virtual bf: shape {shape} uint16, {size_gb:.2f} GiB: {dt:.1f} s, "
              f"{size_gb / dt:.2f} GiB/s, peak RSS {peak:.0f} MiB")
        if args.hyperspy:
            code = (
                "import numpy as np, hyperspy.api as hs, dask.array as da, time\n"
                f"a = np.load(r'{npy}', mmap_mode='r')\n"
                "s = hs.signals.Signal2D(da.from_array(a, chunks=(8, a.shape[1], a.shape[2], a.shape[3]))).as_lazy()\n"
                "yy, xx = np.indices(a.shape[2:]); m = np.hypot(yy - a.shape[2] / 2, xx - a.shape[3] / 2) < a.shape[2] / 6\n"
                "t0 = time.perf_counter(); img = (s.data * m).sum(axis=(2, 3)).compute(); print(time.perf_counter() - t0)\n"
            )
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
            inner = float(out.stdout.strip().splitlines()[-1])
            print(f"hyperspy lazy masked sum: {inner:.1f} s, {size_gb / inner:.2f} GiB/s "
                  f"(process {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
