"""Where across beam energy and disk overlap a model reads KNN: accuracy on simulated KNN of many structures
and acquisitions (the acquisitions training set, never seen by the canonical models), binned by beam
energy and by the disk overlap alpha / (lambda / a), per pattern and per cell (the 36 probe positions
of one structure at one thickness voted, as a scan's cell vote pools them).

    .venv/bin/python benchmarks/acquisition_map.py resnet-proto --data .cache/sim/acquisitions --rows 1500
        [--weights FOLDER] [--grid card|lattice|mrad]

With experiment-like corruptions (the model's training augmentation). ``--grid lattice`` reads the model's
input grid in reciprocal-lattice units (its sampling scaled with lambda(E) / lambda(200 kV)), ``mrad``
in milliradians, ``card`` as its card says; compare the two. The bins where a model holds are what its card's
``disk_overlap`` and ``beam_energy_kev`` ranges may state (docs/acquisitions.md).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from polarstem.acquisition import disk_overlap
from polarstem.models import load_model
from polarstem.training import DEFAULT_AUGMENT, load_simset
from polarstem.training.abstention import _row_outputs
from polarstem.training.data import probe_grid_side

ENERGY_BINS = [78, 100, 140, 180, 220, 260, 306]
OVERLAP_BINS = [1.0, 2.0, 2.4, 2.7, 3.0, 3.3, 3.65, 4.0, 4.6, 6.5]


def table(values: np.ndarray, energy: np.ndarray, overlap: np.ndarray, title: str) -> str:
    """Mean of ``values`` per (energy bin, overlap bin), with counts, as Markdown."""
    head = "| " + title + " | " + " | ".join(f"{a:g}-{b:g}" for a, b in zip(OVERLAP_BINS[:-1], OVERLAP_BINS[1:])) + " |"
    lines = [head, "|" + " --- |" * len(OVERLAP_BINS)]
    for e0, e1 in zip(ENERGY_BINS[:-1], ENERGY_BINS[1:]):
        cells = []
        for o0, o1 in zip(OVERLAP_BINS[:-1], OVERLAP_BINS[1:]):
            m = (energy >= e0) & (energy < e1) & (overlap >= o0) & (overlap < o1)
            cells.append(f"{values[m].mean():.2f} ({m.sum()})" if m.any() else "")
        lines.append(f"| {e0}-{e1} kV | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", default=".cache/sim/acquisitions")
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--grid", choices=("card", "lattice", "mrad"), default="card")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = load_model(args.model, "pattern", folder=Path(args.weights) if args.weights else None)
    grid = model.grid if args.grid == "card" else dataclasses.replace(model.grid, lattice_units=args.grid == "lattice")
    sim = load_simset(args.data)
    n_pos = probe_grid_side(sim) ** 2
    rng = np.random.default_rng(args.seed)
    labeled = np.nonzero(sim.labels[::n_pos] >= 0)[0]
    rows = np.sort(rng.choice(labeled, min(args.rows, len(labeled)), replace=False))
    aug = dict(DEFAULT_AUGMENT, **(model.card.get("training", {}).get("config", {}).get("augment") or {}))
    proba, _, y = _row_outputs(model, sim, rows, n_pos, grid, aug, rng, tta=1)
    _, energy, conv = sim.acquisition(rows * n_pos)
    overlap = disk_overlap(np.asarray(energy, float), np.asarray(conv, float))
    per_pattern = (proba.argmax(-1) == y[:, None]).mean(axis=1)
    per_cell = (np.log(np.clip(proba, 1e-6, 1)).mean(axis=1).argmax(-1) == y).astype(float)
    print(f"{args.model} ({'lattice units' if grid.lattice_units else 'mrad'}): {len(rows)} rows of {args.data}\n")
    print(table(per_pattern, energy, overlap, "per pattern: kV \\ overlap"), "\n")
    print(table(per_cell, energy, overlap, f"per cell ({n_pos} voted): kV \\ overlap"), "\n")
    print(scope_summary(model.card.get("acquisition") or {}, energy, overlap, per_pattern, per_cell, rows, sim, n_pos))
    return 0


def scope_summary(acq: dict, energy, overlap, per_pattern, per_cell, rows, sim, n_pos) -> str:
    """Pooled accuracy inside the card's energy and overlap ranges, and at 195-205 kV alone, with the
    number of rows and of distinct (structure, acquisition) pairs behind each (rows of one pair share
    most of their errors)."""
    lo_e, hi_e = acq.get("beam_energy_kev", [0, 1e9])
    lo_o, hi_o = acq.get("disk_overlap", [0, 1e9])
    inside = (energy >= lo_e) & (energy <= hi_e) & (overlap >= lo_o) & (overlap <= hi_o)
    pairs = np.round(energy).astype(int) * 100000 + sim.structure[rows * n_pos]
    out = []
    for label, m in (("inside the card's range", inside), ("of which 195-205 kV", inside & (abs(energy - 200) <= 5)),
                     ("of which other energies", inside & (abs(energy - 200) > 5)), ("outside", ~inside)):
        if m.any():
            out.append(f"{label}: per pattern {per_pattern[m].mean():.3f}, per cell {per_cell[m].mean():.3f} "
                       f"({m.sum()} rows, {len(np.unique(pairs[m]))} structure x acquisition pairs)")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
