"""The maps of a run (:class:`ClassificationResult`), how a block's predictions are written into them,
and the abstention decision taken on the finished maps (:func:`abstain`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..abstain import scan_verdict
from ..classes import N_CLASSES, NO_CLASS, UNCERTAIN
from ..errors import PolarstemError
from ..lattice import Lattice

if TYPE_CHECKING:
    from .predict import BlockPrediction

#: The per-position maps a resumed run takes over from the partial result it continues.
_RESUMED_MAPS = ("classes", "confidence", "margin", "proba", "embedding_distance", "informative", "done")


@dataclass
class ClassificationResult:
    """Maps of shape (scan_rows, scan_cols) for one run; valid where ``done`` is True."""

    classes: np.ndarray  # int8, -1 = not classified
    confidence: np.ndarray  # float32 max probability, NaN where not classified
    margin: np.ndarray  # float32 top-1 minus top-2 probability
    proba: np.ndarray  # float32 (rows, cols, 8)
    embedding_distance: np.ndarray  # float32 distance of the embedding to its class prototype
    informative: np.ndarray  # bool: preprocessing judged the input informative (the filter map)
    done: np.ndarray  # bool: positions that were classified
    anomaly: np.ndarray | None = None  # float32, filled by score_anomaly
    fingerprint: np.ndarray | None = None  # float16 (rows, cols, F): coarse model input (anomaly.fingerprint)
    usable: np.ndarray | None = None  # bool: not broken (featureless counts as usable; such patterns vote)
    background: np.ndarray | None = None  # virtual ADF image, when the lattice search made one
    distance: np.ndarray | None = None  # float32 pooled distance of the embedding to the training data (abstain.py)
    votes: np.ndarray | None = None  # float32 patterns pooled per position (1 in pattern mode)
    uncertain: np.ndarray | None = None  # bool: the model abstains there (the class map holds -2)
    verdict: str | None = None  # one sentence when most of the scan is uncertain
    notes: list = field(default_factory=list)  # what the ruler found about the calibration, and the like
    mode: str = "pattern"
    lattice: Lattice | None = None
    model: str = ""
    model_sha256: str = ""
    device: str = "cpu"
    complete: bool = True  # every requested position classified (False when the run was stopped)
    finished: bool = True  # False in the partial results ``iter_classify`` yields while the run goes on
    seconds: float = 0.0
    n_patterns: int = 0
    params: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, scan_shape: tuple[int, int], **kw) -> ClassificationResult:
        nan = lambda: np.full(scan_shape, np.nan, np.float32)  # noqa: E731
        return cls(
            classes=np.full(scan_shape, NO_CLASS, np.int8), confidence=nan(), margin=nan(),
            proba=np.full(scan_shape + (N_CLASSES,), np.nan, np.float32), embedding_distance=nan(),
            informative=np.zeros(scan_shape, bool), done=np.zeros(scan_shape, bool), usable=np.zeros(scan_shape, bool),
            distance=nan(), votes=nan(), **kw,
        )

    @property
    def mode_label(self) -> str:
        """The mode as a status line shows it, saying when the cell came from the calibration alone."""
        if self.mode == "cell" and self.lattice is not None and self.lattice.source == "calibration":
            return "cell mode (lattice from the scan calibration: the ADF image shows none)"
        return f"{self.mode} mode"

    def maps(self) -> dict[str, np.ndarray]:
        """All maps by name, as written to ``maps.hspy``."""
        out = {"class": self.classes, "confidence": self.confidence, "margin": self.margin,
               "embedding_distance": self.embedding_distance,
               "informative": self.informative.astype(np.uint8), "done": self.done.astype(np.uint8)}
        if self.anomaly is not None:
            out["anomaly"] = self.anomaly
        if self.distance is not None:
            out["distance_to_training"] = self.distance
        if self.uncertain is not None:
            out["uncertain"] = self.uncertain.astype(np.uint8)
        return out

    def continue_from(self, previous: ClassificationResult) -> None:
        """Take over the classified positions of an interrupted run's partial result (same scan and mode)."""
        if previous.model_sha256 and previous.model_sha256 != self.model_sha256:
            raise PolarstemError("the partial result to resume was made with other model weights")
        for key in _RESUMED_MAPS:
            setattr(self, key, getattr(previous, key).copy())
        for key in ("usable", "fingerprint", "distance", "votes"):
            if getattr(previous, key, None) is not None:
                setattr(self, key, getattr(previous, key).copy())
        self.n_patterns = int(self.done.sum())
        # the leading class where the interrupted run had written -2 (abstention is decided again at the end)
        was_uncertain = self.done & (self.classes == UNCERTAIN)
        self.classes[was_uncertain] = np.nanargmax(np.nan_to_num(self.proba[was_uncertain], nan=-1.0), axis=-1)

    def store(self, rows: slice, cols: slice, out: BlockPrediction, prototypes: np.ndarray | None) -> None:
        """Write one block's predictions (positions ``out.sel`` of the block ``rows`` x ``cols``) into the maps."""
        sel, proba, fp = out.sel, out.proba, out.fingerprint
        if fp is not None and len(fp):
            if self.fingerprint is None or self.fingerprint.shape[-1] != fp.shape[-1]:
                self.fingerprint = np.full(self.classes.shape + (fp.shape[-1],), np.nan, np.float16)
            self.fingerprint[rows, cols][sel] = fp
        cls = np.argmax(proba, axis=1)
        top2 = np.sort(proba, axis=1)[:, -2:]
        sub = lambda arr: arr[rows, cols]  # noqa: E731 - views into the maps
        sub(self.classes)[sel] = cls.astype(np.int8)
        sub(self.confidence)[sel] = top2[:, 1]
        sub(self.margin)[sel] = top2[:, 1] - top2[:, 0]
        sub(self.proba)[sel] = proba
        sub(self.informative)[sel] = np.asarray(out.informative, bool)
        if self.usable is not None:
            sub(self.usable)[sel] = np.asarray(out.usable, bool)
        sub(self.done)[sel] = True
        if out.distance is not None:
            sub(self.distance)[sel] = out.distance
        if out.votes is not None:
            sub(self.votes)[sel] = out.votes
        if prototypes is not None:
            dist = np.linalg.norm(out.emb - prototypes[cls], axis=1)
        else:
            dist = np.full(len(cls), np.nan, np.float32)
        sub(self.embedding_distance)[sel] = dist
        self.n_patterns += int(sel.sum())


def _without_usable_pattern(result: ClassificationResult) -> np.ndarray:
    """Positions without an informative (or usable) pattern: they abstain whatever the scores."""
    bad = ~result.informative
    if result.usable is not None:
        bad = bad | ~result.usable
    return bad


def abstain(result: ClassificationResult, abstention, outside: list[str] | None = None) -> None:
    """Mark the positions where the model abstains: -2 in the class map, ``uncertain`` True.

    Positions without an informative pattern (broken: non-finite, empty, no bright-field disk; or,
    in a cell window, no pattern whose disk stands out from its surroundings: noise, a blank
    detector) always abstain; with the model's calibrated thresholds (``polarstem.abstain``) so do
    positions whose patterns lie far from the training data or where no direction clearly wins, and
    every position of a scan whose median scores are unlike in-scope scans' (``scan_out_of_scope``).
    ``outside``: the file's acquisition values beyond the ranges the model's card was validated on
    (:func:`polarstem.acquisition.outside_scope`); then every position abstains, with one sentence why.
    Runs after the wall bands and the anomaly score, which read the model's leading class everywhere.
    """
    done = result.done
    unc = done & _without_usable_pattern(result)
    judged = done & ~unc  # the scan median, as the calibration rows', counts every usable window
    scan_out = False
    if abstention is not None and abstention.calibrated and result.distance is not None:
        votes = np.where(np.isfinite(result.votes), result.votes, 1.0) if result.votes is not None else 1.0
        unc |= done & abstention.uncertain(result.distance, result.confidence, votes)
        scan_out = abstention.scan_out_of_scope(result.distance, result.confidence, votes, judged)
    if outside or scan_out:
        unc = done.copy()
    result.uncertain = unc
    result.classes = np.where(unc, np.int8(UNCERTAIN), result.classes).astype(np.int8)
    result.verdict = scan_verdict(unc, done)
    if outside and done.any():
        result.verdict = ("the acquisition is outside what the model was validated on: " + "; ".join(outside)
                          + ". Its maps are withheld (uncertain, -2): pick a model that covers it (polarstem models) "
                            "or correct the calibration if the file is wrong")
    result.params["uncertain_fraction"] = round(float(unc.sum() / max(1, done.sum())), 4)
