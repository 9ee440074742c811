"""The "Polarization map" widget driven as a user would, in a real viewer under Xvfb."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polarstem.models import list_models

SHIPPED = [m["name"] for m in list_models() if "pattern" in m.get("modes", [])]
pytestmark = [pytest.mark.gui, pytest.mark.skipif(not SHIPPED, reason="no shipped weights yet")]


@pytest.fixture
def scan_file(tmp_path):
    from tests.test_classify import disk_patterns

    np.save(tmp_path / "scan.npy", disk_patterns((16, 20)))
    (tmp_path / "scan.json").write_text(json.dumps({"scan_step_nm": 0.25, "mrad_per_px": 1.2,
                                                     "beam_energy_kev": 200, "convergence_mrad": 20}))
    return tmp_path / "scan.npy"


@pytest.fixture
def viewer_and_widget(make_napari_viewer, scan_file):
    viewer = make_napari_viewer()
    viewer.open(str(scan_file), plugin="napari-polarstem")
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Polarization map")
    i = widget.model_combo.findData(SHIPPED[0])
    widget.model_combo.setCurrentIndex(i)
    widget.mode_combo.setCurrentText("pattern")
    return viewer, widget


def _run_and_wait(qtbot, widget, timeout=120_000):
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def test_roi_run_layers_click_and_export(qtbot, viewer_and_widget, tmp_path):
    from polarstem.export import read_map, read_maps

    viewer, widget = viewer_and_widget
    image = viewer.layers["scan.npy"]
    assert image.scale[-1] == pytest.approx(0.25)
    # a rectangle ROI drawn in world (nm) coordinates over rows 4-9, cols 5-14
    viewer.add_shapes([[[4 * 0.25, 5 * 0.25], [9 * 0.25, 14 * 0.25]]], shape_type="rectangle", name="ROI")
    assert widget.roi_picker.value is viewer.layers["ROI"]  # the picker follows the layer list
    widget.roi_check.setChecked(True)
    _run_and_wait(qtbot, widget)
    assert widget.result is not None and widget.result.complete
    classes = viewer.layers["polarization classes"]
    assert classes.data.shape == (16, 20)
    assert tuple(classes.scale) == pytest.approx((0.25, 0.25))
    done = widget.result.done
    assert done.any() and not done.all()
    assert done[4:10, 5:15].mean() > 0.8 and not done[:3].any()
    assert set(np.unique(classes.data)) <= set(range(-2, 8))
    assert (classes.data[~done] == -1).all()
    for name in ("confidence", "anomaly", "polarization arrows"):
        assert name in viewer.layers
    assert viewer.layers["confidence"].data.shape == (16, 20)
    # re-running on a new ROI updates the same layers in place
    n_layers = len(viewer.layers)
    viewer.layers["ROI"].data = [np.array([[0, 0], [2 * 0.25, 3 * 0.25]])]
    _run_and_wait(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["polarization classes"].data[0, 0] != -1 and viewer.layers["polarization classes"].data[8, 8] == -1
    # clicking shows the pattern and the prediction
    widget.show_position(1, 1)
    assert "class" in widget.pattern_info.text() and not widget.pattern_view.pixmap().isNull()
    # export writes the CLI's folder, which reloads with equal values
    out = widget.export(tmp_path / "export")
    cls, meta = read_map(out / "class.tif")
    np.testing.assert_array_equal(cls, widget.result.classes)
    np.testing.assert_allclose(read_maps(out)["confidence"], widget.result.confidence, equal_nan=True)
    assert meta["provenance"]["model"]["name"] == SHIPPED[0]


def test_cancel_leaves_a_valid_partial_map(qtbot, make_napari_viewer, tmp_path):
    from tests.test_classify import disk_patterns

    np.save(tmp_path / "big.npy", disk_patterns((60, 60), det=128))  # 118 MB: 8 blocks of 16 MB
    (tmp_path / "big.json").write_text(json.dumps({"scan_step_nm": 0.25, "mrad_per_px": 0.6}))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "big.npy"), plugin="napari-polarstem")
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Polarization map")
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(SHIPPED[0]))
    widget.mode_combo.setCurrentText("pattern")
    widget.chunk_bytes = 16 * 2**20
    # cancel once two positions are classified (the bar counts positions then; before, the lattice pass)
    seen = []
    widget.progress_bar.valueChanged.connect(lambda v: seen.append(widget.status_label.text()))
    widget.progress_bar.valueChanged.connect(
        lambda v: widget.cancel() if v >= 2 and widget.progress_bar.maximum() == 3600 else None)
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    # the status line said how fast and how long, while it ran
    assert any("positions/s" in t and "s left" in t for t in seen), seen
    res = widget.result
    assert res is not None and not res.complete and "cancelled" in widget.status_label.text()
    assert 0 < res.done.sum() < res.done.size
    assert (res.classes[res.done] != -1).all() and (res.classes[~res.done] == -1).all()  # a direction or -2
    layer = viewer.layers["polarization classes"]
    np.testing.assert_array_equal(layer.data, res.classes)


def test_no_dataset_gives_a_message_not_a_traceback(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Polarization map")
    widget.run()
    assert widget._worker is None


def test_napari_writer_saves_the_maps_folder(qtbot, viewer_and_widget, tmp_path):
    from polarstem.export import read_map

    viewer, widget = viewer_and_widget
    _run_and_wait(qtbot, widget)
    layers = [viewer.layers[n] for n in ("polarization classes", "anomaly outline", "confidence", "anomaly")]
    from napari.plugins.io import save_layers

    written = save_layers(str(tmp_path / "saved"), layers, plugin="napari-polarstem")
    assert written
    cls, meta = read_map(tmp_path / "saved" / "class.tif")
    np.testing.assert_array_equal(cls, widget.result.classes)
    assert (tmp_path / "saved" / "maps.hspy").exists()


def test_wall_bands_checkbox_reaches_the_classification(qtbot, make_napari_viewer):
    """Cell mode on the sample scan: the checkbox (on by default) decides whether wall bands are given
    to their domains, and the provenance says which; unticked, the map is the model's raw one."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-polarstem", "knn_scan")
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Polarization map")
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(SHIPPED[0]))
    widget.mode_combo.setCurrentText("cell")
    widget.tta_combo.setCurrentIndex(widget.tta_combo.findData(1))
    assert widget.walls_check.isChecked()
    _run_and_wait(qtbot, widget)
    assigned = widget.result
    assert assigned.params["wall_bands"] == "assigned"
    widget.walls_check.setChecked(False)
    _run_and_wait(qtbot, widget)
    raw = widget.result
    assert raw.params["wall_bands"] == "kept"
    changed = assigned.classes != raw.classes
    assert changed.sum() == assigned.params["wall_band_positions"]


def test_the_default_model_is_preselected_and_marked(make_napari_viewer):
    """The widget opens on the model classify and evaluate use by default, marked as such, so the UI
    and the CLI give the same maps unless the user picks another model."""
    from polarstem.acquisition import default_model

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Polarization map")
    assert widget.model_combo.currentData() == default_model()
    assert widget.model_combo.currentText().endswith("· default")
    marked = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())
              if widget.model_combo.itemText(i).endswith("· default")]
    assert len(marked) == 1


def _result(classes, anomaly=None):
    """A classification result holding the given class map (confidence 0.9 where classified)."""
    from polarstem.classify import ClassificationResult

    res = ClassificationResult.empty(classes.shape, mode="pattern", model="test", model_sha256="0" * 64)
    res.classes = classes.astype(np.int8)
    res.done[:] = classes != -1
    res.confidence[res.done] = 0.9
    res.proba[res.done] = 1 / 8
    res.anomaly = anomaly
    res.complete = True
    return res


def test_uncertain_is_grey_not_classified_transparent_and_the_legend_says_so(make_napari_viewer):
    from polarstem._napari._layers import OUTLINE_LAYER, show_result
    from polarstem.io import Calibration
    from polarstem.overlay import UNCERTAIN_RGBA

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Polarization map")
    classes = np.zeros((10, 12), np.int8)
    classes[:, 6:] = 3
    classes[2:5, 2:5] = -2
    classes[8:] = -1
    anomaly = np.zeros((10, 12), np.float32)
    anomaly[5:8, 7:10] = 6.0
    show_result(viewer, _result(classes, anomaly), Calibration(scan_step_nm=(0.2, 0.2)))
    layer = viewer.layers["polarization classes"]
    rgba = layer.colormap.map(np.array([-2, -1, 3]))
    np.testing.assert_allclose(rgba[0], UNCERTAIN_RGBA)
    assert rgba[1][3] == 0 and rgba[2][3] == 1
    outline = viewer.layers[OUTLINE_LAYER]
    (ring,) = outline.data  # one closed outline along the edges of the 3x3 block at rows 5-7, cols 7-9
    assert ring.min(axis=0) == pytest.approx((4.5, 6.5)) and ring.max(axis=0) == pytest.approx((7.5, 9.5))
    assert tuple(outline.scale) == pytest.approx((0.2, 0.2))
    show_result(viewer, _result(classes, np.zeros((10, 12), np.float32)), Calibration(scan_step_nm=(0.2, 0.2)))
    assert len(outline.data) == 0 and viewer.layers[OUTLINE_LAYER] is outline
    show_result(viewer, _result(classes, anomaly), Calibration(scan_step_nm=(0.2, 0.2)))
    assert len(outline.data) == 1 and np.allclose(outline.edge_color[0], (1, 1, 1, 1))
    assert widget.roi_picker.value is None  # the outline is no ROI to pick
    # the in-dock legend: a swatch for every value the map can hold, and the outline
    from qtpy.QtWidgets import QLabel

    texts = [w.text() for w in widget.findChildren(QLabel)]
    for words in ["0 [100]", "7 [1-10]", "uncertain", "not classified", "anomaly ≥ 3"]:
        assert words in texts, words
    assert "robust z" in widget.anomaly_note.text()
    from polarstem._napari._layers import class_label

    assert class_label(-2).startswith("uncertain") and class_label(-1) == "not classified"


def test_an_empty_result_shows_without_error(make_napari_viewer):
    """Nothing classified (a cancel before the first block): no arrows, no crash; a real map after it works."""
    from polarstem._napari._layers import ARROW_LAYER, show_result
    from polarstem.io import Calibration

    viewer = make_napari_viewer()
    cal = Calibration(scan_step_nm=(0.2, 0.2))
    show_result(viewer, _result(np.full((6, 6), -1, np.int8)), cal)
    assert len(viewer.layers[ARROW_LAYER].data) == 0
    show_result(viewer, _result(np.full((6, 6), 2, np.int8)), cal)
    assert len(viewer.layers[ARROW_LAYER].data) > 0
    show_result(viewer, _result(np.full((6, 6), -1, np.int8)), cal)
    assert len(viewer.layers[ARROW_LAYER].data) == 0


def test_cancel_at_once_keeps_the_previous_map_and_settles(qtbot, make_napari_viewer, tmp_path):
    from tests.test_classify import disk_patterns

    np.save(tmp_path / "big.npy", disk_patterns((40, 40), det=128))
    (tmp_path / "big.json").write_text(json.dumps({"scan_step_nm": 0.25, "mrad_per_px": 0.6}))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "big.npy"), plugin="napari-polarstem")
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Polarization map")
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(SHIPPED[0]))
    widget.mode_combo.setCurrentText("pattern")
    widget.tta_combo.setCurrentIndex(widget.tta_combo.findData(1))
    widget.chunk_bytes = 16 * 2**20
    # no map yet: a cancel at once leaves none, Export stays off, the status settles
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert widget.result is None and not widget.export_button.isEnabled()
    assert "cancelling" not in widget.status_label.text() and "no map" in widget.status_label.text()
    # a small ROI run makes a map
    viewer.add_shapes([[[0, 0], [2 * 0.25, 3 * 0.25]]], shape_type="rectangle", name="ROI")
    widget.roi_check.setChecked(True)
    _run_and_wait(qtbot, widget)
    first = widget.result
    assert first is not None and first.done.sum() > 0 and widget.export_button.isEnabled()
    shown = np.array(viewer.layers["polarization classes"].data)
    # cancelling the next run at once keeps it: same result, same layers, Export still on
    widget.roi_check.setChecked(False)
    widget.run()
    assert not widget.export_button.isEnabled()  # not while a run is going
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    if widget.result is first:  # the cancel came before the first block finished
        np.testing.assert_array_equal(viewer.layers["polarization classes"].data, shown)
        assert "previous map is kept" in widget.status_label.text()
    else:  # a block finished first: its partial map replaces the old one
        assert not widget.result.complete and "cancelled: partial map" in widget.status_label.text()
    assert widget.export_button.isEnabled() and "cancelling" not in widget.status_label.text()


def test_baseline_models_say_so_and_the_card_is_not_clipped(make_napari_viewer, qtbot):
    from polarstem._napari._polarization_widget import is_baseline
    from polarstem.models import list_models

    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Polarization map")
    baselines = [m["name"] for m in list_models() if m.get("available") and is_baseline(m)]
    assert "pca-knn" in baselines
    for i in range(widget.model_combo.count()):
        marked = "· baseline" in widget.model_combo.itemText(i)
        assert marked == (widget.model_combo.itemData(i) in baselines)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("pca-knn"))
    assert widget.card_label.text().startswith("Baseline for comparison")
    # the accuracy on the card is the one in the picker
    acc = widget.model_combo.currentText().split("acc. ")[1][:4]
    assert f"held-out accuracy {acc}" in widget.card_label.text()
    qtbot.wait(50)
    label = widget.card_label
    assert label.height() >= label.heightForWidth(label.width())


def test_noise_is_shown_uncertain_with_one_sentence(qtbot, make_napari_viewer, tmp_path):
    """A scan of shot noise: every position grey (-2) and the dock says the scan is not polar KNN."""
    from polarstem.analysis.trust import NoiseScan

    np.save(tmp_path / "noise.npy", np.asarray(NoiseScan(shape=(8, 8, 48, 48)).dataset().data))
    (tmp_path / "noise.json").write_text(json.dumps({"scan_step_nm": 0.13, "mrad_per_px": 1.0,
                                                      "beam_energy_kev": 200, "convergence_mrad": 20}))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "noise.npy"), plugin="napari-polarstem")
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Polarization map")
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(SHIPPED[0]))
    widget.mode_combo.setCurrentText("pattern")
    _run_and_wait(qtbot, widget)
    assert (viewer.layers["polarization classes"].data == -2).all()
    assert "does not look like polar KNN" in widget.status_label.text()
    out = widget.export(tmp_path / "export")
    assert "does not look like polar KNN" in json.loads((out / "provenance.json").read_text())["verdict"]
