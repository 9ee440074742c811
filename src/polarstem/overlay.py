"""overlay.png: the class map over a virtual image, with confidence and anomaly panels, a scale bar, a
colour wheel and a legend (matplotlib); and the colours and anomaly level every map view shares
(the napari layers use the same). The files themselves are written by :mod:`polarstem.export`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .fileio import atomic_path
from .io import Calibration

#: Anomaly score at which the overlay (and napari) outline a region: the score is a robust z, i.e.
#: how many typical spreads a position lies beyond the others at the same place in the unit cell.
ANOMALY_OUTLINE = 3.0
#: What the anomaly number means, for colour bars and legends.
ANOMALY_MEANING = "anomaly: robust z against the same place in the unit cell (0 = typical)"
#: Colour of "uncertain" (``classes.UNCERTAIN``, the model abstains) in every map; "not classified" is
#: transparent.
UNCERTAIN_RGBA = (0.55, 0.55, 0.55, 1.0)


def class_rgba(classes: np.ndarray) -> np.ndarray:
    """RGBA image of a class map: direction colours, uncertain grey, not classified transparent."""
    from .classes import UNCERTAIN, direction_colors

    rgba = np.zeros(classes.shape + (4,), np.float32)
    valid = classes >= 0
    rgba[valid] = direction_colors()[classes[valid]]
    rgba[classes == UNCERTAIN] = UNCERTAIN_RGBA
    return rgba


def nice_length(span: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^n) of about a fifth of ``span``."""
    if not span > 0:
        return 1.0
    target = span / 5
    base = 10 ** np.floor(np.log10(target))
    return float(max(m * base for m in (1, 2, 5) if m * base <= target))


def write_overlay(path: str | os.PathLike, classes: np.ndarray, confidence: np.ndarray | None,
                  background: np.ndarray | None, calibration: Calibration, anomaly: np.ndarray | None = None,
                  source: str = "", model: str = "", mode: str = "") -> Path:
    """The class map over the virtual image, for reading without napari.

    Left: directions over the virtual image, uncertain positions grey, anomalous regions outlined
    (score >= :data:`ANOMALY_OUTLINE`), a scale bar; the file and model in the title. Right: the
    confidence and anomaly maps with colour bars in their units, and the direction colour wheel.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rgba = _overlay_rgba(classes, confidence)
    step_y, step_x = calibration.scan_step_nm
    rows, cols = classes.shape
    unit = "nm" if step_x and step_y else "px"
    sx, sy = (step_x, step_y) if unit == "nm" else (1.0, 1.0)
    extent = (0, cols * sx, rows * sy, 0)
    outline = None
    if anomaly is not None and np.isfinite(anomaly).any() and np.nanmax(anomaly) >= ANOMALY_OUTLINE:
        outline = np.ma.masked_invalid(np.asarray(anomaly, np.float64))

    fig = plt.figure(figsize=(12, 6.4), dpi=110)
    title = " · ".join(t for t in (Path(source).name if source else "", f"model {model}" if model else "", mode) if t)
    fig.suptitle(title or "polarization map", fontsize=11)
    ax = _overlay_class_panel(fig, rgba, background, outline, extent)
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    ax.set_title("polarization direction", fontsize=10)
    _overlay_scale_bar(ax, rows, cols, sx, sy, unit)
    _overlay_confidence_panel(fig, classes, confidence, extent)
    _overlay_anomaly_panel(fig, classes, anomaly, outline, extent)
    _overlay_colour_wheel(fig)
    _overlay_legend(fig)
    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return p


def _overlay_stroke() -> list:
    """A dark edge around white lines and text, so they read on any background."""
    import matplotlib.patheffects as pe

    return [pe.withStroke(linewidth=2.6, foreground="black")]


def _overlay_rgba(classes: np.ndarray, confidence: np.ndarray | None) -> np.ndarray:
    """The class colours as the overlay lays them over the image: more opaque where the model is
    more confident (the image shows through doubtful positions), not classified transparent."""
    rgba = class_rgba(classes)
    shown = classes != -1
    if confidence is not None:
        alpha = np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0)
        rgba[..., 3] = np.where(classes >= 0, 0.35 + 0.5 * alpha, np.where(shown, 0.8, 0.0))
    else:
        rgba[..., 3] = np.where(shown, 0.7, 0.0)
    return rgba


def _overlay_class_panel(fig, rgba: np.ndarray, background: np.ndarray | None,
                         outline: np.ma.MaskedArray | None, extent: tuple):
    """The overlay's main axes: the class colours ``rgba`` over the virtual image, anomalous regions
    outlined."""
    ax = fig.add_axes((0.05, 0.09, 0.47, 0.8))
    if background is not None:
        ax.imshow(background, cmap="gray", extent=extent, interpolation="nearest")
    ax.imshow(rgba, extent=extent, interpolation="nearest")
    if outline is not None:
        ax.contour(outline, levels=[ANOMALY_OUTLINE], colors="white", linewidths=1.3, extent=extent,
                   origin="upper").set(path_effects=_overlay_stroke())
    return ax


def _overlay_scale_bar(ax, rows: int, cols: int, sx: float, sy: float, unit: str) -> None:
    """A scale bar, bottom left, white with a dark edge so it reads on any background."""
    from matplotlib.patches import Rectangle

    stroke = _overlay_stroke()
    length = nice_length(cols * sx)
    x0, y0 = 0.04 * cols * sx, rows * sy * 0.95
    ax.add_patch(Rectangle((x0, y0 - 0.012 * rows * sy), length, 0.012 * rows * sy, color="white",
                           path_effects=stroke))
    ax.text(x0 + length / 2, y0 - 0.03 * rows * sy, f"{length:g} {unit}", color="white", ha="center", va="bottom",
            fontsize=9, path_effects=stroke)


def _overlay_confidence_panel(fig, classes: np.ndarray, confidence: np.ndarray | None, extent: tuple) -> None:
    """The confidence map with its colour bar (empty when there is no confidence)."""
    cax = fig.add_axes((0.57, 0.55, 0.17, 0.33))
    conf = np.full(classes.shape, np.nan) if confidence is None else confidence
    im = cax.imshow(conf, cmap="viridis", vmin=0, vmax=1, extent=extent, interpolation="nearest")
    cax.set_title("confidence", fontsize=9)
    cax.set_xticks([])
    cax.set_yticks([])
    bar = fig.colorbar(im, ax=cax, fraction=0.08, pad=0.03)
    bar.set_label("probability of the class shown (0-1)", fontsize=7)


def _overlay_anomaly_panel(fig, classes: np.ndarray, anomaly: np.ndarray | None,
                           outline: np.ma.MaskedArray | None, extent: tuple) -> None:
    """The anomaly map with its colour bar. The colours run to the 99.5th percentile, so a few
    extreme positions do not wash out the rest, but at least past the outline level, so a clean
    map does not look alarming."""
    aax = fig.add_axes((0.57, 0.09, 0.17, 0.33))
    anom = np.full(classes.shape, np.nan) if anomaly is None else anomaly
    finite = anom[np.isfinite(anom)]
    hi = max(float(np.percentile(finite, 99.5)) if finite.size else 1.0, ANOMALY_OUTLINE * 1.2, 1e-3)
    im = aax.imshow(anom, cmap="magma", vmin=0, vmax=hi, extent=extent, interpolation="nearest")
    if outline is not None:
        aax.contour(outline, levels=[ANOMALY_OUTLINE], colors="cyan", linewidths=0.8, extent=extent, origin="upper")
    aax.set_title("anomaly" if anomaly is not None else "anomaly (not computed)", fontsize=9)
    aax.set_xticks([])
    aax.set_yticks([])
    bar = fig.colorbar(im, ax=aax, fraction=0.08, pad=0.03)
    bar.set_label("robust z vs. the same place in the unit cell", fontsize=7)


def _overlay_colour_wheel(fig) -> None:
    """The colour wheel: class k at 45°·k from +x towards +y; +y points down on screen, as in the map."""
    from matplotlib.patches import Wedge

    from .classes import CLASS_NAMES, N_CLASSES, direction_colors

    colors = direction_colors()
    wax = fig.add_axes((0.79, 0.42, 0.2, 0.46))
    wax.set_aspect("equal")
    wax.axis("off")
    for k in range(N_CLASSES):
        ang = np.pi / 4 * k
        x, y = np.cos(ang), np.sin(ang)
        wax.add_patch(Wedge((0, 0), 1.0, -np.degrees(ang) - 22.5, -np.degrees(ang) + 22.5, color=colors[k][:3]))
        wax.annotate("", xy=(0.62 * x, -0.62 * y), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="black", lw=1.2))
        wax.text(1.32 * x, -1.32 * y, f"{k} {CLASS_NAMES[k]}", ha="center", va="center", fontsize=7)
    wax.set_xlim(-1.7, 1.7)
    wax.set_ylim(-1.7, 1.7)
    wax.set_title("class: in-plane P\n(+x right, +y down)", fontsize=8)


def _overlay_legend(fig) -> None:
    """What grey, transparent and the outline mean: the colours the wheel does not explain."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    lax = fig.add_axes((0.79, 0.09, 0.2, 0.3))
    lax.axis("off")
    handles = [Patch(facecolor=UNCERTAIN_RGBA, edgecolor="black", label="uncertain (the model abstains)"),
               Patch(facecolor="none", edgecolor="black", label="not classified (transparent)"),
               Line2D([], [], color="white", linewidth=1.3, path_effects=_overlay_stroke(),
                      label=f"outline: anomaly >= {ANOMALY_OUTLINE:g}")]
    lax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False)
