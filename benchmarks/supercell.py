"""How large must the periodic supercell be? Cell-averaged patterns against the supercell size.

    .venv/bin/python benchmarks/supercell.py [--cells 4 6 8 12] [--thickness 10 20 35]

A multislice supercell is periodic: a probe in an N x N-cell box interferes with its own images N
cells away. At 20 mrad the probe spreads to 10-20 A over 10-40 nm, so a 4-cell box (16 A) is too small.
One deterministic structure (every A site K, no phonons, no tilt) is simulated per size and class; the
cell-averaged pattern (16 probe positions) goes through the models' preprocessing (48 x 48 px at
1.4 mrad/px, sqrt) and the script prints the relative L2 distance of each size from the largest, next
to the distance between classes 1 and 5 (opposite in-plane P) and classes 1 and 2 (the closest pair)
in the largest box. A size whose error is comparable to the 1-vs-2 distance teaches a model features of
the box, not of the crystal.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[4, 6, 8, 12])
    ap.add_argument("--thickness", type=float, nargs="+", default=[10.0, 20.0, 35.0], help="nm")
    ap.add_argument("--gpts", type=int, default=40, help="grid points per cell")
    args = ap.parse_args()

    from polarstem.io import Calibration
    from polarstem.preprocess import InputGrid, preprocess
    from polarstem.simulate.runner import run_task
    from polarstem.simulate.structures import variant_for_class

    a = 3.97
    exit_cells = [int(round(t * 10 / a)) for t in args.thickness]
    g = np.arange(4)
    gy, gx = np.meshgrid(g, g, indexing="ij")
    pos = (np.stack([gx.ravel(), gy.ravel()], 1) / 4 + 0.1).tolist()
    grid = InputGrid(size=48, mrad_per_px=1.4)

    def cell_input(cells: int, k: int) -> np.ndarray:
        task = {"kind": "training", "index": 0, "rows": [0, 1], "class": k, "variant": list(variant_for_class(k)),
                "a": a, "nb_shift": 0.15, "a_ratio": 0.5, "k_fraction": 1.0, "cells": cells,
                "exit_cells": exit_cells, "positions_frac": pos,
                "optics": {"energy_kev": 200, "convergence_mrad": 20, "defocus_nm": 0.0, "tilt_mrad": [0.0, 0.0],
                           "gpts_per_cell": args.gpts, "slices_per_cell": 2, "max_mrad": 40, "bin": 1},
                "phonons": {"configs": 0, "sigmas": {}, "seed": 1}, "structure_seed": 1, "out_mrad_per_px": 1.6}
        t0 = time.perf_counter()
        pac = run_task(task).mean(1).astype(np.float32)  # (thickness, ky, kx)
        c = (pac.shape[-1] - 1) / 2
        x, _ = preprocess(pac, Calibration(mrad_per_px=1.6, convergence_mrad=20, detector_center_px=(c, c)), grid)
        print(f"  simulated {cells} cells, class {k}: {time.perf_counter() - t0:.1f} s", flush=True)
        return x

    def dist(u, v):
        return [round(float(d), 4) for d in np.linalg.norm(u - v, axis=(1, 2)) / np.linalg.norm(v, axis=(1, 2))]

    ref_cells = max(args.cells)
    ref = {k: cell_input(ref_cells, k) for k in (1, 2, 5)}
    rows = {"thickness_nm": args.thickness, "reference_cells": ref_cells,
            "class_1_vs_5": dist(ref[1], ref[5]), "class_1_vs_2": dist(ref[1], ref[2]), "box_error": {}}
    for n in sorted(set(args.cells) - {ref_cells}):
        rows["box_error"][n] = dist(cell_input(n, 1), ref[1])
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
