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
    virtual_image_list,
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


# --------------------------------------------------------------------------------------------------
# one pass, compiled loops, block readers


def counts_scan(shape=(5, 6), det=(40, 44), seed=1, dtype=np.uint16):
    """Integer counts: a bright disk on a background, both varying from pattern to pattern."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(det)
    disk = np.hypot(yy - 19.3, xx - 22.6) <= 8
    lam = rng.uniform(1, 4, shape)[..., None, None] + rng.uniform(50, 400, shape)[..., None, None] * disk
    return rng.poisson(lam).astype(dtype)


ALL_KINDS = [VirtualDetector("bf", outer=6, units="px"), VirtualDetector("adf", inner=10, units="px"),
             VirtualDetector("com"), VirtualDetector("com", outer=8, units="px"),
             VirtualDetector("adf", inner=12, outer=18, units="px")]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.float32, np.float64, ">u2"])
def test_compiled_loops_equal_numpy_sums(dtype):
    arr = counts_scan(dtype=np.uint8 if dtype == np.uint8 else np.uint16).astype(dtype)
    if np.dtype(dtype).kind == "f":
        arr[2, 3, 5, 7] = np.nan
        arr[0, 1, 20, 20] = np.inf
    ds = make_ds(arr)
    geom = detector_geometry(ds)
    compiled = virtual_image_list(ds, ALL_KINDS, geometry=geom, engine="compiled")
    reference = virtual_image_list(ds, ALL_KINDS, geometry=geom, engine="numpy")
    clean = np.where(np.isfinite(arr.astype(np.float64)), arr.astype(np.float64), 0.0)
    yy, xx = np.indices(arr.shape[2:])
    rr = np.hypot(yy - geom.center[0], xx - geom.center[1])
    np.testing.assert_array_equal(reference[0], (clean * (rr <= 6)).sum(axis=(2, 3)))
    for c, r, det in zip(compiled, reference, ALL_KINDS):
        assert c.shape == r.shape
        if det.kind != "com" and np.dtype(dtype).kind in "ui":
            np.testing.assert_array_equal(c, r)  # integer counts under 2**16 with 0/1 masks: exact
        else:  # float32 partial sums: ~1e-7 relative; CoM near 0 px to 1e-6 px
            np.testing.assert_allclose(c, r, rtol=2e-6, atol=1e-6 if det.kind == "com" else 0)


def test_one_pass_equals_one_detector_at_a_time():
    arr = counts_scan()
    ds = make_ds(arr)
    geom = detector_geometry(ds)
    together = virtual_image_list(ds, ALL_KINDS, geometry=geom, engine="compiled")
    for det, img in zip(ALL_KINDS, together):
        np.testing.assert_array_equal(img, virtual_image_list(ds, [det], geometry=geom, engine="compiled")[0])
        assert img.shape == ((2,) if det.kind == "com" else ()) + arr.shape[:2]


def test_com_region_is_the_annulus_given():
    arr = counts_scan().astype(np.float64)
    ds = make_ds(arr)
    geom = detector_geometry(ds)
    com_bf = virtual_image(ds, VirtualDetector("com", outer=8, units="px"), geometry=geom)
    yy, xx = np.indices(arr.shape[2:])
    inside = np.hypot(yy - geom.center[0], xx - geom.center[1]) <= 8
    tot = (arr * inside).sum(axis=(2, 3))
    np.testing.assert_allclose(com_bf[0], (arr * inside * (yy - geom.center[0])).sum(axis=(2, 3)) / tot, rtol=1e-9)


def test_npy_file_is_mapped_not_copied_and_gives_the_same_images(tmp_path):
    from polarstem.chunks import MappedArray, block_reader

    arr = counts_scan((7, 9))
    np.save(tmp_path / "scan.npy", arr)
    ds = load(tmp_path / "scan.npy", chunk_bytes=3 * arr[0, 0].nbytes)  # blocks of 3 patterns: partial rows
    reader = block_reader(ds)
    assert isinstance(reader, MappedArray)
    block = reader.read(slice(2, 3), slice(3, 6))
    assert not block.flags.owndata and not block.flags.writeable
    np.testing.assert_array_equal(block, arr[2:3, 3:6])
    geom = detector_geometry(ds)
    images = virtual_image_list(ds, ALL_KINDS, geometry=geom, engine="compiled", workers=2)
    # the same data through dask: an array computed from the file is no longer the file as loaded
    via_dask = Dataset4D(data=ds.data + np.uint16(0), source=ds.source)
    assert not isinstance(block_reader(via_dask), MappedArray)
    for a, b in zip(images, virtual_image_list(via_dask, ALL_KINDS, geometry=geom, engine="numpy")):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)


def test_hspy_gzip_shuffle_chunks_are_decoded_beside_hdf5(tmp_path):
    import dask.array as da

    from polarstem.chunks import HDF5Chunks, block_reader
    from polarstem.io import save

    arr = counts_scan((6, 8))
    save(tmp_path / "scan.hspy", da.from_array(arr, chunks=(2, 8, 40, 44)), Calibration(scan_step_nm=(0.1, 0.1)))
    ds = load(tmp_path / "scan.hspy")
    reader = block_reader(ds)
    assert isinstance(reader, HDF5Chunks) and reader.filters  # HyperSpy writes gzip + shuffle
    np.testing.assert_array_equal(reader.read(slice(2, 4), slice(0, 8)), arr[2:4])
    geom = detector_geometry(ds)
    for a, b in zip(virtual_image_list(ds, ALL_KINDS, geometry=geom, engine="compiled"),
                    virtual_image_list(make_ds(arr), ALL_KINDS, geometry=geom, engine="numpy")):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)


def test_hdf5_blocks_of_several_chunks_and_contiguous_datasets(tmp_path):
    import dask.array as da
    import h5py

    from polarstem.chunks import HDF5Chunks, MappedArray, block_reader

    arr = counts_scan((6, 8)).astype(np.float32)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("chunked", data=arr, chunks=(1, 4, 40, 44), compression="gzip", shuffle=True)
        f.create_dataset("contiguous", data=arr)
        f.create_dataset("plain", data=arr, chunks=(2, 8, 40, 44))
    f = h5py.File(tmp_path / "scan.h5", "r")
    plain = Dataset4D(data=da.from_array(f["plain"], chunks=(2, 8, 40, 44)))
    assert isinstance(block_reader(plain), HDF5Chunks) and not block_reader(plain).filters
    np.testing.assert_array_equal(block_reader(plain).read(slice(4, 6), slice(0, 8)), arr[4:6])
    chunked = Dataset4D(data=da.from_array(f["chunked"], chunks=(2, 8, 40, 44)), source=str(tmp_path / "scan.h5"))
    reader = block_reader(chunked)
    assert isinstance(reader, HDF5Chunks)
    np.testing.assert_array_equal(reader.read(slice(2, 4), slice(0, 8)), arr[2:4])  # four chunks in one block
    np.testing.assert_array_equal(reader.read(slice(4, 6), slice(0, 8)), arr[4:6])
    contiguous = Dataset4D(data=da.from_array(f["contiguous"], chunks=(2, 8, 40, 44)), source=str(tmp_path / "scan.h5"))
    assert isinstance(block_reader(contiguous), MappedArray)
    geom = detector_geometry(make_ds(arr))
    expect = virtual_image_list(make_ds(arr), ALL_KINDS, geometry=geom, engine="numpy")
    for ds in (chunked, contiguous):
        for a, b in zip(virtual_image_list(ds, ALL_KINDS, geometry=geom, engine="compiled"), expect):
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)
    f.close()


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_unshuffle_compiled_and_numpy_agree(itemsize):
    import sys

    from polarstem import frame_kernels
    from polarstem.chunks import _unshuffle

    rng = np.random.default_rng(itemsize)
    values = rng.integers(0, 2**8 * itemsize, 1001).astype(f"<u{itemsize}")
    shuffled = values.view(np.uint8).reshape(-1, itemsize).T.ravel()  # what HDF5's shuffle filter stores
    out = np.asarray(_unshuffle(shuffled, values.dtype)).view(values.dtype)
    np.testing.assert_array_equal(out, values)
    if itemsize > 1 and sys.byteorder == "little":
        direct = np.empty(values.nbytes, np.uint8)
        frame_kernels.unshuffle(shuffled, itemsize, direct)
        np.testing.assert_array_equal(direct.view(values.dtype), values)


def test_map_frame_blocks_order_progress_cancel_and_errors(tmp_path):
    from polarstem.chunks import map_frame_blocks

    arr = counts_scan((9, 4))
    ds = make_ds(arr)  # chunks of 2 x 3 positions: 10 blocks
    calls = []
    got = list(map_frame_blocks(ds, lambda b: b.frames.sum(axis=(2, 3)), workers=2,
                                progress=lambda d, t: calls.append((d, t))))
    assert [(r.start, c.start) for r, c, _ in got] == sorted((r.start, c.start) for r, c, _ in got)
    out = np.zeros(arr.shape[:2], np.int64)
    for r, c, part in got:
        out[r, c] = part
    np.testing.assert_array_equal(out, arr.sum(axis=(2, 3)))
    assert calls[0] == (0, len(got)) and calls[-1] == (len(got), len(got))
    ev = threading.Event()
    seen = []
    with pytest.raises(Cancelled):
        for r, _c, _ in map_frame_blocks(ds, lambda b: 0, workers=2, cancel=ev):
            seen.append(r)
            ev.set()
    assert len(seen) == 1
    # a corrupt chunk: a one-line error from the worker, not a traceback from a thread
    import zarr

    z = zarr.open(str(tmp_path / "scan.zarr"), mode="w", shape=arr.shape, chunks=(1, 4) + arr.shape[2:],
                  dtype=arr.dtype)
    z[:] = arr
    chunk = bytearray((tmp_path / "scan.zarr" / "5.0.0.0").read_bytes())
    chunk[32:] = bytes(len(chunk) - 32)  # header intact (the store looks whole), payload zeroed
    (tmp_path / "scan.zarr" / "5.0.0.0").write_bytes(bytes(chunk))
    with pytest.raises(PolarstemError, match="cannot read scan data.*corrupt file"):
        list(map_frame_blocks(load(tmp_path / "scan.zarr"), lambda b: 0, workers=2))


def test_mean_pattern_compiled_equals_numpy():
    arr = counts_scan((6, 7)).astype(np.float32)
    arr[1, 1, 2, 2] = np.nan
    ds = make_ds(arr)
    np.testing.assert_allclose(mean_pattern(ds, engine="compiled"), mean_pattern(ds, engine="numpy"), rtol=1e-12)
    np.testing.assert_allclose(mean_pattern(ds, engine="compiled"),
                               np.where(np.isfinite(arr), arr, 0).mean(axis=(0, 1)), rtol=1e-6)


def test_uncompressed_zarr_chunk_files_are_mapped(tmp_path):
    import dask.array as da
    import zarr

    from polarstem.chunks import ArrayBlocks, ZarrChunkFiles, block_reader

    arr = counts_scan((6, 8))
    z = zarr.open(str(tmp_path / "raw.zarr"), mode="w", shape=arr.shape, chunks=(1, 4, 40, 44), dtype=arr.dtype,
                  compressor=None, fill_value=0)
    z[:] = arr
    (tmp_path / "raw.zarr" / "5.1.0.0").unlink()  # a chunk never written: the fill value
    expect = arr.copy()
    expect[5, 4:8] = 0
    ds = Dataset4D(data=da.from_zarr(z, chunks=(2, 8, 40, 44)), source=str(tmp_path / "raw.zarr"))
    reader = block_reader(ds)
    assert isinstance(reader, ZarrChunkFiles)
    np.testing.assert_array_equal(reader.read(slice(0, 2), slice(0, 8)), expect[0:2])  # four chunks
    np.testing.assert_array_equal(reader.read(slice(4, 6), slice(0, 8)), expect[4:6])
    one = Dataset4D(data=da.from_zarr(z), source=str(tmp_path / "raw.zarr"))  # blocks of one chunk: views
    view = block_reader(one).read(slice(2, 3), slice(4, 8))
    assert not view.flags.owndata and not view.flags.writeable
    np.testing.assert_array_equal(view, expect[2:3, 4:8])
    geom = detector_geometry(make_ds(arr))
    for a, b in zip(virtual_image_list(ds, ALL_KINDS, geometry=geom, engine="compiled"),
                    virtual_image_list(make_ds(expect), ALL_KINDS, geometry=geom, engine="numpy")):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)
    compressed = zarr.open(str(tmp_path / "blosc.zarr"), mode="w", shape=arr.shape, chunks=(1, 4, 40, 44),
                           dtype=arr.dtype)
    compressed[:] = arr
    assert isinstance(block_reader(Dataset4D(data=da.from_zarr(compressed))), ArrayBlocks)


def test_inflate_with_libdeflate_or_zlib(monkeypatch):
    import sys
    import zlib

    from polarstem.chunks import _inflate

    data = np.random.default_rng(0).poisson(3, 5000).astype(np.uint16).tobytes()
    out = np.empty(len(data), np.uint8)
    assert bytes(_inflate(zlib.compress(data, 4), out)) == data
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # not installed: zlib
    assert bytes(_inflate(zlib.compress(data, 4), out)) == data


def test_cli_warns_when_the_adf_annulus_reaches_beyond_the_detector(tmp_path, capsys):
    from polarstem.cli import main
    from tests.test_classify import disk_patterns

    np.save(tmp_path / "scan.npy", disk_patterns((4, 5), det=64))
    (tmp_path / "scan.json").write_text('{"scan_step_nm": 0.1, "mrad_per_px": 1.0, "beam_energy_kev": 200, '
                                        '"convergence_mrad": 20}')
    assert main(["virtual", str(tmp_path / "scan.npy"), "--kind", "adf", "--inner", "25", "--outer", "30",
                 "-o", str(tmp_path / "in.tif")]) == 0
    assert "beyond the detector edge" not in capsys.readouterr().err
    assert main(["virtual", str(tmp_path / "scan.npy"), "--kind", "adf", "--inner", "25", "--outer", "60",
                 "-o", str(tmp_path / "out.tif")]) == 0
    assert "warning: the ADF annulus (outer 60 mrad) reaches beyond the detector edge" in capsys.readouterr().err


def test_the_bright_field_disk_is_the_convergence_angle_not_the_bright_centre():
    """On the bundled sample the mean pattern's brightest part is a channelling spot a few px wide; the
    bright-field detector must span the whole disk: alpha / (mrad per px) from the calibration, or the
    ruler's edge measurement when the convergence is not given."""
    from polarstem.io import load
    from polarstem.sample import sample_dataset_path
    from polarstem.virtual import detector_geometry

    ds = load(sample_dataset_path())
    expected = ds.calibration.convergence_mrad / ds.calibration.mrad_per_px
    assert detector_geometry(ds).disk_radius_px == pytest.approx(expected)
    ds.calibration = ds.calibration.with_(convergence_mrad=None)
    assert detector_geometry(ds).disk_radius_px == pytest.approx(expected, rel=0.05)
