"""The study's comparison over seeds: every family x regime and the study's own pipeline, trained from
scratch on the same data with the same budget, evaluated on the same held-out scans.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/seeds.py configs/benchmark/seeds.yaml -o .cache/seeds [--docs]

Each (model, seed) trains into ``OUT/<model>/seed<k>/`` (a weights folder with its own index, so the
registry loads it as ``POLARSTEM_WEIGHTS`` would) and is evaluated there; ``OUT/results.json`` collects
every figure and is the resume point (a trained seed or an evaluated scan is not redone). Prints the
table (mean and spread over seeds) and, with ``--docs``, writes it and the figure
(docs/images/seeds.png) into docs/benchmark.md between its ``seeds`` markers. A model this
results.json has no run of keeps the row the docs already show, so machines that each run part of
the study (``--models``) fill one table; a model run again replaces its row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmark.md"
FIGURE = ROOT / "docs" / "images" / "seeds.png"
MARKERS = ("<!-- seeds: begin (benchmarks/seeds.py --docs) -->", "<!-- seeds: end -->")
#: The figure of each evaluation kept in the table.
METRIC = "accuracy_outside_defects"


def load_config(path) -> dict:
    cfg = yaml.safe_load(Path(path).read_text())
    for key in ("train", "seeds", "models", "tests", "eval_modes"):
        if key not in cfg:
            raise SystemExit(f"{path}: missing '{key}'")
    return cfg


def runs(cfg: dict, only: list[str] | None = None) -> list[tuple[str, int]]:
    """(model, seed) in training order: seed by seed, so a stopped run leaves whole seeds."""
    models = [m for m in cfg["models"] if not only or m in only]
    seeds = sorted({s for m in models for s in cfg.get("model_seeds", {}).get(m, cfg["seeds"])})
    return [(m, s) for s in seeds for m in models if s in cfg.get("model_seeds", {}).get(m, cfg["seeds"])]


def train_one(cfg: dict, name: str, seed: int, folder: Path, log) -> float:
    """Train one model and seed into ``folder``; minutes taken."""
    from polarstem.training import TrainConfig, run

    keys = dict(cfg["train"], **cfg["models"][name], name=name, seed=seed, out=str(folder))
    t0 = time.time()
    run(TrainConfig.from_dict(keys, source=f"seeds: {name}"), progress=False, log=log)
    return (time.time() - t0) / 60


def evaluate_one(name: str, folder: Path, scan: str, mode: str) -> dict:
    """The evaluation of ``polarstem evaluate`` for the model in ``folder``."""
    from polarstem.evaluate import evaluate
    from polarstem.models.registry import clear_cache

    os.environ["POLARSTEM_WEIGHTS"] = str(folder)
    clear_cache()
    defects = Path(scan) / "defects.npy"
    res = evaluate(scan, model=name, mode=mode, defects_path=defects if defects.exists() else None, device="cpu")
    return {k: res.get(k) for k in (METRIC, "accuracy", "abstention_outside_defects", "anomaly_auc")}


def run_all(cfg: dict, out: Path, results: dict, log, only: list[str] | None = None) -> None:
    """Train and evaluate what ``results`` does not hold yet, saving after each step; then the shipped
    reference models on the same scans."""
    from polarstem.models.registry import package_weights_dir

    for name, seed in runs(cfg, only):
        key = f"{name}/seed{seed}"
        folder = out / name / f"seed{seed}"
        entry = results.setdefault(key, {"model": name, "seed": seed, "eval": {}})
        if "train_minutes" not in entry:
            log(f"== train {key}")
            entry["train_minutes"] = round(train_one(cfg, name, seed, folder, log), 2)
            save(out, results)
        evaluate_entry(cfg, entry, key, folder, out, results, log)
    for name in cfg.get("reference_models", []):
        key = f"{name}/shipped"
        entry = results.setdefault(key, {"model": name, "seed": None, "shipped": True, "eval": {}})
        evaluate_entry(cfg, entry, key, package_weights_dir(), out, results, log)


def evaluate_entry(cfg: dict, entry: dict, key: str, folder: Path, out: Path, results: dict, log) -> None:
    for test, scan in cfg["tests"].items():
        for mode in cfg["eval_modes"]:
            if f"{test}|{mode}" not in entry["eval"]:
                entry["eval"][f"{test}|{mode}"] = evaluate_one(entry["model"], folder, scan, mode)
                log(f"{key} {test} {mode}: {entry['eval'][f'{test}|{mode}']}")
                save(out, results)


def save(out: Path, results: dict) -> None:
    from polarstem.fileio import write_json

    write_json(out / "results.json", results, indent=1)


def summary(cfg: dict, results: dict) -> list[dict]:
    """One row per model: family, regime, seeds and, per (test, mode), the mean and spread over seeds."""
    from polarstem.models.registry import MODEL_DEFS

    rows = []
    names = [(n, False) for n in cfg["models"]] + [(n, True) for n in cfg.get("reference_models", [])]
    for name, shipped in names:
        entries = [e for e in results.values() if e["model"] == name and bool(e.get("shipped")) == shipped]
        row = {"model": f"{name} (shipped, for reference)" if shipped else name, "family": MODEL_DEFS[name]["family"],
               "regime": MODEL_DEFS[name]["regime"], "seeds": "-" if shipped else len(entries), "cells": {}}
        for test in cfg["tests"]:
            for mode in cfg["eval_modes"]:
                vals = [e["eval"][f"{test}|{mode}"][METRIC] for e in entries if f"{test}|{mode}" in e["eval"]]
                vals = [v for v in vals if isinstance(v, (int, float))]
                row["cells"][f"{test}|{mode}"] = (float(np.mean(vals)), float(np.std(vals)), len(vals)) if vals else None
        rows.append(row)
    return rows


def markdown(cfg: dict, rows: list[dict]) -> str:
    cols = [(t, m) for t in cfg["tests"] for m in cfg["eval_modes"]]
    head = "| model | family | regime | seeds | " + " | ".join(f"{t}, {'default' if m == 'auto' else m}" for t, m in cols) + " |"
    lines = [head, "|" + " --- |" * (4 + len(cols))]
    missing = [r["model"] for r in rows if r["seeds"] == 0]
    rows = [r for r in rows if r["seeds"] != 0]
    for r in rows:
        cells = []
        for t, m in cols:
            c = r["cells"].get(f"{t}|{m}")
            cells.append("-" if c is None else (f"{c[0]:.3f} ± {c[1]:.3f}" if c[2] > 1 else f"{c[0]:.3f}"))
        lines.append(f"| {r['model']} | {r['family']} | {r['regime']} | {r['seeds']} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", f"Not run here (configured in the same file): {', '.join(missing)}."]
    return "\n".join(lines)


def docs_rows(cfg: dict) -> dict[str, dict]:
    """The rows of the table docs/benchmark.md shows now, as ``summary`` gives them, by model name."""
    text = DOCS.read_text() if DOCS.exists() else ""
    if MARKERS[0] not in text:
        return {}
    cols = [f"{t}|{m}" for t in cfg["tests"] for m in cfg["eval_modes"]]
    rows = {}
    for line in text.split(MARKERS[0], 1)[1].split(MARKERS[1], 1)[0].splitlines():
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(parts) != 4 + len(cols) or not parts[3].isdigit():
            continue
        n = int(parts[3])
        cells = {}
        for key, c in zip(cols, parts[4:]):
            v = [float(x) for x in c.split("±")] if c != "-" else None
            cells[key] = None if v is None else (v[0], v[1] if len(v) > 1 else 0.0, n)
        rows[parts[0]] = {"model": parts[0], "family": parts[1], "regime": parts[2], "seeds": n, "cells": cells}
    return rows


def with_docs_rows(cfg: dict, rows: list[dict]) -> list[dict]:
    """``rows`` with each model that has no run here taken from the table in the docs, if it is there."""
    shown = docs_rows(cfg)
    return [shown.get(r["model"], r) if r["seeds"] == 0 else r for r in rows]


def figure(cfg: dict, rows: list[dict], path: Path) -> None:
    """Accuracy outside defects per model, one panel per (test, mode), error bars over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(t, m) for t in cfg["tests"] for m in cfg["eval_modes"]]
    rows = [r for r in rows if r["seeds"] != 0]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 4.2), sharey=True)
    for ax, (t, m) in zip(np.atleast_1d(axes), cols):
        vals = [r["cells"].get(f"{t}|{m}") or (np.nan, 0.0, 0) for r in rows]
        ax.barh(range(len(rows)), [v[0] for v in vals], xerr=[v[1] for v in vals], color="#4477aa")
        ax.set_yticks(range(len(rows)), [r["model"] for r in rows])
        ax.set_xlim(0, 1)
        ax.axvline(0.125, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{t}\n{'default (cell vote)' if m == 'auto' else 'per pattern'}", fontsize=8)
        ax.set_xlabel("accuracy outside defects")
    ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_docs(table: str) -> None:
    text = DOCS.read_text()
    begin, end = MARKERS
    if begin not in text or end not in text:
        raise SystemExit(f"{DOCS}: no '{begin}' ... '{end}' section to write into")
    head, rest = text.split(begin, 1)
    DOCS.write_text(head + begin + "\n" + table + "\n\n![accuracy over seeds](images/seeds.png)\n" + end
                    + rest.split(end, 1)[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("-o", "--out", default=".cache/seeds")
    ap.add_argument("--docs", action="store_true", help="write the table and figure into docs/benchmark.md")
    ap.add_argument("--report-only", action="store_true", help="no training or evaluation: tabulate results.json")
    ap.add_argument("--models", default=None, help="comma-separated subset of the config's models to run")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    log_file = open(out / "seeds.log", "a")

    def log(msg):
        print(msg, file=log_file, flush=True)
        print(msg, file=sys.stderr, flush=True)

    if not args.report_only:
        run_all(cfg, out, results, log, args.models.split(",") if args.models else None)
    rows = summary(cfg, results)
    if args.docs:
        rows = with_docs_rows(cfg, rows)
    table = markdown(cfg, rows)
    print(table)
    if args.docs:
        figure(cfg, rows, FIGURE)
        write_docs(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
