"""Class-map accuracy and defect AUC of labeled scans under the benchmark's corruptions, default mode.

    .venv/bin/python benchmarks/noisy_scans.py [--model resnet] [--corruptions ideal combined:1.0 dose:1e4]
        [--scans sample_data .cache/sim/val_scan_a ...]

Each corruption (``polarstem.analysis.testsets.corruption``: ``combined`` s = blur s px, 5 s %
background, ±3 s px descan drawn per pattern, 1e4 / s electrons) is applied to every pattern of the
scan (one fixed draw, seed 11), and the scan is classified as ``polarstem classify`` does by default
(``mode auto``: the lattice is looked for in the corrupted data). ``source:S`` instead averages
every pattern over the scan positions around it as a finite source of std S Å does
(``polarstem.simulate.coherence.source_blur_scan``; a/3-a/4 scan steps sample that coarsely). Prints
one line per scan and corruption: the mode chosen, accuracy away from the defects and the anomaly ROC AUC.
``--session9`` adds the AUC of the same classification scored by the session-9 rules (no pattern
term), for the comparison in docs/classify.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet")
    ap.add_argument("--corruptions", nargs="+", default=["ideal", "combined:1.0", "dose:1e4"])
    ap.add_argument("--scans", nargs="+", default=["sample_data", ".cache/sim/val_scan_a", ".cache/sim/val_scan_b",
                                                    ".cache/sim/val_scan_c", ".cache/sim/val_scan_d",
                                                    ".cache/sim/val_scan_e"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--session9", action="store_true", help="also score with the session-9 anomaly rules")
    args = ap.parse_args(argv)

    import dask.array as da
    import torch

    from polarstem.analysis.testsets import apply_corruption
    from polarstem.classify import classify_scan
    from polarstem.evaluate import anomaly_auc
    from polarstem.io import load
    from polarstem.simulate.coherence import source_blur_scan

    torch.set_num_threads(args.threads)
    from polarstem import anomaly

    print(f"{'scan':28s} {'corruption':14s} mode    away from defects  anomaly AUC"
          + ("  (session-9 rules)" if args.session9 else ""))
    for folder in args.scans:
        if not Path(folder).exists():
            print(f"{folder}: missing (simulate it from configs/simulate/validation/)")
            continue
        ds = load(folder)
        labels = np.load(Path(folder) / "labels.npy")
        defects = np.load(Path(folder) / "defects.npy").astype(bool)
        raw = np.asarray(ds.data, dtype=np.float32)
        for spec in args.corruptions:
            if spec == "ideal":
                arr = raw
            elif spec.startswith("source:"):  # a finite source: Gaussian average over scan positions
                step_a = [10.0 * float(v) for v in ds.calibration.scan_step_nm]
                arr = source_blur_scan(raw, float(spec.split(":")[1]), tuple(step_a))
            else:
                kind, strength = spec.split(":")
                flat = raw.reshape(-1, *raw.shape[2:])
                arr = apply_corruption(flat, kind, float(strength), 11).reshape(raw.shape)
            data = dataclasses.replace(ds, data=da.from_array(arr, chunks=(8, 8, -1, -1)))
            res = classify_scan(data, args.model, mode="auto")
            away = (labels >= 0) & ~defects
            acc = float((res.classes[away] == labels[away]).mean())
            line = f"{folder:28s} {spec:14s} {res.mode:7s} {acc:.3f}              {anomaly_auc(res.anomaly, defects)}"
            if args.session9:
                keep = anomaly.FINGERPRINT_WEIGHT
                anomaly.FINGERPRINT_WEIGHT = 0.0
                try:
                    line += f"  ({anomaly_auc(anomaly.score_anomaly(res), defects)})"
                finally:
                    anomaly.FINGERPRINT_WEIGHT = keep
            print(line, flush=True)


if __name__ == "__main__":
    main()
