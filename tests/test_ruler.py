"""The bright-field disk ruler: measured in pixels, it fills in and checks the file's calibration."""

from __future__ import annotations

import numpy as np
import pytest

from polarstem.io import Calibration, load
from polarstem.ruler import complete_calibration, measure_ruler, sample_frames
from tests.test_classify import disk_patterns


def test_the_disk_radius_is_measured_to_a_few_percent():
    frames = disk_patterns((8, 8), det=96).reshape(-1, 96, 96)  # disks of radius 16 px
    ruler = measure_ruler(frames)
    assert ruler.trusted and ruler.disk_radius_px == pytest.approx(16.0, rel=0.04)


def test_it_fills_in_the_sampling_or_the_convergence_and_flags_a_mismatch():
    ruler = measure_ruler(disk_patterns((6, 6), det=96).reshape(-1, 96, 96))
    r = ruler.disk_radius_px
    cal, notes = complete_calibration(Calibration(beam_energy_kev=200.0, convergence_mrad=24.0), ruler)
    assert cal.mrad_per_px == pytest.approx(24.0 / r) and "measured from the bright-field disk" in notes[0]
    cal, notes = complete_calibration(Calibration(mrad_per_px=1.5), ruler)
    assert cal.convergence_mrad == pytest.approx(1.5 * r) and "convergence" in notes[0]
    cal, notes = complete_calibration(Calibration(mrad_per_px=1.5, convergence_mrad=1.5 * r), ruler)
    assert notes == [] and cal.mrad_per_px == 1.5
    cal, notes = complete_calibration(Calibration(mrad_per_px=1.5, convergence_mrad=1.3 * 1.5 * r), ruler)
    assert "one of the two is wrong" in notes[0] and cal.mrad_per_px == 1.5  # the file's values are kept


def test_noise_has_no_ruler():
    frames = np.random.default_rng(0).poisson(5.0, (64, 48, 48)).astype(np.uint16)
    ruler = measure_ruler(frames)
    assert ruler is None or not ruler.trusted
    assert complete_calibration(Calibration(), ruler) == (Calibration(), [])


def test_frames_come_from_one_block_at_the_centre(tmp_path):
    np.save(tmp_path / "scan.npy", disk_patterns((40, 30), det=32))
    ds = load(tmp_path / "scan.npy")
    frames = sample_frames(ds, 64)
    assert frames.shape == (64, 32, 32)
    np.testing.assert_array_equal(frames[0], np.asarray(ds.data[16, 11]))


def test_info_reports_the_disk_and_a_calibration_that_disagrees(tmp_path, capsys):
    import json

    from polarstem.cli import main

    np.save(tmp_path / "scan.npy", disk_patterns((6, 6), det=96))  # disk radius 16 px
    (tmp_path / "scan.json").write_text(json.dumps({"mrad_per_px": 1.25, "beam_energy_kev": 200,
                                                     "convergence_mrad": 20}))
    assert main(["info", str(tmp_path / "scan.npy")]) == 0
    out = capsys.readouterr().out
    assert "disk radius 16" in out and "note:" not in out
    assert main(["info", str(tmp_path / "scan.npy"), "--mrad-per-px", "1.6", "--json"]) == 0
    disk = json.loads(capsys.readouterr().out)["bright_field_disk"]
    assert disk["radius_mrad"] == pytest.approx(25.6, rel=0.05) and "one of the two is wrong" in disk["notes"][0]
