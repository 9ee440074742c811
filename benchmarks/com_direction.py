"""How often the CoM (DPC) vector direction names the true polarization class, on labeled scans.

    .venv/bin/python benchmarks/com_direction.py .cache/sim/acquisition_scan_200kv_20mrad [more scans ...]

For each labeled scan (a folder with ``labels.npy``, as ``polarstem simulate`` writes) and each CoM
region (whole pattern; bright field: the disk; dark field: outside 1.1 disk radii), the CoM vector
map of :func:`polarstem.com_vectors.com_vector_map` (descan plane removed) is turned into a class
per position: the nearest of the eight 45° directions. The fraction of labeled positions whose
class matches is reported per position and cell-averaged, for the best of the 16 ways to map
directions onto classes (8 rotations x 2 mirrors), so that no sign or axis convention of the CoM
can hide an agreement. A map that follows the polarization would score near 1; with 8 classes,
picking the best of 16 mappings scores above 1/8 by itself (the ``shuffled`` column: the same
vectors against labels with their positions permuted, median of 20 permutations).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def direction_classes(vy: np.ndarray, vx: np.ndarray) -> np.ndarray:
    """Nearest of the 8 class directions (class k at 45°·k from +x towards +y); -1 where undefined."""
    angle = np.arctan2(vy, vx)
    k = np.round(angle / (np.pi / 4)).astype(np.int64) % 8
    return np.where(np.isfinite(angle) & (np.hypot(vy, vx) > 0), k, -1)


def best_agreement(pred: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """Best fraction of labeled positions where the mapped class equals the label, over 16 mappings."""
    ok = labels >= 0
    best, which = 0.0, ""
    for mirror in (1, -1):
        for rot in range(8):
            mapped = np.where(pred >= 0, (mirror * pred + rot) % 8, -1)
            frac = float((mapped[ok] == labels[ok]).mean())
            if frac > best:
                best, which = frac, f"{'-' if mirror < 0 else ''}k+{rot}"
    return best, which


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scans", nargs="+", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from polarstem.com_vectors import com_vector_map
    from polarstem.io import load
    from polarstem.virtual import VirtualDetector, detector_geometry

    rng = np.random.default_rng(args.seed)
    print(f"{'scan':38s} {'region':12s} {'per position':>14s} {'cell-averaged':>14s} {'shuffled':>9s}  lattice")
    for scan in args.scans:
        labels = np.load(scan / "labels.npy")
        ds = load(scan)
        geometry = detector_geometry(ds)
        r = geometry.disk_radius_px
        regions = {"whole": VirtualDetector("com"),
                   "bright field": VirtualDetector("com", outer=r, units="px"),
                   "dark field": VirtualDetector("com", inner=1.1 * r, units="px")}
        for name, det in regions.items():
            vm = com_vector_map(ds, det, geometry=geometry)
            per, _ = best_agreement(direction_classes(*vm.vectors), labels)
            shown = vm.cell_vectors if vm.cell_vectors is not None else vm.vectors
            pred = direction_classes(*shown)
            cell, mapping = best_agreement(pred, labels)
            shuffled = np.median([best_agreement(pred, rng.permutation(labels.ravel()).reshape(labels.shape))[0]
                                  for _ in range(20)])
            lat = vm.lattice
            lat = "none" if lat is None else f"{lat.period[0]:.2f} x {lat.period[1]:.2f} px ({lat.source})"
            cell_txt = f"{cell:.2f} ({mapping})" if vm.cell_vectors is not None else "-"
            print(f"{scan.name:38s} {name:12s} {per:14.2f} {cell_txt:>14s} {shuffled:9.2f}  {lat}", flush=True)


if __name__ == "__main__":
    main()
