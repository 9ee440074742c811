"""Score a model on a labeled dataset: ``polarstem evaluate FILE --labels labels.npy --model NAME``.

A labeled dataset is any 4D-STEM file plus a ``labels.npy`` class map (-1 = ignore) and optionally a
``defects.npy`` mask (conventions.md). The scan is classified by the same code the plugin uses
(:func:`polarstem.classify.classify_scan`), so the figures describe what a user gets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .classes import N_CLASSES, UNCERTAIN
from .errors import PolarstemError


def _load_map(path, shape, dtype, what: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise PolarstemError(f"{p}: no such {what} file")
    try:
        a = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PolarstemError(f"{p}: not a plain .npy array ({' '.join(str(exc).split())[:120]})") from None
    if a.shape != tuple(shape):
        if a.size == int(np.prod(shape)):
            a = a.reshape(shape)
        else:
            raise PolarstemError(f"{p}: {what} of shape {a.shape} does not match the scan {tuple(shape)}")
    return a.astype(dtype)


def scores(pred: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """Accuracy over labels >= 0 (unclassified and uncertain predictions count as wrong), per class, confusion
    (rows = truth), and the abstention fraction (predictions of -2, uncertain)."""
    pred = np.asarray(pred).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    sel = labels >= 0
    if valid is not None:
        sel &= np.asarray(valid).reshape(-1)
    p, t = pred[sel], labels[sel]
    conf = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    ok = (p >= 0) & (p < N_CLASSES)
    np.add.at(conf, (t[ok], p[ok]), 1)
    per_class = []
    for k in range(N_CLASSES):
        n = int((t == k).sum())
        per_class.append(round(float((p[t == k] == k).mean()), 4) if n else None)
    return {"accuracy": round(float((p == t).mean()), 4) if len(t) else None, "n": int(len(t)),
            "per_class": per_class, "confusion": conf.tolist(), "unclassified": int((~ok).sum()),
            "abstention_fraction": round(float((p == UNCERTAIN).mean()), 4) if len(t) else None}


#: Symmetry images ``evaluate --mode pattern`` averages by default, at any size (~200 patterns/s on
#: 2 CPU threads for the ResNets, so 100,000 patterns take ~9 min).
EVALUATE_PATTERN_TTA = 8


def evaluate(path, labels_path=None, model: str | None = None, mode: str = "auto", defects_path=None,
             device: str = "auto", progress=None, cell_method: str = "vote",
             tta: bool | int | None = None, wall_bands: bool = True) -> dict:
    """Classify the file and compare with the labels; with defects, the anomaly ROC AUC too.

    ``model`` None is the default model (the best per-pattern held-out accuracy, as classify uses).
    ``tta`` None in pattern mode averages all 8 symmetry images whatever the size: an evaluation
    measures accuracy, and classify's automatic drop to 2 images beyond 20,000 patterns on a CPU (a
    speed choice for big scans) would cost ~0.05 per pattern (docs/models.md)."""
    from .classify import classify_scan
    from .io import load

    ds = load(path)
    if model is None:
        from .acquisition import default_model

        model = default_model(calibration=ds.calibration)
    # a simulation's output folder holds labels.npy; a file (also a .zspy/.zarr store, itself a
    # directory) has it beside it
    p = Path(path)
    folder = p if p.is_dir() and p.suffix.lower() not in (".zspy", ".zarr") else p.parent
    labels_path = labels_path or folder / "labels.npy"
    labels = _load_map(labels_path, ds.scan_shape, np.int64, "labels")
    if labels.min() < -1 or labels.max() >= N_CLASSES:
        raise PolarstemError(f"{labels_path}: labels must be -1..{N_CLASSES - 1}")
    roi = labels >= 0
    if not roi.any():
        raise PolarstemError(f"{labels_path}: no labeled position (all -1)")
    defects = _load_map(defects_path, ds.scan_shape, bool, "defects") if defects_path else None
    if tta is None and mode == "pattern":
        tta = EVALUATE_PATTERN_TTA
    # pattern mode only needs the labeled positions; cell windows need their neighbours, so run everywhere
    res = classify_scan(ds, model=model, mode=mode, roi=roi if mode == "pattern" else None, device=device,
                        progress=progress, anomaly=defects is not None, cell_method=cell_method,
                        tta=tta, wall_bands=wall_bands)
    out = {"file": str(path), "model": res.model, "model_sha256": res.model_sha256, "mode": res.mode}
    if res.mode == "cell":
        out["cell_method"] = cell_method
    out["tta"] = res.params["tta"]
    out.update(scores(res.classes, labels))
    out["uncertain_fraction"] = res.params.get("uncertain_fraction")
    if res.verdict:
        out["verdict"] = res.verdict
    if res.notes:
        out["calibration_notes"] = res.notes
    out["informative_fraction"] = round(float(res.informative[roi].mean()), 4)
    out["accuracy_informative"] = scores(res.classes, labels, res.informative)["accuracy"]
    out["patterns_per_s"] = round(res.n_patterns / res.seconds, 1) if res.seconds else None
    if defects is not None:
        away = scores(res.classes, labels, ~defects)
        out["accuracy_outside_defects"] = away["accuracy"]
        out["abstention_outside_defects"] = away["abstention_fraction"]
        out["accuracy_at_defects"] = scores(res.classes, labels, defects)["accuracy"]
        out["anomaly_auc"] = anomaly_auc(res.anomaly, defects, res.done)
        near = wall_plane_probes(folder, ds.scan_shape)
        if near is not None:  # a simulated scan: the same figure without the coin-toss probes on wall planes
            out["wall_plane_probes"] = int((near & ~defects & roi).sum())
            out["accuracy_outside_defects_and_wall_planes"] = scores(res.classes, labels, ~defects & ~near)["accuracy"]
    return out


#: A probe whose centre lies within this many lattice constants of a wall plane sees both domains.
WALL_PLANE_TOL = 0.1


def wall_plane_probes(folder, shape, tol: float = WALL_PLANE_TOL) -> np.ndarray | None:
    """Probes of a simulated scan (``polarstem simulate``, kind scan) whose centre lies within ``tol``
    lattice constants of the plane between two cells of different class; None for other data.

    The simulation labels each probe by the cell its centre lies in. A probe 0.05 a (0.2 Å) from a
    domain-wall plane illuminates both domains about equally, so its label is close to a coin toss:
    some scan offsets put a whole probe row there (validation scan S: 118 of 832 positions away from
    defects; docs/classify.md, "Errors away from defects sit on wall planes"). Read from the
    folder's ``manifest.json``.
    """
    import json

    man_path = Path(folder) / "manifest.json"
    try:
        man = json.loads(man_path.read_text())
        man = man.get("source_manifest", man)  # an experiment-like copy of a simulated scan
        if man.get("kind") != "scan":
            return None
        sc = man["config"]["scan"]
        spc, n = int(sc["steps_per_cell"]), int(sc["cells"][0])
        off = np.asarray(sc["offset_frac"], float)  # (x, y) in cells, as the simulation reads it
        cells = np.asarray(man["cell_labels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    y = off[1] + np.arange(shape[0]) / spc
    x = off[0] + np.arange(shape[1]) / spc
    cy, cx = np.floor(y + 1e-9).astype(int), np.floor(x + 1e-9).astype(int)
    CY, CX = np.meshgrid(cy, cx, indexing="ij")
    FY, FX = np.meshgrid(y - cy, x - cx, indexing="ij")  # place inside the cell, 0..1
    own = cells[CY % n, CX % n]
    near = np.zeros(tuple(shape), bool)
    for dy, dx, f in ((-1, 0, FY), (1, 0, 1 - FY), (0, -1, FX), (0, 1, 1 - FX)):
        near |= (f < tol) & (cells[(CY + dy) % n, (CX + dx) % n] != own)
    return near


def anomaly_auc(score, defects, valid=None) -> float | None:
    """ROC AUC of the anomaly score for the defect mask (None when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    if score is None:
        return None
    s = np.asarray(score, float).reshape(-1)
    d = np.asarray(defects, bool).reshape(-1)
    sel = np.isfinite(s) if valid is None else np.isfinite(s) & np.asarray(valid).reshape(-1)
    if d[sel].all() or not d[sel].any():
        return None
    return round(float(roc_auc_score(d[sel], s[sel])), 4)
