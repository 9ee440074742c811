"""The CoM (DPC) vector map: descan removed by a plane, cell average, colours as the class colours, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from polarstem.classes import direction_colors
from polarstem.cli import main
from polarstem.com_vectors import cell_average, colour_wheel, com_vector_map, remove_descan, vector_rgb
from polarstem.errors import PolarstemError
from polarstem.export import read_map
from polarstem.io import Calibration, Dataset4D
from polarstem.lattice import Lattice


def shifted_disk_scan(field, descan, det=48, radius=8.0, counts=400.0):
    """Patterns whose disk centre is moved by ``field + descan`` (each (2, rows, cols), in px)."""
    shift = field + descan
    rows, cols = shift.shape[1:]
    yy, xx = np.indices((det, det), dtype=np.float64)
    c = (det - 1) / 2
    data = np.empty((rows, cols, det, det), np.float32)
    for r in range(rows):
        for q in range(cols):
            d = np.hypot(yy - c - shift[0, r, q], xx - c - shift[1, r, q])
            data[r, q] = counts * np.clip(radius + 0.5 - d, 0, 1) + 1.0  # anti-aliased edge: sub-pixel shifts
    return data


def make_ds(arr, **cal):
    import dask.array as da

    return Dataset4D(data=da.from_array(arr, chunks=(3, 4) + arr.shape[2:]), calibration=Calibration(**cal),
                     source="synthetic")


def test_remove_descan_takes_out_a_plane_and_keeps_the_rest():
    rows, cols = np.indices((12, 16), dtype=np.float64)
    field = np.stack([np.sin(rows / 2.0), np.cos(cols / 3.0)]) * 0.3
    plane = np.stack([0.5 + 0.02 * rows - 0.01 * cols, -1.0 + 0.03 * cols])
    com = field + plane
    com[0, 3, 4] = np.nan  # a pattern with no counts
    corrected, coeffs = remove_descan(com)
    # what is left of the field is the field less its own best plane: the fit cannot tell the two apart
    np.testing.assert_allclose(corrected[1], field[1] - _plane_of(field[1]), atol=1e-12)
    assert np.isnan(corrected[0, 3, 4])
    assert coeffs.shape == (2, 3)
    np.testing.assert_allclose(coeffs[1], [-1.0, 0.0, 0.03] + _coeffs_of(field[1]), atol=1e-12)
    with pytest.raises(PolarstemError):
        remove_descan(com[0])


def _coeffs_of(v):
    rows, cols = np.indices(v.shape, dtype=np.float64)
    a = np.stack([np.ones(v.size), rows.ravel(), cols.ravel()], 1)
    return np.linalg.lstsq(a, v.ravel(), rcond=None)[0]


def _plane_of(v):
    rows, cols = np.indices(v.shape, dtype=np.float64)
    c = _coeffs_of(v)
    return c[0] + c[1] * rows + c[2] * cols


def test_colours_follow_the_class_colours_and_brightness_the_length():
    angles = np.pi / 4 * np.arange(8)
    rgb = vector_rgb(np.sin(angles)[None], np.cos(angles)[None], vmax=1.0)[0]
    np.testing.assert_allclose(rgb, direction_colors()[:, :3], atol=1e-6)
    half = vector_rgb(np.array([[0.0]]), np.array([[0.5]]), vmax=1.0)[0, 0]
    np.testing.assert_allclose(half, 0.5 * direction_colors()[0, :3], atol=1e-6)
    dark = vector_rgb(np.array([[np.nan, 0.0]]), np.array([[1.0, 0.0]]), vmax=1.0)[0]
    np.testing.assert_array_equal(dark, 0.0)
    wheel = colour_wheel(33)
    assert wheel.shape == (33, 33, 3) and wheel[0, 0].max() == 0.0  # outside the rim
    np.testing.assert_allclose(wheel[16, 32], direction_colors()[0, :3], atol=0.05)  # +x at the right rim
    np.testing.assert_allclose(wheel[32, 16], direction_colors()[2, :3], atol=0.05)  # +y (rows) at the bottom


def test_cell_average_is_the_window_mean():
    v = np.zeros((2, 6, 6))
    v[0, ::2, ::2] = 1.0  # a field that swings inside every 2 x 2 cell
    avg = cell_average(v, (2, 2))
    np.testing.assert_allclose(avg[0, 1:, 1:], 0.25)
    v[:, 3, 3] = np.nan  # no CoM there: the mean of the other three in its window
    avg = cell_average(v, (2, 2))
    assert np.isfinite(avg).all()
    assert avg[0, 3, 3] == pytest.approx(1 / 3)


def test_com_vector_map_recovers_the_field_under_a_descan_ramp():
    rows, cols = np.indices((8, 12), dtype=np.float64)
    # four domains pushing the beam +x, -x / -x, +x: their own best plane is zero, so all of it survives
    field = np.zeros((2, 8, 12))
    field[1] = np.where((rows < 4) == (cols < 6), 1.5, -1.5)
    descan = np.stack([0.4 + 0.1 * rows, -0.3 + 0.05 * cols - 0.08 * rows])
    arr = shifted_disk_scan(field, descan)
    ds = make_ds(arr, mrad_per_px=0.5)
    vm = com_vector_map(ds, lattice=Lattice(period=(2.0, 2.0)))
    assert vm.units == "mrad"
    np.testing.assert_allclose(vm.vectors, 0.5 * field, atol=0.05)  # in mrad, the ramp gone
    # the ramp's slopes (its offset is relative to the disk centre found in the mean pattern)
    np.testing.assert_allclose(vm.descan[:, 1:], 0.5 * np.array([[0.1, 0.0], [-0.08, 0.05]]), atol=0.005)
    assert vm.cell_vectors.shape == vm.vectors.shape
    np.testing.assert_allclose(vm.cell_vectors[:, 1:3, 1:5], vm.vectors[:, 1:3, 1:5], atol=0.01)  # inside a domain
    # +x in the top-left domain, -x in the top-right: the colours of classes 0 and 4
    rgb = vm.rgb(vmax=0.75)
    np.testing.assert_allclose(rgb[1, 2], direction_colors()[0, :3], atol=0.05)
    np.testing.assert_allclose(rgb[1, 9], direction_colors()[4, :3], atol=0.05)
    with pytest.raises(PolarstemError, match="'com' detector"):
        com_vector_map(ds, "adf")


def test_cli_com_vector_writes_rgb_maps_and_components(tmp_path):
    rows, cols = np.indices((9, 12), dtype=np.float64)
    field = np.stack([np.where(rows < 4, 1.0, -1.0), np.zeros_like(rows)])
    arr = shifted_disk_scan(field, np.zeros_like(field))
    np.save(tmp_path / "scan.npy", arr)
    (tmp_path / "scan.json").write_text('{"scan_step_nm": 0.13, "convergence_mrad": 20.0}')
    assert main(["virtual", str(tmp_path / "scan.npy"), "--kind", "com-vector", "-o", str(tmp_path / "com.png")]) == 0
    from PIL import Image

    png = np.asarray(Image.open(tmp_path / "com.png"))
    assert png.shape[1] >= 512 + 16 and png.shape[2] == 3  # enlarged, the colour wheel beside it
    vectors, meta = read_map(tmp_path / "com_vectors.tif")
    assert vectors.shape == (4, 9, 12)
    assert meta["calibration"]["scan_step_nm"] == [0.13, 0.13]
    info = meta["provenance"]["com_vector"]
    assert info["units"] == "mrad" and len(info["descan_plane"]["y"]) == 3
    assert np.nanmean(vectors[0, :4]) > 0 > np.nanmean(vectors[0, 5:])  # top half +y, bottom half -y
    # as data: an RGB TIFF with the calibration, one pixel per position
    assert main(["virtual", str(tmp_path / "scan.npy"), "--kind", "com-vector", "--outer", "9", "--units", "px",
                 "-o", str(tmp_path / "bf_com.tif")]) == 0
    rgb, meta = read_map(tmp_path / "bf_com.tif")
    assert rgb.shape == (9, 12, 3) and rgb.dtype == np.uint8
    assert meta["provenance"]["detector"]["outer"] == 9
    assert main(["virtual", str(tmp_path / "scan.npy"), "--kind", "com-vector", "-o", str(tmp_path / "x.jpg")]) == 2
