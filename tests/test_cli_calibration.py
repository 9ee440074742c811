"""Calibration entered on the command line, and the details a user checks from outside: file modes,
input hashes and paths in the provenance, corrupt stores, Merlin headers, a quiet `info`."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polarstem.cli import main
from polarstem.export import read_map
from polarstem.io import Calibration, load, save

POLARSTEM = [sys.executable, "-m", "polarstem.cli"]
CAL_FLAGS = ["--beam-energy", "300", "--convergence", "21.5", "--mrad-per-px", "0.9", "--scan-step", "0.35"]
GIVEN = {"beam_energy_kev": 300.0, "convergence_mrad": 21.5, "mrad_per_px": 0.9, "scan_step_nm": 0.35}


def run(*args, cwd=None, umask=None):
    """The installed command in its own process, as a user runs it."""
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(POLARSTEM + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          preexec_fn=pre, timeout=600)


def test_info_json_shows_the_values_in_use_and_what_the_file_said(merlin_dir):
    mib = merlin_dir / "Merlin_navigation4x2_ROI/001_4x2_6bit.mib"  # a real Merlin file: no calibration at all
    bare = json.loads(run("info", mib, "--json").stdout)
    assert bare["beam_energy_kev"] is None and bare["mrad_per_px"] is None and bare["calibration_given"] == {}
    out = run("info", mib, "--json", *CAL_FLAGS)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["beam_energy_kev"] == 300 and d["convergence_mrad"] == 21.5 and d["mrad_per_px"] == 0.9
    assert d["scan_step_nm_rows_cols"] == [0.35, 0.35] and d["scan_units"] == "nm"
    assert d["calibration_given"] == {k: {"given": v, "file": None} for k, v in GIVEN.items()}
    text = run("info", mib, "--beam-energy", "300").stdout
    assert "300 keV  (given; the file says nothing)" in text


def test_a_new_beam_energy_converts_a_reciprocal_detector_axis(realdata):
    """py4DSTEM's file has a 1/nm detector axis: mrad/px follows the beam energy given."""
    from polarstem.io import detector_mrad_per_px

    f = realdata / "emd/py4DSTEM_size2x3x4x5.h5"
    ds = load(f)
    d = json.loads(run("info", f, "--json", "--beam-energy", "80").stdout)
    expected = detector_mrad_per_px(ds.calibration.detector_scale[-1], ds.calibration.detector_units, 80)
    assert d["mrad_per_px"] == pytest.approx(expected)
    assert d["calibration_given"] == {"beam_energy_kev": {"given": 80.0, "file": ds.calibration.beam_energy_kev}}


@pytest.mark.parametrize("flag, value, words", [("--beam-energy", "200000", "outside 1-3000 keV"),
                                                ("--convergence", "-3", "outside"),
                                                ("--mrad-per-px", "nan", "outside"),
                                                ("--scan-step", "0", "outside")])
def test_impossible_values_are_one_line_errors(realdata, flag, value, words, capsys):
    assert main(["info", str(realdata / "blockfile/test1.blo"), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_virtual_records_the_calibration_in_use(realdata, tmp_path):
    out = tmp_path / "bf.tif"
    r = run("virtual", realdata / "blockfile/test1.blo", "--kind", "bf", "-o", out, *CAL_FLAGS)
    assert r.returncode == 0, r.stderr
    image, meta = read_map(out)
    assert meta["scale"] == [0.35, 0.35] and meta["calibration"]["beam_energy_kev"] == 300
    assert meta["provenance"]["calibration_given"]["scan_step_nm"] == {"given": 0.35, "file": 12.8}
    assert Path(meta["provenance"]["source"]).is_absolute()


def test_merlin_header_opens_its_data_file(merlin_dir, capsys):
    hdr = merlin_dir / "Merlin_navigation4x2_ROI/001_4x2_6bit.hdr"
    assert main(["info", str(hdr), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["shape"] == [2, 4, 256, 256] and d["file"].endswith("001_4x2_6bit.mib")
    lonely = merlin_dir / "lonely.hdr"
    shutil.copy(hdr, lonely)
    assert main(["info", str(lonely)]) == 2
    assert "without its data file lonely.mib" in capsys.readouterr().err


def test_info_prints_no_reader_progress_bar(realdata):
    """The TopSpin reader draws a tqdm bar of its own unless told not to."""
    r = run("info", realdata / "topspin/topspin_test_A.app5")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "Loading" not in r.stdout


@pytest.fixture
def zspy(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((6, 5, 16, 16)).astype(np.float32)
    import dask.array as da

    p = save(tmp_path / "scan.zspy", da.from_array(data, chunks=(2, 5, 16, 16)), Calibration(scan_step_nm=(0.2, 0.2)))
    chunks = sorted(f for f in p.rglob("*") if f.is_file() and "/data/" in str(f) and not f.name.startswith(".z"))
    assert len(chunks) == 3
    return p, chunks


def test_a_store_with_a_chunk_removed_is_not_reported_fine(zspy):
    p, chunks = zspy
    assert run("info", p).returncode == 0
    chunks[1].unlink()
    r = run("info", p)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "1 of 3 data chunks are missing" in r.stderr


def test_a_store_with_a_truncated_chunk_is_not_reported_fine(zspy):
    p, chunks = zspy
    with open(chunks[2], "r+b") as fh:
        fh.truncate(chunks[2].stat().st_size // 2)
    r = run("info", p)
    assert r.returncode == 2 and "cut short" in r.stderr and r.stderr.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# classify: provenance and file modes (needs shipped weights)


def _shipped():
    from polarstem.models import list_models

    return [m["name"] for m in list_models() if "pattern" in m.get("modes", [])]


@pytest.fixture(scope="module")
def labeled_folder(tmp_path_factory):
    """A folder as `polarstem simulate` writes it: the data file, labels.npy and a manifest."""
    from tests.test_classify import disk_patterns

    d = tmp_path_factory.mktemp("labeled")
    import dask.array as da

    save(d / "data.hspy", da.from_array(disk_patterns((6, 7))), Calibration(scan_step_nm=(0.1, 0.1), mrad_per_px=1.2,
                                                                           beam_energy_kev=200, convergence_mrad=20))
    np.save(d / "labels.npy", np.zeros((6, 7), np.int8))
    (d / "manifest.json").write_text(json.dumps({"data_file": "data.hspy"}))
    return d


@pytest.mark.skipif(not _shipped(), reason="no shipped weights")
def test_classify_provenance_hash_path_modes_and_calibration(labeled_folder, tmp_path):
    model = _shipped()[0]
    common = ["--model", model, "--mode", "pattern", "--tta", "1"]
    spellings = [(labeled_folder, None), (labeled_folder / "data.hspy", None),
                 (Path(os.path.relpath(labeled_folder / "data.hspy", tmp_path)), tmp_path)]
    provs = []
    for i, (path, cwd) in enumerate(spellings):
        out = tmp_path / f"maps{i}"
        extra = CAL_FLAGS if i == 2 else []
        r = run("classify", path, *common, *extra, "-o", out, cwd=cwd, umask=0o022)
        assert r.returncode == 0, r.stderr
        provs.append(json.loads((out / "provenance.json").read_text()))
        for f in ("class.tif", "confidence.tif", "anomaly.tif", "maps.hspy", "provenance.json", "overlay.png"):
            mode = stat.S_IMODE((out / f).stat().st_mode)
            assert mode == 0o644, (f, oct(mode))
    hashes = {p["input"]["sha256"] for p in provs}
    files = {p["input"]["file"] for p in provs}
    assert len(hashes) == 1 and files == {str((labeled_folder / "data.hspy").resolve())}
    assert provs[0]["input"]["calibration_given"] == {}
    given = provs[2]["input"]["calibration_given"]
    assert given["beam_energy_kev"] == {"given": 300.0, "file": 200.0}
    assert given["scan_step_nm"] == {"given": 0.35, "file": pytest.approx(0.1)}
    assert provs[2]["input"]["calibration"]["mrad_per_px"] == 0.9
    _, meta = read_map(tmp_path / "maps2" / "class.tif")
    assert meta["scale"] == [0.35, 0.35]
    # a stricter umask is respected too
    r = run("classify", labeled_folder, *common, "-o", tmp_path / "private", umask=0o077)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "private" / "class.tif").stat().st_mode) == 0o600


@pytest.mark.skipif(not _shipped(), reason="no shipped weights")
def test_evaluate_takes_the_calibration_flags(labeled_folder, capsys):
    model = _shipped()[0]
    assert main(["evaluate", str(labeled_folder), "--model", model, "--mode", "pattern", "--tta", "1", "--json",
                 "--scan-step", "0.35", "--mrad-per-px", "0.9"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["calibration_given"] == {"mrad_per_px": 0.9, "scan_step_nm": 0.35}
    # the flags reach the dataset evaluate opens (and no further)
    from polarstem.io import using_calibration

    with using_calibration({"mrad_per_px": 0.9}):
        assert load(labeled_folder).calibration.mrad_per_px == 0.9
    assert load(labeled_folder).calibration.mrad_per_px == pytest.approx(1.2)


def test_every_data_command_has_the_four_flags():
    from polarstem.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("info", "virtual", "classify", "evaluate", "view"):
        flags = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert {"--beam-energy", "--convergence", "--mrad-per-px", "--scan-step"} <= flags, name


def test_overlay_shows_uncertain_grey_and_is_world_readable(tmp_path):
    """overlay.png: uncertain (-2) grey, not classified (-1) showing the background, a 0644 file."""
    from PIL import Image

    from polarstem.overlay import UNCERTAIN_RGBA, class_rgba, nice_length, write_overlay

    classes = np.zeros((20, 20), np.int8)
    classes[:, :10] = -2
    classes[:5] = -1
    rgba = class_rgba(classes)
    assert tuple(rgba[10, 0]) == pytest.approx(UNCERTAIN_RGBA) and rgba[0, 0, 3] == 0 and rgba[10, 15, 3] == 1
    assert nice_length(3.0) == 0.5 and nice_length(120) == 20 and nice_length(7) == 1
    old = os.umask(0o022)
    try:
        out = write_overlay(tmp_path / "overlay.png", classes, np.full((20, 20), 0.9), np.ones((20, 20)),
                            Calibration(scan_step_nm=(0.1, 0.1)), anomaly=np.zeros((20, 20)), source="/a/scan.zspy",
                            model="resnet-proto")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    img = np.asarray(Image.open(out).convert("RGB"))
    rgb = img.astype(int)
    grey = (np.ptp(rgb, axis=-1) <= 2) & (rgb[..., 0] > 100) & (rgb[..., 0] < 180)  # grey over a dark image
    assert grey.sum() > 20000  # the uncertain half of the map
