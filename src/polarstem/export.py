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
from .overlay import write_overlay

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
