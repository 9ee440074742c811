"""The 8 projected polarization classes of KNN seen down [001]pc (see shared spec, conventions.md).

Class k points at 45°·k from +x (column) towards +y (row). ``-1`` means "no class" (outside the ROI,
not polar, not computed); ``-2`` means "uncertain": the model abstains.
"""

from __future__ import annotations

import numpy as np

N_CLASSES = 8
NO_CLASS = -1
UNCERTAIN = -2


CLASS_NAMES = ["[100]", "[110]", "[010]", "[-110]", "[-100]", "[-1-10]", "[0-10]", "[1-10]"]

#: Unit vectors (x, y) of each class, x = column, y = row.
CLASS_DIRECTIONS = np.array(
    [(np.cos(np.pi / 4 * k), np.sin(np.pi / 4 * k)) for k in range(N_CLASSES)], dtype=float
).round(12)

#: Which of the 12 pseudo-cubic <110> variants project onto each class (conventions.md).
CLASS_VARIANTS = {
    0: [(1, 0, 1), (1, 0, -1)],
    1: [(1, 1, 0)],
    2: [(0, 1, 1), (0, 1, -1)],
    3: [(-1, 1, 0)],
    4: [(-1, 0, 1), (-1, 0, -1)],
    5: [(-1, -1, 0)],
    6: [(0, -1, 1), (0, -1, -1)],
    7: [(1, -1, 0)],
}


def class_of_variant(variant: tuple[int, int, int]) -> int:
    """Projected class of a <110> polarization variant (x, y, z), z along the beam."""
    for k, variants in CLASS_VARIANTS.items():
        if tuple(int(v) for v in variant) in variants:
            return k
    raise ValueError(f"{variant} is not a pseudo-cubic <110> variant")


def direction_colors() -> np.ndarray:
    """RGBA colour of each class from a hue wheel (class k at hue 45°·k), shared by maps and legends."""
    import colorsys

    rgba = np.ones((N_CLASSES, 4))
    for k in range(N_CLASSES):
        rgba[k, :3] = colorsys.hsv_to_rgb(k / N_CLASSES, 0.85, 0.95)
    return rgba
