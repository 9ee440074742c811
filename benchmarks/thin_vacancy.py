"""How far do O vacancies stand out from the position-to-position spread of a labeled scan?

For each simulated scan folder (``polarstem simulate`` output of a validation scan with an
``o_vacancy`` defect block) this prints, per feature (the model's preprocessed pattern, its
embedding): the spread of clean positions around the mean of their (class, phase bin) group, the
vacancy block's offset from that mean, their ratio (the signal-to-noise ratio an oracle that knows
the clean mean has), and the ROC AUC of the residual distance, per position and per cell (the mean
over a cell's positions). Run it on the same scan simulated with different numbers of frozen-phonon
configurations to see how much of the spread is the finite phonon average (which a real exposure,
averaging over millions of thermal states, does not have) rather than the crystal's own disorder
(K/Na order, which it does have):

    .venv/bin/python benchmarks/thin_vacancy.py .cache/sim/val_scan_c .cache/sim/val_scan_c_ph8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def position_maps(folder: Path):
    """(labels, vacancy mask, non-polar mask, cell row, cell col, phase bin, steps per cell)."""
    man = json.loads((folder / "manifest.json").read_text())
    sc = man["config"]["scan"]
    labels = np.load(folder / "labels.npy")
    spc = int(sc["steps_per_cell"])
    n = int(sc["cells"][0])
    off = np.asarray(sc["offset_frac"], float)
    r = np.arange(labels.shape[0])
    c = np.arange(labels.shape[1])
    cr = np.floor(off[1] + r / spc + 1e-9).astype(int) % n
    cc = np.floor(off[0] + c / spc + 1e-9).astype(int) % n
    CR, CC = np.meshgrid(cr, cc, indexing="ij")
    vac = np.zeros(labels.shape, bool)
    nonpolar = np.zeros(labels.shape, bool)
    for d in sc["defects"]:
        m = (CR >= d["rows"][0]) & (CR < d["rows"][1]) & (CC >= d["cols"][0]) & (CC < d["cols"][1])
        if d["kind"] == "o_vacancy":
            vac |= m
        else:
            nonpolar |= m
    R, C = np.meshgrid(r, c, indexing="ij")
    phase = (R % spc) * spc + (C % spc)
    return labels, vac, nonpolar, CR, CC, phase, spc


def near_wall(labels: np.ndarray, reach: int) -> np.ndarray:
    """Positions within ``reach`` steps of a position of another (polar) class."""
    from scipy import ndimage

    out = np.zeros(labels.shape, bool)
    size = 2 * reach + 1
    for k in np.unique(labels[labels >= 0]):
        grown = ndimage.binary_dilation(labels == k, structure=np.ones((size, size), bool))
        out |= grown & (labels >= 0) & (labels != k)
    return out


def features(folder: Path, model_name: str):
    from polarstem.anomaly import fingerprint
    from polarstem.io import load
    from polarstem.models import load_model

    ds = load(folder)
    frames = np.asarray(ds.data, dtype=np.float32)
    model = load_model(model_name, "pattern")
    flat = frames.reshape(-1, *frames.shape[2:])
    x, _ = model.preprocess(flat, ds.calibration)
    out = model.predict(x)
    shape = frames.shape[:2]
    x = np.asarray(x)
    binned = fingerprint(x).astype(np.float32)  # what the anomaly score keeps per position
    return {"pattern": x.reshape(shape + (-1,)), "pattern/4": binned.reshape(shape + (-1,)),
            "embedding": np.asarray(out["embedding"]).reshape(shape + (-1,))}


def analyse(folder: Path, model_name: str) -> dict:
    labels, vac, nonpolar, CR, CC, phase, spc = position_maps(folder)
    clean = (labels >= 0) & ~vac & ~nonpolar & ~near_wall(labels, max(1, spc // 2))
    man = json.loads((folder / "manifest.json").read_text())
    res = {"scan": str(folder), "phonon_configs": man["config"]["phonons"]["configs"],
           "clean_positions": int(clean.sum()), "vacancy_positions": int(vac.sum())}
    cell_id = CR * 1000 + CC
    for name, f in features(folder, model_name).items():
        resid = np.full(labels.shape, np.nan)
        spreads, offsets = [], []
        for k in np.unique(labels[vac]):
            for b in np.unique(phase):
                g_clean = clean & (labels == k) & (phase == b)
                g_vac = vac & (labels == k) & (phase == b)
                if g_clean.sum() < 3 or not g_vac.any():
                    continue
                mu = f[g_clean].mean(0)
                spreads.append(np.sqrt(((f[g_clean] - mu) ** 2).sum(1).mean()))
                offsets.append(np.linalg.norm(f[g_vac].mean(0) - mu))
                # leave-one-cell-out mean for the clean positions, so they are not scored on their own mean
                for pos in zip(*np.nonzero(g_clean | g_vac)):
                    same = g_clean & (cell_id != cell_id[pos])
                    resid[pos] = np.linalg.norm(f[pos] - f[same].mean(0))
        m_clean = clean & np.isfinite(resid)  # the clean positions of the vacancy block's classes
        per_cell = {}
        for mask, tag in ((m_clean, "clean"), (vac & np.isfinite(resid), "vac")):
            ids = np.unique(cell_id[mask])
            per_cell[tag] = np.array([resid[mask & (cell_id == i)].mean() for i in ids])
        res[name] = {
            "spread": round(float(np.mean(spreads)), 4),
            "vacancy_offset": round(float(np.mean(offsets)), 4),
            "snr": round(float(np.mean(offsets) / np.mean(spreads)), 3),
            "auc_position": round(_auc(resid[vac & np.isfinite(resid)], resid[m_clean]), 3),
            "auc_cell": round(_auc(per_cell["vac"], per_cell["clean"]), 3),
            "cells": [len(per_cell["vac"]), len(per_cell["clean"])],
        }
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scans", nargs="+", type=Path)
    ap.add_argument("--model", default="resnet-proto")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rows = [analyse(s, a.model) for s in a.scans]
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| scan | phonon configs | feature | clean spread | vacancy offset | offset / spread | AUC per position "
          "| AUC per cell (vac / clean cells) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name in ("pattern", "pattern/4", "embedding"):
            f = r[name]
            print(f"| {Path(r['scan']).name} | {r['phonon_configs']} | {name} | {f['spread']} | {f['vacancy_offset']} | "
                  f"{f['snr']} | {f['auc_position']} | {f['auc_cell']} ({f['cells'][0]} / {f['cells'][1]}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
