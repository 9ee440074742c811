"""PCA + k-nearest neighbours: a scikit-learn ``Pipeline``, saved as plain arrays in an ``.npz``.

The study's "PCA-informed kNN". A fitted pipeline is fully described by the PCA mean and components and
the projected training set with its labels, so that is all the file holds (``np.load`` with
``allow_pickle=False``: the file cannot execute code). Probabilities are distance-weighted neighbour
votes, smoothed and temperature-scaled; the embedding is the PCA projection.
"""

from __future__ import annotations

import numpy as np

from ..classes import N_CLASSES
from ..errors import ModelFileError
from ..fileio import atomic_path
from .base import BaseModel, _softmax


def make_pipeline(n_components: int = 50, n_neighbors: int = 10, seed: int = 0):
    """The unfitted scikit-learn Pipeline (whitened PCA, then distance-weighted kNN)."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline

    return Pipeline([
        ("pca", PCA(n_components=n_components, whiten=False, random_state=seed, svd_solver="randomized")),
        ("knn", KNeighborsClassifier(n_neighbors=n_neighbors, weights="distance")),
    ])


def pipeline_arrays(pipe) -> dict:
    """The plain arrays that define a fitted pipeline."""
    pca, knn = pipe.named_steps["pca"], pipe.named_steps["knn"]
    return {
        "pca_mean": pca.mean_.astype(np.float32),
        "pca_components": pca.components_.astype(np.float32),
        "pca_explained_variance": pca.explained_variance_.astype(np.float32),
        "knn_X": np.asarray(knn._fit_X, dtype=np.float32),
        "knn_y": np.asarray(knn.classes_[knn._y], dtype=np.int64),
        "n_neighbors": np.array(knn.n_neighbors, dtype=np.int64),
    }


def pipeline_from_arrays(arrays: dict):
    """Rebuild a fitted Pipeline from :func:`pipeline_arrays` output (kNN "fit" just indexes the points)."""
    comps = np.asarray(arrays["pca_components"], dtype=np.float64)
    pipe = make_pipeline(n_components=comps.shape[0], n_neighbors=int(arrays["n_neighbors"]))
    pca = pipe.named_steps["pca"]
    pca.mean_ = np.asarray(arrays["pca_mean"], dtype=np.float64)
    pca.components_ = comps
    pca.explained_variance_ = np.asarray(arrays["pca_explained_variance"], dtype=np.float64)
    pca.n_components_ = comps.shape[0]
    pca.n_features_in_ = comps.shape[1]
    pca.whiten = False
    pipe.named_steps["knn"].fit(np.asarray(arrays["knn_X"], dtype=np.float32), np.asarray(arrays["knn_y"]))
    return pipe


def save_npz(pipe, path, extra: dict | None = None) -> None:
    arrays = pipeline_arrays(pipe)
    for k, v in (extra or {}).items():
        arrays[k] = np.asarray(v)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_npz(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a plain-array PCA+kNN file ({' '.join(str(exc).split())[:160]})") from None


def vote_logits(pipe, x2d: np.ndarray, smoothing: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(log of smoothed distance-weighted vote fractions (N, 8), PCA embedding (N, D))."""
    pca, knn = pipe.named_steps["pca"], pipe.named_steps["knn"]
    emb = pca.transform(x2d).astype(np.float32)
    dist, idx = knn.kneighbors(emb)
    w = 1.0 / np.maximum(dist, 1e-6)
    w = w / w.sum(axis=1, keepdims=True)
    labels = knn.classes_[knn._y][idx]
    votes = np.zeros((len(x2d), N_CLASSES))
    np.add.at(votes, (np.repeat(np.arange(len(x2d)), idx.shape[1]), labels.ravel()), w.ravel())
    frac = (votes * idx.shape[1] + smoothing) / (idx.shape[1] + N_CLASSES * smoothing)
    return np.log(frac), emb


class PcaKnnModel(BaseModel):
    def __init__(self, pipe, card: dict):
        super().__init__(card)
        self.pipe = pipe
        self.smoothing = float(card.get("vote_smoothing", 0.5))

    @classmethod
    def from_file(cls, path, card: dict) -> PcaKnnModel:
        arrays = load_npz(path)
        need = {"pca_mean", "pca_components", "pca_explained_variance", "knn_X", "knn_y", "n_neighbors"}
        if not need <= set(arrays):
            raise ModelFileError(f"{path}: PCA+kNN file lacks {', '.join(sorted(need - set(arrays)))}")
        h, w = card.get("input_grid", {}).get("size", 64), card.get("input_grid", {}).get("size", 64)
        if arrays["pca_components"].shape[1] != h * w or arrays["knn_X"].shape[1] != arrays["pca_components"].shape[0]:
            raise ModelFileError(f"{path}: array shapes do not fit a {h}x{w} input")
        return cls(pipeline_from_arrays(arrays), card)

    def predict(self, x, batch_size: int = 4096, tta: bool = False) -> dict:
        x2d = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if len(x2d) == 0:
            return {"proba": np.zeros((0, 8), np.float32), "embedding": np.zeros((0, self.pipe.named_steps["pca"].n_components_), np.float32),
                    "logits": np.zeros((0, 8), np.float32)}
        parts = [vote_logits(self.pipe, x2d[i:i + batch_size], self.smoothing) for i in range(0, len(x2d), batch_size)]
        logits = np.concatenate([p[0] for p in parts])
        emb = np.concatenate([p[1] for p in parts])
        return {"proba": _softmax(logits / self.temperature).astype(np.float32), "embedding": emb,
                "logits": logits.astype(np.float32)}
