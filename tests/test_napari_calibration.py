"""Calibration typed into the docks, as a user fixes a file that lacks it: layers, detector and
classification follow, the export records it, and `polarstem view` takes the same values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qtpy.QtCore import Qt

from polarstem._napari._state import dataset_of, state_for

PLUGIN = "napari-polarstem"
pytestmark = pytest.mark.gui


@pytest.fixture
def notifications():
    from napari.utils.notifications import notification_manager

    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def type_into(qtbot, edit, text):
    """Select all, type, press Enter: what a user does in a field."""
    edit.setFocus()
    edit.selectAll()
    qtbot.keyClicks(edit, text)
    qtbot.keyClick(edit, Qt.Key_Return)


def test_calibration_typed_in_a_dock_reaches_layers_detector_and_other_dock(make_napari_viewer, qtbot, merlin_dir,
                                                                            notifications):
    """A real Merlin file carries no calibration at all: the fields show that, and typed values apply."""
    viewer = make_napari_viewer()
    (layer,) = viewer.open(merlin_dir / "Merlin_navigation4x2_ROI/001_4x2_6bit.hdr", plugin=PLUGIN)
    _, vd = viewer.window.add_plugin_dock_widget(PLUGIN, "Virtual detector")
    _, pm = viewer.window.add_plugin_dock_widget(PLUGIN, "Polarization map")
    qtbot.waitUntil(lambda: not vd.is_busy(), timeout=20000)
    ds = dataset_of(layer)
    form = vd.calibration
    assert form.fields["beam_energy_kev"].placeholderText() == "not in the file"
    assert not vd.units_combo.model().item(0).isEnabled()  # no mrad without a calibration
    assert "beam energy ?" in form.toggle.text()
    form.toggle.click()  # unfold
    assert form.body.isVisibleTo(form)

    type_into(qtbot, form.fields["beam_energy_kev"], "300")
    type_into(qtbot, form.fields["convergence_mrad"], "21.5")
    type_into(qtbot, form.fields["mrad_per_px"], "0.9")
    type_into(qtbot, form.fields["scan_step_nm"], "0.35")
    cal = ds.calibration
    assert (cal.beam_energy_kev, cal.convergence_mrad, cal.mrad_per_px, cal.scan_step_nm) == (300, 21.5, 0.9, (0.35, 0.35))
    assert ds.calibration_given["scan_step_nm"] == {"given": 0.35, "file": None}
    assert tuple(layer.scale) == pytest.approx((0.35, 0.35)) and tuple(str(u) for u in layer.units) == ("nanometer", "nanometer")
    assert state_for(ds).geometry.mrad_per_px == pytest.approx(0.9)
    assert vd.units_combo.model().item(0).isEnabled()
    assert "300 keV*" in form.toggle.text()
    # the other dock shows the same values and judges the model's ranges with them
    assert pm.calibration.fields["beam_energy_kev"].text() == "300"
    assert "beam energy" in pm.warning_label.text() and "300" in pm.warning_label.text()

    # a unit mix-up is refused in one line and changes nothing
    type_into(qtbot, pm.calibration.fields["beam_energy_kev"], "300000")
    assert ds.calibration.beam_energy_kev == 300
    assert any("outside 1-3000 keV" in n.message for n in notifications)
    assert pm.calibration.fields["beam_energy_kev"].text() == "300"

    # emptying a field returns to the file's value
    pm.calibration.fields["scan_step_nm"].clear()
    assert ds.calibration.scan_step_nm == (None, None) and "scan_step_nm" not in ds.calibration_given
    assert tuple(str(u) for u in layer.units) == ("pixel", "pixel") and tuple(layer.scale) == pytest.approx((1, 1))


def test_export_records_the_calibration_in_use_and_a_changed_one_needs_a_new_run(make_napari_viewer, qtbot, tmp_path):
    from polarstem.models import list_models
    from tests.test_classify import disk_patterns

    shipped = [m["name"] for m in list_models() if "pattern" in m.get("modes", [])]
    if not shipped:
        pytest.skip("no shipped weights")
    np.save(tmp_path / "scan.npy", disk_patterns((8, 9)))  # no sidecar: the file says nothing
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "scan.npy"), plugin=PLUGIN)
    _, pm = viewer.window.add_plugin_dock_widget(PLUGIN, "Polarization map")
    pm.model_combo.setCurrentIndex(pm.model_combo.findData(shipped[0]))
    pm.mode_combo.setCurrentText("pattern")
    pm.tta_combo.setCurrentIndex(pm.tta_combo.findData(1))
    pm.calibration.set_values(beam_energy_kev=200, convergence_mrad=20, mrad_per_px=1.2, scan_step_nm=0.25)
    pm.run()
    qtbot.waitUntil(lambda: pm._worker is None, timeout=120_000)
    assert pm.export_button.isEnabled()
    assert tuple(viewer.layers["polarization classes"].scale) == pytest.approx((0.25, 0.25))
    out = pm.export(tmp_path / "maps")
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["input"]["calibration"]["mrad_per_px"] == 1.2
    assert prov["input"]["calibration_given"]["scan_step_nm"] == {"given": 0.25, "file": None}
    # the map was made with 1.2 mrad/px: after a change it is no longer the map of the data as calibrated
    pm.calibration.set_values(mrad_per_px=0.8)
    assert not pm.export_button.isEnabled() and "calibration changed" in pm.status_label.text()
    assert pm.export(tmp_path / "stale") is None and not (tmp_path / "stale").exists()
    assert tuple(viewer.layers["polarization classes"].scale) == pytest.approx((0.25, 0.25))


def test_view_opens_with_the_calibration_given(tmp_path, make_napari_viewer):
    """What `polarstem view FILE --beam-energy 300 --scan-step 0.4` sets up."""
    from polarstem._napari.app import set_up_viewer
    from tests.test_classify import disk_patterns

    np.save(tmp_path / "scan.npy", disk_patterns((6, 7)))
    viewer = set_up_viewer(make_napari_viewer(), tmp_path / "scan.npy",
                           calibration={"beam_energy_kev": 300, "scan_step_nm": 0.4})
    layer = viewer.layers["scan.npy"]
    ds = dataset_of(layer)
    assert ds.calibration.beam_energy_kev == 300 and tuple(layer.scale) == pytest.approx((0.4, 0.4))
    pm = viewer.window.polarstem_widgets["Polarization map"]
    assert pm.calibration.fields["beam_energy_kev"].text() == "300"
