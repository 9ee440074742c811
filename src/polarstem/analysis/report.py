"""The benchmark report: ``report.md`` with tables and matplotlib PNGs, and the raw numbers as CSV/JSON.

Everything here formats what :mod:`.benchmark` measured; nothing is computed twice.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..classes import CLASS_NAMES, N_CLASSES, direction_colors
from ..fileio import atomic_path, finite_json, write_json, write_text
from .trust import acquisition_table, out_of_scope_table


def _fmt(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not np.isfinite(v):
            return "–"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (";".join(_fmt(x, 4) for x in r[k]) if isinstance(r.get(k), list) else r.get(k)) for k in fields})


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def within_45(confusion) -> float | None:
    """Share of predictions within one class (±45°) of the truth, from evaluate's confusion matrix."""
    c = np.asarray(confusion, float)
    if c.sum() == 0:
        return None
    k = np.arange(N_CLASSES)
    near = c[k, k].sum() + c[k, (k + 1) % N_CLASSES].sum() + c[k, (k - 1) % N_CLASSES].sum()
    return float(near / c.sum())


def _folders(data) -> str:
    """A card's training data (a folder, a comma-joined string or a list) as one short string."""
    if isinstance(data, (list, tuple)):
        return " + ".join(str(d) for d in data)
    return " + ".join(d.strip() for d in str(data).split(","))


def _cond_label(r: dict) -> str:
    return "ideal" if r["condition"] == "ideal" else f"{r['condition']}={r['strength']:g}"


def _model_modes(results) -> list[tuple[str, str]]:
    seen = []
    for r in results["accuracy"]:
        key = (r["model"], r["mode"])
        if key not in seen:
            seen.append(key)
    return seen


def _acc(results, model, mode, set_name, cond="ideal", strength=0.0):
    for r in results["accuracy"]:
        if (r["model"], r["mode"], r["set"], r["condition"]) == (model, mode, set_name, cond) and \
                (cond == "ideal" or abs(r["strength"] - strength) < 1e-12):
            return r
    return None


# --------------------------------------------------------------------------------------------------
# figures


def fig_sets(results, path) -> Path | None:
    mm = _model_modes(results)
    sets = [s for s in results.get("thickness_sets", {}) if any(r["set"] == s for r in results["accuracy"])]
    if not mm or not sets:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(mm) + 2), 3.6), dpi=110)
    w = 0.8 / len(sets)
    for j, s in enumerate(sets):
        vals = [(_acc(results, m, md, s) or {}).get("accuracy") for m, md in mm]
        ax.bar(np.arange(len(mm)) + (j - (len(sets) - 1) / 2) * w, [np.nan if v is None else v for v in vals], w,
               label=f"{s} {results['thickness_sets'][s][0]:g}–{results['thickness_sets'][s][1]:g} nm")
    ax.axhline(1 / N_CLASSES, color="gray", lw=0.8, ls=":", label="chance")
    ax.set_xticks(np.arange(len(mm)), [f"{m}\n{md}" for m, md in mm], fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy (ideal patterns)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_corruptions(results, path) -> Path | None:
    kinds = list(results["config"].get("corruptions") or {})
    mm = _model_modes(results)
    cset = results.get("primary_set")
    if not kinds or not mm or not cset:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.0 * len(kinds), 3.2), dpi=110, sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        levels = list(results["config"]["corruptions"][kind])
        for m, md in mm:
            vals = [(_acc(results, m, md, cset, kind, s) or {}).get("accuracy") for s in levels]
            if all(v is None for v in vals):
                continue
            ax.plot(range(len(levels)), [np.nan if v is None else v for v in vals], "o-" if md == "pattern" else "s--",
                    ms=3, lw=1, label=f"{m} {md}")
        ax.set_xticks(range(len(levels)), [f"{s:g}" for s in levels], fontsize=7)
        ax.set_title(kind, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.axhline(1 / N_CLASSES, color="gray", lw=0.8, ls=":")
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_confusion(row, path) -> Path:
    plt = _plt()
    c = np.asarray(row["confusion"], float)
    norm = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.4, 3.9), dpi=110)
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(N_CLASSES):
        for j in range(N_CLASSES):
            if c[i, j]:
                ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(N_CLASSES), CLASS_NAMES, rotation=60, fontsize=6)
    ax.set_yticks(range(N_CLASSES), CLASS_NAMES, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{row['model']} {row['mode']}, {row['set']}: acc {_fmt(row['accuracy'])}", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_positions(results, path) -> Path | None:
    pos = results.get("positions") or []
    if not pos:
        return None
    plt = _plt()
    keys = ["accuracy", "informative", "confidence"]
    fig, axes = plt.subplots(len(keys), len(pos), figsize=(2.3 * len(pos) + 0.6, 2.2 * len(keys)), dpi=110, squeeze=False)
    for j, p in enumerate(pos):
        for i, k in enumerate(keys):
            ax = axes[i][j]
            a = np.asarray(p[k], float)
            im = ax.imshow(a, origin="upper", extent=(0, 1, 1, 0), vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(p["model"], fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{k}\ny (cell)", fontsize=7)
            if i == len(keys) - 1:
                ax.set_xlabel("x (cell)", fontsize=7)
    fig.colorbar(im, ax=axes, fraction=0.02)
    fig.suptitle("pattern mode, by probe position in the unit cell (A column at 0,0)", fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def fig_thickness(results, path) -> Path | None:
    th = results.get("thickness") or []
    if not th:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for t in th:
        b = t["bins"]
        ax.plot([(x["lo"] + x["hi"]) / 2 for x in b], [x["accuracy"] for x in b], "o-" if t["mode"] == "pattern" else "s--",
                ms=3, lw=1, label=f"{t['model']} {t['mode']}")
    tr = results.get("training_thickness_nm")
    if tr:
        ax.axvspan(tr[0], tr[1], color="0.9", zorder=0, label="training range")
    ax.axhline(1 / N_CLASSES, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("thickness (nm)")
    ax.set_ylabel("accuracy (ideal)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_scan(maps: dict, path) -> Path:
    plt = _plt()
    colors = direction_colors()

    def rgb(cls):
        img = np.ones(cls.shape + (3,))
        for k in range(N_CLASSES):
            img[cls == k] = colors[k][:3]
        return img

    fig, axes = plt.subplots(1, 4, figsize=(11, 3.0), dpi=110)
    axes[0].imshow(rgb(maps["labels"]))
    axes[0].set_title("truth (white: not polar)", fontsize=8)
    axes[1].imshow(rgb(maps["classes"]))
    axes[1].set_title(f"{maps['model']} {maps.get('mode', '')} mode", fontsize=8)
    im = axes[2].imshow(maps["confidence"], vmin=0, vmax=1, cmap="viridis")
    axes[2].set_title("confidence", fontsize=8)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    if maps.get("anomaly") is not None:
        im = axes[3].imshow(maps["anomaly"], cmap="magma")
        fig.colorbar(im, ax=axes[3], fraction=0.046)
    axes[3].contour(maps["defects"].astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    axes[3].set_title("anomaly (cyan: defects)", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=colors[k][:3], label=f"{k} {CLASS_NAMES[k]}") for k in range(N_CLASSES)],
               loc="lower center", ncol=N_CLASSES, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# the report


def best_model(results: dict, mode: str | None = None) -> tuple[str, str] | None:
    """(model, mode) with the highest ideal in-range accuracy (or the first benchmarked model)."""
    primary = results.get("primary_set")
    rows = [r for r in results["accuracy"] if r["condition"] == "ideal" and r["set"] in (primary, "in_range", "all")
            and (mode is None or r["mode"] == mode) and r.get("accuracy") is not None]
    if rows:
        r = max(rows, key=lambda r: r["accuracy"])
        return r["model"], r["mode"]
    for e in results["models"]:
        if mode is None or mode in e["modes"]:
            return e["name"], mode or e["modes"][0]
    return None


def write_report(results: dict, figures: dict, out: Path) -> Path:
    """Figures, ``results.json`` and the CSVs, then ``report.md`` with a section per measurement."""
    out = Path(out)
    cset = results.get("primary_set") or results["config"].get("corruption_set", "in_range")
    figs = _summary_figures(results, out)
    confusions = _confusion_figures(results, out, cset)
    scan_figs = [fig_scan(maps, out / f"scan_{maps['scan']}_{maps['model']}_{maps.get('mode', '')}.png").name
                 for maps in figures.get("scan_maps", [])]
    _write_numbers(results, out)
    md = _md_header(results) + _md_models(results)
    if _model_modes(results):
        md += _md_accuracy(results, cset, figs, confusions)
    md += _md_thickness(results, figs) + _md_positions(results, figs) + _md_scans(results, scan_figs)
    md += _md_domain_gap(results) + _md_trust(results)
    md += ["## Raw numbers", "", "`results.json` (everything), `accuracy.csv`, `speed.csv`, `thickness.csv`, `tilt.csv`, "
           "`scans.csv`, `domain_gap_*.csv`.", ""]
    return write_text(out / "report.md", "\n".join(md))


def _summary_figures(results: dict, out: Path) -> dict:
    """The figures over all models, by name -> file name; a failed figure becomes a note."""
    figs = {}
    for name, fn in (("sets", fig_sets), ("corruptions", fig_corruptions), ("positions", fig_positions),
                     ("thickness", fig_thickness)):
        try:
            p = fn(results, out / f"{name}.png")
        except Exception as exc:  # noqa: BLE001 - a figure must never lose the numbers
            results["notes"].append(f"figure {name} failed: {type(exc).__name__}: {exc}")
            p = None
        if p:
            figs[name] = p.name
    return figs


def _confusion_figures(results: dict, out: Path, cset: str) -> list[str]:
    """The confusion matrix of the best model of each mode (file names)."""
    confusions = []
    for mode in ("pattern", "cell"):
        b = best_model(results, mode)
        if b and b[1] == mode:
            row = _acc(results, b[0], mode, cset) or _acc(results, b[0], mode, "all")
            if row:
                confusions.append(fig_confusion(row, out / f"confusion_{b[0]}_{mode}.png").name)
    return confusions


def _write_numbers(results: dict, out: Path) -> None:
    """``results.json`` and the CSV tables."""
    write_json(out / "results.json", finite_json(results), indent=1)
    acc_fields = ["model", "mode", "set", "condition", "strength", "accuracy", "n", "unclassified",
                  "informative_fraction", "accuracy_informative", "patterns_per_s", "per_class"]
    _write_csv(out / "accuracy.csv", results["accuracy"], acc_fields)
    _write_csv(out / "speed.csv", results["speed"], ["model", "mode", "end_to_end_per_s", "forward_per_s",
                                                      "preprocess_per_s", "parameters", "input", "batch_size"])
    _write_csv(out / "scans.csv", results["scans"], ["scan", "model", "mode_requested", "mode", "accuracy",
                                                      "accuracy_outside_defects", "accuracy_outside_defects_and_wall_planes",
                                                      "wall_plane_probes", "accuracy_at_defects", "anomaly_auc",
                                                      "informative_fraction", "n", "patterns_per_s"])
    th_rows = [{"model": t["model"], "mode": t["mode"], **b} for t in results["thickness"] for b in t["bins"]]
    _write_csv(out / "thickness.csv", th_rows, ["model", "mode", "lo", "hi", "n", "accuracy"])
    tilt_rows = [{"model": t["model"], "mode": t["mode"], **b} for t in results["tilt"] for b in t["bins"]]
    _write_csv(out / "tilt.csv", tilt_rows, ["model", "mode", "lo", "hi", "n", "accuracy"])


def _md_header(results: dict) -> list[str]:
    md = ["# polarstem benchmark", "",
          f"Generated {results['started']} in {results.get('seconds', 0):.0f} s on {results['machine']['cpus']} CPUs "
          f"({results['machine']['threads']} torch thread(s), device {results['machine']['device']}).",
          f"Weights: `{results.get('weights')}`; test data: `{', '.join(results.get('test_folders') or [str(results['config'].get('test'))])}`; "
          f"training data (thickness range, domain-gap reference): `{results.get('train')}`.", ""]
    if results["notes"]:
        md += ["**Notes**", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return md


def _md_models(results: dict) -> list[str]:
    if not results.get("models"):
        return []
    td = results.get("training_data") or {}
    return ["## Models", "", _table(["model", "family", "modes", "trained on", "sha256"],
                                    [[e["name"], e["family"], ", ".join(e["modes"]),
                                      ", ".join(sorted({_folders(td.get(f"{e['name']}/{m}")) for m in e["modes"]})),
                                      " ".join(e["sha256"][m][:10] for m in e["modes"])] for e in results["models"]]), ""]


def _thickness_sets(results: dict) -> list[str]:
    """The thickness sets that have accuracy rows."""
    return [s for s in results.get("thickness_sets", {}) if any(r["set"] == s for r in results["accuracy"])]


def _md_accuracy(results: dict, cset: str, figs: dict, confusions: list[str]) -> list[str]:
    """Accuracy on the held-out simulations: by thickness set, per class, corrupted, finite source, mistilt."""
    sets = _thickness_sets(results)
    md = ["## Accuracy on held-out simulations", "",
          "Ideal patterns (no noise) of the test set (`test` in the config). Sets by thickness (nm, [lo, hi)): "
          + ", ".join(f"`{s}` {results['thickness_sets'][s][0]:g}–{results['thickness_sets'][s][1]:g}" for s in sets)
          + f". `combined=1` is the `{cset}` set with blur 1 px, 5 % background, ±3 px descan and 1e4 electrons "
          "per pattern. Pattern mode: single patterns; cell mode: one cell's probe grid (16 positions), classified "
          "as `classify_scan` does (default `vote`: the pattern weights on every pattern, the mean "
          "log-probability decides). "
          "`±45°`: the share predicted within one class of the truth (from the confusion matrix). "
          f"Symmetry images averaged per pattern (`tta`): {results.get('config', {}).get('tta', 1) or 'auto'} "
          "(1 = none: the tables compare the models themselves; `polarstem evaluate --tta N` reproduces a row).", ""]
    md += [_accuracy_table(results, sets, cset), ""]
    if "sets" in figs:
        md += [f"![accuracy by thickness set]({figs['sets']})", ""]
    md += ["### Per-class accuracy (`" + cset + "`, ideal)", ""]
    rows = []
    for m, md_ in _model_modes(results):
        a = _acc(results, m, md_, cset)
        if a:
            rows.append([m, md_] + list(a["per_class"]))
    md += [_table(["model", "mode"] + [f"{k} {CLASS_NAMES[k]}" for k in range(N_CLASSES)], rows), ""]
    md += [f"![confusion]({c})" for c in confusions] + [""]
    return md + _md_corruptions(results, cset, figs) + _md_source(results) + _md_tilt(results)


def _accuracy_table(results: dict, sets: list[str], cset: str) -> str:
    """One row per model and mode: accuracy per thickness set, ±45°, combined corruption, speed."""
    sp = {(s["model"], s["mode"]): s for s in results["speed"]}
    header = (["model", "mode"] + [f"{s} (n)" for s in sets]
              + [f"{cset} ±45°", "combined=1", "informative", "e2e pat/s", "fwd pat/s"])
    rows = []
    for m, md_ in _model_modes(results):
        r = [m, md_]
        for s in sets:
            a = _acc(results, m, md_, s)
            r.append(f"{_fmt(a['accuracy'])} ({a['n']})" if a else "–")
        ideal = _acc(results, m, md_, cset)
        r.append(within_45(ideal["confusion"]) if ideal else None)
        comb = _acc(results, m, md_, cset, "combined", 1.0)
        r.append(comb["accuracy"] if comb else None)
        r.append(ideal.get("informative_fraction") if ideal else None)
        s_ = sp.get((m, md_), {})
        r += [s_.get("end_to_end_per_s"), s_.get("forward_per_s")]
        rows.append(r)
    return _table(header, rows)


def _md_corruptions(results: dict, cset: str, figs: dict) -> list[str]:
    kinds = results["config"].get("corruptions") or {}
    if not kinds:
        return []
    cols = [(k, float(s)) for k, lv in kinds.items() for s in lv]
    md = ["## Experiment-like corruptions", "",
          f"On the `{cset}` set, each alone and combined (dose in electrons per pattern; blur and descan in "
          "simulated detector pixels of "
          f"{_fmt(results.get('detector_mrad_per_px'), 2)} mrad; background as a fraction of the intensity). "
          "In cell mode every pattern of the cell is corrupted on its own (with `cell_method: mean`, the cell "
          "average gets the summed dose of its patterns).", ""]
    rows = []
    for m, md_ in _model_modes(results):
        ideal = _acc(results, m, md_, cset)
        rows.append([m, md_, ideal["accuracy"] if ideal else None] +
                    [(_acc(results, m, md_, cset, k, s) or {}).get("accuracy") for k, s in cols])
    md += [_table(["model", "mode", "ideal"] + [f"{k} {s:g}" for k, s in cols], rows), ""]
    if "corruptions" in figs:
        md += [f"![corruptions]({figs['corruptions']})", ""]
    return md


def _md_source(results: dict) -> list[str]:
    sset = results.get("source_set")
    sigmas = [float(v) for v in (results["config"].get("source_size") or {}).get("sigma_a", [])]
    if not (sset and sigmas):
        return []
    md = ["## Finite source (partial spatial coherence)", "",
          f"On `{sset}` (every thickness; a set with a 6x6 probe grid per cell): each pattern as a source of "
          "the given standard deviation (Å) records it, the Gaussian average over the probe positions "
          "around the nominal one (`polarstem.simulate.coherence`; docs/simulation.md). No other corruption. "
          "In cell mode every pattern of the cell gets it.", ""]
    rows = []
    for m, md_ in _model_modes(results):
        ideal = _acc(results, m, md_, sset)
        if ideal:
            rows.append([m, md_, ideal["accuracy"]] +
                        [(_acc(results, m, md_, sset, "source", s) or {}).get("accuracy") for s in sigmas])
    return md + [_table(["model", "mode", "point source"] + [f"σ {s:g} Å" for s in sigmas], rows), ""]


def _md_tilt(results: dict) -> list[str]:
    if not results["tilt"]:
        return []
    md = ["### Mistilt (from the held-out simulation's parameters)", "",
          "Accuracy of ideal inputs (all thickness sets of the first test folder) by the structure's mistilt (mrad).", ""]
    edges = [(b["lo"], b["hi"]) for b in results["tilt"][0]["bins"]]
    rows = []
    for t in results["tilt"]:
        d = {(b["lo"], b["hi"]): b for b in t["bins"]}
        rows.append([t["model"], t["mode"]] + [f"{_fmt(d[e]['accuracy'])} ({d[e]['n']})" if e in d else "–" for e in edges])
    return md + [_table(["model", "mode"] + [f"{lo:g}–{hi:g}" for lo, hi in edges], rows), ""]


def _md_thickness(results: dict, figs: dict) -> list[str]:
    if not results["thickness"]:
        return []
    md = ["## Error against thickness", "",
          f"Ideal inputs of all thickness sets of the first test folder (`{(results.get('test_folders') or ['?'])[0]}`) "
          "pooled, binned by thickness (nm).", ""]
    all_edges = sorted({(b["lo"], b["hi"]) for t in results["thickness"] for b in t["bins"]})
    rows = []
    for t in results["thickness"]:
        d = {(b["lo"], b["hi"]): b for b in t["bins"]}
        rows.append([t["model"], t["mode"]] + [d[e]["accuracy"] if e in d else None for e in all_edges])
    md += [_table(["model", "mode"] + [f"{lo:g}–{hi:g}" for lo, hi in all_edges], rows), ""]
    if "thickness" in figs:
        md += [f"![accuracy vs thickness]({figs['thickness']})", ""]
    return md


def _md_positions(results: dict, figs: dict) -> list[str]:
    if not results["positions"]:
        return []
    md = ["## Error against probe position", "",
          f"Pattern mode, ideal inputs of the first test folder pooled over its thickness sets, binned {results['positions'][0]['bins']}×"
          f"{results['positions'][0]['bins']} over the unit cell (x, y fraction from the A column). "
          "`informative` is the share the preprocessing filter passes; `AUC(wrong | low conf.)` is how well a low "
          "confidence singles out the wrong predictions (0.5 = not at all).", ""]
    rows = []
    for p in results["positions"]:
        a = np.asarray(p["accuracy"], float)
        rows.append([p["model"], float(np.nanmin(a)), float(np.nanmax(a)), p["informative_all"],
                     p["accuracy_informative_all"], p["error_auc_low_confidence"]])
    md += [_table(["model", "worst bin acc", "best bin acc", "informative", "acc (informative only)",
                   "AUC(wrong | low conf.)"], rows), ""]
    if "positions" in figs:
        md += [f"![accuracy by probe position]({figs['positions']})", ""]
    return md


def _md_scans(results: dict, scan_figs: list[str]) -> list[str]:
    """Defect detection on the simulated scans, and accuracy by place in the unit cell."""
    if not (results["scans"] or results["scan_phases"]):
        return []
    md = ["## Defect detection on simulated scans", "",
          "`polarstem evaluate SCAN --defects defects.npy --mode M` per model: accuracy over polar positions, away "
          "from the defects, and the anomaly score's ROC AUC for the defect mask. `auto` is the default mode; "
          "`tta` is the number of symmetry images averaged per pattern (the default: 8 for scans this small). "
          "'… and wall planes' also leaves out the probes within 0.1 a of a domain-wall plane, whose label "
          "(the cell the probe's centre lies in) is close to a coin toss (`polarstem.evaluate.wall_plane_probes`).",
          ""]
    rows = [[Path(r["scan"]).name, r["model"], f"{r['mode_requested']}→{r['mode']}", r.get("tta"), r["accuracy"],
             within_45(r["confusion"]) if r.get("confusion") else None,
             r["accuracy_outside_defects"], r.get("accuracy_outside_defects_and_wall_planes"), r["anomaly_auc"],
             r["informative_fraction"]] for r in results["scans"]]
    md += [_table(["scan", "model", "mode", "tta", "accuracy", "±45°", "acc. away from defects",
                   "… and wall planes", "anomaly AUC", "informative"], rows), ""]
    if results["scan_phases"]:
        md += ["By place in the unit cell (phase bin from the scan's lattice), away from defects: "
               "periodic errors show as bins of low accuracy; the anomaly score should stay low there "
               "(it compares each position with the others at the same place in the cell).", ""]
        for ph in results["scan_phases"]:
            md += [f"**{ph['model']}** ({ph.get('mode_requested')}→{ph.get('mode')}) on `{Path(ph['scan']).name}` "
                   f"(lattice period {ph['lattice_period']} px; "
                   f"median anomaly away from defects {_fmt(ph['anomaly_median_away'])}, at defects "
                   f"{_fmt(ph['anomaly_median_defects'])})", ""]
            md += [_table(["bin", "n", "accuracy", "informative", "confidence", "anomaly"],
                          [[b["bin"], b["n"], b["accuracy"], b["informative"], b["confidence"], b["anomaly"]]
                           for b in ph["phase_bins"]]), ""]
    return md + [f"![scan]({f})" for f in scan_figs] + [""]


def _md_domain_gap(results: dict) -> list[str]:
    if not results["domain_gap"]:
        return []
    md = ["## Domain gap", "",
          "PCA of the model embedding of simulated training patterns (small dots, true class) and of the dataset "
          "(edged dots, predicted class). `outside` = share of the dataset farther from the training "
          "embeddings than 95 % of training patterns are from each other (≈ 0.05 when the data look simulated).", ""]
    md += [_table(["dataset", "model", "mode", "n train", "n data", "outside"],
                  [[Path(d["dataset"]).name, d["model"], d["mode"], d["n_train"], d["n_user"], d["outside_fraction"]]
                   for d in results["domain_gap"]]), ""]
    return md + [f"![domain gap]({d['figure']})" for d in results["domain_gap"]] + [""]


def _md_trust(results: dict) -> list[str]:
    """Labeled scans across acquisitions, and data out of scope: what the default classification does."""
    md = []
    if results.get("acquisitions"):
        md += ["## Across acquisitions", "",
               "Default classification (`polarstem classify`) of experiment-like labeled scans, one per beam energy "
               "and convergence (configs/simulate/acquisition/; 64 px detector, 2e4 electrons, descan ramp, "
               "ellipticity, hot and dead pixels). An abstention counts as not correct.", "",
               acquisition_table(results["acquisitions"]), ""]
    if results.get("out_of_scope"):
        md += ["## Out of scope", "", "Share of positions the default classification abstains on (class -2) when "
               "the data are not polar KNN at [001].", "", out_of_scope_table(results["out_of_scope"]), ""]
    return md
