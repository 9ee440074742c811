"""Domain-gap view: where a user's patterns fall in the model's embedding space, next to the training data.

A classifier is only trustworthy where its inputs resemble what it was trained on. The model's embedding
(the layer before the class head; the PCA projection for PCA + kNN) of simulated training patterns and
of the user's patterns are projected onto the first two principal components *of the training
embeddings*. ``outside_fraction`` is the share of user patterns whose nearest training embedding is
farther than 95 % of training patterns are from theirs (in the full embedding space): about 0.05 when
the data look like the simulations, near 1 when they do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PolarstemError
from ..fileio import write_text


@dataclass
class EmbeddingMap:
    """2D coordinates of training and user patterns (PCA of the training embeddings)."""

    model: str
    mode: str
    train_xy: np.ndarray  # (Nt, 2)
    train_class: np.ndarray  # (Nt,) true class
    user_xy: np.ndarray  # (Nu, 2)
    user_class: np.ndarray  # (Nu,) predicted class
    user_confidence: np.ndarray  # (Nu,)
    user_positions: np.ndarray  # (Nu, 2) scan (row, col)
    explained_variance: list = field(default_factory=list)
    outside_fraction: float | None = None
    dataset: str = ""
    train_folder: str = ""

    def summary(self) -> dict:
        return {"model": self.model, "mode": self.mode, "dataset": self.dataset, "train": self.train_folder,
                "n_train": int(len(self.train_xy)), "n_user": int(len(self.user_xy)),
                "explained_variance": [round(float(v), 4) for v in self.explained_variance],
                "outside_fraction": None if self.outside_fraction is None else round(float(self.outside_fraction), 4)}

    def to_csv(self, path) -> None:
        """One line per point: set, x, y, class, confidence, row, col."""
        lines = ["set,x,y,class,confidence,row,col"]
        for (x, y), k in zip(self.train_xy, self.train_class):
            lines.append(f"train,{x:.5g},{y:.5g},{int(k)},,,")
        for (x, y), k, c, (r, q) in zip(self.user_xy, self.user_class, self.user_confidence, self.user_positions):
            lines.append(f"user,{x:.5g},{y:.5g},{int(k)},{c:.4f},{int(r)},{int(q)}")
        write_text(path, "\n".join(lines) + "\n")


#: The canonical training set, where ``polarstem simulate`` puts it in a source checkout (configs/train/).
TRAINING_FOLDER = Path(".cache") / "sim" / "canonical"


def default_reference_folder() -> tuple[Path, str]:
    """The simulated folder to compare a dataset with, and what it is.

    The training set when this machine has it (``.cache/sim/canonical`` under the working folder or
    the source checkout), else the bundled sample scan: simulated and labeled by the same simulator,
    so it shows where simulated KNN lies in the embedding even without the training set.
    """
    from ..sample import sample_dataset_path

    checkout = Path(__file__).resolve().parents[3]
    for root in (Path.cwd(), checkout):
        folder = root / TRAINING_FOLDER
        if (folder / "labels.npy").exists():
            return folder, "training set"
    return sample_dataset_path(), "bundled sample scan (simulated; the training set is not on this machine)"


def _embed(model, frames, calibration, batch: int = 256):
    x, _ = model.preprocess(frames, calibration)
    emb, proba = [], []
    for i in range(0, len(x), batch):
        out = model.predict(x[i:i + batch])
        emb.append(out["embedding"])
        proba.append(out["proba"])
    return np.concatenate(emb).astype(np.float64), np.concatenate(proba)


def _user_frames(dataset, mode: str, n: int, rng):
    """Up to ``n`` scan positions of the user's dataset (cell mode: cell-averaged), with their (row, col)."""
    from ..chunks import read_region
    from ..classify import cell_average, scan_lattice

    rows, cols = dataset.scan_shape
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    if len(rr) > n:
        keep = np.sort(rng.choice(len(rr), n, replace=False))
        rr, cc = rr[keep], cc[keep]
    if mode == "cell":
        lattice, _ = scan_lattice(dataset)
        if lattice is None or not lattice.resolved:
            raise PolarstemError(f"{dataset.name}: cell mode needs a scan that resolves the lattice")
        frames = cell_average(read_region(dataset, slice(None), slice(None)), lattice.window)[rr, cc]
    else:
        frames = np.stack([read_region(dataset, slice(r, r + 1), slice(c, c + 1))[0, 0] for r, c in zip(rr, cc)]) \
            if len(rr) < rows * cols else read_region(dataset, slice(None), slice(None)).reshape((-1,) + dataset.detector_shape)
    return frames, np.stack([rr, cc], 1)


def embedding_map(model: str | object, dataset, train_folder, mode: str = "pattern", n_train: int = 1000,
                  n_user: int = 1000, seed: int = 0) -> EmbeddingMap:
    """Embed ``n_train`` simulated training inputs and ``n_user`` positions of ``dataset``; PCA to 2D."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from ..io import Dataset4D, load
    from ..models import load_model
    from .testsets import open_source, pick_cells, pick_patterns

    rng = np.random.default_rng(seed)
    name = model if isinstance(model, str) else getattr(model, "card", {}).get("name", "model")
    model = load_model(model, mode=mode) if isinstance(model, str) else model
    src = open_source(train_folder)
    if mode == "cell":
        rows = pick_cells(src, None, n_train, rng)
        train = src.read_rows(rows).mean(axis=1)
        train_y = src.labels[rows, 0]
    else:
        rr, cc = pick_patterns(src, None, n_train, rng)
        train, train_y = src.read_patterns(rr, cc), src.labels[rr, cc]
    if len(train) < 3:
        raise PolarstemError(f"{train_folder}: too few finished training patterns for an embedding map")
    t_emb, _ = _embed(model, train, src.calibration)
    ds = dataset if isinstance(dataset, Dataset4D) else load(dataset)
    frames, pos = _user_frames(ds, mode, n_user, rng)
    u_emb, u_proba = _embed(model, frames, ds.calibration)
    pca = PCA(n_components=2, random_state=seed).fit(t_emb)
    nn = NearestNeighbors(n_neighbors=2).fit(t_emb)
    d_train = nn.kneighbors(t_emb)[0][:, 1]  # nearest other training point
    d_user = nn.kneighbors(u_emb, n_neighbors=1)[0][:, 0]
    outside = float((d_user > np.quantile(d_train, 0.95)).mean()) if len(d_user) else None
    return EmbeddingMap(
        model=str(name), mode=mode, train_xy=pca.transform(t_emb).astype(np.float32), train_class=train_y.astype(np.int64),
        user_xy=pca.transform(u_emb).astype(np.float32), user_class=u_proba.argmax(1).astype(np.int64),
        user_confidence=u_proba.max(1).astype(np.float32), user_positions=pos.astype(np.int64),
        explained_variance=list(pca.explained_variance_ratio_), outside_fraction=outside,
        dataset=str(dataset) if not isinstance(dataset, Dataset4D) else str(ds.source), train_folder=str(train_folder))


def plot_embedding_map(emap: EmbeddingMap, path) -> Path:
    """Scatter: training points small and coloured by true class, the user's as edged dots by predicted class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..classes import CLASS_NAMES, direction_colors

    colors = direction_colors()
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=110)
    for k in range(len(CLASS_NAMES)):
        sel = emap.train_class == k
        if sel.any():
            ax.scatter(*emap.train_xy[sel].T, s=6, color=colors[k][:3], alpha=0.35, linewidths=0,
                       label=f"{k} {CLASS_NAMES[k]}")
    if len(emap.user_xy):
        ax.scatter(*emap.user_xy.T, s=18, c=[colors[k][:3] for k in emap.user_class], edgecolors="black",
                   linewidths=0.5, label="dataset (predicted class)")
    ev = emap.explained_variance
    ax.set_xlabel(f"PC1 ({ev[0]:.0%} of training variance)" if ev else "PC1")
    ax.set_ylabel(f"PC2 ({ev[1]:.0%})" if len(ev) > 1 else "PC2")
    out = "" if emap.outside_fraction is None else f"; {emap.outside_fraction:.0%} of dataset outside training"
    ax.set_title(f"{emap.model} ({emap.mode}) embedding: {Path(emap.dataset).name or 'dataset'}{out}", fontsize=9)
    ax.legend(fontsize=6, markerscale=1.5, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
