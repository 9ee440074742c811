"""Where the class map's errors away from defects lie: on probes that sit on a domain-wall plane.

    .venv/bin/python benchmarks/wall_planes.py [--model resnet-proto] [--tol 0.1]
        [--scans sample_data .cache/sim/val_scan_a ...]

A simulated validation scan labels each probe position by the unit cell its centre lies in. A probe
whose centre lies within ``--tol`` lattice constants (0.1 a = 0.4 Å) of the plane between two cells of
different class illuminates both about equally, so its label is close to a coin toss, and the cell
vote can resolve it only as well as the wall's exact place allows. Whether a scan has such probes
depends on its offset against the lattice (a scan with offset 0.35 a and 3 steps per cell puts a probe
row 0.017 a from every wall). The script classifies each scan as ``polarstem classify`` does by default
and prints the accuracy away from defects with and without those probes, and on them alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SCANS = ["sample_data"] + [f".cache/sim/val_scan_{x}" for x in "abcdefghijklmnopqrs"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet-proto")
    ap.add_argument("--tol", type=float, default=0.1, help="distance to a wall plane, lattice constants")
    ap.add_argument("--scans", nargs="+", default=SCANS)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from polarstem.classify import classify_scan
    from polarstem.evaluate import wall_plane_probes
    from polarstem.io import load

    torch.set_num_threads(args.threads)
    print(f"| scan | accuracy away from defects | probes within {args.tol} a of a wall plane | "
          "accuracy without them | accuracy on them |")
    print("|---|---|---|---|---|")
    for s in args.scans:
        folder = Path(s)
        if not (folder / "manifest.json").exists():
            print(f"| {s} | missing (simulate it from configs/simulate/validation/) | | | |")
            continue
        ds = load(folder)
        labels = np.load(folder / "labels.npy")
        defects = np.load(folder / "defects.npy").astype(bool)
        res = classify_scan(ds, args.model, mode="auto", anomaly=False)
        near = wall_plane_probes(folder, labels.shape, args.tol)
        away = (labels >= 0) & ~defects
        right = res.classes == labels
        on = away & near
        on_them = f"{right[on].mean():.2f}" if on.any() else "–"
        print(f"| {folder.name} | {right[away].mean():.3f} | {int(on.sum())} | "
              f"{right[away & ~near].mean():.3f} | {on_them} |", flush=True)


if __name__ == "__main__":
    main()
