"""Write maps (virtual images, class/confidence/anomaly maps) as calibrated files, atomically.

A crash never leaves a half-written file under the final name: everything is written to a
temporary name in the same folder and renamed.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import PolarstemError
from .io import Calibration


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix + ".partial", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default))


def write_map(path: str | os.PathLike, image: np.ndarray, calibration: Calibration,
              provenance: dict | None = None) -> Path:
    """Write a 2D map (or a stack of maps) as TIFF with the scan step as resolution, or as .npy."""
    p = Path(path)
    ext = p.suffix.lower()
    image = np.asarray(image)
    if ext in (".tif", ".tiff"):
        import tifffile

        step_y, step_x = calibration.scan_step_nm
        meta = {"axes": "YX" if image.ndim == 2 else "CYX"}
        kwargs = {}
        if step_x and step_y:
            meta["unit"] = "nm"
            kwargs["resolution"] = (1.0 / step_x, 1.0 / step_y)
            kwargs["resolutionunit"] = "NONE"
        desc = json.dumps({"calibration": calibration.to_dict(), "provenance": provenance or {}},
                          default=_json_default)
        with atomic_path(p) as tmp:
            tifffile.imwrite(tmp, image, imagej=False, metadata=meta, description=desc, **kwargs)
        return p
    if ext == ".npy":
        with atomic_path(p) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, image, allow_pickle=False)
        return p
    raise PolarstemError(f"{p}: unsupported map format '{ext}' (use .tif or .npy)")


def read_map(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a map written by :func:`write_map`: the array and its calibration/provenance dict."""
    import tifffile

    p = Path(path)
    with tifffile.TiffFile(p) as tf:
        data = tf.asarray()
        desc = tf.pages[0].description
    try:
        meta = json.loads(desc)
    except (TypeError, ValueError):
        meta = {}
    return data, meta


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
