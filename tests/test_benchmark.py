"""``polarstem benchmark``: the report regenerates from one command and its numbers match ``polarstem evaluate``.

Real abTEM data kept tiny (a training-layout set and a small scan with two domains and two defects);
models are untrained networks and a PCA + kNN in a temporary weights folder (the shipped weights are
exercised by ``test_shipped_weights_quick``, skipped when none exist yet).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from polarstem.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "benchmark" / "quick.yaml"

TEST_SET = {  # two thicknesses, all classes, 16 probe positions per row
    "kind": "training", "seed": 9,
    "optics": {"energy_kev": 200, "convergence_mrad": 20, "defocus_nm": 0, "mistilt_mrad": [0, 1.5]},
    "numerics": {"gpts_per_cell": 24, "slices_per_cell": 2}, "detector": {"max_mrad": 40, "bin": 1},
    "structure": {"classes": [0, 1, 2, 3, 4, 5, 6, 7], "cells": 3, "a_angstrom": 3.95, "nb_shift_angstrom": 0.15},
    "phonons": {"configs": 0},
    "training": {"structures": 8, "probes": {"grid": 4, "offset": "random"}, "thickness_nm": [2.0, 6.0], "thicknesses": 2},
}
SCAN = {
    "kind": "scan", "seed": 3,
    "numerics": {"gpts_per_cell": 20}, "detector": {"max_mrad": 30, "bin": 1},
    "structure": {"cells": 4, "a_angstrom": 3.97, "nb_shift_angstrom": 0.15},
    "phonons": {"configs": 0},
    "scan": {"cells": [4, 4], "steps_per_cell": 3, "offset_frac": [0.0, 0.0], "thickness_nm": 2.0, "rows_per_task": 6,
             "domains": [{"class": 1, "rows": [0, 4], "cols": [0, 2]}, {"class": 5, "rows": [0, 4], "cols": [2, 4]}],
             "defects": [{"kind": "nonpolar", "rows": [0, 1], "cols": [0, 1]},
                         {"kind": "o_vacancy", "rows": [3, 4], "cols": [3, 4]}]},
}


def _simulate(cfg: dict, folder: Path) -> Path:
    cfg_path = folder.with_suffix(".yaml")
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["simulate", str(cfg_path), "-o", str(folder), "--quiet"]) == 0
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    return {"test": _simulate(TEST_SET, root / "test"), "scan": _simulate(SCAN, root / "scan"), "root": root}


def make_weights(folder: Path) -> Path:
    """Untrained CNN (pattern + cell) and a PCA + kNN (pattern) with cards and an index."""
    from safetensors.torch import save_file

    from polarstem.models.nets import create_model
    from polarstem.models.pca_knn import make_pipeline, save_npz
    from polarstem.models.registry import clear_cache, write_index

    folder.mkdir(parents=True, exist_ok=True)

    def card(name, mode, fname, arch):
        return {"name": name, "mode": mode, "weights_file": fname, "input_grid": {"size": 32, "mrad_per_px": 2.0},
                "temperature": 1.0, "architecture": {"arch": arch, "kwargs": {}, "prototype": None}}

    import torch

    torch.manual_seed(0)
    for mode in ("pattern", "cell"):
        net = create_model("cnn")
        f = f"cnn-{mode}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / f))
        (folder / f"cnn-{mode}.json").write_text(json.dumps(card("cnn", mode, f, "cnn")))
    rng = np.random.default_rng(0)
    pipe = make_pipeline(n_components=5, n_neighbors=3).fit(rng.random((80, 32 * 32)), np.arange(80) % 8)
    save_npz(pipe, folder / "pca-knn-pattern.npz")
    (folder / "pca-knn-pattern.json").write_text(json.dumps(card("pca-knn", "pattern", "pca-knn-pattern.npz", None)))
    write_index(folder)
    clear_cache()
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from polarstem.models.registry import clear_cache

    folder = make_weights(tmp_path_factory.mktemp("weights"))
    yield folder
    clear_cache()


def _run(data, weights, out, *extra) -> int:
    return main(["benchmark", str(QUICK), "-o", str(out), "--test", str(data["test"]), "--train", str(data["test"]),
                 "--scan", str(data["scan"]), "--domain-gap", str(data["scan"]), "--weights", str(weights),
                 "--keep-datasets", "--quiet", *extra])


@pytest.fixture(scope="module")
def report(data, weights):
    out = data["root"] / "report"
    assert _run(data, weights, out) == 0
    return out


def test_report_files(report):
    for name in ("report.md", "results.json", "accuracy.csv", "speed.csv", "scans.csv", "thickness.csv",
                 "sets.png", "corruptions.png", "positions.png", "thickness.png"):
        assert (report / name).exists(), name
    md = (report / "report.md").read_text()
    assert "## Accuracy on held-out simulations" in md and "## Defect detection" in md and "## Domain gap" in md
    res = json.loads((report / "results.json").read_text())
    names = {(r["model"], r["mode"]) for r in res["accuracy"]}
    assert names == {("cnn", "pattern"), ("cnn", "cell"), ("pca-knn", "pattern")}
    conds = {(r["condition"], r["strength"]) for r in res["accuracy"] if r["model"] == "cnn" and r["mode"] == "pattern"}
    assert ("ideal", 0.0) in conds and ("dose", 1e4) in conds and ("combined", 1.0) in conds
    for r in res["accuracy"]:
        assert r["n"] > 0 and 0.0 <= r["accuracy"] <= 1.0 and len(r["per_class"]) == 8
        assert np.asarray(r["confusion"]).sum() + r["unclassified"] == r["n"]
    assert {s["model"] for s in res["speed"]} == {"cnn", "pca-knn"}
    assert all(s["forward_per_s"] > 0 for s in res["speed"])
    pos = res["positions"][0]
    assert np.asarray(pos["accuracy"]).shape == (2, 2) and sum(map(sum, pos["n"])) > 0
    assert res["thickness"] and res["tilt"]
    assert res["domain_gap"] and (report / res["domain_gap"][0]["figure"]).exists()


def test_numbers_match_evaluate(report, weights, capsys, monkeypatch):
    """Pattern-mode rows are what ``polarstem evaluate FOLDER --mode pattern --tta N --json`` prints
    (N: the benchmark's ``tta``, 1 unless configured)."""
    res = json.loads((report / "results.json").read_text())
    monkeypatch.setenv("POLARSTEM_WEIGHTS", str(weights))
    from polarstem.models.registry import clear_cache

    clear_cache()
    checked = 0
    for r in res["accuracy"]:
        if r["mode"] != "pattern" or r["condition"] not in ("ideal", "combined"):
            continue
        cond = "ideal" if r["condition"] == "ideal" else f"{r['condition']}_{r['strength']:g}"
        folder = report / "datasets" / r["set"] / "pattern" / cond
        capsys.readouterr()
        assert main(["evaluate", str(folder), "--model", r["model"], "--mode", "pattern", "--json",
                     "--tta", str(res["config"]["tta"])]) == 0
        ev = json.loads(capsys.readouterr().out)
        assert ev["accuracy"] == r["accuracy"] and ev["confusion"] == r["confusion"] and ev["n"] == r["n"]
        checked += 1
    assert checked >= 4


def test_defect_scan_rows(report):
    res = json.loads((report / "results.json").read_text())
    rows = res["scans"]
    assert rows and all(r["anomaly_auc"] is None or 0 <= r["anomaly_auc"] <= 1 for r in rows)
    assert {r["mode_requested"] for r in rows} >= {"pattern"}
    assert any(r["accuracy_outside_defects"] is not None for r in rows)
    assert res["scan_phases"] and res["scan_phases"][0]["phase_bins"]


def test_deterministic(data, weights, report, tmp_path):
    """Same config and seed: the same numbers."""
    out = tmp_path / "again"
    assert _run(data, weights, out) == 0
    a = json.loads((report / "results.json").read_text())["accuracy"]
    b = json.loads((out / "results.json").read_text())["accuracy"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "patterns_per_s"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)


def test_user_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_patterns: 10\nbogus: 1\n")
    assert main(["benchmark", str(bad), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown keys bogus" in err and len(err.strip().splitlines()) == 1
    assert main(["benchmark", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "o")]) == 2
    bad.write_text("corruptions: {smear: [1]}\n")
    assert main(["benchmark", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "unknown corruption 'smear'" in capsys.readouterr().err


def test_missing_data_is_a_note_not_a_crash(weights, tmp_path):
    out = tmp_path / "r"
    assert main(["benchmark", str(QUICK), "-o", str(out), "--test", str(tmp_path / "none"), "--scan",
                 str(tmp_path / "none"), "--domain-gap", str(tmp_path / "none"), "--weights", str(weights), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert any("not found" in n for n in res["notes"]) and (out / "report.md").exists()


def test_embedding_map_and_napari_free_core(data, weights):
    from polarstem.analysis.domain_gap import embedding_map
    from polarstem.models import load_model

    model = load_model("cnn", "pattern", folder=weights)
    emap = embedding_map(model, data["scan"], data["test"], n_train=40, n_user=30, seed=1)
    assert emap.train_xy.shape == (40, 2) and emap.user_xy.shape == (30, 2)
    assert emap.user_positions.shape == (30, 2) and 0 <= emap.outside_fraction <= 1
    import subprocess
    import sys

    code = "import sys, polarstem.analysis, polarstem.commands.benchmark; print('napari' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_shipped_weights_quick(data, tmp_path):
    """The shipped models run through the quick benchmark (skipped until weights exist)."""
    from polarstem.models import list_models

    have = [e["name"] for e in list_models() if e["available"]]
    if not have:
        pytest.skip("no shipped weights yet")
    out = tmp_path / "shipped"
    assert main(["benchmark", str(QUICK), "-o", str(out), "--test", str(data["test"]), "--train", str(data["test"]),
                 "--scan", str(data["scan"]), "--models", have[0], "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["accuracy"] and all(r["model"] == have[0] for r in res["accuracy"])


@pytest.mark.gui
def test_domain_gap_napari_widget_and_layers(make_napari_viewer, qtbot, data, weights, monkeypatch):
    """The "Domain gap" dock widget computes the map in a worker and adds two Points layers by class."""
    from polarstem.models.registry import clear_cache

    monkeypatch.setenv("POLARSTEM_WEIGHTS", str(weights))
    clear_cache()
    viewer = make_napari_viewer()
    viewer.open(str(data["scan"]), plugin="napari-polarstem")
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Domain gap")
    assert widget.model.count() >= 2 and len(widget.layer.choices) == 1  # a magicgui picker of the open datasets
    widget.model.setCurrentText("cnn")
    widget.train.setText(str(data["test"]))
    widget.n_points.setValue(50)
    widget.start()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=120_000)
    assert widget.emap is not None, widget.status.text()
    from polarstem._napari._domain_gap import DATA_LAYER, TRAIN_LAYER

    train, points = viewer.layers[TRAIN_LAYER], viewer.layers[DATA_LAYER]
    assert train.data.shape == (50, 2) and points.data.shape == (50, 2)
    assert set(points.features.columns) >= {"class", "confidence", "row", "col"}
    from polarstem.classes import direction_colors

    k = int(points.features["class"][0])
    assert np.allclose(points.face_color[0][:3], direction_colors()[k][:3], atol=1e-3)
    widget.start()  # a second run replaces the layers in place
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=120_000)
    assert [ly.name for ly in viewer.layers].count(DATA_LAYER) == 1


def test_corruptions_and_cell_dose():
    from polarstem.analysis.testsets import apply_corruption

    yy, xx = np.indices((33, 33)) - 16
    frames = np.stack([np.where(np.hypot(yy, xx) < 6, 1.0, 0.01)] * 4).astype(np.float32)
    single = apply_corruption(frames, "dose", 1e4, 0)
    cell = apply_corruption(frames, "dose", 1e4, 0, patterns_per_input=16)
    assert abs(single.sum(axis=(1, 2)).mean() / 1e4 - 1) < 0.05 and abs(cell.sum(axis=(1, 2)).mean() / 16e4 - 1) < 0.05
    assert np.array_equal(apply_corruption(frames, "combined", 1.0, 3), apply_corruption(frames, "combined", 1.0, 3))
    assert apply_corruption(frames, "ideal", 0.0, 0) is frames
    shifted = apply_corruption(frames, "descan_px", 3.0, 1)
    assert not np.allclose(shifted, frames) and np.allclose(shifted.sum(), frames.sum(), rtol=0.05)


def test_position_maps_bins():
    from types import SimpleNamespace

    from polarstem.analysis.benchmark import position_maps

    rng = np.random.default_rng(0)
    frac = rng.random((400, 2))
    labels = np.full(400, 3)
    pred = np.where(frac[:, 0] < 0.5, 3, 4)  # wrong in the right half of the cell
    res = SimpleNamespace(classes=pred, informative=frac[:, 1] < 0.5, confidence=np.where(pred == 3, 0.9, 0.4),
                          embedding_distance=np.full(400, np.nan))
    pm = position_maps(frac, labels, res, 2)
    acc = np.asarray(pm["accuracy"])
    assert np.allclose(acc[:, 0], 1) and np.allclose(acc[:, 1], 0)
    assert np.allclose(np.asarray(pm["informative"])[0], 1) and np.allclose(np.asarray(pm["informative"])[1], 0)
    assert pm["error_auc_low_confidence"] == 1.0


def test_phase_bins_are_even():
    from polarstem.analysis.benchmark import _phase_bins
    from polarstem.lattice import Lattice

    bins = _phase_bins(Lattice(period=(3.0, 3.0)), (30, 30))
    assert np.bincount(bins.ravel()).tolist() == [100] * 9
    assert bins[0, :7].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_trust_tables_use_the_model_classify_picks(data, weights, tmp_path):
    """The acquisition and out-of-scope tables: the labeled scan gets accuracy, abstention and AUC from the
    model `polarstem classify` would pick for it ("default"), and a scan of shot noise abstains everywhere."""
    cfg = yaml.safe_load(QUICK.read_text())
    cfg.update(test=None, corruptions={}, scans=[], domain_gap={"datasets": []}, models=["cnn"], modes=["pattern"],
               acquisition_scans=[str(data["scan"])], out_of_scope=["noise"], trust_models=["default", "cnn"])
    cfg_path = tmp_path / "trust.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report"
    assert main(["benchmark", str(cfg_path), "-o", str(out), "--weights", str(weights), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    acq = res["acquisitions"]
    assert len(acq) == 2 and acq[0]["beam_energy_kev"] == 200.0 and all(r["model"] in ("cnn", "pca-knn") for r in acq)
    assert all(0.0 <= r["accuracy_outside_defects"] <= 1.0 for r in acq)
    noise = [r for r in res["out_of_scope"] if r["dataset"] == "noise"]
    assert len(noise) == 2 and all(r["abstention"] == 1.0 for r in noise)
    md = (out / "report.md").read_text()
    assert "noise" in md and data["scan"].name in md


def test_finite_source_set(data, weights, tmp_path):
    """``source_size``: every model on a 6x6-probe-grid set with a point source and finite sources;
    the inputs are the rows' patterns averaged over nearby probe positions (a cell's mean is kept)."""
    from polarstem.io import load
    from polarstem.simulate.coherence import source_blur_grid

    grid_set = dict(TEST_SET, seed=11, training=dict(TEST_SET["training"], structures=2, probes={"grid": 6, "offset": "random"},
                                                     thicknesses=1))
    folder = _simulate(grid_set, tmp_path / "grid6")
    cfg = yaml.safe_load(QUICK.read_text())
    cfg.update(source_size={"test": str(folder), "sigma_a": [0.3]}, corruptions={}, scans=[], domain_gap={"datasets": []},
               n_patterns=24, n_cells=2)
    cfg_path = tmp_path / "source.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report"
    assert main(["benchmark", str(cfg_path), "-o", str(out), "--test", str(data["test"]), "--train", str(data["test"]),
                 "--weights", str(weights), "--keep-datasets", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["source_set"] == "grid6:source"
    rows = {(r["model"], r["mode"], r["condition"], r["strength"]) for r in res["accuracy"] if r["set"] == "grid6:source"}
    assert ("cnn", "pattern", "source", 0.3) in rows and ("cnn", "cell", "source", 0.3) in rows
    assert ("cnn", "pattern", "ideal", 0.0) in rows
    md = (out / "report.md").read_text()
    assert "## Finite source (partial spatial coherence)" in md and "σ 0.3 Å" in md
    # the cell inputs: each cell's 36 patterns, source-averaged; the cell mean is unchanged
    kept = out / "datasets" / "grid6" / "source" / "cell"
    ideal = np.asarray(load(kept / "ideal").data, np.float64)
    blurred = np.asarray(load(kept / "source_0.3").data, np.float64)
    assert ideal.shape == blurred.shape and ideal.shape[1] == 36
    # (up to the few negative ringing values clipped to zero where the position dependence is sharp)
    np.testing.assert_allclose(blurred.mean(axis=1), ideal.mean(axis=1), rtol=0.05, atol=1e-3 * ideal.max())
    np.testing.assert_allclose(blurred.sum(axis=(1, 2, 3)), ideal.sum(axis=(1, 2, 3)), rtol=2e-3)
    assert not np.allclose(blurred, ideal)
    n, _, ky, kx = ideal.shape
    np.testing.assert_allclose(blurred, source_blur_grid(ideal.reshape(n, 6, 6, ky, kx), 0.3).reshape(ideal.shape),
                               rtol=1e-4, atol=1e-9)
    with pytest.raises(Exception, match="source_size"):
        from polarstem.analysis.benchmark import BenchmarkConfig

        BenchmarkConfig(source_size={"test": "x", "sigma_a": [-1]}).check()
