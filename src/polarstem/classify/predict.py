"""The model on one block: forward passes in batches (cancel between them), symmetry averaging, the
vote, and progress in scan positions."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import Cancelled
from ..models.symmetry import tta_elements
from .prepare import PreparedBlock
from .vote import vote_windows


@dataclass
class BlockPrediction:
    """What one block's positions get: per selected position (``sel``) of the block."""

    sel: np.ndarray
    proba: np.ndarray | None
    emb: np.ndarray | None
    informative: np.ndarray
    usable: np.ndarray
    fingerprint: np.ndarray | None
    distance: np.ndarray | None = None  # distance of the embedding to the training data (pooled in a vote)
    votes: np.ndarray | None = None  # patterns pooled per position


class PositionProgress:
    """``progress(done, total)`` in scan positions, at most every ``interval`` seconds (and at the end)."""

    def __init__(self, progress, total: int, interval: float = 0.25):
        self.progress, self.total, self.interval = progress, int(total), interval
        self.done, self._last = 0, 0.0
        if progress:
            progress(0, self.total)

    def __call__(self, done: int, force: bool = False) -> None:
        self.done = min(self.total, int(done))
        now = time.monotonic()
        if self.progress and (force or now - self._last >= self.interval):
            self._last = now
            self.progress(self.done, self.total)


def predict_block(model, prepared: PreparedBlock, batch_size, window, cancel=None, tta=False,
                  on_batch=None) -> BlockPrediction:
    """Predictions of one prepared block; a vote pools its window first (the fingerprint stays each
    position's own). ``on_batch(done, total)`` follows the block's forward passes.

    Cancelled between batches, the exception carries what a block without a vote finished as
    ``exc.block`` (a vote needs every pattern of its windows, so a voting block keeps nothing)."""
    p = prepared
    try:
        proba, emb = predict_batches(model, p.x, batch_size, cancel, tta, on_batch)
    except Cancelled as exc:
        if p.vote is None and getattr(exc, "partial", None) is not None:
            exc.block = _finished_part(model, p, *exc.partial)
        raise
    dist = pattern_distance(model, emb)
    if proba is None or p.vote is None:
        return BlockPrediction(p.sel, proba, emb, p.informative, p.usable, p.fingerprint, dist,
                               None if proba is None else np.ones(len(proba), np.float32))
    proba, emb, informative, usable, dist, votes = vote_windows(p.vote, p.sel, proba, emb, p.informative, window,
                                                                 voters=p.usable, distance=dist)
    return BlockPrediction(p.sel, proba, emb, informative, usable, p.fingerprint, dist, votes)


def _finished_part(model, p: PreparedBlock, proba, emb) -> BlockPrediction:
    """The first ``len(proba)`` selected positions of a block without a vote, as predicted before a cancel."""
    k = len(proba)
    keep = np.zeros(p.sel.size, bool)
    keep[np.flatnonzero(p.sel.ravel())[:k]] = True
    return BlockPrediction(keep.reshape(p.sel.shape), proba, emb, p.informative[:k], p.usable[:k],
                           None if p.fingerprint is None else p.fingerprint[:k], pattern_distance(model, emb),
                           np.ones(k, np.float32))


def predict_batches(model, x, batch_size, cancel=None, tta=False, on_batch=None):
    """Probabilities and embeddings of preprocessed inputs, batch by batch (cancel between batches).

    ``tta`` averages each input's log-probabilities over that many square-symmetry images (as much
    cost); a batch holds ``batch_size`` images in all, so it takes about as long whatever ``tta`` is
    (progress and cancel stay responsive). ``on_batch(done, total)`` follows the inputs done.
    Cancelled, the exception carries the inputs done as ``exc.partial`` (proba, embedding), or None."""
    step = max(1, batch_size // len(tta_elements(tta)))
    probs, embs = [], []
    for start in range(0, len(x), step):
        if cancel is not None and cancel.is_set():
            exc = Cancelled("cancelled by the user")
            exc.partial = (np.concatenate(probs), np.concatenate(embs)) if probs else None  # the inputs done
            raise exc
        out = model.predict(x[start : start + step], batch_size=batch_size, tta=tta)
        probs.append(out["proba"])
        embs.append(out["embedding"])
        if on_batch is not None:
            on_batch(min(len(x), start + step), len(x))
    if not probs:
        return None, None
    return np.concatenate(probs).astype(np.float32), np.concatenate(embs).astype(np.float32)


def pattern_distance(model, emb):
    """Per-pattern distance of the embedding to the training data (None without calibrated abstention)."""
    abstention = getattr(model, "abstention", None)
    return abstention.distance(emb) if (abstention is not None and emb is not None) else None


def class_prototypes(model) -> np.ndarray | None:
    """Class prototypes in the model's embedding space (N_CLASSES, D), if the model has them."""
    proto = getattr(model, "prototypes", None)
    if callable(proto):
        proto = proto()
    return None if proto is None else np.asarray(proto, dtype=np.float32)
