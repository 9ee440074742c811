"""The napari reader on real detector files, in a real viewer: shapes, calibrations, errors, laziness."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import yaml

from polarstem._napari import _reader
from polarstem._napari._state import DATASET_KEY, dataset_of, state_for
from polarstem.io import load

PLUGIN = "napari-polarstem"

# (folder fixture, path, scan shape, scan step nm or None) from shared/realdata/README.md
FOUR_D = [
    ("realdata", "blockfile/test1.blo", (3, 2, 144, 144), 12.8),
    ("realdata", "blockfile/test2.blo", (2, 3, 5, 5), 64.0),
    ("realdata", "arina/test_00_master.h5", (4, 4, 192, 192), 0.13915206),
    ("realdata", "topspin/topspin_test_A.app5", (2, 5, 14, 12), 2.0),
    ("realdata", "emd/py4DSTEM_size2x3x4x5.h5", (2, 3, 4, 5), 0.126796875),
    ("merlin_dir", "Merlin_navigation4x2_ROI/001_4x2_6bit.mib", (2, 4, 256, 256), None),
    ("merlin_dir", "Merlin_navigation4x2_ROI/002_4x2_6bit_roi128.mib", (2, 4, 128, 256), None),
    ("merlin_dir", "Merlin_navigation4x2_signalNx256_ROI/"
     "003_merlin_test_roi_sig256x64_nav4x2_hot_pixel_52x_39y.mib", (2, 4, 64, 256), None),
    ("merlin_dir", "Merlin_Single_Quad/Quad_9_Frame_CounterDepth_24_Rows_256.mib", (3, 3, 512, 512), None),
]
NOT_4D = [
    ("hspy/example2_v3.1.hspy", "single 16x16 image"),
    ("tvips/test_tvips_2345_000.tvips", "3D"),
    ("emd/Si100_4D.emd", "3D scan"),
]
NOT_OURS = ["tia/new/16x16-diffraction_imagel_5x5x256x256_EDS.emi", "digitalmicrograph/2D/test_diffraction_pattern.dm3"]


@pytest.fixture
def notifications(monkeypatch):
    """Messages napari shows the user during the test."""
    from napari.utils.notifications import notification_manager

    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def direct_bf(data: np.ndarray, center, radius) -> np.ndarray:
    """Bright field straight from the array: sum of the pixels within ``radius`` of ``center``."""
    ky, kx = data.shape[2:]
    yy, xx = np.indices((ky, kx))
    mask = np.hypot(yy - center[0], xx - center[1]) <= radius
    return np.where(mask, np.nan_to_num(data.astype(np.float64)), 0).sum(axis=(2, 3))


@pytest.mark.parametrize("root,rel,shape,step", FOUR_D, ids=[Path(r[1]).name for r in FOUR_D])
def test_4d_file_opens_as_calibrated_bright_field(make_napari_viewer, request, root, rel, shape, step):
    path = request.getfixturevalue(root) / rel
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.data.shape == shape[:2]
    ds = dataset_of(layer)
    assert ds.shape == shape
    assert isinstance(ds.data, da.Array)  # the dataset behind the layer stays lazy
    expected_scale = (step, step) if step else (1.0, 1.0)
    np.testing.assert_allclose(layer.scale, expected_scale, rtol=1e-6)
    assert str(layer.units[0]) == ("nanometer" if step else "pixel")
    # the image is the bright field of the loaded array, computed the plain way
    g = state_for(ds).geometry
    expected = direct_bf(np.asarray(ds.data.compute()), g.center, g.disk_radius_px)
    np.testing.assert_allclose(layer.data, expected, rtol=1e-5)


def test_merlin_header_opens_its_data(make_napari_viewer, merlin_dir):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(merlin_dir / "Merlin_navigation4x2_ROI/001_4x2_6bit.hdr", plugin=PLUGIN)
    assert dataset_of(layer).shape == (2, 4, 256, 256)


def test_frame_stack_without_scan_shape_opens_square_with_warning(make_napari_viewer, merlin_dir, notifications):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(merlin_dir / "Merlin_Single_Quad/Single_9_Frame_CounterDepth_6_Rows_256.mib",
                           plugin=PLUGIN)
    assert dataset_of(layer).shape == (3, 3, 256, 256)
    assert any("3x3 scan" in n.message for n in notifications)


@pytest.mark.parametrize("rel,words", NOT_4D, ids=[Path(r[0]).name for r in NOT_4D])
def test_not_4d_file_gives_one_line_notification(make_napari_viewer, realdata, notifications, rel, words):
    viewer = make_napari_viewer()
    assert _reader.napari_get_reader(str(realdata / rel)) is not None  # our file type: we say why not
    layers = viewer.open(realdata / rel, plugin=PLUGIN)
    assert layers == [] and len(viewer.layers) == 0
    messages = [n.message for n in notifications]
    assert any(words in m and "not 4D-STEM" in m for m in messages), messages
    assert all("\n" not in m and "Traceback" not in m for m in messages)


@pytest.mark.parametrize("rel", NOT_OURS)
def test_other_file_types_are_left_to_other_readers(realdata, rel):
    assert _reader.napari_get_reader(str(realdata / rel)) is None


def test_npy_not_4d_left_to_napari_but_4d_read(tmp_path):
    np.save(tmp_path / "image.npy", np.zeros((8, 8), np.float32))
    np.save(tmp_path / "scan.npy", np.zeros((2, 3, 4, 5), np.float32))
    assert _reader.napari_get_reader(str(tmp_path / "image.npy")) is None
    assert _reader.napari_get_reader(str(tmp_path / "scan.npy")) is _reader.read_4dstem
    assert _reader.napari_get_reader(str(tmp_path)) is None  # a plain folder is not ours


def test_simulate_folder_opens(make_napari_viewer, tmp_path):
    """A folder as ``polarstem simulate`` writes it (manifest.json naming the data file)."""
    rng = np.random.default_rng(0)
    data = rng.poisson(5, (4, 6, 16, 16)).astype(np.float32)
    data[:, :, 6:10, 6:10] += 100  # a bright-field disk
    folder = tmp_path / "knn_sim"
    folder.mkdir()
    np.save(folder / "data.npy", data)
    np.save(folder / "labels.npy", np.zeros((4, 6), np.int8))
    (folder / "manifest.json").write_text(json.dumps({"data_file": "data.npy"}))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(folder, plugin=PLUGIN)
    assert layer.name == "knn_sim"
    assert layer.data.shape == (4, 6)
    g = state_for(dataset_of(layer)).geometry
    np.testing.assert_allclose(layer.data, direct_bf(data, g.center, g.disk_radius_px), rtol=1e-5)


def test_big_dataset_fills_in_from_a_worker(make_napari_viewer, qtbot, realdata, monkeypatch):
    """Above SYNC_BYTES the layer appears at once and the bright field arrives from a thread."""
    import threading

    from polarstem._napari import _workers

    monkeypatch.setattr(_reader, "SYNC_BYTES", 0)
    go = threading.Event()
    real = _workers.virtual_image

    def held_back(*args, **kwargs):  # the computation waits until the layer is shown
        assert go.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(_workers, "virtual_image", held_back)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(realdata / "blockfile/test1.blo", plugin=PLUGIN)
    assert "computing" in layer.metadata["polarstem_detector"] and not layer.data.any()
    # a widget opened meanwhile waits for the reader's pass instead of reading the file again
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Virtual detector")
    qtbot.waitUntil(lambda: state_for(dataset_of(layer)).mean_pattern is not None, timeout=20000)
    assert widget._worker is None
    qtbot.waitUntil(lambda: widget.pattern_view.pixmap() is not None and not widget.pattern_view.pixmap().isNull(),
                    timeout=5000)
    go.set()
    qtbot.waitUntil(lambda: layer.metadata["polarstem_detector"] == "BF", timeout=20000)
    ds = dataset_of(layer)
    g = state_for(ds).geometry
    np.testing.assert_allclose(layer.data, direct_bf(np.asarray(ds.data.compute()), g.center, g.disk_radius_px),
                               rtol=1e-5)
    assert state_for(ds).mean_pattern is not None


def test_4d_array_added_directly_stays_lazy(make_napari_viewer, realdata):
    ds = load(realdata / "blockfile/test1.blo")
    viewer = make_napari_viewer()
    layer = viewer.add_image(ds.data, name="4D", metadata={DATASET_KEY: ds})
    assert isinstance(layer.data, da.Array) and layer.data.ndim == 4
    assert layer.data is ds.data


def test_manifest_and_reader_extensions_agree():
    root = Path(__file__).resolve().parents[1]
    manifest = yaml.safe_load((root / "src" / "polarstem" / "napari.yaml").read_text())
    patterns = manifest["contributions"]["readers"][0]["filename_patterns"]
    assert sorted(p.lstrip("*") for p in patterns) == sorted(_reader.EXTENSIONS)


def test_npe2_finds_the_installed_manifest():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    mf = pm.get_manifest("napari-polarstem")
    names = {w.display_name for w in mf.contributions.widgets}
    assert {"Virtual detector", "Polarization map"} <= names
    assert mf.contributions.sample_data and mf.contributions.readers


def test_napari_start_does_not_import_heavy_frameworks():
    import subprocess
    import sys

    code = ("import sys, polarstem._napari._reader, polarstem._napari._widget, polarstem._napari._sample_data;"
            "print(','.join(m for m in ('torch', 'abtem') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_sample_data_opens(make_napari_viewer):
    from polarstem.errors import PolarstemError
    from polarstem.sample import sample_dataset_path

    try:
        sample_dataset_path()
    except PolarstemError:
        pytest.skip("no sample dataset in sample_data/ yet")
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "knn_scan")
    (layer,) = viewer.layers
    ds = dataset_of(layer)
    assert isinstance(ds.data, da.Array) and layer.data.shape == ds.scan_shape


def test_truncated_file_gives_one_line_notification(make_napari_viewer, realdata, tmp_path, notifications):
    broken = tmp_path / "cut.blo"
    broken.write_bytes((realdata / "blockfile/test1.blo").read_bytes()[:30000])
    viewer = make_napari_viewer()
    assert viewer.open(broken, plugin=PLUGIN) == []
    messages = [n.message for n in notifications]
    assert any("cut.blo" in m and "truncated" in m for m in messages), messages
    assert all("\n" not in m for m in messages)
