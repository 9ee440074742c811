"""Write the validation scan configs of the acquisition grid (configs/simulate/acquisition/).

    .venv/bin/python scripts/make_acquisition_scans.py

One labeled KNN scan per (beam energy, convergence) point of physics.md's judged range, each with its
own structure: four domains meeting at walls, one defect (non-polar or O vacancies), thickness,
mistilt, defocus, cell and displacement drawn from a seeded stream. Written once, committed before
any of them ran; the scans are never trained on.
"""

from pathlib import Path

import numpy as np
import yaml

ENERGIES = (80, 120, 200, 300)
CONVERGENCES = (15, 20, 24, 30)
OUT = Path(__file__).resolve().parents[1] / "configs" / "simulate" / "acquisition"


def bragg_mrad(energy_kev: float, a: float = 3.97) -> float:
    m0c2, hc = 510.99895, 12.398419843320026
    return hc / np.sqrt(energy_kev * (2 * m0c2 + energy_kev)) / a * 1e3


def layout(rng, n: int = 8) -> tuple[list, list]:
    """Four domains (two walls crossing, at random cells) and one defect block inside one of them."""
    r, c = int(rng.integers(3, n - 2)), int(rng.integers(3, n - 2))
    classes = [int(k) for k in rng.choice(8, 4, replace=False)]
    boxes = [([0, r], [0, c]), ([0, r], [c, n]), ([r, n], [0, c]), ([r, n], [c, n])]
    domains = [{"class": k, "rows": list(b[0]), "cols": list(b[1])} for k, b in zip(classes, boxes)]
    big = max(range(4), key=lambda i: np.diff(boxes[i][0])[0] * np.diff(boxes[i][1])[0])
    (r0, r1), (c0, c1) = boxes[big]
    dr, dc = int(rng.integers(r0, max(r0 + 1, r1 - 1))), int(rng.integers(c0, max(c0 + 1, c1 - 1)))
    kind = "nonpolar" if rng.random() < 0.5 else "o_vacancy"
    defects = [{"kind": kind, "rows": [dr, min(dr + 2, n)], "cols": [dc, min(dc + 2, n)]}]
    return domains, defects


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i, e in enumerate(ENERGIES):
        for j, alpha in enumerate(CONVERGENCES):
            rng = np.random.default_rng([2612, i, j])
            domains, defects = layout(rng)
            max_mrad = float(np.ceil(max(1.8 * alpha, 6.0 * bragg_mrad(e))))
            cfg = {
                "kind": "scan", "seed": int(9000 + 10 * i + j),
                "optics": {"energy_kev": e, "convergence_mrad": alpha,
                           "defocus_nm": round(float(rng.uniform(-4, 4)), 1),
                           "mistilt_mrad": round(float(rng.uniform(0.2, 1.4)), 2)},
                "numerics": {"gpts_per_cell": 40, "slices_per_cell": 2},
                "detector": {"max_mrad": max_mrad, "bin": 1},
                "structure": {"cells": 8, "a_angstrom": round(float(rng.uniform(3.95, 4.0)), 3),
                              "nb_shift_angstrom": round(float(rng.uniform(0.1, 0.2)), 3),
                              "a_ratio": round(float(rng.uniform(0.3, 0.7)), 2), "k_fraction": 0.5},
                "phonons": {"configs": 2, "sigmas": {"K": 0.10, "Na": 0.10, "Nb": 0.07, "O": 0.09}},
                "scan": {"cells": [8, 8], "steps_per_cell": 3,
                         "offset_frac": [round(float(v), 2) for v in rng.uniform(0.05, 0.3, 2)],
                         "thickness_nm": round(float(rng.uniform(6, 42)), 1), "rows_per_task": 3,
                         "domains": domains, "defects": defects},
            }
            head = (f"# Acquisition-grid validation scan: {e} kV, {alpha} mrad (alpha / (lambda / a) = "
                    f"{alpha / bragg_mrad(e):.2f}).\n# Written by scripts/make_acquisition_scans.py before it ran; "
                    "never trained on.\n")
            (OUT / f"scan_{e}kv_{alpha}mrad.yaml").write_text(head + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))


if __name__ == "__main__":
    main()
