"""What the hardest in-scope KNN looks like to a model: window scores on calibration rows, the rows it is
least sure of (with their thickness and how well they are read), and a scan's scores beside them.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/inscope_scores.py [--model resnet-proto]
        [--data .cache/sim/abstention_canonical] [--rows 300] [--scan /tmp/sto/maps.hspy]

Per window size (3 x 3 and 6 x 6 of a row's 6 x 6 probe grid): percentiles of the pooled top probability
and of the prototype distance of the window's mean embedding (prototype models), the accuracy of the
vote, the twelve rows with the lowest median confidence, and P(vote right | row median confidence)
(isotonic). ``--scan``: a ``maps.hspy`` written by ``polarstem classify`` whose medians are printed for
comparison. Used to ask whether a non-polar crystal at the model's own acquisition can be told from
the hardest in-scope KNN (docs/acquisitions.md).
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> None:
    from sklearn.isotonic import IsotonicRegression

    from polarstem.classify.predict import class_prototypes
    from polarstem.models import load_model
    from polarstem.training import DEFAULT_AUGMENT, load_simset
    from polarstem.training.abstention import _fit_and_calibration_rows, _row_outputs, _rows_in_range
    from polarstem.training.data import probe_grid_side

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet-proto")
    ap.add_argument("--data", default=".cache/sim/abstention_canonical")
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--scan", default=None, help="maps.hspy of a classified scan to set beside the rows")
    args = ap.parse_args(argv)

    model = load_model(args.model, mode="pattern")
    aug = dict(DEFAULT_AUGMENT, **(model.card["training"]["config"].get("augment") or {}))
    sim = load_simset(args.data)
    g = probe_grid_side(sim)
    n = g * g
    rng = np.random.default_rng(0)
    _, rows = _fit_and_calibration_rows(sim, n, 1, args.rows, rng, _rows_in_range(sim, n, None))
    proba, emb, y = _row_outputs(model, sim, rows, n, model.grid, aug, rng, tta=8)
    proto = class_prototypes(model)
    logp = np.log(np.clip(proba, 1e-6, 1)).reshape(len(rows), g, g, -1)
    emb = emb.reshape(len(rows), g, g, -1)
    thick = sim.thickness[rows * n]
    for side in (3, 6):
        stride = g // side
        conf, dist, right = [], [], []
        for oy in range(stride):
            for ox in range(stride):
                m = logp[:, oy::stride, ox::stride].reshape(len(rows), side * side, -1).mean(1)
                p = np.exp(m - m.max(1, keepdims=True))
                conf.append((p / p.sum(1, keepdims=True)).max(1))
                right.append(m.argmax(1) == y)
                if proto is not None:
                    e = emb[:, oy::stride, ox::stride].reshape(len(rows), side * side, -1).mean(1)
                    dist.append(np.linalg.norm(e - proto[m.argmax(1)], axis=1))
        conf, right = np.stack(conf, 1), np.stack(right, 1)  # (rows, windows)
        print(f"window {side * side}: vote accuracy {right.mean():.3f}; top probability percentiles 0.5/1/5/50: "
              f"{np.percentile(conf, [0.5, 1, 5, 50]).round(3)}")
        if dist:
            print(f"   prototype distance percentiles 50/90/95/99/max: "
                  f"{np.percentile(np.stack(dist, 1), [50, 90, 95, 99, 100]).round(3)}")
        med, acc = np.median(conf, 1), right.mean(1)
        order = np.argsort(med)[:12]
        print("   least sure rows (median top probability, vote accuracy, thickness nm):",
              [(round(float(med[i]), 3), round(float(acc[i]), 2), round(float(thick[i]), 1)) for i in order])
        iso = IsotonicRegression(out_of_bounds="clip").fit(med, acc)
        for t in (0.25, 0.3, 0.35, 0.4, 0.5):
            print(f"   P(vote right | row median {t}) = {iso.predict([t])[0]:.2f}; rows below: {np.mean(med < t):.3f}")
    if args.scan:
        import hyperspy.api as hs

        maps = hs.load(args.scan)
        names = list(maps.metadata.polarstem.map_names)
        for key in ("confidence", "embedding_distance"):
            print(f"scan {args.scan}: median {key} {np.nanmedian(maps.data[names.index(key)]):.3f}")


if __name__ == "__main__":
    main()
