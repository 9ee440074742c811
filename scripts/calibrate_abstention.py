"""Fit and calibrate a model's abstention (polarstem.abstain) and write it into its card.

    .venv/bin/python scripts/calibrate_abstention.py resnet-proto [--weights src/polarstem/weights]
        [--data .cache/sim/acquisitions] [--calibration-data FOLDER] [--rows 600] [--seed 0] [--cells]

Only rows inside the acquisition ranges of the model's card (beam energy, convergence) count as in scope:
a model validated at 200 kV / 17-23 mrad is calibrated on those rows of a set simulated across acquisitions.

The class-conditional Gaussians are fitted on rows of the training thicknesses of DATA (a training-layout
set with a 6 x 6 probe grid), the thresholds on rows of its validation thicknesses (or, with
--calibration-data, on a set of structures the model never trained on), with the training
augmentation's experiment-like corruptions (training.fit_abstention, the step `polarstem train` runs with
`abstention: true`). With --cells, each acquisition cell (beam energy x disk overlap) is calibrated on its own
rows too and the card's `acquisition.cells` states how well each is read (`abstention_cells: true` in training).
Only the card changes (the weights file and its hash do not).
"""

import argparse
import json
from pathlib import Path

from polarstem.fileio import write_json
from polarstem.models import load_model
from polarstem.models.registry import clear_cache, read_index, weights_dir
from polarstem.training import DEFAULT_AUGMENT, fit_abstention, load_simset
from polarstem.training.abstention import write_into_card


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--weights", default=None, help="weights folder (default: the package's)")
    ap.add_argument("--data", default=".cache/sim/acquisitions")
    ap.add_argument("--calibration-data", default=None, help="calibrate on this set's structures instead")
    ap.add_argument("--rows", type=int, default=600, help="rows to fit on, and rows to calibrate on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", action="store_true", help="calibrate per acquisition cell too (abstain.CELLS)")
    args = ap.parse_args(argv)
    folder = Path(args.weights) if args.weights else weights_dir()
    model = load_model(args.model, mode="pattern", folder=folder)
    card_path = folder / read_index(folder)["files"][f"{args.model}-pattern"]["card"]
    card = json.loads(card_path.read_text())
    aug = dict(DEFAULT_AUGMENT, **(card.get("training", {}).get("config", {}).get("augment") or {}))
    sim = load_simset(args.data)
    ranges = {k: v for k, v in (card.get("acquisition") or {}).items() if k in ("beam_energy_kev", "convergence_mrad")}
    abst = fit_abstention(model, sim, model.grid, aug, seed=args.seed, fit_rows=args.rows, calibration_rows=args.rows,
                          ranges=ranges, by_cell=args.cells,
                          calibration=load_simset(args.calibration_data) if args.calibration_data else None)
    write_into_card(card, abst, data=str(args.data), acquisition=ranges, calibration_data=args.calibration_data)
    write_json(card_path, card, indent=1)
    clear_cache()
    print(f"{card_path}: abstention written")


if __name__ == "__main__":
    main()
