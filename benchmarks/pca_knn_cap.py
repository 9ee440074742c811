"""How far a PCA + kNN classifier can read the polarization of KNN from its diffraction patterns.

Held-out structures of a canonical-acquisition set (the arrays a training run caches: ideal and
experiment-like copies), training on the others under all eight square-symmetry images. Prints the
per-pattern accuracy on the experiment-like copies of the held-out structures for several feature
representations, training sizes and classifiers, and the same for cell-window means (the 6 x 6 probe
positions of one structure at one thickness averaged: a PACBED), beside a shipped network on the same
test patterns, so the cap of the family is measured against what the patterns carry.

    polarstem simulate configs/simulate/abstention_canonical.yaml -o .cache/sim/abstention_canonical --workers 2
    polarstem train configs/train/resnet-regression.yaml     # caches the arrays this reads
    .venv/bin/python benchmarks/pca_knn_cap.py .cache/train/arrays-pattern-<key>.npz --network resnet-proto
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline

from polarstem.models.symmetry import all_images

FEATURES = {
    "pixels": lambda x: x,
    # the part odd under the 180-degree rotation: a polar direction flips with it, thickness does not
    "odd part": lambda x: x - x[:, ::-1, ::-1],
    "odd part, unit norm": lambda x: _unit(x - x[:, ::-1, ::-1]),
}


def _unit(f):
    return f / (np.sqrt((f ** 2).sum((1, 2), keepdims=True)) + 1e-6)


def classifiers(n_components):
    return {
        "PCA + kNN (10)": make_pipeline(PCA(n_components, svd_solver="randomized", random_state=0),
                                        KNeighborsClassifier(10, weights="distance")),
        "PCA + LDA": make_pipeline(PCA(n_components, svd_solver="randomized", random_state=0),
                                   LinearDiscriminantAnalysis()),
    }


def cell_means(x, y, group, thickness, copy):
    """One mean pattern per (structure, thickness, copy): the probe grid of a cell averaged."""
    keys = np.stack([group, np.round(thickness * 1000).astype(np.int64), copy], 1)
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    sums = np.zeros((inv.max() + 1,) + x.shape[1:], np.float64)
    np.add.at(sums, inv, x)
    counts = np.bincount(inv)
    first = np.zeros(inv.max() + 1, np.int64)
    first[inv[::-1]] = np.arange(len(inv))[::-1]
    return (sums / counts[:, None, None]).astype(np.float32), y[first], group[first], copy[first]


def run(x, y, group, copy, train_groups, test_groups, n_components, label):
    tr, te = np.isin(group, train_groups), np.isin(group, test_groups) & (copy == 1)
    xtr, ytr = all_images(x[tr], y[tr])
    for fname, f in FEATURES.items():
        for cname, clf in classifiers(min(n_components, len(xtr) - 1)).items():
            t0 = time.time()
            clf.fit(f(xtr).reshape(len(xtr), -1), ytr)
            acc = float((clf.predict(f(x[te]).reshape(int(te.sum()), -1)) == y[te]).mean())
            print(f"| {label} | {len(train_groups)} | {fname} | {cname} | {acc:.3f} | {int(te.sum())} | "
                  f"{time.time() - t0:.0f} s |", flush=True)


def network_row(name, x, y, group, copy, test_groups):
    from polarstem.models.registry import load_model

    te = np.isin(group, test_groups) & (copy == 1)
    model = load_model(name, "pattern")
    for tta in (1, 8):
        acc = float((model.predict(x[te], tta=tta)["proba"].argmax(1) == y[te]).mean())
        print(f"| single patterns | (shipped) | {name}, {tta} symmetry image(s) | network | {acc:.3f} | {int(te.sum())} | |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arrays", help="a pattern-mode arrays cache (.npz) of a canonical-acquisition probe-grid set")
    ap.add_argument("--components", type=int, default=50)
    ap.add_argument("--network", default=None, help="a shipped model to print beside (e.g. resnet-proto)")
    args = ap.parse_args(argv)
    with np.load(args.arrays, allow_pickle=False) as z:
        keep = z["informative"] & (z["y"] >= 0)
        x, y, group = z["x"][keep].astype(np.float32), z["y"][keep], z["group"][keep]
        thickness, copy = z["thickness"][keep], z["copy"][keep]
    groups = np.unique(group)
    test_groups = groups[-len(groups) // 4:]  # the last quarter of the structures (every class once or more)
    train_all = groups[:len(groups) - len(test_groups)]
    print("| input | training structures | features | classifier | accuracy | test inputs | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in sorted({max(8, len(train_all) // 3), len(train_all)}):
        run(x, y, group, copy, train_all[:n], test_groups, args.components, "single patterns")
    cx, cy, cg, cc = cell_means(x, y, group, thickness, copy)
    run(cx, cy, cg, cc, train_all, test_groups, min(args.components, 20), "cell means (PACBED)")
    if args.network:
        network_row(args.network, x, y, group, copy, test_groups)


if __name__ == "__main__":
    main()
