"""`polarstem view` on a 1600x1000 screen: both docks fit, Run and Export stay on screen, the image is
fitted to the canvas, the status says what is open; the Domain gap dock works as it opens."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SCREEN_HEIGHT = 1000


@pytest.fixture
def view(qtbot, make_napari_viewer):
    """The sample opened as `polarstem view sample_data` does, on the test's 1600x1000 screen."""
    from qtpy.QtWidgets import QApplication

    from polarstem._napari.app import set_up_viewer
    from polarstem.sample import sample_dataset_path

    screen = QApplication.primaryScreen().availableGeometry()
    if screen.height() > SCREEN_HEIGHT + 50:
        pytest.skip("run under xvfb-run -s '-screen 0 1600x1000x24' to check the layout on a small screen")
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, SCREEN_HEIGHT)
    set_up_viewer(viewer, sample_dataset_path())
    widgets = viewer.window.polarstem_widgets
    qtbot.waitUntil(lambda: not widgets["Virtual detector"].is_busy(), timeout=30000)
    qtbot.wait(300)
    return viewer, widgets


def _on_screen(widget) -> bool:
    """Visible to the user: shown, not scrolled or clipped away, inside the screen."""
    from qtpy.QtWidgets import QApplication

    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    bottom = widget.mapToGlobal(widget.rect().bottomRight()).y()
    return bottom <= QApplication.primaryScreen().geometry().bottom()


def test_both_docks_fit_and_the_buttons_are_on_screen(view):
    viewer, widgets = view
    vd, pm = widgets["Virtual detector"], widgets["Polarization map"]
    assert vd.sizeHint().height() + pm.sizeHint().height() <= SCREEN_HEIGHT - 120  # menus, titles, status bar
    for button in (vd.apply_button, pm.run_button, pm.cancel_button, pm.export_button):
        assert _on_screen(button), button.text()
    assert _on_screen(pm.status_label) and _on_screen(pm.legend) and _on_screen(vd.pattern_view)
    label = pm.card_label
    assert _on_screen(label) and label.height() >= label.heightForWidth(label.width())


def test_status_lines_name_the_open_dataset(view):
    viewer, widgets = view
    name = viewer.layers[0].name
    assert widgets["Polarization map"].status_label.text().startswith(f"{name}: 30x30 scan") or \
        widgets["Polarization map"].status_label.text().startswith(f"{name}:")
    assert name in widgets["Virtual detector"].status_label.text() or "mean pattern" in \
        widgets["Virtual detector"].status_label.text()
    assert "open a 4D-STEM file" not in widgets["Polarization map"].status_label.text()


def test_the_image_fills_the_canvas_after_the_docks_open(view):
    viewer, _ = view
    shot = viewer.screenshot(canvas_only=True)
    lit = shot[..., :3].max(axis=-1) > 0  # the canvas background is black, the bright field is not
    rows, cols = np.nonzero(lit)
    height, width = lit.shape
    span = max((rows.max() - rows.min() + 1) / height, (cols.max() - cols.min() + 1) / width)
    assert span > 0.85, span


def test_domain_gap_dock_works_out_of_the_box(make_napari_viewer, qtbot):
    from polarstem._napari._domain_gap import DATA_LAYER, TRAIN_LAYER

    viewer = make_napari_viewer()
    viewer.open_sample("napari-polarstem", "knn_scan")
    _, widget = viewer.window.add_plugin_dock_widget("napari-polarstem", "Domain gap")
    assert "sample" in widget.train_note.text() or "training set" in widget.train_note.text()
    assert widget.layer.value is viewer.layers[0]
    widget.n_points.setValue(50)
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=120_000)
    assert TRAIN_LAYER in viewer.layers and DATA_LAYER in viewer.layers, widget.status.text()
    assert "outside the training data" in widget.status.text()
    widget.train.setText("/no/such/folder")
    widget.run_button.click()
    assert "not a simulated labeled folder" in widget.status.text()
