"""Classification results as napari layers: pure functions from maps to layer data tuples."""

from __future__ import annotations

import numpy as np

from ..classes import CLASS_DIRECTIONS, CLASS_NAMES, N_CLASSES, UNCERTAIN, direction_colors
from ..overlay import ANOMALY_OUTLINE, UNCERTAIN_RGBA
from ._state import SOURCE_KEY

CLASS_LAYER = "polarization classes"
ARROW_LAYER = "polarization arrows"
CONFIDENCE_LAYER = "confidence"
ANOMALY_LAYER = "anomaly"
OUTLINE_LAYER = "anomaly outline"
RESULT_LAYERS = (CLASS_LAYER, ARROW_LAYER, CONFIDENCE_LAYER, ANOMALY_LAYER, OUTLINE_LAYER)
#: Colour of the anomaly outlines (a Shapes layer of polygons along the regions' pixel edges): white.
OUTLINE_RGBA = (1.0, 1.0, 1.0, 1.0)


def class_colormap():
    """Fixed direction colours: class k at hue 45°·k, uncertain (-2) grey, not classified (-1) transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = direction_colors()
    color_dict = {k: colors[k] for k in range(N_CLASSES)}
    color_dict[UNCERTAIN] = np.asarray(UNCERTAIN_RGBA)
    color_dict[-1] = np.zeros(4)
    color_dict[None] = np.zeros(4)
    return DirectLabelColormap(color_dict=color_dict, background_value=-1)


def class_label(k: int) -> str:
    """What a class-map value means, in words."""
    if 0 <= k < N_CLASSES:
        return f"{k} {CLASS_NAMES[k]}"
    return "uncertain (the model abstains)" if k == UNCERTAIN else "not classified"


def anomaly_outlines(anomaly: np.ndarray, level: float = ANOMALY_OUTLINE) -> list[np.ndarray]:
    """Closed outlines (row, col in scan px, along the pixel edges) of the regions scoring ``level`` or more."""
    from skimage.measure import find_contours

    mask = np.pad(np.nan_to_num(anomaly, nan=0.0) >= level, 1).astype(np.float32)
    return [c - 1 for c in find_contours(mask, 0.5) if len(c) >= 3]


def arrow_vectors(classes: np.ndarray, confidence: np.ndarray, step: int | None = None):
    """Arrows (N, 2, 2) in scan px, one per ``step`` positions, length ∝ confidence; and their colours."""
    rows, cols = classes.shape
    step = step or max(1, int(round(max(rows, cols) / 32)))
    rr, cc = np.mgrid[step // 2 : rows : step, step // 2 : cols : step]
    k = classes[rr, cc]
    ok = k >= 0
    rr, cc, k = rr[ok], cc[ok], k[ok]
    conf = np.nan_to_num(confidence[rr, cc], nan=0.0)
    length = 0.85 * step * np.clip(conf, 0.05, 1.0)
    d = CLASS_DIRECTIONS[k]  # (x, y)
    vectors = np.zeros((len(k), 2, 2), np.float32)
    vectors[:, 0, 0] = rr - 0.5 * length * d[:, 1]
    vectors[:, 0, 1] = cc - 0.5 * length * d[:, 0]
    vectors[:, 1, 0] = length * d[:, 1]
    vectors[:, 1, 1] = length * d[:, 0]
    return vectors, direction_colors()[k]


def result_layer_data(result, calibration, dataset=None) -> list[tuple]:
    """LayerDataTuples (data, kwargs, type) for the class, arrow, confidence and anomaly layers.

    The class layer keeps the run (``result``) and its ``dataset`` in its metadata, so the napari
    writer can export everything the CLI does.
    """
    scale = calibration.scan_scale()
    units = "nm" if all(calibration.scan_step_nm) else "pixel"
    common = {"scale": scale, "units": (units, units), "metadata": {"polarstem_result": True, SOURCE_KEY: dataset}}
    vectors, colors = arrow_vectors(result.classes, result.confidence)
    anomaly = result.anomaly if result.anomaly is not None else np.full(result.classes.shape, np.nan, np.float32)
    finite = anomaly[np.isfinite(anomaly)]
    hi = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    outlines = anomaly_outlines(anomaly)
    return [
        (result.confidence, {**common, "name": CONFIDENCE_LAYER, "colormap": "viridis",
                             "contrast_limits": (0.0, 1.0), "visible": False}, "image"),
        (anomaly, {**common, "name": ANOMALY_LAYER, "colormap": "magma", "blending": "additive",
                   "contrast_limits": (0.0, max(hi, 1e-3)), "visible": False}, "image"),
        (result.classes, {**common, "name": CLASS_LAYER, "colormap": class_colormap(), "opacity": 0.55,
                          "metadata": {**common["metadata"], "class_names": CLASS_NAMES,
                                       "polarstem_result_object": result}},
         "labels"),
        (outlines, {**common, "name": OUTLINE_LAYER, "shape_type": "polygon", "edge_width": 0.15,
                    "edge_color": "white", "face_color": "transparent"}, "shapes"),
        # an empty colour array cannot be added (napari takes its minimum): a plain colour then
        (vectors, {**common, "name": ARROW_LAYER, "edge_color": colors if len(vectors) else "white",
                   "edge_width": 0.15, "vector_style": "arrow"}, "vectors"),
    ]


def show_result(viewer, result, calibration, dataset=None) -> list:
    """Add the result layers, or update them in place when a previous run made them."""
    layers = []
    for data, kwargs, kind in result_layer_data(result, calibration, dataset):
        name = kwargs["name"]
        existing = viewer.layers[name] if name in viewer.layers else None
        if existing is not None and existing.metadata.get("polarstem_result"):
            if kind == "shapes":  # new outlines, styled as the first ones
                existing.data = []
                if data:
                    existing.add(data, **{k: kwargs[k] for k in ("shape_type", "edge_width", "edge_color", "face_color")})
            else:
                existing.data = data
            existing.scale = kwargs["scale"]
            existing.units = kwargs["units"]
            existing.metadata.update(kwargs["metadata"])
            if kind == "vectors":
                existing.edge_color = kwargs["edge_color"]
            if kind == "image" and "contrast_limits" in kwargs:
                existing.contrast_limits = kwargs["contrast_limits"]
            existing.refresh()
            layers.append(existing)
        else:
            add = getattr(viewer, f"add_{kind}")
            kw = {k: v for k, v in kwargs.items() if not (kind == "vectors" and k == "vector_style")}
            layer = add(data, **kw)
            if kind == "vectors":
                try:
                    layer.vector_style = "arrow"
                except Exception:  # noqa: BLE001 - older napari draws lines
                    pass
            layers.append(layer)
    return layers


def shapes_to_mask(shapes_layer, image_layer, scan_shape: tuple[int, int]) -> np.ndarray:
    """Boolean scan mask of the shapes drawn on ``shapes_layer``, in the scan grid of ``image_layer``."""
    from skimage.draw import ellipse as draw_ellipse
    from skimage.draw import polygon2mask

    mask = np.zeros(scan_shape, dtype=bool)
    s_scale = np.asarray(shapes_layer.scale)[-2:]
    s_trans = np.asarray(shapes_layer.translate)[-2:]
    i_scale = np.asarray(image_layer.scale)[-2:]
    i_trans = np.asarray(image_layer.translate)[-2:]
    for verts, kind in zip(shapes_layer.data, shapes_layer.shape_type):
        v = np.asarray(verts)[:, -2:]
        px = ((v * s_scale + s_trans) - i_trans) / i_scale  # world -> scan pixel coordinates
        if kind == "ellipse":
            lo, hi = px.min(axis=0), px.max(axis=0)
            centre, radius = (lo + hi) / 2, (hi - lo) / 2
            rr, cc = draw_ellipse(centre[0], centre[1], max(radius[0], 0.5), max(radius[1], 0.5), shape=scan_shape)
            mask[rr, cc] = True
        elif kind in ("rectangle", "polygon"):
            # pixel centres inside the outline (shift by half a pixel: napari pixels span [i-0.5, i+0.5])
            mask |= polygon2mask(scan_shape, px + 0.0)
        else:  # lines and paths select the pixels they pass through
            for a, b in zip(px[:-1], px[1:]):
                n = int(np.ceil(np.abs(b - a).max())) + 1
                pts = np.round(np.linspace(a, b, n)).astype(int)
                ok = (pts[:, 0] >= 0) & (pts[:, 0] < scan_shape[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < scan_shape[1])
                mask[pts[ok, 0], pts[ok, 1]] = True
    return mask
