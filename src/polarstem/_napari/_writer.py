"""napari writer: save the polarization layers as the same folder ``polarstem classify -o`` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._layers import ANOMALY_LAYER, CLASS_LAYER, CONFIDENCE_LAYER
from ._state import SOURCE_KEY  # not the reader's key: a result layer is not a dataset view

RESULT_KEY = "polarstem_result_object"


def write_polarization_maps(path: str, layer_data: list[tuple]) -> list[str]:
    """Write the export folder from the class/confidence/anomaly layers (and the run behind them).

    When the class layer came from a run of the Polarization map widget, the full result (per-class
    probabilities, provenance) is exported; otherwise the maps on screen are written as calibrated TIFFs.
    """
    from ..errors import PolarstemError
    from ..export import MAP_FILES, export_result, write_map
    from ..fileio import write_json
    from ..io import Calibration

    by_name = {meta.get("name"): (data, meta, kind) for data, meta, kind in layer_data}
    labels = [(d, m) for d, m, k in layer_data if k == "labels"]
    if not labels:
        raise PolarstemError("select the 'polarization classes' layer (and its confidence/anomaly) to save maps")
    data, meta = by_name.get(CLASS_LAYER, (None, None, None))[:2] if CLASS_LAYER in by_name else labels[0]
    md = meta.get("metadata", {}) or {}
    out = Path(path)
    result, dataset = md.get(RESULT_KEY), md.get(SOURCE_KEY)
    if result is not None and dataset is not None:
        export_result(out, result, dataset)
        return [str(out)]
    scale = tuple(meta.get("scale", (1.0, 1.0)))[-2:]
    units = meta.get("units") or ("pixel", "pixel")
    step = scale if str(units[-1]) in ("nm", "nanometer") else (None, None)
    cal = Calibration(scan_step_nm=step)
    out.mkdir(parents=True, exist_ok=True)
    prov = {"software": "napari-polarstem", "note": "written from napari layers without the run's provenance"}
    write_map(out / MAP_FILES["class"], np.asarray(data).astype(np.int8), cal, prov)
    for name, key in ((CONFIDENCE_LAYER, "confidence"), (ANOMALY_LAYER, "anomaly")):
        if name in by_name:
            write_map(out / MAP_FILES[key], np.asarray(by_name[name][0], np.float32), cal, prov)
    write_json(out / "provenance.json", prov)
    return [str(out)]
