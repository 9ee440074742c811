"""Rebuild the bundled sample (sample_data/): the simulated sample scan as a 64 px detector records it.

    OMP_NUM_THREADS=1 .venv/bin/polarstem simulate configs/simulate/sample.yaml -o .cache/sim/sample_native --workers 2
    .venv/bin/python benchmarks/make_sample.py .cache/sim/sample_native sample_data

The recording (polarstem.simulate.experiment): 64 x 64 px detector spanning twice the bright-field disk
radius either side (1.27 mrad/px), 2e4 electrons per pattern, a descan ramp of up to 3 px across the
scan plus 0.3 px jitter, 1 % ellipticity, up to 0.5 px blur, up to 3 % inelastic background, 4 hot and
4 dead pixels; seed 11. Stored as unsigned 16-bit counts with its calibration (.hspy).
"""

import argparse
import json
import shutil
from pathlib import Path

from polarstem.simulate.experiment import Recording, experiment_like

README = """# Sample dataset: a KNN scan with four domains and two defects, as a detector records it

`configs/simulate/sample.yaml` (abTEM multislice, one frozen-phonon configuration): a 10x10-cell
K0.5Na0.5NbO3 slab, 15 nm thick, seen down [001]pc at 200 kV with a 20 mrad probe, scanned on a
30x30 grid (3 positions per cell, step 0.132 nm); recorded by `benchmarks/make_sample.py` as a 64 px
detector would: 1.27 mrad/px, 2e4 electrons per pattern, a descan ramp across the scan, 1 %
ellipticity, blur, inelastic background, 4 hot and 4 dead pixels.

| file | what |
| --- | --- |
| `data.hspy` | 4D (30, 30, 64, 64) uint16 counts, calibrated axes (nm, mrad), beam energy and convergence |
| `labels.npy` | int8 (30, 30): class of the cell under the probe (conventions.md), -1 = non-polar |
| `defects.npy` | bool (30, 30): defective cells (non-polar block and O-vacancy block) |
| `manifest.json` | the recording, and the simulation's manifest (every parameter, per-cell labels) |

Domains (cells): rows 0-4 / cols 0-4 class 1 `[110]`, rows 0-4 / cols 5-9 class 3 `[-110]`,
rows 5-9 / cols 0-4 class 7 `[1-10]`, rows 5-9 / cols 5-9 class 5 `[-1-10]` (90 and 180 degree walls);
non-polar cells at rows 7-8 / cols 1-2, O vacancies at rows 1-2 / cols 7-8.

Regenerate (about 5 min on two cores):

    OMP_NUM_THREADS=1 .venv/bin/polarstem simulate configs/simulate/sample.yaml -o .cache/sim/sample_native --workers 2
    .venv/bin/python benchmarks/make_sample.py .cache/sim/sample_native sample_data
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("simulated")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    experiment_like(args.simulated, tmp, Recording(detector_px=64, fov_disk_radii=2.0, seed=11))
    (tmp / "README.md").write_text(README)
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["source"] = "configs/simulate/sample.yaml"  # not this machine's cache path
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(out)


if __name__ == "__main__":
    main()
