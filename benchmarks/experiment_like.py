"""Experiment-like copies of simulated labeled scans (polarstem.simulate.experiment), for the trust tables.

    .venv/bin/python benchmarks/experiment_like.py .cache/sim/acquisition_scan_*[a-z] [--detector-px 64] [--dose 2e4]

Each SCAN folder gets a sibling SCAN_exp: the same scan recorded on a 64 px detector (half-width 1.6 disk
radii), 2e4 electrons per pattern, a descan ramp of up to 3 px across the scan plus 0.3 px jitter, 1 %
ellipticity, blur, a few % inelastic background, 4 hot and 4 dead pixels. The seed is derived from the
folder name, so a copy is the same every time. Folders still being simulated are skipped.
"""

import argparse
import hashlib
import json
from pathlib import Path

from polarstem.simulate.experiment import Recording, experiment_like


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scans", nargs="+")
    ap.add_argument("--detector-px", type=int, default=64)
    ap.add_argument("--dose", type=float, default=2e4)
    ap.add_argument("--force", action="store_true", help="rewrite existing copies")
    args = ap.parse_args(argv)
    for scan in args.scans:
        src = Path(scan)
        if src.name.endswith("_exp") or not (src / "labels.npy").exists():
            continue
        man = json.loads((src / "manifest.json").read_text())
        if man.get("status") != "complete":
            print(f"{src}: still being simulated, skipped")
            continue
        out = src.with_name(src.name + "_exp")
        if out.exists() and not args.force:
            continue
        seed = int(hashlib.sha256(src.name.encode()).hexdigest()[:8], 16)
        experiment_like(src, out, Recording(detector_px=args.detector_px, dose=args.dose, seed=seed))
        print(out)


if __name__ == "__main__":
    main()
