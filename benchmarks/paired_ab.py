"""Paired comparison of per-pattern models on the same held-out patterns and the same corruption draws.

    .venv/bin/python benchmarks/paired_ab.py A=resnet@src/polarstem/weights \\
        B=resnet@.cache/candidates/r3_plain [--data .cache/sim/heldout6] [--n 4000] [--pairs A:B]

Each model is NAME@WEIGHTS_FOLDER (a folder with an ``index.json``, as ``polarstem train`` writes).
The held-out patterns are drawn as :func:`polarstem.training.heldout_accuracy` draws them (seed 123), made
once ideal, once with the training augmentation's experiment-like corruptions, and once per ``--bench``
corruption of the benchmark (default ``combined:1.0``: blur 1 px, 5 % background, 3 px descan and
1e4 electrons, all at the edge of physics.md's ranges at once), and every model sees exactly these inputs,
with one image and with the 8 symmetry images. The script prints each model's accuracy and, for each
pair, the difference with McNemar's exact test on the patterns only one of the two gets right: two
models scored on the same 4,000 patterns differ by noise far less than two independent draws would
(the standard error of one accuracy is ~0.006, of a paired difference often < 0.003).
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="LABEL=NAME@FOLDER")
    ap.add_argument("--data", default=".cache/sim/heldout6")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--pairs", nargs="*", default=None, help="LABEL:LABEL (default: every pair)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", nargs="*", default=["combined:1.0"],
                    help="KIND:STRENGTH benchmark corruptions (polarstem.analysis.testsets) added as conditions, "
                         "e.g. combined:1.0 (every corruption at the edge of physics.md's ranges) or dose:1e4; "
                         "source:S (a finite source of std S in Å) and source+corrupted:S (then the training-style "
                         "corruptions) need a set with a 6 x 6 probe grid (--data .cache/sim/heldout6g)")
    args = ap.parse_args(argv)

    import torch
    from scipy.stats import binomtest

    from polarstem.analysis.testsets import apply_corruption
    from polarstem.models import load_model
    from polarstem.preprocess import preprocess
    from polarstem.training import corrupt_and_preprocess, load_simset

    torch.set_num_threads(args.threads)
    specs = {}
    for m in args.models:
        label, rest = m.split("=", 1)
        name, folder = rest.split("@", 1)
        specs[label] = (name, folder)
    sim = load_simset(args.data)
    first = next(iter(specs.values()))
    grid = load_model(first[0], "pattern", folder=first[1]).grid
    n = min(args.n, len(sim))
    pick = np.sort(np.random.default_rng(123).choice(len(sim), n, replace=False))
    rng = np.random.default_rng(123)
    inputs = {}
    for cond in ("ideal", "corrupted"):
        xs = []
        for i in range(0, n, 1000):
            frames = np.asarray(sim.frames[pick[i:i + 1000]])
            x, _ = corrupt_and_preprocess(frames, float(sim.calibration.mrad_per_px), rng, None, cond == "ideal", grid)
            xs.append(x)
        inputs[cond] = np.concatenate(xs)
    for spec in args.bench:  # benchmark corruptions: one fixed draw (seed 7) on the raw simulated frames
        kind, strength = spec.split(":")
        if kind in ("source", "source+corrupted"):
            inputs[spec] = finite_source_inputs(sim, pick, float(strength), kind == "source", grid)
            continue
        xs = []
        for i in range(0, n, 1000):
            frames = np.asarray(sim.frames[pick[i:i + 1000]], dtype=np.float32)
            x, _ = preprocess(apply_corruption(frames, kind, float(strength), 7 + i), sim.calibration, grid)
            xs.append(x)
        inputs[spec] = np.concatenate(xs)
    conditions = list(inputs)
    y = sim.labels[pick]
    correct = {}
    for label, (name, folder) in specs.items():
        model = load_model(name, "pattern", folder=folder)
        if model.grid.to_dict() != grid.to_dict():
            raise SystemExit(f"{label}: input grid differs from the first model's; compare like with like")
        for cond in conditions:
            for tta in (1, 8):
                pred = model.predict(inputs[cond], tta=tta == 8)["proba"].argmax(1)
                correct[(label, cond, tta)] = pred == y
                print(f"{label:12s} {cond:12s} tta {tta}: {float((pred == y).mean()):.4f}", flush=True)
    labels = list(specs)
    pairs = [tuple(p.split(":")) for p in args.pairs] if args.pairs else \
        [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    for a, b in pairs:
        for cond in conditions:
            for tta in (1, 8):
                ca, cb = correct[(a, cond, tta)], correct[(b, cond, tta)]
                only_b, only_a = int((~ca & cb).sum()), int((ca & ~cb).sum())
                p = binomtest(only_b, only_b + only_a).pvalue if only_a + only_b else 1.0
                print(f"{cond:12s} tta {tta}: {b} - {a} = {cb.mean() - ca.mean():+.4f} "
                      f"(only {b} right {only_b}, only {a} right {only_a}; McNemar p = {p:.3f})")


def finite_source_inputs(sim, pick, sigma_a: float, ideal: bool, grid, rows_per_block: int = 32):
    """Inputs of the picked patterns as a finite source of std ``sigma_a`` (Å) records them: each
    pattern's probe-grid row averaged by :func:`polarstem.simulate.coherence.source_blur_grid` (the set
    needs a regular probe grid, e.g. heldout6g), then ideal or with the training-style corruptions (seed 123)."""
    from polarstem.simulate.coherence import MIN_GRID, source_blur_grid
    from polarstem.training import corrupt_and_preprocess
    from polarstem.training.data import probe_grid_side

    g = probe_grid_side(sim)
    if not g or g < MIN_GRID:
        raise SystemExit(f"{sim.folder}: source:S needs a set with a >= 6 x 6 probe grid per cell (e.g. heldout6g)")
    n_pos = g * g
    rows = pick // n_pos
    out = None
    rng = np.random.default_rng(123)
    for r0 in range(0, int(rows.max()) + 1, rows_per_block):
        sel = np.flatnonzero((rows >= r0) & (rows < r0 + rows_per_block))
        if not len(sel):
            continue
        f = np.asarray(sim.frames[r0 * n_pos:(r0 + rows_per_block) * n_pos], np.float32)
        nr = len(f) // n_pos
        f = source_blur_grid(f.reshape(nr, g, g, *f.shape[1:]), sigma_a).reshape(len(f), *f.shape[1:])
        x, _ = corrupt_and_preprocess(f[pick[sel] - r0 * n_pos], float(sim.calibration.mrad_per_px), rng, None,
                                      ideal, grid)
        if out is None:
            out = np.zeros((len(pick),) + x.shape[1:], x.dtype)
        out[sel] = x
    return out


if __name__ == "__main__":
    main()
