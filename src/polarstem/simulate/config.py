"""Simulation configs: YAML in, checked, with every default filled in (the manifest records all of it).

Two kinds:

- ``training``: independent structures (one class each) × probe positions inside one unit cell ×
  a thickness series. Laid out as rows = structure × thickness, cols = probe positions.
- ``scan``: one multi-domain structure with defects, scanned on a real grid (several probe
  positions per cell), with ground-truth labels per scan position.

A range parameter is a number (fixed) or ``[low, high]`` (drawn per structure, uniformly).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..classes import NO_CLASS
from ..errors import PolarstemError

DEFAULTS: dict[str, Any] = {
    "kind": "training",
    "seed": 0,
    "optics": {
        "energy_kev": 200.0,
        "convergence_mrad": 20.0,
        "defocus_nm": 0.0,  # number or [low, high]
        "mistilt_mrad": 0.0,  # magnitude (number or [low, high]); the azimuth is random
    },
    "numerics": {
        "gpts_per_cell": 40,  # 0.099 Å at a = 3.95 Å
        "slices_per_cell": 2,
    },
    "detector": {
        "max_mrad": 40.0,
        "bin": 1,  # odd binning of the native 1/extent sampling
    },
    "structure": {
        "classes": [0, 1, 2, 3, 4, 5, 6, 7],
        "cells": 4,  # lateral supercell size (cells × cells)
        "a_angstrom": 3.97,
        "nb_shift_angstrom": 0.15,
        "a_ratio": 0.5,  # A-site shift along P as a fraction of the Nb shift
        "k_fraction": 0.5,  # probability that an A site is K (else Na)
        "out_of_plane_sign": "random",  # "+", "-" or "random": z sign of variants of classes 0, 2, 4, 6
    },
    "phonons": {
        "configs": 1,  # frozen-phonon configurations averaged per structure; 0 = static
        "sigmas": {"K": 0.10, "Na": 0.10, "Nb": 0.07, "O": 0.09},
    },
    "training": {
        "structures": 8,
        "probes": {"grid": 4, "offset": "random"},  # grid n×n (offset "random" or [fx, fy]) or {"random": n}
        "thickness_nm": [5.0, 40.0],  # range, or a list of >2 values, or a single value
        "thicknesses": 4,  # how many distinct thicknesses per structure (from the range)
    },
    "scan": {
        "cells": [12, 12],  # (rows, cols) of the supercell
        "steps_per_cell": 2,
        "offset_frac": [0.25, 0.25],  # first probe position inside cell (0, 0), fraction of a (x, y)
        "thickness_nm": 15.0,
        "domains": [],  # {"class": k, "rows": [r0, r1], "cols": [c0, c1]}
        "defects": [],  # {"kind": "nonpolar" | "o_vacancy", "rows": [...], "cols": [...]}
        "rows_per_task": 2,  # scan rows per task (chunk)
    },
}

#: Keys a section may have without a default (a default would change the hash, so the resume check,
#: of every existing simulation folder).
OPTIONAL_KEYS = {("training", "o_vacancy_fraction"), ("numerics", "parametrization"), ("numerics", "projection"),
                 ("training", "acquisitions"), ("detector", "max_g"), ("structure", "material"),
                 ("optics", "disk_overlap")}
#: abTEM potential choices a config may name (``numerics.parametrization`` / ``numerics.projection``;
#: absent = lobato / infinite). A held-out set made with the other choice stands in for "another
#: multislice setup".
PARAMETRIZATIONS = ("lobato", "kirkland")
PROJECTIONS = ("infinite", "finite")
#: Crystals a config may simulate (``structure.material``; absent = knn). The others are what the
#: models must recognise as out of scope: non-polar cubic perovskites and a crystal of another structure.
MATERIALS = ("knn", "srtio3", "batio3", "si")

_RANGE_KEYS = {("optics", "defocus_nm"), ("optics", "mistilt_mrad"), ("structure", "a_angstrom"),
               ("structure", "nb_shift_angstrom"), ("structure", "a_ratio")}


def load_config(path: str | Path) -> dict:
    """Read and check a YAML config; every error is one line naming the file."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise PolarstemError(f"{p}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise PolarstemError(f"{p}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise PolarstemError(f"{p}: the config must be a mapping of sections (optics:, structure:, ...)")
    try:
        return resolve(raw)
    except PolarstemError as exc:
        raise PolarstemError(f"{p}: {exc}") from None


def resolve(raw: dict) -> dict:
    """Defaults merged with ``raw``, checked. Unknown keys are errors (typos must not pass silently)."""
    cfg = copy.deepcopy(DEFAULTS)
    for key, value in raw.items():
        if key not in cfg:
            raise PolarstemError(f"unknown key '{key}' (known: {', '.join(cfg)})")
        if isinstance(cfg[key], dict) and key not in ("phonons",):
            if not isinstance(value, dict):
                raise PolarstemError(f"'{key}' must be a mapping")
            for k, v in value.items():
                if k not in cfg[key] and (key, k) not in OPTIONAL_KEYS:
                    raise PolarstemError(f"unknown key '{key}.{k}' (known: {', '.join(cfg[key])})")
                cfg[key][k] = v
        elif key == "phonons":
            if not isinstance(value, dict) or set(value) - {"configs", "sigmas"}:
                raise PolarstemError("'phonons' takes 'configs' and 'sigmas'")
            cfg[key].update(value)
        else:
            cfg[key] = value
    _check(cfg)
    return cfg


def _num(v, name: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PolarstemError(f"'{name}' must be a number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise PolarstemError(f"'{name}' = {v} is outside [{lo}, {hi}]")
    return float(v)


def _range(v, name: str, lo: float, hi: float) -> None:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise PolarstemError(f"'{name}' must be a number or [low, high]")
        a, b = (_num(x, name, lo, hi) for x in v)
        if a > b:
            raise PolarstemError(f"'{name}': low {a} > high {b}")
    else:
        _num(v, name, lo, hi)


def _check(cfg: dict) -> None:
    """Every value of a merged config in range, section by section; the first problem is the error."""
    if cfg["kind"] not in ("training", "scan"):
        raise PolarstemError(f"'kind' must be 'training' or 'scan', got {cfg['kind']!r}")
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int) or cfg["seed"] < 0:
        raise PolarstemError("'seed' must be a non-negative integer")
    _check_optics(cfg)
    _check_numerics(cfg["numerics"])
    _check_detector(cfg["detector"])
    _check_structure(cfg)
    _check_phonons(cfg["phonons"])
    if cfg["kind"] == "training":
        _check_training(cfg["training"])
    else:
        _check_scan(cfg["scan"])


def _check_optics(cfg: dict) -> None:
    """The optics; a range of energy or convergence angle is only meaningful for patterns stored on
    a reciprocal-lattice grid (``detector.max_g``), so that is checked here too."""
    o, d = cfg["optics"], cfg["detector"]
    _range(o["energy_kev"], "optics.energy_kev", 20, 1000)
    _range(o["convergence_mrad"], "optics.convergence_mrad", 0.1, 60)
    varied = any(isinstance(o[k], (list, tuple)) for k in ("energy_kev", "convergence_mrad"))
    if varied and (cfg["kind"] != "training" or "max_g" not in d):
        raise PolarstemError("a range of 'optics.energy_kev' or 'optics.convergence_mrad' needs a training "
                             "config with 'detector.max_g' (patterns stored in reciprocal-lattice units)")
    if "max_g" in d:
        _num(d["max_g"], "detector.max_g", 1, 40)
    if "disk_overlap" in o:  # convergence from the energy: alpha = overlap x lambda / a (acquisition.disk_overlap)
        _range(o["disk_overlap"], "optics.disk_overlap", 0.5, 10)
        if cfg["kind"] != "training" or "max_g" not in d:
            raise PolarstemError("'optics.disk_overlap' needs a training config with 'detector.max_g' "
                                 "(it sets each acquisition's convergence from its energy)")
    _range(o["defocus_nm"], "optics.defocus_nm", -1000, 1000)
    _range(o["mistilt_mrad"], "optics.mistilt_mrad", 0, 20)


def _check_numerics(n: dict) -> None:
    for k in ("gpts_per_cell", "slices_per_cell"):
        if not isinstance(n[k], int) or n[k] < 1:
            raise PolarstemError(f"'numerics.{k}' must be a positive integer")
    if n.get("parametrization", "lobato") not in PARAMETRIZATIONS:
        raise PolarstemError(f"'numerics.parametrization' must be one of {', '.join(PARAMETRIZATIONS)}")
    if n.get("projection", "infinite") not in PROJECTIONS:
        raise PolarstemError(f"'numerics.projection' must be one of {', '.join(PROJECTIONS)}")


def _check_detector(d: dict) -> None:
    _num(d["max_mrad"], "detector.max_mrad", 1, 200)
    if not isinstance(d["bin"], int) or d["bin"] < 1 or d["bin"] % 2 == 0:
        raise PolarstemError("'detector.bin' must be an odd positive integer (keeps 0 mrad on a pixel centre)")


def _check_structure(cfg: dict) -> None:
    """The structure section. Classes [-1] make a training set of non-polar structures (no Nb shift,
    labelled -1: the outliers a model learns to give no direction); a material other than KNN is for
    those and for scans without domains (it has no polar domains to label)."""
    s = cfg["structure"]
    classes = s["classes"]
    nonpolar = classes == [NO_CLASS]
    if not isinstance(classes, list) or not classes or (not nonpolar and any(c not in range(8) for c in classes)):
        raise PolarstemError("'structure.classes' must be a non-empty list of classes 0..7, or [-1] (non-polar)")
    if nonpolar and (cfg["kind"] != "training" or s["nb_shift_angstrom"] != 0):
        raise PolarstemError("'structure.classes: [-1]' (non-polar) is for training sets with nb_shift_angstrom: 0")
    if not isinstance(s["cells"], int) or not 1 <= s["cells"] <= 64:
        raise PolarstemError("'structure.cells' must be an integer 1..64")
    _range(s["a_angstrom"], "structure.a_angstrom", 2.0, 8.0)
    _range(s["nb_shift_angstrom"], "structure.nb_shift_angstrom", 0.0, 0.5)
    _range(s["a_ratio"], "structure.a_ratio", -2, 2)
    _num(s["k_fraction"], "structure.k_fraction", 0, 1)
    if s.get("material", "knn") not in MATERIALS:
        raise PolarstemError(f"'structure.material' must be one of {', '.join(MATERIALS)}")
    if s.get("material", "knn") != "knn" and not nonpolar and (cfg["kind"] != "scan" or cfg["scan"]["domains"]):
        raise PolarstemError("'structure.material' other than knn is for scans without domains or for non-polar "
                             "training sets (classes: [-1]): it has nothing polar to label")
    if s["out_of_plane_sign"] not in ("+", "-", "random"):
        raise PolarstemError("'structure.out_of_plane_sign' must be '+', '-' or 'random'")


def _check_phonons(ph: dict) -> None:
    if not isinstance(ph["configs"], int) or ph["configs"] < 0:
        raise PolarstemError("'phonons.configs' must be a non-negative integer")
    if not isinstance(ph["sigmas"], dict) or not {"K", "Na", "Nb", "O"} <= set(ph["sigmas"]):
        raise PolarstemError("'phonons.sigmas' must give K, Na, Nb and O (Å)")
    for el, v in ph["sigmas"].items():
        _num(v, f"phonons.sigmas.{el}", 0, 0.5)


def _check_training(t: dict) -> None:
    """The training section (a training-kind config only; a scan config ignores it)."""
    if not isinstance(t["structures"], int) or t["structures"] < 1:
        raise PolarstemError("'training.structures' must be a positive integer")
    pr = t["probes"]
    if not isinstance(pr, dict) or not (("grid" in pr) ^ ("random" in pr)):
        raise PolarstemError("'training.probes' must be {grid: n, offset: random|[fx, fy]} or {random: n}")
    n_probe = pr.get("grid", pr.get("random"))
    if not isinstance(n_probe, int) or n_probe < 1:
        raise PolarstemError("'training.probes' needs a positive integer count")
    off = pr.get("offset", "random")
    if "grid" in pr and off != "random" and not (isinstance(off, list) and len(off) == 2):
        raise PolarstemError("'training.probes.offset' must be 'random' or [fx, fy]")
    th = t["thickness_nm"]
    vals = th if isinstance(th, list) else [th]
    for v in vals:
        _num(v, "training.thickness_nm", 0.3, 200)
    if not isinstance(t["thicknesses"], int) or t["thicknesses"] < 1:
        raise PolarstemError("'training.thicknesses' must be a positive integer")
    if isinstance(th, list) and len(th) > 2 and t["thicknesses"] > len(th):
        raise PolarstemError("'training.thicknesses' is more than the listed thickness_nm values")
    if "acquisitions" in t and (isinstance(t["acquisitions"], bool) or not isinstance(t["acquisitions"], int)
                                or t["acquisitions"] < 1):
        raise PolarstemError("'training.acquisitions' must be a positive integer")
    if "o_vacancy_fraction" in t:
        _num(t["o_vacancy_fraction"], "training.o_vacancy_fraction", 0, 1)


def _check_scan(sc: dict) -> None:
    """The scan section (a scan-kind config only; a training config ignores it)."""
    if not (isinstance(sc["cells"], list) and len(sc["cells"]) == 2 and sc["cells"][0] == sc["cells"][1]
            and isinstance(sc["cells"][0], int) and sc["cells"][0] >= 1):
        raise PolarstemError("'scan.cells' must be [n, n] (square supercell)")
    if not isinstance(sc["steps_per_cell"], int) or sc["steps_per_cell"] < 1:
        raise PolarstemError("'scan.steps_per_cell' must be a positive integer")
    _num(sc["thickness_nm"], "scan.thickness_nm", 0.3, 200)
    if not isinstance(sc["rows_per_task"], int) or sc["rows_per_task"] < 1:
        raise PolarstemError("'scan.rows_per_task' must be a positive integer")
    for i, dom in enumerate(list(sc["domains"]) + list(sc["defects"])):
        if not isinstance(dom, dict) or not {"rows", "cols"} <= set(dom):
            raise PolarstemError(f"scan domain/defect #{i} needs 'rows' and 'cols' ([start, stop] in cells)")
    for dom in sc["domains"]:
        if dom.get("class") not in range(8):
            raise PolarstemError("every scan domain needs 'class' 0..7")
    for dfc in sc["defects"]:
        if dfc.get("kind") not in ("nonpolar", "o_vacancy"):
            raise PolarstemError("scan defects need kind 'nonpolar' or 'o_vacancy'")


def probe_grid(manifest: dict, n_positions: int) -> int | None:
    """Side g of the regular g x g probe grid (one unit cell) every row of a training-kind folder
    holds, from its manifest, when the rows have ``n_positions`` = g * g columns; else None."""
    try:
        g = int(manifest["config"]["training"]["probes"]["grid"])
    except (KeyError, TypeError, ValueError):
        return None
    return g if g >= 2 and g * g == int(n_positions) else None
