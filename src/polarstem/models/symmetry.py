"""The square symmetry (D4) of [001]pc patterns and what it does to the 8 polarization classes.

Rotating or mirroring a pattern is the pattern of the rotated or mirrored crystal: class k (at 45°·k
from +x towards +y, x = column, y = row) goes to another class. Training uses this as exact data
augmentation (8x the data for free); prediction may average over it (test-time augmentation).
The class permutations follow the conventions unless measured otherwise from the training data
(:func:`measure_generators`), so a simulator with other detector axes still trains consistently.
"""

from __future__ import annotations

import numpy as np

from ..classes import N_CLASSES

#: The 8 elements as (number of np.rot90 quarter turns on (row, col), then transpose?).
ELEMENTS = [(r, t) for t in (False, True) for r in range(4)]

#: Test-time symmetry averaging: how many symmetry images of a pattern are averaged, and which.
#: 2 = the pattern and its 180° rotation (the image of the opposite polarization, k -> k + 4): it
#: makes the model judge the Friedel-antisymmetric part, where the sign of P lives, consistently, and
#: measured almost all of the full group's gain at a quarter of its cost (docs/classify.md).
TTA_ELEMENTS = {1: [(0, False)], 2: [(0, False), (2, False)], 4: [(r, False) for r in range(4)], 8: ELEMENTS}
#: The automatic choice (``tta=None``) averages all 8 images on a GPU, or on a CPU for up to this
#: many patterns, and 2 images beyond it (so a 256 x 256 scan on a laptop stays at ~2x, not 8x, the
#: plain run time). On the held-out simulations 1 / 2 / 8 images gave 0.68 / 0.72 / 0.76 per pattern.
AUTO_TTA_CPU_MAX_PATTERNS = 20000


def auto_tta(n_patterns: int, device: str) -> int:
    """How many symmetry images the automatic setting averages for a job of ``n_patterns`` on ``device``."""
    return 8 if (device != "cpu" or n_patterns <= AUTO_TTA_CPU_MAX_PATTERNS) else 2


def tta_elements(tta) -> list[tuple[int, bool]]:
    """The symmetry elements a ``tta`` setting averages: False/1 none, True/8 all, 2 or 4 a subgroup."""
    n = 8 if tta is True else 1 if tta in (False, None) else int(tta)
    if n not in TTA_ELEMENTS:
        raise ValueError(f"symmetry averaging takes 1, 2, 4 or 8 images, not {tta!r}")
    return TTA_ELEMENTS[n]


def transform(x: np.ndarray, element: tuple[int, bool]) -> np.ndarray:
    """Apply a D4 element to the last two axes of ``x``."""
    r, t = element
    y = np.rot90(x, k=r, axes=(-2, -1))
    if t:
        y = np.swapaxes(y, -1, -2)
    return np.ascontiguousarray(y)


#: Class permutations of the two generators under the conventions (x = column, y = row):
#: np.rot90 by one quarter turn on (row, col) maps (x, y) -> (y, -x), angle -90°: class k -> k-2;
#: transposing swaps x and y, angle θ -> 90° - θ: class k -> 2-k.
CONVENTION_GENERATORS = {"rot": [(k - 2) % N_CLASSES for k in range(N_CLASSES)],
                         "transpose": [(2 - k) % N_CLASSES for k in range(N_CLASSES)]}


def class_permutation(element: tuple[int, bool], generators: dict | None = None) -> np.ndarray:
    """perm[k] = the class of a class-k pattern after ``transform(., element)``."""
    g = generators or CONVENTION_GENERATORS
    rot = np.asarray(g["rot"])
    k = np.arange(N_CLASSES)
    for _ in range(element[0]):
        k = rot[k]
    if element[1]:
        k = np.asarray(g["transpose"])[k]
    return k.astype(np.int64)


def all_images(x: np.ndarray, y: np.ndarray, generators: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, H, W) under every square-symmetry element (``ELEMENTS`` order) with their classes
    permuted to match: the symmetry as exact augmentation, (8N, H, W) and (8N,)."""
    xs, ys = zip(*[(transform(x, e), class_permutation(e, generators)[y]) for e in ELEMENTS])
    return np.concatenate(xs), np.concatenate(ys)


def measure_generators(class_means: np.ndarray) -> tuple[dict, float]:
    """Generator permutations measured on (8, H, W) class-mean patterns, and the worst match error.

    Works on the class means minus their average (what distinguishes the classes; the average pattern
    is itself square-symmetric). The data define the labels: if a simulator's detector axes differ from
    the conventions, the augmentation must follow the data. Returns the conventions when the match is
    not a permutation or not clearly better than the conventions' own.
    """
    d = np.asarray(class_means, dtype=np.float64)
    d = d - d.mean(axis=0, keepdims=True)
    out, worst = {}, 0.0
    conv_err = 0.0
    for name, element in (("rot", (1, False)), ("transpose", (0, True))):
        perm = []
        for k in range(N_CLASSES):
            a = transform(d[k], element)
            errs = [np.linalg.norm(a - d[j]) / max(np.linalg.norm(d[j]), 1e-12) for j in range(N_CLASSES)]
            perm.append(int(np.argmin(errs)))
            worst = max(worst, float(min(errs)))
            conv_err = max(conv_err, float(errs[CONVENTION_GENERATORS[name][k]]))
        out[name] = perm
    if any(sorted(p) != list(range(N_CLASSES)) for p in out.values()) or worst > 0.9 * conv_err and out != CONVENTION_GENERATORS:
        return dict(CONVENTION_GENERATORS), conv_err
    return out, worst
