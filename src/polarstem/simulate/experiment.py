"""An experiment-like copy of a simulated labeled scan: what a real detector would have recorded.

A simulated scan is too clean: every pattern is centred on the same pixel, noise-free, on a detector
sized by the supercell. A microscope adds a detector of its own size and sampling, a descan that drifts
across the scan (a ramp of the pattern centre, plus jitter), projector ellipticity, blur, a smooth
inelastic background, shot noise at a finite dose, and a few hot and dead pixels that stay where they
are for the whole scan. :func:`experiment_like` applies all of them, seeded, and writes a labeled folder
(``data.hspy`` with its calibrations, ``labels.npy``, ``defects.npy``, ``manifest.json``) that
``polarstem classify`` and ``polarstem evaluate`` read like any other file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import PolarstemError
from ..fileio import save_npy, write_json


@dataclass(frozen=True)
class Recording:
    """How the simulated scan is recorded (physics.md, "Judged range")."""

    detector_px: int = 64
    #: detector half-width in units of the bright-field disk radius (the sampling follows from it)
    fov_disk_radii: float = 1.6
    dose: float = 2e4  # electrons per pattern
    descan_ramp_px: float = 3.0  # the pattern centre drifts linearly by up to this much across the scan
    descan_jitter_px: float = 0.3
    ellipticity: float = 0.01
    blur_px: float = 0.5
    background: float = 0.03
    hot_pixels: int = 4
    dead_pixels: int = 4
    seed: int = 0


def experiment_like(src, out, recording: Recording = Recording()) -> Path:
    """Write the experiment-like copy of the simulated scan folder ``src`` to ``out`` (a folder)."""
    from ..io import Calibration, load, save
    from .corruptions import DetectorBlur, EllipticalDistortion, InelasticBackground, PoissonDose

    src, out = Path(src), Path(out)
    ds = load(src)
    cal = ds.calibration
    if not cal.mrad_per_px or not cal.convergence_mrad:
        raise PolarstemError(f"{src}: an experiment-like copy needs the simulation's mrad/px and convergence")
    r = recording
    rng = np.random.default_rng(r.seed)
    raw = np.asarray(ds.data, np.float32)
    sy, sx, ky, kx = raw.shape
    det_mrad = r.fov_disk_radii * cal.convergence_mrad / ((r.detector_px - 1) / 2)
    # the descan: a plane across the scan (a ramp in a random direction) plus per-pattern jitter
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, sy), np.linspace(-0.5, 0.5, sx), indexing="ij")
    direction = rng.uniform(0, 2 * np.pi, 2)
    shift = np.stack([np.cos(direction[0]) * yy + np.sin(direction[0]) * xx,
                      np.cos(direction[1]) * yy + np.sin(direction[1]) * xx], -1) * 2 * r.descan_ramp_px
    shift = shift.reshape(-1, 2) + rng.normal(0, r.descan_jitter_px, (sy * sx, 2))
    flat = raw.reshape(-1, ky, kx)
    flat = InelasticBackground(fraction=(0.0, r.background), width_px=(4.0, 16.0))(flat, rng)
    flat = EllipticalDistortion(ellipticity=r.ellipticity)(flat, rng)
    frames = _to_detector(flat, cal.mrad_per_px, det_mrad, r.detector_px, shift)
    frames = DetectorBlur(sigma_px=(0.0, r.blur_px))(frames, rng)
    frames = PoissonDose(r.dose)(frames, rng)
    bad = rng.choice(r.detector_px ** 2, r.hot_pixels + r.dead_pixels, replace=False)
    flat_f = frames.reshape(len(frames), -1)
    flat_f[:, bad[:r.hot_pixels]] = np.round(flat_f.max() * rng.uniform(2, 10, r.hot_pixels))
    flat_f[:, bad[r.hot_pixels:]] = 0
    out.mkdir(parents=True, exist_ok=True)
    data = frames.reshape(sy, sx, r.detector_px, r.detector_px).astype(np.uint16)
    c = (r.detector_px - 1) / 2
    save(out / "data.hspy", data, Calibration(scan_step_nm=cal.scan_step_nm, mrad_per_px=det_mrad,
                                              beam_energy_kev=cal.beam_energy_kev,
                                              convergence_mrad=cal.convergence_mrad, detector_center_px=(c, c)),
         title=f"experiment-like {src.name}")
    for name in ("labels.npy", "defects.npy"):
        if (src / name).exists():
            save_npy(out / name, np.load(src / name, allow_pickle=False))
    manifest = {"format": "polarstem-experiment-like", "data_file": "data.hspy", "source": str(src.resolve()),
                "recording": asdict(r), "detector_mrad_per_px": det_mrad}
    if (src / "manifest.json").exists():
        manifest["source_manifest"] = json.loads((src / "manifest.json").read_text())
    write_json(out / "manifest.json", manifest, indent=1)
    return out


def _to_detector(frames: np.ndarray, in_mrad: float, out_mrad: float, size: int, shift_px: np.ndarray) -> np.ndarray:
    """Resample (N, ky, kx) onto ``size`` px of ``out_mrad``, the 0-mrad point moved by ``shift_px``
    (detector px) from the detector centre; counts per solid angle conserved, zero off the simulation."""
    from ..preprocess import _axis_weights

    n, ky, kx = frames.shape
    step = out_mrad / in_mrad
    # output pixel i sits at input coordinate centre + (i - (size-1)/2 - shift) * step
    cy = (ky - 1) / 2 - shift_px[:, 0] * step
    cx = (kx - 1) / 2 - shift_px[:, 1] * step
    wy = _axis_weights(cy, ky, size, step)
    wx = _axis_weights(cx, kx, size, step)
    out = np.empty((n, size, size), np.float32)
    for i in range(0, n, 256):
        out[i:i + 256] = np.matmul(np.matmul(wy[i:i + 256], frames[i:i + 256]), wx[i:i + 256].transpose(0, 2, 1))
    return np.maximum(out, 0) * step ** 2
