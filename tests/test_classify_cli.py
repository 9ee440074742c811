"""`polarstem classify` with shipped weights: the export folder, ROI, errors, and a LocalCluster run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polarstem.cli import main
from polarstem.export import read_map, read_maps
from polarstem.models import list_models

SHIPPED = [m["name"] for m in list_models() if "pattern" in m.get("modes", [])]
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped pattern-mode weights yet")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from tests.test_classify import disk_patterns

    d = tmp_path_factory.mktemp("scan")
    np.save(d / "scan.npy", disk_patterns((10, 12)))
    (d / "scan.json").write_text(json.dumps({"scan_step_nm": 0.1, "mrad_per_px": 1.2, "beam_energy_kev": 200,
                                             "convergence_mrad": 20}))
    return d / "scan.npy"


def test_classify_writes_the_export_folder(scan, tmp_path, capsys):
    out = tmp_path / "maps"
    roi = np.zeros((10, 12), bool)
    roi[2:6, 3:9] = True
    np.save(tmp_path / "roi.npy", roi)
    assert main(["classify", str(scan), "--model", SHIPPED[0], "--mode", "pattern", "--roi",
                 str(tmp_path / "roi.npy"), "-o", str(out)]) == 0
    cls, meta = read_map(out / "class.tif")
    # every ROI position classified: a direction, or -2 where the model abstains (these synthetic disks
    # hold no crystal, so the calibrated abstention may well withhold them)
    assert cls.shape == (10, 12) and (cls[~roi] == -1).all() and (cls[roi] >= -2).all() and (cls[roi] != -1).all()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["model"]["name"] == SHIPPED[0] and len(prov["model"]["sha256"]) == 64
    assert prov["input"]["sha256"] and prov["parameters"]["mode"] == "pattern"
    maps = read_maps(out)
    np.testing.assert_array_equal(maps["class"].astype(np.int8), cls)
    assert (out / "overlay.png").stat().st_size > 1000


def test_classify_bad_inputs_exit_2(scan, tmp_path, capsys):
    np.save(tmp_path / "roi.npy", np.ones((3, 3), bool))
    assert main(["classify", str(scan), "--model", SHIPPED[0], "--roi", str(tmp_path / "roi.npy"),
                 "-o", str(tmp_path / "o")]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main(["classify", str(scan), "--model", "no-such-model", "-o", str(tmp_path / "o")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert not (tmp_path / "o" / "class.tif").exists()


@pytest.mark.slow
def test_local_cluster_gives_the_same_maps(scan):
    from distributed import LocalCluster

    from polarstem.classify import classify_scan
    from polarstem.io import load

    ds = load(scan, chunk_bytes=64 * 64 * 2 * 12 * 3)
    local = classify_scan(ds, model=SHIPPED[0], mode="pattern", device="cpu", chunk_bytes=64 * 64 * 2 * 12 * 3)
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      processes=True) as cluster:
        remote = classify_scan(ds, model=SHIPPED[0], mode="pattern", device="cpu",
                               chunk_bytes=64 * 64 * 2 * 12 * 3, scheduler=cluster.scheduler_address)
    np.testing.assert_array_equal(local.classes, remote.classes)
    np.testing.assert_allclose(local.proba, remote.proba, atol=1e-5)
    np.testing.assert_allclose(local.anomaly, remote.anomaly, atol=1e-4, equal_nan=True)
    # cell mode votes across block edges the same way on the workers
    from polarstem.lattice import Lattice

    lat = Lattice(period=(3.0, 3.0))
    local = classify_scan(ds, model=SHIPPED[0], mode="cell", device="cpu", chunk_bytes=64 * 64 * 2 * 12 * 3, lattice=lat)
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      processes=True) as cluster:
        remote = classify_scan(ds, model=SHIPPED[0], mode="cell", device="cpu", lattice=lat,
                               chunk_bytes=64 * 64 * 2 * 12 * 3, scheduler=cluster.scheduler_address)
    np.testing.assert_allclose(local.proba, remote.proba, atol=1e-5)


def test_classify_cell_mode_records_the_method(tmp_path):
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "sample_data"
    out = tmp_path / "maps"
    assert main(["classify", str(sample), "--model", SHIPPED[0], "--mode", "cell", "-o", str(out)]) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["parameters"]["mode"] == "cell" and prov["parameters"]["cell_method"] == "vote"
    assert prov["parameters"]["weights_mode"] == "pattern"


def test_evaluate_defaults_to_the_mode_classify_uses(tmp_path, capsys):
    """No --mode: auto, as classify: cell mode on a scan that resolves the lattice (the sample), pattern
    mode on a grid of independent patterns (no lattice)."""
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "sample_data"
    assert main(["evaluate", str(sample), "--model", "cnn", "--tta", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "cell"
    from polarstem.io import load

    frames = np.asarray(load(sample).data)
    flat = frames.reshape(-1, *frames.shape[2:])
    grid = flat[np.random.default_rng(0).permutation(len(flat))[:400]].reshape(20, 20, *flat.shape[1:])
    np.save(tmp_path / "indep.npy", grid)
    (tmp_path / "indep.json").write_text(json.dumps({"mrad_per_px": 1.0, "beam_energy_kev": 200, "convergence_mrad": 20}))
    np.save(tmp_path / "labels.npy", np.zeros((20, 20), np.int8))
    assert main(["evaluate", str(tmp_path / "indep.npy"), "--labels", str(tmp_path / "labels.npy"), "--model", "cnn",
                 "--tta", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "pattern"


def test_evaluate_finds_labels_beside_a_zspy_store(tmp_path, capsys):
    """A .zspy is a directory, but a file to the user: labels.npy and defects.npy beside it are found
    whether the user names the folder or the store inside it (the two give the same figures)."""
    import shutil
    from pathlib import Path

    from polarstem.io import load, save

    sample = Path(__file__).resolve().parents[1] / "sample_data"
    ds = load(sample)
    folder_path = tmp_path / "scan"
    save(folder_path / "data.zspy", ds.data, ds.calibration)
    for name in ("labels.npy", "defects.npy"):
        shutil.copy(sample / name, folder_path / name)
    capsys.readouterr()
    args = ["--model", "cnn", "--mode", "pattern", "--tta", "1", "--json"]
    assert main(["evaluate", str(folder_path / "data.zspy"), *args]) == 0
    store = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(folder_path), *args]) == 0
    folder = json.loads(capsys.readouterr().out)
    assert store["accuracy"] == folder["accuracy"] and store["confusion"] == folder["confusion"]


def test_evaluate_reports_accuracy_without_the_probes_on_wall_planes(tmp_path, capsys):
    """The sample (offset 0, 3 steps per cell) puts a probe row and column exactly on each wall plane:
    evaluate gives the accuracy away from defects with and without them. Data that is not a simulated
    scan (no manifest) gets neither figure."""
    import shutil
    from pathlib import Path

    from polarstem.evaluate import wall_plane_probes

    sample = Path(__file__).resolve().parents[1] / "sample_data"
    labels = np.load(sample / "labels.npy")
    near = wall_plane_probes(sample, labels.shape)
    # walls at cell 5 (rows and columns) and at the periodic box edge: scan rows/columns 15 and 0 lie on
    # them; so do the probes on the non-polar block's faces (cells of class -1); domain interiors do not
    assert near[15].all() and near[:, 15].all() and near[0].all() and near[:, 0].all()
    assert not near[1:15, 1:15].any() and not near[16:, 16:].any() and not near[1:15, 16:].any()
    assert near[21, 3:9].all() and near[22:27, 3].all() and not near[22:27, 4:9].any()
    assert main(["evaluate", str(sample), "--model", "cnn", "--tta", "1", "--defects", str(sample / "defects.npy"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    defects = np.load(sample / "defects.npy")
    assert out["wall_plane_probes"] == int((near & ~defects).sum())
    assert 0.0 <= out["accuracy_outside_defects_and_wall_planes"] <= 1.0
    copy = tmp_path / "copy"
    shutil.copytree(sample, copy)
    (copy / "manifest.json").unlink()
    assert wall_plane_probes(copy, labels.shape) is None
    assert main(["evaluate", str(copy), "--model", "cnn", "--tta", "1", "--defects", str(copy / "defects.npy"),
                 "--json"]) == 0
    assert "wall_plane_probes" not in json.loads(capsys.readouterr().out)


def test_lattice_survives_random_descan_on_a_small_detector():
    """The sample (64 px detector, disk radius 16 px) with a further random ±3 px descan per pattern
    (physics.md's range): the lattice finder's detectors keep clear of the flickering disk edge."""
    from pathlib import Path

    import dask.array as da

    from polarstem.classify import scan_lattice
    from polarstem.io import Dataset4D, load
    from polarstem.simulate.corruptions import DescanShift

    ds = load(Path(__file__).resolve().parents[1] / "sample_data")
    raw = np.asarray(ds.data, dtype=np.float32)
    shifted = DescanShift(3.0)(raw.reshape(-1, *raw.shape[2:]), np.random.default_rng(11)).reshape(raw.shape)
    lat, _ = scan_lattice(Dataset4D(da.from_array(shifted, chunks=(8, 8, -1, -1)), ds.calibration, "shifted"))
    assert lat is not None and lat.resolved
    np.testing.assert_allclose(lat.period, (3.0, 3.0), atol=0.1)


def test_a_lattice_at_two_steps_per_cell_comes_from_the_calibration():
    """At two steps per cell the probes can sit symmetrically about the columns and the ADF image shows
    no lattice: the calibration's cell is used then (cell mode), but not at finer sampling, where a
    lattice the image does not show is not assumed."""
    import dataclasses
    from pathlib import Path

    import dask.array as da

    from polarstem.classify import ClassificationResult, choose_mode, scan_lattice
    from polarstem.io import Dataset4D, load
    from polarstem.lattice import KNN_CELL_NM

    ds = load(Path(__file__).resolve().parents[1] / "sample_data")
    raw = np.asarray(ds.data, dtype=np.float32)
    flat = np.broadcast_to(raw.mean(axis=(0, 1)), raw.shape).copy()  # every position alike: no lattice contrast
    for steps, expect in ((2.0, "cell"), (3.0, "pattern")):
        cal = dataclasses.replace(ds.calibration, scan_step_nm=(KNN_CELL_NM / steps, KNN_CELL_NM / steps))
        data = Dataset4D(da.from_array(flat, chunks=(8, 8, -1, -1)), cal, "flat")
        lat, _ = scan_lattice(data)
        assert choose_mode("auto", data, lat) == expect
        if expect == "cell":
            assert lat.source == "calibration"
            np.testing.assert_allclose(lat.period, (2.0, 2.0))
            shown = ClassificationResult.empty(flat.shape[:2], mode="cell", lattice=lat).mode_label
            assert "calibration" in shown  # the status line says where the cell came from
    no_cal = Dataset4D(da.from_array(flat, chunks=(8, 8, -1, -1)),
                       dataclasses.replace(ds.calibration, scan_step_nm=(None, None)), "flat")
    assert scan_lattice(no_cal)[0] is None


def test_evaluate_pattern_mode_averages_8_images_at_any_size(tmp_path, capsys, monkeypatch):
    """classify drops to 2 symmetry images beyond a size on a CPU (speed); evaluate --mode pattern
    measures accuracy, so it keeps 8 unless told otherwise."""
    from pathlib import Path

    from polarstem.models import symmetry

    monkeypatch.setattr(symmetry, "AUTO_TTA_CPU_MAX_PATTERNS", 10)  # the sample's 576 patterns are "big"
    sample = Path(__file__).resolve().parents[1] / "sample_data"
    assert main(["evaluate", str(sample), "--model", "cnn", "--mode", "pattern", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == 8
    assert main(["evaluate", str(sample), "--model", "cnn", "--mode", "pattern", "--tta", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == 2
    assert main(["evaluate", str(sample), "--model", "cnn", "--mode", "cell", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == 2  # cell mode: as classify


def test_ctrl_c_keeps_the_finished_work_and_resume_completes_it(tmp_path):
    """The first Ctrl-C stops after the current batch (also inside the first block): the partial maps
    and a checkpoint are written, exit status 130; --resume classifies only the rest. Progress is
    reported in positions, with a rate."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from tests.test_classify import disk_patterns

    np.save(tmp_path / "scan.npy", disk_patterns((40, 40)))  # one block: the stop lands inside it
    (tmp_path / "scan.json").write_text(json.dumps({"scan_step_nm": 0.1, "mrad_per_px": 1.2,
                                                     "beam_energy_kev": 200, "convergence_mrad": 20}))
    out = tmp_path / "maps"
    cmd = [sys.executable, "-m", "polarstem.cli", "classify", str(tmp_path / "scan.npy"), "--model", "cnn",
           "--mode", "pattern", "--batch-size", "64", "-o", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1, env={**os.environ, "COLUMNS": "120"})
    seen = ""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # wait until the bar counts positions, then Ctrl-C
        seen += proc.stderr.read(1)
        if re.search(r"\b[1-9]\d*/1600 \[", seen[-80:]):
            break
    assert re.search(r"\d+/1600 \[.*pos/s", seen), seen  # positions with a rate
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=240)[1]
    assert proc.returncode == 130, seen + rest
    assert "interrupted (partial maps written; --resume continues)" in rest
    done = read_maps(out)["class"] != -1  # a direction, or -2 where the model abstains on these synthetic disks
    assert 0 < done.sum() < 1600
    assert main(["classify", str(tmp_path / "scan.npy"), "--model", "cnn", "--mode", "pattern", "--batch-size", "64",
                 "--resume", "-o", str(out)]) == 0
    assert (read_maps(out)["class"] != -1).all()
