"""Does a dataset's acquisition fit what a model was trained for? And which model to use by default."""

from __future__ import annotations

import numpy as np

from .io import Calibration, electron_wavelength_angstrom

#: The pseudo-cubic lattice parameter of KNN (Å): the Bragg angle lambda / a of the {100} disks.
KNN_LATTICE_A = 3.95


def disk_overlap(beam_energy_kev, convergence_mrad):
    """alpha / (lambda / a): the convergence semi-angle in units of the {100} Bragg angle, which sets how
    far the diffracted disks overlap (1.4 at 80 kV / 15 mrad to 6.0 at 300 kV / 30 mrad). With the input
    read in reciprocal-lattice units it is the one geometric parameter of the pattern left."""
    lam = electron_wavelength_angstrom(beam_energy_kev)
    out = np.asarray(convergence_mrad, float) / (1e3 * np.asarray(lam) / KNN_LATTICE_A)
    return float(out) if out.ndim == 0 else out


def convergence_for_overlap(beam_energy_kev, overlap):
    """The convergence semi-angle (mrad) that gives disk overlap ``overlap`` at this beam energy: the
    inverse of :func:`disk_overlap`."""
    return np.asarray(overlap, float) * 1e3 * electron_wavelength_angstrom(beam_energy_kev) / KNN_LATTICE_A


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


#: The acquisition parameters that set the pattern's physics (geometry lambda/a, overlap alpha/(lambda/a),
#: dynamical contrast): a model is only trusted inside the ranges its card says it was validated on.
SCOPE_KEYS = (("beam_energy_kev", "beam energy", "keV"), ("convergence_mrad", "convergence semi-angle", "mrad"))
#: A card may state its range of disk overlap alpha / (lambda / a) too (a model reading its input in
#: reciprocal-lattice units holds across beam energies wherever the overlap is the one it knows).
OVERLAP_KEY = (("disk_overlap", "disk overlap alpha/(lambda/a)", ""),)
#: Slack on a card's range: a calibration is rarely better than 2 %.
RANGE_TOLERANCE = 0.02
#: A card calibrated per acquisition cell (``acquisition.cells``, :mod:`polarstem.abstain`) covers the cells
#: whose held-out rows its cell vote reads at least this well (the issue's goal away from the canonical
#: acquisition); elsewhere its maps are withheld, as outside a stated range.
COVERED_ACCURACY = 0.90


def _within(value: float, lo: float, hi: float) -> bool:
    """Is ``value`` inside ``lo``-``hi`` with the calibration slack (``RANGE_TOLERANCE``)?"""
    return lo * (1 - RANGE_TOLERANCE) <= value <= hi * (1 + RANGE_TOLERANCE)


def _outside(acquisition: dict, calibration: Calibration):
    """(key, what, unit, value, lo, hi) of each stated beam energy / convergence / disk overlap outside a
    card's ranges (the overlap only when the file gives both the energy and the convergence)."""
    values = {key: getattr(calibration, key, None) for key, _, _ in SCOPE_KEYS}
    if values["beam_energy_kev"] and values["convergence_mrad"]:
        values["disk_overlap"] = disk_overlap(values["beam_energy_kev"], values["convergence_mrad"])
    for key, what, unit in SCOPE_KEYS + OVERLAP_KEY:
        value, rng = values.get(key), acquisition.get(key)
        if value is not None and isinstance(rng, (list, tuple)) and len(rng) == 2 and not _within(value, *rng):
            yield key, what, unit, value, rng[0], rng[1]
    if acquisition.get("cells") and "disk_overlap" in values:
        from .abstain import find_cell

        cell = find_cell(acquisition["cells"], values["beam_energy_kev"], values["convergence_mrad"])
        if cell is None or cell["accuracy"] < COVERED_ACCURACY:
            yield "cells", "acquisition cell", "", None if cell is None else cell["accuracy"], None, None


def outside_scope(model_name: str, acquisition: dict | None, calibration: Calibration) -> list[str]:
    """One sentence per stated acquisition value (beam energy, convergence) outside the ranges the model's
    card (its ``acquisition``) was validated on; empty when inside, when the file does not say, or when
    the card states none."""
    sentences = []
    for key, what, unit, value, lo, hi in _outside(acquisition or {}, calibration):
        if key == "disk_overlap":
            sentences.append(_overlap_sentence(model_name, calibration, value, lo, hi))
        elif key == "cells":
            sentences.append(_cell_sentence(model_name, calibration, value))
        else:
            sentences.append(f"{what} {value:g} {unit} (model '{model_name}' validated at {lo:g}-{hi:g} {unit})")
    return sentences


def _cell_sentence(model_name: str, calibration: Calibration, accuracy: float | None) -> str:
    """An acquisition cell the model is not trusted in: how well it reads held-out KNN there, if measured."""
    where = (f"beam energy {calibration.beam_energy_kev:g} keV with disk overlap alpha/(lambda/a) "
             f"{disk_overlap(calibration.beam_energy_kev, calibration.convergence_mrad):.2f}")
    if accuracy is None:
        return f"{where} (model '{model_name}' has no held-out data at this acquisition)"
    return (f"{where} (model '{model_name}' reads held-out simulated KNN there at {accuracy:.2f} per cell; "
            f"it is trusted from {COVERED_ACCURACY:.2f})")


def _overlap_sentence(model_name: str, calibration: Calibration, value: float, lo: float, hi: float) -> str:
    """The disk overlap outside a card's range, with the convergence range it means at the file's energy."""
    e = calibration.beam_energy_kev
    per_overlap = calibration.convergence_mrad / value  # lambda / a in mrad at this energy
    return (f"disk overlap alpha/(lambda/a) {value:.2f} (model '{model_name}' validated at {lo:g}-{hi:g}: "
            f"{lo * per_overlap:.1f}-{hi * per_overlap:.1f} mrad at {e:g} keV)")


def describe_cells(cells: list[dict]) -> list[str]:
    """One line per acquisition cell of a card calibrated per cell: its ranges and how well it is read."""
    return [f"{c['beam_energy_kev'][0]:g}-{c['beam_energy_kev'][1]:g} keV, disk overlap {c['disk_overlap'][0]:g}-"
            f"{c['disk_overlap'][1]:g}: {c['accuracy']:.2f} per cell on {c['rows']} held-out rows"
            f"{'' if c['accuracy'] >= COVERED_ACCURACY else ' (withheld)'}" for c in cells]


def covers(entry: dict, calibration: Calibration | None) -> bool:
    """Does a registry entry's card range contain the calibration's beam energy and convergence?"""
    return calibration is None or not any(_outside(entry.get("acquisition") or {}, calibration))


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
        elif not _within(value, lo, hi):
            out.append(f"{what} {value:g} {unit} is outside the range of '{model_name}' ({span}): "
                       "results may be unreliable")
    for _, _, _, value, lo, hi in _outside({"disk_overlap": ranges.get("disk_overlap")}, calibration):
        out.append(f"the disk overlap alpha/(lambda/a) {value:.2f} at beam energy {calibration.beam_energy_kev:g} keV "
                   f"and convergence {calibration.convergence_mrad:g} mrad is outside the range of '{model_name}' "
                   f"({lo:g}-{hi:g}): results may be unreliable")
    if detector_shape is not None and "detector_px" in ranges:
        lo, hi = ranges["detector_px"]
        if min(detector_shape) < lo:
            out.append(f"the detector ({detector_shape[0]}x{detector_shape[1]} px) is smaller than "
                       f"'{model_name}' expects ({lo}-{hi} px)")
    return out


def default_model(entries: list[dict] | None = None, calibration: Calibration | None = None) -> str:
    """The shipped model with the best held-out per-pattern accuracy, else 'cnn'.

    With a ``calibration`` (the file's beam energy and convergence), only models whose card ranges
    contain that acquisition compete, the narrowest range first: a model validated at exactly this
    acquisition beats one spread over many. None covers it: the overall best (which then abstains).

    Pattern weights decide, as the tools run them by default: with the 8 symmetry images where the
    card has that figure (``heldout_other``, on its own held-out folder), else with one image. Cell
    mode votes the pattern weights over each cell window by default. ``entries``: a ``list_models()``
    result the caller already has (the cards are then not read again).
    """
    from .models import list_models
    from .models.registry import default_inference_accuracy

    available = [e for e in (list_models() if entries is None else entries) if e.get("available")]
    covering = [e for e in available if covers(e, calibration)]
    if calibration is not None and covering and len(covering) < len(available):
        spans = {e["name"]: _span(e) for e in covering}
        narrowest = min(spans.values())
        available = [e for e in covering if spans[e["name"]] <= narrowest * 1.0001]
    best, best_acc = None, -1.0
    for entry in available:
        acc = default_inference_accuracy(entry)
        if acc is not None and acc > best_acc:
            best, best_acc = entry["name"], acc
    if best is None:
        best = available[0]["name"] if available else "cnn"
    return best


def _span(entry: dict) -> float:
    """Relative width of a card's energy x convergence range (a point range counts as 1 %)."""
    acq = entry.get("acquisition") or {}
    area = 1.0
    for key, _, _ in SCOPE_KEYS:
        lo, hi = acq.get(key) or (1.0, 1e6)
        area *= max((hi - lo) / max(hi, 1e-9), 0.01)
    return area
