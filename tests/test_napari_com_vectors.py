"""The CoM vector view in the Virtual detector dock: an RGB layer beside the opened one, in a real viewer."""

from __future__ import annotations

import dask.array as da
import numpy as np

from polarstem._napari._reader import virtual_image_layer
from polarstem._napari._state import dataset_of, state_for
from polarstem.com_vectors import remove_descan, vector_rgb
from polarstem.io import Calibration, Dataset4D

from .test_com_vectors import shifted_disk_scan

PLUGIN = "napari-polarstem"
TIMEOUT = 20000


def test_com_vectors_get_their_own_rgb_layer(make_napari_viewer, qtbot):
    from napari.layers import Layer

    rows, cols = np.indices((8, 12), dtype=np.float64)
    field = np.zeros((2, 8, 12))
    field[1] = np.where((rows < 4) == (cols < 6), 1.5, -1.5)  # +x / -x domains
    descan = np.stack([0.1 * rows, 0.05 * cols])
    data = shifted_disk_scan(field, descan)
    ds = Dataset4D(data=da.from_array(data, chunks=(4, 12, 48, 48)),
                   calibration=Calibration(scan_step_nm=(0.2, 0.2)), source="dpc.npy")
    viewer = make_napari_viewer()
    layer = viewer.add_layer(Layer.create(*virtual_image_layer(ds, background=False)))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Virtual detector")
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=TIMEOUT)

    widget.component_combo.setCurrentText("vectors")
    widget.set_detector("com")
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=TIMEOUT)
    vectors = viewer.layers[f"{layer.name} · CoM vectors"]
    assert vectors.rgb and vectors.data.shape == (8, 12, 3)
    assert tuple(vectors.scale) == tuple(layer.scale)
    com = state_for(dataset_of(layer)).com
    np.testing.assert_allclose(vectors.data, vector_rgb(*remove_descan(com)[0]), atol=1e-6)
    # the descan ramp is gone: the +x domain (top left) is red, the -x domain (top right) cyan
    assert vectors.data[1, 2, 0] > 0.8 > vectors.data[1, 2, 2]
    assert vectors.data[1, 9, 2] > 0.8 > vectors.data[1, 9, 0]
    assert "CoM vectors" in widget.status_label.text()

    widget.component_combo.setCurrentText("magnitude")  # a view of the stored result: no new job
    assert not widget.is_busy()
    magnitude = viewer.layers[f"{layer.name} · CoM"]
    np.testing.assert_allclose(magnitude.data, np.hypot(com[0], com[1]), rtol=1e-5)
    assert viewer.layers[f"{layer.name} · CoM vectors"] is vectors
