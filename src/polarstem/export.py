"""Write maps (virtual images, class/confidence/anomaly maps) as calibrated files, atomically.

Every file goes through :func:`polarstem.fileio.atomic_path`: a crash never leaves a half-written
file under the final name, and the files get the permissions of any file the user writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import PolarstemError
from .fileio import atomic_path, json_default, save_npy, sha256_path, write_json
from .io import Calibration

#: TIFF ImageDescription of our maps: this prefix, then JSON (calibration and provenance).
DESCRIPTION_PREFIX = "polarstem-map "


def write_map(path: str | os.PathLike, image: np.ndarray, calibration: Calibration,
              provenance: dict | None = None) -> Path:
    """Write a 2D map (or a stack of maps) as TIFF with the scan step as resolution, or as .npy."""
    p = Path(path)
    ext = p.suffix.lower()
    image = np.asarray(image)
    if ext in (".tif", ".tiff"):
        import tifffile

        step_y, step_x = calibration.scan_step_nm
        kwargs = {}
        if step_x and step_y:  # pixels per nm; the unit is in the description
            kwargs["resolution"] = (1.0 / step_x, 1.0 / step_y)
            kwargs["resolutionunit"] = "NONE"
        desc = DESCRIPTION_PREFIX + json.dumps(
            {"unit": "nm" if step_x else "px", "scale": [step_y or 1.0, step_x or 1.0],
             "calibration": calibration.to_dict(), "provenance": provenance or {}}, default=json_default)
        with atomic_path(p) as tmp:
            tifffile.imwrite(tmp, image, metadata=None, description=desc, **kwargs)
        return p
    if ext == ".npy":
        return save_npy(p, image)
    raise PolarstemError(f"{p}: unsupported map format '{ext}' (use .tif or .npy)")


def read_map(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a map written by :func:`write_map`: the array and its calibration/provenance dict."""
    import tifffile

    p = Path(path)
    with tifffile.TiffFile(p) as tf:
        data = tf.asarray()
        desc = tf.pages[0].description
    try:
        meta = json.loads(desc[len(DESCRIPTION_PREFIX):]) if desc.startswith(DESCRIPTION_PREFIX) else {}
    except (TypeError, ValueError):
        meta = {}
    return data, meta


# --------------------------------------------------------------------------------------------------
# classification results: the folder `polarstem classify` and the napari "Export maps" button write

MAP_FILES = {"class": "class.tif", "confidence": "confidence.tif", "anomaly": "anomaly.tif"}


def provenance(result, dataset, extra: dict | None = None, input_sha256: str | None = None) -> dict:
    """What produced a set of maps: input, model and weights hash, package version, parameters."""
    import datetime
    import platform

    from . import __version__

    src = Path(dataset.source).resolve() if dataset.source else None  # the data file read, absolute
    prov = {
        "software": "napari-polarstem",
        "version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "input": {
            "file": str(src) if src else None,
            "sha256": input_sha256 or (sha256_path(src) if src and src.exists() else None),
            "shape": list(dataset.shape),
            "calibration": dataset.calibration.to_dict(),  # the values in use
            "calibration_given": dict(getattr(dataset, "calibration_given", {}) or {}),  # by the user: in use, file
        },
        "model": {"name": result.model, "sha256": result.model_sha256},
        "parameters": {**result.params, "mode": result.mode, "device": result.device},
        "lattice": None if result.lattice is None else {
            "period_px": list(result.lattice.period), "origin_px": list(result.lattice.origin),
            "source": result.lattice.source},  # "fft+calibration" (seen in the ADF image) or "calibration"
        "complete": bool(result.complete),
        "classified_positions": int(result.done.sum()),
        "uncertain_positions": int(result.uncertain.sum()) if getattr(result, "uncertain", None) is not None else None,
        "verdict": getattr(result, "verdict", None),  # one sentence when most of the scan is uncertain
        "calibration_notes": list(getattr(result, "notes", []) or []),  # what the bright-field disk ruler found
        "seconds": round(float(result.seconds), 3),
    }
    if extra:
        prov.update(extra)
    return prov


def export_result(outdir: str | os.PathLike, result, dataset, background: np.ndarray | None = None,
                  extra_provenance: dict | None = None, input_sha256: str | None = None) -> Path:
    """Write class/confidence/anomaly TIFFs, maps.hspy, provenance.json and overlay.png, each atomically."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance(result, dataset, extra_provenance, input_sha256)
    cal = dataset.calibration
    anomaly = result.anomaly if result.anomaly is not None else np.full(result.classes.shape, np.nan, np.float32)
    write_map(out / MAP_FILES["class"], result.classes.astype(np.int8), cal, prov)
    write_map(out / MAP_FILES["confidence"], result.confidence.astype(np.float32), cal, prov)
    write_map(out / MAP_FILES["anomaly"], anomaly.astype(np.float32), cal, prov)
    write_maps_hspy(out / "maps.hspy", result, cal, prov)
    write_json(out / "provenance.json", prov)
    write_overlay(out / "overlay.png", result.classes, result.confidence, background, cal, anomaly=result.anomaly,
                  source=prov["input"]["file"] or "", model=result.model, mode=getattr(result, "mode_label", result.mode))
    return out


def _stack(result) -> tuple[np.ndarray, list[str]]:
    names = ["class", "confidence", "margin", "anomaly", "embedding_distance", "informative"]
    anomaly = result.anomaly if result.anomaly is not None else np.full(result.classes.shape, np.nan)
    layers = [result.classes.astype(np.float32), result.confidence, result.margin, anomaly,
              result.embedding_distance, result.informative.astype(np.float32)]
    for k in range(result.proba.shape[-1]):
        names.append(f"p{k}")
        layers.append(result.proba[..., k])
    return np.stack([np.asarray(a, np.float32) for a in layers]), names


def write_maps_hspy(path: str | os.PathLike, result, calibration: Calibration, prov: dict) -> Path:
    """All maps and per-class probabilities as one HyperSpy stack (navigation axis = map name)."""
    import hyperspy.api as hs

    stack, names = _stack(result)
    step_y, step_x = calibration.scan_step_nm
    axes = [
        {"name": "map", "size": len(names), "navigate": True, "scale": 1, "offset": 0, "units": ""},
        {"name": "y", "size": stack.shape[1], "navigate": False, "scale": step_y or 1.0, "offset": 0,
         "units": "nm" if step_y else "px"},
        {"name": "x", "size": stack.shape[2], "navigate": False, "scale": step_x or 1.0, "offset": 0,
         "units": "nm" if step_x else "px"},
    ]
    md = {"General": {"title": "polarization maps"},
          "Signal": {"quantity": "map"},
          "polarstem": {"map_names": names, "provenance_json": json.dumps(prov, default=json_default)}}
    sig = hs.signals.Signal2D(stack, axes=axes, metadata=md)
    p = Path(path)
    with atomic_path(p) as tmp:
        named = tmp.with_suffix(".hspy")  # HyperSpy picks the format from the extension
        try:
            sig.save(str(named), overwrite=True)
            named.replace(tmp)
        finally:
            named.unlink(missing_ok=True)
    return p


def read_maps(outdir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``maps.hspy`` of an export folder back into a dict of named maps."""
    from rsciio.hspy import file_reader

    p = Path(outdir) / "maps.hspy"
    if not p.exists():
        raise PolarstemError(f"{p}: no maps file")
    sig = file_reader(str(p))[0]
    names = list(sig["metadata"]["polarstem"]["map_names"])
    return {n: np.asarray(sig["data"][i]) for i, n in enumerate(names)}


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


# --------------------------------------------------------------------------------------------------
# checkpoints: an interrupted `polarstem classify` resumes from what it had finished

CHECKPOINT = "checkpoint.npz"
_CHECKPOINT_MAPS = ("classes", "confidence", "margin", "proba", "embedding_distance", "informative", "done", "usable",
                    "distance", "votes")


def save_checkpoint(outdir: str | os.PathLike, result, key: dict) -> Path:
    """Plain arrays (npz, no pickle) of the maps so far, and a key saying what they belong to."""
    p = Path(outdir) / CHECKPOINT
    arrays = {k: np.asarray(getattr(result, k)) for k in _CHECKPOINT_MAPS}
    arrays["key"] = np.frombuffer(json.dumps(key, sort_keys=True, default=json_default).encode(), dtype=np.uint8)
    arrays["mode"] = np.frombuffer(result.mode.encode(), dtype=np.uint8)
    if getattr(result, "fingerprint", None) is not None:
        arrays["fingerprint"] = np.asarray(result.fingerprint)
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return p


def load_checkpoint(outdir: str | os.PathLike, key: dict, scan_shape) -> object | None:
    """The partial result saved for the same input, model and mode, or None."""
    from .classify import ClassificationResult

    p = Path(outdir) / CHECKPOINT
    if not p.exists():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            saved = json.loads(bytes(z["key"]).decode())
            if saved != json.loads(json.dumps(key, sort_keys=True, default=json_default)):
                return None
            res = ClassificationResult.empty(tuple(scan_shape), mode=bytes(z["mode"]).decode(),
                                             model=key.get("model", ""), model_sha256=key.get("model_sha256", ""))
            if not set(_CHECKPOINT_MAPS) <= set(z.files):  # written before a map was kept: start afresh
                return None
            for k in _CHECKPOINT_MAPS:
                arr = z[k]
                if arr.shape != getattr(res, k).shape:
                    return None
                setattr(res, k, arr.copy())
            if "fingerprint" in z.files:  # the anomaly score's pattern term (older checkpoints lack it)
                fp = z["fingerprint"]
                if fp.shape[:2] == tuple(scan_shape):
                    res.fingerprint = fp.copy()
    except (OSError, ValueError, KeyError) as exc:
        raise PolarstemError(f"{p}: unreadable checkpoint ({exc}); delete it to start afresh") from None
    return res


def remove_checkpoint(outdir: str | os.PathLike) -> None:
    (Path(outdir) / CHECKPOINT).unlink(missing_ok=True)
