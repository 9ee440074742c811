"""PCA + kNN training: the scikit-learn Pipeline of :mod:`polarstem.models.pca_knn`, fitted on the
training inputs under every square-symmetry element (the symmetry as exact augmentation)."""

from __future__ import annotations

import time

import numpy as np

from ..models.pca_knn import make_pipeline, vote_logits
from ..models.symmetry import ELEMENTS, all_images
from .config import TrainConfig
from .data import thickness_split
from .temperature import fit_temperature


def train_pca_knn(cfg: TrainConfig, arrays: dict, generators: dict, log=print):
    """Fit the Pipeline on D4-expanded training inputs; temperature on the thickness validation split.

    Returns (pipeline, temperature, validation metrics)."""
    rng = np.random.default_rng(cfg.seed)
    x, y, thick = arrays["x"], arrays["y"], arrays["thickness"]
    keep = (y >= 0) & arrays["informative"]
    val = thickness_split(thick, cfg.val_every) & keep
    tr = keep & ~val
    if not val.any():
        val = keep & (rng.random(len(y)) < 0.15)
        tr = keep & ~val
    tr_idx = np.nonzero(tr)[0]
    per = max(1, cfg.knn_max_train // len(ELEMENTS))
    if len(tr_idx) > per:
        tr_idx = rng.choice(tr_idx, per, replace=False)
    X, Y = all_images(x[tr_idx].astype(np.float32), y[tr_idx], generators)
    X = X.reshape(len(X), -1)
    pipe = make_pipeline(min(cfg.pca_components, X.shape[0] - 1, X.shape[1]), cfg.knn_neighbors, cfg.seed)
    t0 = time.time()
    pipe.fit(X, Y)
    log(f"pca-knn fit on {len(X)} inputs in {time.time() - t0:.1f} s")
    vx = x[val].astype(np.float32).reshape(int(val.sum()), -1)
    logits, _ = vote_logits(pipe, vx)
    temp = fit_temperature(logits, y[val])
    val_acc = float((logits.argmax(1) == y[val]).mean()) if val.any() else float("nan")
    log(f"pca-knn val accuracy {val_acc:.4f}")
    return pipe, temp, {"val_accuracy": val_acc, "n_train": int(len(X)), "n_val": int(val.sum())}
