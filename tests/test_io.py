"""Loading real detector files (shared/realdata) and plain arrays, lazily, with calibrations."""

from __future__ import annotations

import json
import os

import dask.array as da
import numpy as np
import pytest

from polarstem.cli import main
from polarstem.errors import NotFourDError, PolarstemError
from polarstem.io import Calibration, detector_mrad_per_px, electron_wavelength_angstrom, load, save


@pytest.fixture
def merlin(merlin_dir):
    return merlin_dir


# (path relative to the folder, navigation shape option, expected shape) from realdata/README.md
FOUR_D = [
    ("Merlin_navigation4x2_ROI/001_4x2_6bit.mib", None, (2, 4, 256, 256)),
    ("Merlin_navigation4x2_ROI/002_4x2_6bit_roi128.mib", None, (2, 4, 128, 256)),
    ("Merlin_navigation4x2_signalNx256_ROI/002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib", None, (2, 4, 128, 256)),
    ("Merlin_navigation4x2_signalNx256_ROI/003_merlin_test_roi_sig256x64_nav4x2_hot_pixel_52x_39y.mib", None, (2, 4, 64, 256)),
    ("Merlin_Single_Quad/Quad_9_Frame_CounterDepth_12_Rows_256.mib", (3, 3), (3, 3, 512, 512)),
    ("Merlin_Single_Quad/Single_9_Frame_CounterDepth_6_Rows_256.mib", (3, 3), (3, 3, 256, 256)),
    ("Merlin_Single_Quad/Single_9_Frame_CounterDepth_24_Rows_256.mib", (3, 3), (3, 3, 256, 256)),
]
OTHER_4D = [
    ("blockfile/test1.blo", (3, 2, 144, 144)),
    ("blockfile/test2.blo", (2, 3, 5, 5)),
    ("arina/test_00_master.h5", (4, 4, 192, 192)),
    ("topspin/topspin_test_A.app5", (2, 5, 14, 12)),
    ("emd/py4DSTEM_size2x3x4x5.h5", (2, 3, 4, 5)),
]
NOT_4D = [
    ("tia/new/16x16-diffraction_imagel_5x5x256x256_EDS.emi", "5x5 spectrum image with 4000 channels"),
    ("tvips/test_tvips_2345_000.tvips", "3D"),
    ("digitalmicrograph/2D/test_diffraction_pattern.dm3", "single 87x87 image"),
    ("hspy/example2_v3.1.hspy", "single"),
    ("emd/Si100_4D.emd", "3D scan"),
]


@pytest.mark.parametrize("rel,nav,shape", FOUR_D)
def test_merlin_shapes_via_cli(merlin, rel, nav, shape, capsys):
    args = ["info", str(merlin / rel), "--json"]
    if nav:
        args += ["--navigation-shape", *map(str, nav)]
    assert main(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert tuple(d["shape"]) == shape
    for key in ("dtype", "scan_step_nm", "mrad_per_px", "beam_energy_kev", "convergence_mrad"):
        assert key in d


@pytest.mark.parametrize("rel,shape", OTHER_4D)
def test_other_formats_shapes(realdata, rel, shape):
    ds = load(realdata / rel)
    assert ds.shape == shape
    assert isinstance(ds.data, da.Array)
    # chunks hold whole patterns
    assert ds.data.chunks[2] == (shape[2],) and ds.data.chunks[3] == (shape[3],)


@pytest.mark.parametrize("rel,words", NOT_4D)
def test_not_4d_files_exit_2_one_line(realdata, rel, words, capsys):
    assert main(["info", str(realdata / rel)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if not ln.startswith("Loading")]
    assert len(lines) == 1 and "not 4D-STEM" in lines[0] and words in lines[0]


def test_flat_merlin_stack_needs_navigation_shape(merlin):
    with pytest.raises(PolarstemError):
        load(merlin / "Merlin_Single_Quad/Quad_9_Frame_CounterDepth_6_Rows_256.mib", navigation_shape=(2, 2))


def test_blockfile_calibration(realdata):
    ds = load(realdata / "blockfile/test1.blo")
    assert ds.calibration.scan_step_nm[1] == pytest.approx(12.8)


def test_py4dstem_reciprocal_calibration_converts_with_energy(realdata):
    ds = load(realdata / "emd/py4DSTEM_size2x3x4x5.h5")
    assert ds.calibration.detector_units == "1 / Å"
    mrad = detector_mrad_per_px(ds.calibration.detector_scale[1], ds.calibration.detector_units, 200.0)
    assert mrad == pytest.approx(0.04425157 * 0.0250793 * 1e3, rel=1e-4)


def test_wavelength_200kv():
    assert electron_wavelength_angstrom(200) == pytest.approx(0.025079, rel=1e-4)


def test_npy_memmap_and_sidecar(tmp_path):
    arr = np.random.default_rng(0).poisson(3, (5, 6, 16, 16)).astype(np.uint16)
    np.save(tmp_path / "scan.npy", arr)
    (tmp_path / "scan.json").write_text(json.dumps({"scan_step_nm": 0.1, "mrad_per_px": 1.5, "beam_energy_kev": 200}))
    ds = load(tmp_path / "scan.npy")
    assert ds.shape == arr.shape and ds.calibration.mrad_per_px == 1.5
    assert ds.calibration.scan_step_nm == (0.1, 0.1)
    np.testing.assert_array_equal(ds.data.compute(), arr)


def test_npy_3d_refused(tmp_path):
    np.save(tmp_path / "stack.npy", np.zeros((4, 8, 8)))
    with pytest.raises(NotFourDError, match="3D stack"):
        load(tmp_path / "stack.npy")


def test_zarr_array(tmp_path):
    import zarr

    arr = np.arange(3 * 4 * 8 * 8, dtype=np.float32).reshape(3, 4, 8, 8)
    z = zarr.open(str(tmp_path / "scan.zarr"), mode="w", shape=arr.shape, chunks=(1, 4, 8, 8), dtype=arr.dtype)
    z[:] = arr
    ds = load(tmp_path / "scan.zarr")
    np.testing.assert_array_equal(ds.data.compute(), arr)


def test_save_roundtrip_keeps_calibration(tmp_path):
    arr = np.random.default_rng(1).random((3, 4, 10, 12)).astype(np.float32)
    cal = Calibration(scan_step_nm=(0.05, 0.05), mrad_per_px=1.25, beam_energy_kev=200.0, convergence_mrad=20.0)
    path = save(tmp_path / "d.hspy", arr, cal)
    ds = load(path)
    np.testing.assert_allclose(ds.data.compute(), arr)
    c = ds.calibration
    assert c.scan_step_nm == pytest.approx((0.05, 0.05))
    assert c.mrad_per_px == pytest.approx(1.25)
    assert c.beam_energy_kev == pytest.approx(200.0) and c.convergence_mrad == pytest.approx(20.0)


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, os.urandom(4096)])
@pytest.mark.parametrize("ext", [".mib", ".blo", ".hspy", ".emd", ".npy", ".app5"])
def test_corrupt_files_one_line_error(tmp_path, ext, content, capsys):
    p = tmp_path / f"bad{ext}"
    p.write_bytes(content)
    assert main(["info", str(p)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and str(p) in err[0] and "Traceback" not in err[0]


def test_missing_file(capsys):
    assert main(["info", "/nonexistent/file.mib"]) == 2
    assert "no such file" in capsys.readouterr().err
