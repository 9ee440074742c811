"""A cheap stand-in for a simulated labeled folder (tests, smoke runs): the layout of ``polarstem
simulate``'s training output, fake physics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..classes import N_CLASSES


def write_synthetic_simset(folder, n_structures: int = 8, n_positions: int = 16, thicknesses=(5, 10, 15, 20, 25, 30),
                           det_px: int = 64, mrad_per_px: float = 1.5, signal: float = 0.3) -> Path:
    """A cheap stand-in for a simulated labeled folder (tests, smoke runs): same layout, fake physics.

    Each pattern is a 20 mrad bright-field disk whose intensity tilts along the class direction
    (strength oscillating with thickness, as dynamical contrast does) plus a larger probe-position
    dependent pattern shared by all classes: single patterns are hard, position averages easy. No
    randomness: the same arguments give the same folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = (det_px - 1) / 2
    yy, xx = (np.indices((det_px, det_px)) - c) * mrad_per_px
    r = np.hypot(yy, xx)
    disk = (r <= 20.0).astype(np.float32)
    frames, labels, thick, struct = [], [], [], []
    basis = [np.cos(0.31 * (i + 1) * xx + 0.17 * (i + 2) * yy + i) for i in range(4)]
    for s in range(n_structures):
        k = s % N_CLASSES
        ang = np.pi / 4 * k
        tilt = (np.cos(ang) * xx + np.sin(ang) * yy) / 20.0
        for t in thicknesses:
            amp = signal * np.sin(t / 8.0 + 0.5)
            for p in range(n_positions):
                phase = 2 * np.pi * p / n_positions
                probe = sum(np.cos(phase * (i + 1) + i) * b for i, b in enumerate(basis)) * 0.15
                img = disk * (1.0 + amp * tilt + probe) + 0.02 * np.exp(-r / 30.0)
                frames.append(np.maximum(img, 0) * 1000.0)
                labels.append(k)
                thick.append(t)
                struct.append(s)
    n = len(frames)
    cols = n_positions
    rows = n // cols
    data = np.stack(frames).astype(np.float32).reshape(rows, cols, det_px, det_px)
    np.save(folder / "data.npy", data)
    (folder / "data.json").write_text(json.dumps({"mrad_per_px": mrad_per_px, "beam_energy_kev": 200.0,
                                                  "convergence_mrad": 20.0}))
    np.save(folder / "labels.npy", np.asarray(labels, np.int8).reshape(rows, cols))
    np.save(folder / "thickness_nm.npy", np.asarray(thick, np.float32).reshape(rows, cols))
    np.save(folder / "structure.npy", np.asarray(struct, np.int32).reshape(rows, cols))
    (folder / "manifest.json").write_text(json.dumps({"data_file": "data.npy", "synthetic": True}))
    return folder
