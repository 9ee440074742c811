"""The "Virtual detector" dock widget in a real viewer: each kind of virtual image gets its own layer beside
the opened one, computed off the UI thread."""

from __future__ import annotations

import threading
import time

import dask.array as da
import numpy as np
import pytest
from qtpy.QtCore import QTimer

from polarstem._napari import _workers
from polarstem._napari._reader import virtual_image_layer
from polarstem._napari._state import dataset_of, state_for
from polarstem._napari._widget import VirtualDetectorWidget
from polarstem.io import Dataset4D, load

PLUGIN = "napari-polarstem"
TIMEOUT = 20000


@pytest.fixture
def notifications():
    from napari.utils.notifications import notification_manager

    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def open_with_widget(make_napari_viewer, qtbot, path, **viewer_kwargs):
    viewer = make_napari_viewer(**viewer_kwargs)
    (layer,) = viewer.open(path, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Virtual detector")
    wait_idle(qtbot, widget)
    return viewer, layer, widget


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=TIMEOUT)


def direct_annulus(data, center, inner, outer):
    """Sum over inner <= r <= outer px, straight from the array (the test's own computation)."""
    yy, xx = np.indices(data.shape[2:])
    rr = np.hypot(yy - center[0], xx - center[1])
    mask = (rr >= inner) & (rr <= outer)
    return np.where(mask, data.astype(np.float64), 0).sum(axis=(2, 3))


def direct_com(data, center, scale=1.0):
    yy, xx = np.indices(data.shape[2:])
    f = data.astype(np.float64)
    total = f.sum(axis=(2, 3))
    com_y = (f * (yy - center[0])).sum(axis=(2, 3)) / total
    com_x = (f * (xx - center[1])).sum(axis=(2, 3)) / total
    return com_y * scale, com_x * scale


def test_widget_shows_mean_pattern_and_detector(make_napari_viewer, qtbot, realdata):
    viewer, layer, widget = open_with_widget(make_napari_viewer, qtbot, realdata / "blockfile/test1.blo")
    assert isinstance(widget, VirtualDetectorWidget)
    assert widget.dataset_picker.value is layer
    ds = dataset_of(layer)
    state = state_for(ds)
    np.testing.assert_allclose(state.mean_pattern, np.asarray(ds.data.compute(), np.float64).mean(axis=(0, 1)))
    pm = widget.pattern_view.pixmap()
    assert pm is not None and not pm.isNull() and pm.width() > 100
    assert "bright-field disk r =" in widget.geometry_label.text()
    # no mrad calibration in this file: angles only in px
    assert widget.units_combo.currentText() == "px"
    assert not widget.units_combo.model().item(0).isEnabled()


def test_detector_kinds_get_their_own_layers(make_napari_viewer, qtbot, realdata):
    """BF, ADF and CoM side by side as layers named after the opened one; the opened image stays as it was."""
    viewer, layer, widget = open_with_widget(make_napari_viewer, qtbot, realdata / "blockfile/test1.blo")
    ds = dataset_of(layer)
    data = np.asarray(ds.data.compute())
    g = state_for(ds).geometry
    scale = tuple(layer.scale)
    opened = np.array(layer.data)

    widget.set_detector("adf", 20, 60, "px")
    wait_idle(qtbot, widget)
    adf = viewer.layers[f"{layer.name} · ADF"]
    assert tuple(adf.scale) == scale and adf.units == layer.units
    np.testing.assert_allclose(adf.data, direct_annulus(data, g.center, 20, 60), rtol=1e-5)
    assert adf.metadata["polarstem_detector"] == "ADF 20-60 px"
    np.testing.assert_array_equal(layer.data, opened)

    widget.set_detector("bf", outer=5, units="px")
    wait_idle(qtbot, widget)
    bf = viewer.layers[f"{layer.name} · BF"]
    np.testing.assert_allclose(bf.data, direct_annulus(data, g.center, 0, 5), rtol=1e-5)

    widget.set_detector("com")
    wait_idle(qtbot, widget)
    com = viewer.layers[f"{layer.name} · CoM"]
    com_y, com_x = direct_com(data, g.center)
    np.testing.assert_allclose(com.data, np.hypot(com_y, com_x), rtol=1e-4)
    widget.component_combo.setCurrentText("x")  # a view of the stored result: no new job
    assert not widget.is_busy()
    np.testing.assert_allclose(com.data, com_x, rtol=1e-4, atol=1e-6)
    widget.component_combo.setCurrentText("y")
    np.testing.assert_allclose(com.data, com_y, rtol=1e-4, atol=1e-6)

    # a new ADF replaces the ADF layer's image in place; the opened image never changes
    n_layers = len(viewer.layers)
    widget.set_detector("adf", 30, 50, "px")
    wait_idle(qtbot, widget)
    assert len(viewer.layers) == n_layers and viewer.layers[f"{layer.name} · ADF"] is adf
    np.testing.assert_allclose(adf.data, direct_annulus(data, g.center, 30, 50), rtol=1e-5)
    np.testing.assert_array_equal(layer.data, opened)
    # selecting a virtual layer keeps the dock on its dataset
    viewer.layers.selection.active = com
    assert widget.dataset_picker.value is layer


def test_adf_beyond_the_detector_edge_warns(make_napari_viewer, qtbot, realdata, notifications):
    viewer, layer, widget = open_with_widget(make_napari_viewer, qtbot, realdata / "blockfile/test1.blo")
    widget.set_detector("adf", 20, 60, "px")  # inside the 144 px detector
    wait_idle(qtbot, widget)
    assert not any("beyond the detector edge" in n.message for n in notifications)
    widget.set_detector("adf", 20, 100, "px")  # the nearest edge is ~72 px from the centre
    wait_idle(qtbot, widget)
    assert any("beyond the detector edge" in n.message for n in notifications)
    assert "beyond the detector edge" in widget.status_label.text()
    assert f"{layer.name} · ADF" in viewer.layers  # still computed


def test_mrad_angles_on_calibrated_file(make_napari_viewer, qtbot, realdata):
    """TopSpin files carry mrad/px: an annulus in mrad equals the same annulus in px."""
    viewer, layer, widget = open_with_widget(make_napari_viewer, qtbot, realdata / "topspin/topspin_test_A.app5")
    ds = dataset_of(layer)
    g = state_for(ds).geometry
    assert g.mrad_per_px and widget.units_combo.model().item(0).isEnabled()
    inner, outer = 3 * g.mrad_per_px, 6 * g.mrad_per_px
    widget.set_detector("adf", inner, outer, "mrad")
    wait_idle(qtbot, widget)
    data = np.asarray(ds.data.compute())
    inner_px, outer_px = (s.value() / g.mrad_per_px for s in (widget.inner_spin, widget.outer_spin))
    assert inner_px == pytest.approx(3, abs=0.01) and outer_px == pytest.approx(6, abs=0.01)
    adf = viewer.layers[f"{layer.name} · ADF"]
    np.testing.assert_allclose(adf.data, direct_annulus(data, g.center, inner_px, outer_px), rtol=1e-5)
    # switching the units converts the angles shown, so the detector stays put
    widget.units_combo.setCurrentText("px")
    assert widget.inner_spin.value() == pytest.approx(3, abs=0.01)
    assert widget.outer_spin.value() == pytest.approx(6, abs=0.01)
    wait_idle(qtbot, widget)


def test_bad_angles_notify_and_keep_the_image(make_napari_viewer, qtbot, realdata, notifications):
    viewer, layer, widget = open_with_widget(make_napari_viewer, qtbot, realdata / "blockfile/test1.blo")
    before = np.array(layer.data)
    n_layers = len(viewer.layers)
    widget.set_detector("adf", 500, 900, "px")  # outside the 144x144 detector
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(layer.data, before)
    assert len(viewer.layers) == n_layers
    messages = [n.message for n in notifications]
    assert any("outside" in m for m in messages), messages
    assert "outside" in widget.status_label.text()


class SlowFrames:
    """An array-like whose reads take time, like a big file on a slow disk."""

    def __init__(self, data, delay):
        self.data, self.delay = data, delay
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        time.sleep(self.delay)
        return self.data[key]


def slow_dataset(rows=8, cols=8, k=32, delay=0.25):
    """8 blocks (one per scan column: the chunk iterator merges chunks along rows only), each slow to read."""
    rng = np.random.default_rng(1)
    data = rng.poisson(3, (rows, cols, k, k)).astype(np.float32)
    data[..., k // 2 - 4 : k // 2 + 4, k // 2 - 4 : k // 2 + 4] += 50
    frames = SlowFrames(data, delay)
    lazy = da.from_array(frames, chunks=(rows, 1, k, k), asarray=False)
    return Dataset4D(data=lazy, source="slow.npy"), data, frames


def test_ui_stays_responsive_and_cancel_keeps_image(make_napari_viewer, qtbot):
    from napari.layers import Layer

    ds, data, frames = slow_dataset(delay=0.0)
    viewer = make_napari_viewer()
    layer = viewer.add_layer(Layer.create(*virtual_image_layer(ds, background=False)))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Virtual detector")
    wait_idle(qtbot, widget)
    before = np.array(layer.data)
    frames.delay = 0.25  # from now on each of the 8 blocks takes a while to read

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(20)
    widget.set_detector("adf", 6, 14, "px")
    qtbot.waitUntil(lambda: widget.progress_bar.value() >= 2, timeout=TIMEOUT)
    assert widget.is_busy()
    assert len(ticks) >= 3  # the event loop ran while the worker read the file
    widget.cancel()
    wait_idle(qtbot, widget)
    timer.stop()
    assert "cancelled" in widget.status_label.text()
    np.testing.assert_array_equal(layer.data, before)
    assert widget.virtual_layer(layer, "adf") is None  # nothing made

    # a new request while a job runs replaces it: the last one wins
    widget.set_detector("adf", 6, 14, "px")
    qtbot.waitUntil(lambda: widget.progress_bar.value() >= 1, timeout=TIMEOUT)
    widget.set_detector("adf", 2, 10, "px")
    wait_idle(qtbot, widget)
    g = state_for(ds).geometry
    np.testing.assert_allclose(widget.virtual_layer(layer, "adf").data, direct_annulus(data, g.center, 2, 10), rtol=1e-5)
    np.testing.assert_array_equal(layer.data, before)


def test_worker_yields_typed_updates_only(realdata):
    """The worker runs without Qt: progress, pattern, image, in that order."""
    ds = load(realdata / "blockfile/test1.blo")
    det = _workers.VirtualDetector("adf", 10, 40, "px")
    updates = list(_workers.virtual_detector_updates(ds, det, threading.Event()))
    kinds = [type(u).__name__ for u in updates]
    assert kinds[0] == "Progress" and kinds[-1] == "ImageReady" and "PatternReady" in kinds
    assert kinds.index("PatternReady") < kinds.index("ImageReady")
    cancel = threading.Event()
    cancel.set()
    assert isinstance(list(_workers.virtual_detector_updates(ds, det, cancel))[-1], _workers.JobCancelled)


def test_two_datasets_each_keep_their_detector(make_napari_viewer, qtbot, realdata, merlin_dir):
    viewer, first, widget = open_with_widget(make_napari_viewer, qtbot, realdata / "blockfile/test1.blo")
    widget.set_detector("adf", 20, 60, "px")
    wait_idle(qtbot, widget)
    (second,) = viewer.open(merlin_dir / "Merlin_navigation4x2_ROI/001_4x2_6bit.mib", plugin=PLUGIN)
    qtbot.waitUntil(lambda: widget.dataset_picker.value is second, timeout=TIMEOUT)
    wait_idle(qtbot, widget)
    assert widget.kind_combo.currentData() == "bf"
    viewer.layers.selection.active = first
    assert widget.dataset_picker.value is first
    assert widget.kind_combo.currentData() == "adf" and widget.inner_spin.value() == 20
    assert [c for c in widget.dataset_picker.choices] == [first, second]  # the ADF layer is no dataset
    viewer.layers.remove(second)
    assert list(widget.dataset_picker.choices) == [first]
    first.name = "renamed scan"  # the picker shows layer names as they are now
    assert widget.dataset_picker.native.currentText() == "renamed scan"
    wait_idle(qtbot, widget)


def test_closing_the_viewer_mid_job_is_quiet(make_napari_viewer, qtbot):
    """Updates that arrive after the widget is gone are dropped, and the job is told to stop."""
    from napari.layers import Layer

    ds, _, frames = slow_dataset(delay=0.0)
    viewer = make_napari_viewer()
    viewer.add_layer(Layer.create(*virtual_image_layer(ds, background=False)))
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Virtual detector")
    wait_idle(qtbot, widget)
    frames.delay = 0.2
    widget.set_detector("adf", 6, 14, "px")
    qtbot.waitUntil(lambda: widget.progress_bar.value() >= 1, timeout=TIMEOUT)
    cancel = widget._cancel
    viewer.window.remove_dock_widget(dock)
    widget.deleteLater()
    qtbot.waitUntil(lambda: cancel.is_set(), timeout=5000)
    qtbot.wait(600)  # late updates arrive: they must not raise


def test_screenshot_of_the_widget_is_not_black(make_napari_viewer, qtbot, realdata, tmp_path):
    viewer, layer, widget = open_with_widget(make_napari_viewer, qtbot, realdata / "blockfile/test1.blo", show=True)
    widget.set_detector("adf", 20, 60, "px")
    wait_idle(qtbot, widget)
    shot = viewer.screenshot(str(tmp_path / "shot.png"), canvas_only=False)
    assert shot.ndim == 3 and shot.shape[0] > 200
    assert shot[..., :3].std() > 10  # not a blank (black) grab


def test_click_shows_that_positions_pattern(make_napari_viewer, qtbot, realdata):
    from types import SimpleNamespace

    viewer, layer, widget = open_with_widget(make_napari_viewer, qtbot, realdata / "blockfile/test1.blo")
    ds = dataset_of(layer)
    world = layer.data_to_world((2, 1))  # scan row 2, col 1, in nm
    widget._on_click(viewer, SimpleNamespace(type="mouse_press", position=tuple(world)))
    qtbot.waitUntil(lambda: widget._clicked is not None, timeout=TIMEOUT)
    np.testing.assert_array_equal(widget._clicked[2], np.asarray(ds.data[2, 1].compute(), np.float64))
    assert "row 2, col 1" in widget.geometry_label.text() and widget.mean_button.isVisibleTo(widget)
    widget.mean_button.click()
    assert widget.geometry_label.text().startswith("mean pattern")
    qtbot.waitUntil(lambda: widget._pattern_worker is None, timeout=TIMEOUT)
