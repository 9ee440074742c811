"""Virtual detectors equal direct numpy sums; the BF disk is found; the CLI writes calibrated TIFFs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from polarstem.cli import main
from polarstem.errors import Cancelled, PolarstemError
from polarstem.export import read_map
from polarstem.io import Calibration, Dataset4D, as_frame_chunked, load
from polarstem.virtual import (
    VirtualDetector,
    detector_geometry,
    find_bright_field_disk,
    mean_pattern,
    virtual_image,
    virtual_images,
)


def disk_scan(shape=(6, 7), det=(48, 40), center=(23.0, 19.5), radius=9.0, seed=0):
    """A scan of noisy patterns with a bright disk whose intensity varies over the scan."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(det)
    disk = (np.hypot(yy - center[0], xx - center[1]) <= radius).astype(np.float32)
    amp = rng.uniform(50, 100, shape).astype(np.float32)
    data = amp[..., None, None] * disk + rng.poisson(2.0, shape + det)
    return data.astype(np.float32)


def make_ds(arr, budget=None, **cal):
    import dask.array as da

    data = da.from_array(arr, chunks=(2, 3) + arr.shape[2:])
    return Dataset4D(data=data, calibration=Calibration(**cal), source="synthetic")


def test_find_bright_field_disk():
    pat = disk_scan((1, 1))[0, 0]
    cy, cx, r = find_bright_field_disk(pat)
    assert cy == pytest.approx(23.0, abs=0.3) and cx == pytest.approx(19.5, abs=0.3)
    assert r == pytest.approx(9.0, abs=0.6)


def test_virtual_bf_equals_numpy():
    arr = disk_scan()
    ds = make_ds(arr)
    geom = detector_geometry(ds)
    img = virtual_image(ds, VirtualDetector("bf", outer=5.0, units="px"), geometry=geom)
    yy, xx = np.indices(arr.shape[2:])
    mask = np.hypot(yy - geom.center[0], xx - geom.center[1]) <= 5.0
    np.testing.assert_allclose(img, (arr * mask).sum(axis=(2, 3)), rtol=1e-6)


def test_virtual_images_in_one_pass_equal_one_at_a_time():
    arr = disk_scan()
    arr[1, 2, 0, 0] = np.nan  # non-finite pixels count as 0 in both
    ds = make_ds(arr)
    geom = detector_geometry(ds)
    dets = [VirtualDetector("adf", inner=10.0, units="px"), VirtualDetector("adf", inner=14.0, units="px"),
            VirtualDetector("bf", outer=4.0, units="px")]
    stack = virtual_images(ds, dets, geometry=geom)
    assert stack.shape == (3,) + arr.shape[:2]
    for det, img in zip(dets, stack):
        np.testing.assert_allclose(img, virtual_image(ds, det, geometry=geom), rtol=1e-9)
    with pytest.raises(PolarstemError, match="masked detectors"):
        virtual_images(ds, [VirtualDetector("com")], geometry=geom)


def test_adf_in_mrad_and_com():
    arr = disk_scan()
    ds = make_ds(arr, mrad_per_px=2.0)
    geom = detector_geometry(ds)
    adf = virtual_image(ds, VirtualDetector("adf", inner=24, outer=36), geometry=geom)
    yy, xx = np.indices(arr.shape[2:])
    rr = np.hypot(yy - geom.center[0], xx - geom.center[1])
    np.testing.assert_allclose(adf, (arr * ((rr >= 12) & (rr <= 18))).sum(axis=(2, 3)), rtol=1e-6)
    com = virtual_image(ds, "com", geometry=geom)
    assert com.shape == (2,) + arr.shape[:2]
    tot = arr.sum(axis=(2, 3))
    expect_x = (arr * (xx - geom.center[1])).sum(axis=(2, 3)) / tot * 2.0
    np.testing.assert_allclose(com[1], expect_x, rtol=1e-6, atol=1e-9)


def test_mrad_from_convergence_angle():
    ds = make_ds(disk_scan(), convergence_mrad=18.0)
    geom = detector_geometry(ds)
    assert geom.mrad_per_px == pytest.approx(2.0, rel=0.08)


def test_mrad_without_calibration_is_a_clear_error():
    ds = make_ds(disk_scan())
    with pytest.raises(PolarstemError, match="give the angles in px"):
        virtual_image(ds, VirtualDetector("adf", inner=20, outer=40))


def test_bad_detector_parameters():
    with pytest.raises(PolarstemError):
        VirtualDetector("adf", inner=30, outer=10)
    with pytest.raises(PolarstemError):
        VirtualDetector("haadf")


def test_mean_pattern_with_mask_and_nan():
    arr = disk_scan()
    arr[0, 0, 3, 3] = np.nan
    ds = make_ds(arr)
    mask = np.zeros(arr.shape[:2], bool)
    mask[2:4, 1:5] = True
    clean = np.where(np.isfinite(arr), arr, 0)
    np.testing.assert_allclose(mean_pattern(ds, mask=mask), clean[mask].mean(axis=0), rtol=1e-6)
    assert np.isfinite(mean_pattern(ds)).all()


def test_cancel_between_chunks():
    ds = make_ds(disk_scan())
    ev = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done == 2:
            ev.set()

    with pytest.raises(Cancelled):
        virtual_image(ds, VirtualDetector("bf", outer=5, units="px"), progress=progress, cancel=ev)
    assert calls[-1] == 2


def test_virtual_cli_on_npy_writes_calibrated_tiff(tmp_path):
    arr = disk_scan()
    np.save(tmp_path / "scan.npy", arr)
    (tmp_path / "scan.json").write_text('{"scan_step_nm": 0.2, "convergence_mrad": 18.0}')
    out = tmp_path / "bf.tif"
    assert main(["virtual", str(tmp_path / "scan.npy"), "--kind", "bf", "-o", str(out)]) == 0
    img, meta = read_map(out)
    assert img.shape == arr.shape[:2]
    assert meta["calibration"]["scan_step_nm"] == [0.2, 0.2]
    ds = load(tmp_path / "scan.npy")
    np.testing.assert_allclose(img, virtual_image(ds, "bf"), rtol=1e-5)


def test_frame_chunking_respects_budget():
    import dask.array as da

    arr = da.zeros((100, 100, 64, 64), dtype=np.uint16, chunks=(10, 10, 32, 32))
    re = as_frame_chunked(arr, budget=8 * 2**20)
    assert re.chunks[2] == (64,) and re.chunks[3] == (64,)
    assert np.prod(re.chunksize) * 2 <= 8 * 2**20
