"""Can the maps be trusted? Two tables of the benchmark, both from what ``polarstem classify`` gives by default.

- Across acquisitions: accuracy away from defects, abstention and defect ROC AUC on labeled
  experiment-like scans simulated at every (beam energy, convergence) point of the judged range
  (configs/simulate/acquisition/, recorded by :func:`polarstem.simulate.experiment.experiment_like`).
- Out of scope: how much of a scan the model abstains on when the data are not polar KNN at [001]
  (noise, a non-polar perovskite, another crystal, a defocused probe, real detector files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PolarstemError


@dataclass(frozen=True)
class NoiseScan:
    """A scan of pure shot noise: ``electrons`` spread evenly over every pattern (no bright-field disk)."""

    shape: tuple[int, int, int, int] = (24, 24, 64, 64)
    electrons: float = 2e4
    seed: int = 0

    def dataset(self):
        import dask.array as da

        from ..io import Calibration, Dataset4D

        sy, sx, ky, kx = self.shape
        rng = np.random.default_rng(self.seed)
        data = rng.poisson(self.electrons / (ky * kx), self.shape).astype(np.uint16)
        cal = Calibration(scan_step_nm=(0.13, 0.13), mrad_per_px=1.0, beam_energy_kev=200.0, convergence_mrad=20.0)
        return Dataset4D(data=da.from_array(data, chunks=(8, 8, ky, kx)), calibration=cal, source="noise")


def _acquisition_of(folder: Path) -> dict:
    """Beam energy, convergence and overlap of a (copy of a) simulated scan, from its manifest."""
    try:
        man = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    man = man.get("source_manifest", man)
    optics = (man.get("config") or {}).get("optics") or {}
    e, a = optics.get("energy_kev"), optics.get("convergence_mrad")
    if not e or not a:
        return {}
    from ..io import electron_wavelength_angstrom

    a_cell = float(((man.get("config") or {}).get("structure") or {}).get("a_angstrom") or 3.97)
    return {"beam_energy_kev": float(e), "convergence_mrad": float(a),
            "overlap": round(float(a) / (electron_wavelength_angstrom(float(e)) / a_cell * 1e3), 2)}


#: The model name that stands for what ``polarstem classify`` picks for the file (``acquisition.default_model``).
DEFAULT = "default"


def acquisition_rows(models: list[str], scans: list, log=print) -> list[dict]:
    """One row per (scan, model): the default classification of an experiment-like labeled scan
    (model ``default``: the model the CLI picks for the scan's acquisition)."""
    from ..evaluate import evaluate

    rows = []
    for scan in scans:
        folder = Path(scan)
        if not (folder / "labels.npy").exists():
            log(f"acquisition scan {scan}: not found (configs/simulate/acquisition/, then an experiment-like copy)")
            continue
        defects = folder / "defects.npy"
        for name in models:
            res = evaluate(folder, model=None if name == DEFAULT else name,
                           defects_path=defects if defects.exists() else None)
            row = {"scan": folder.name, "model": res["model"], **_acquisition_of(folder), "mode": res["mode"]}
            for k in ("accuracy_outside_defects", "abstention_outside_defects", "anomaly_auc",
                      "accuracy_outside_defects_and_wall_planes", "uncertain_fraction"):
                row[k] = res.get(k)
            rows.append(row)
            log(f"  {folder.name} {name}: {row.get('beam_energy_kev')} kV {row.get('convergence_mrad')} mrad: "
                f"accuracy {row['accuracy_outside_defects']}, abstains {row['abstention_outside_defects']}, "
                f"AUC {row['anomaly_auc']}")
    return rows


def open_out_of_scope(spec: str):
    """A dataset of the out-of-scope table: ``noise``, ``noise:ELECTRONS``, or a path (``path::R,C`` gives
    a navigation shape, for detector files that do not store one)."""
    from ..io import load

    if spec == "noise" or spec.startswith("noise:"):
        electrons = float(spec.split(":")[1]) if ":" in spec else 2e4
        return NoiseScan(electrons=electrons).dataset()
    path, _, nav = spec.partition("::")
    shape = tuple(int(v) for v in nav.split(",")) if nav else None
    return load(path, navigation_shape=shape)


def out_of_scope_rows(models: list[str], datasets: list[str], log=print) -> list[dict]:
    """One row per (dataset, model): the fraction of positions the default classification abstains on."""
    from ..classify import classify_scan

    rows = []
    for spec in datasets:
        try:
            ds = open_out_of_scope(spec)
        except PolarstemError as exc:
            log(f"out of scope {spec}: {exc}")
            continue
        for name in models:
            if name == DEFAULT:
                from ..acquisition import default_model

                name = default_model(calibration=ds.calibration)
            try:
                res = classify_scan(ds, model=name, anomaly=False)
            except PolarstemError as exc:
                rows.append({"dataset": spec, "model": name, "error": str(exc)})
                log(f"  {spec} {name}: refused ({exc})")
                continue
            done = res.done
            row = {"dataset": spec, "model": name, "positions": int(done.sum()), "mode": res.mode,
                   "abstention": round(float(res.uncertain[done].mean()), 4) if done.any() else None,
                   "verdict": res.verdict, "notes": res.notes}
            rows.append(row)
            log(f"  {spec} {name}: abstains on {row['abstention']} of {row['positions']} ({res.mode} mode)")
    return rows


def _f(v, digits=3) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def acquisition_table(rows: list[dict]) -> str:
    """Markdown: one line per scan and model, sorted by beam energy and convergence."""
    head = ("| beam energy (kV) | convergence (mrad) | alpha/(lambda/a) | model | accuracy away from defects | "
            "abstains (away from defects) | defect ROC AUC |\n|---|---|---|---|---|---|---|")
    rows = sorted(rows, key=lambda r: (r.get("beam_energy_kev") or 0, r.get("convergence_mrad") or 0, r["model"]))
    lines = [f"| {_f(r.get('beam_energy_kev'), 0)} | {_f(r.get('convergence_mrad'), 0)} | {_f(r.get('overlap'), 2)} | "
             f"`{r['model']}` | {_f(r.get('accuracy_outside_defects'))} | {_f(r.get('abstention_outside_defects'))} | "
             f"{_f(r.get('anomaly_auc'))} |" for r in rows]
    return "\n".join([head] + lines)


def out_of_scope_table(rows: list[dict]) -> str:
    head = "| dataset | model | positions | abstains on | what the tool says |\n|---|---|---|---|---|"
    lines = []
    for r in rows:
        said = r.get("error") or r.get("verdict") or "-"
        lines.append(f"| `{r['dataset']}` | `{r['model']}` | {r.get('positions', '-')} | {_f(r.get('abstention'))} | {said} |")
    return "\n".join([head] + lines)
