"""Does a dataset's acquisition fit what a model was trained for? And which model to use by default."""

from __future__ import annotations

from .io import Calibration

#: Ranges the shipped models are judged on (physics.md) when a card does not say.
DEFAULT_RANGES = {"beam_energy_kev": [200.0, 200.0], "convergence_mrad": [18.0, 22.0],
                  "mrad_per_px": [0.5, 2.0], "detector_px": [64, 256]}


def model_ranges(model_name: str) -> dict:
    """The acquisition ranges of a registered model's card (or the canonical ones)."""
    from .models import list_models

    for entry in list_models():
        if entry["name"] == model_name:
            ranges = dict(DEFAULT_RANGES)
            for key, value in (entry.get("acquisition") or {}).items():
                if isinstance(value, (list, tuple)) and len(value) == 2:
                    ranges[key] = list(value)
            return ranges
    return dict(DEFAULT_RANGES)


def acquisition_warnings(model_name: str, calibration: Calibration, detector_shape=None) -> list[str]:
    """One sentence per acquisition parameter outside the model's ranges, or unknown."""
    ranges = model_ranges(model_name)
    out = []
    checks = [
        ("beam_energy_kev", calibration.beam_energy_kev, "beam energy", "keV"),
        ("convergence_mrad", calibration.convergence_mrad, "convergence semi-angle", "mrad"),
        ("mrad_per_px", calibration.mrad_per_px, "detector sampling", "mrad/px"),
    ]
    for key, value, what, unit in checks:
        lo, hi = ranges.get(key, [None, None])
        if lo is None:
            continue
        span = f"{lo:g} {unit}" if lo == hi else f"{lo:g}-{hi:g} {unit}"
        if value is None:
            out.append(f"the file does not give the {what}; '{model_name}' was trained for {span}")
        elif not (lo * 0.98 <= value <= hi * 1.02):
            out.append(f"{what} {value:g} {unit} is outside the range of '{model_name}' ({span}): "
                       "results may be unreliable")
    if detector_shape is not None and "detector_px" in ranges:
        lo, hi = ranges["detector_px"]
        if min(detector_shape) < lo:
            out.append(f"the detector ({detector_shape[0]}x{detector_shape[1]} px) is smaller than "
                       f"'{model_name}' expects ({lo}-{hi} px)")
    return out


def default_model(entries: list[dict] | None = None) -> str:
    """The shipped model with the best held-out per-pattern accuracy, else 'cnn'.

    Pattern weights decide, as the tools run them by default: with the 8 symmetry images where the
    card has that figure (``heldout_other``, on its own held-out folder), else with one image. Cell
    mode votes the pattern weights over each cell window by default. ``entries``: a ``list_models()``
    result the caller already has (the cards are then not read again).
    """
    from .models import list_models
    from .models.registry import default_inference_accuracy

    available = [e for e in (list_models() if entries is None else entries) if e.get("available")]
    best, best_acc = None, -1.0
    for entry in available:
        acc = default_inference_accuracy(entry)
        if acc is not None and acc > best_acc:
            best, best_acc = entry["name"], acc
    if best is None:
        best = available[0]["name"] if available else "cnn"
    return best
