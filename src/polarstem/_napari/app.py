"""Start napari with polarstem set up: ``polarstem view`` and the screenshot of ``polarstem demo``."""

from __future__ import annotations

import os
from pathlib import Path

PLUGIN = "napari-polarstem"
WIDGETS = ("Virtual detector", "Polarization map")


def open_viewer(path=None, navigation_shape=None, run: bool = True, show: bool = True,
                calibration: dict | None = None):
    """A viewer with ``path`` opened through the polarstem reader and both dock widgets docked.

    ``calibration`` holds values the user gave (``polarstem view --beam-energy ...``); they override
    the file's, as in the docks' calibration fields.
    """
    import napari

    from ..errors import PolarstemError

    viewer = napari.Viewer(show=show, title="napari-polarstem")
    try:
        set_up_viewer(viewer, path, navigation_shape, calibration)
    except PolarstemError:
        viewer.close()
        raise
    if run:
        napari.run()
    return viewer


def set_up_viewer(viewer, path=None, navigation_shape=None, calibration: dict | None = None):
    """Open ``path`` in ``viewer`` and dock both polarstem widgets (``viewer.window.polarstem_widgets``)."""
    from ..io import apply_calibration, load
    from ._reader import open_dataset

    if path is not None:
        ds = load(path, navigation_shape=navigation_shape) if navigation_shape is not None else open_dataset(Path(path))
        if calibration:
            apply_calibration(ds, calibration)
        add_dataset_layer(viewer, ds)
    widgets = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in WIDGETS}
    viewer.window.polarstem_widgets = widgets
    viewer.reset_view()  # the docks took room from the canvas: fit the image again
    return viewer


def add_dataset_layer(viewer, ds):
    """Add the virtual image layer of a dataset (a layer-data tuple or a layer being filled in)."""
    from ._reader import virtual_image_layer

    made = virtual_image_layer(ds)
    if isinstance(made, tuple):
        data, kwargs, _ = made
        return viewer.add_image(data, **kwargs)
    viewer.add_layer(made)
    return made


def demo_screenshot(sample: Path, out_png: Path, model: str) -> Path:
    """Open the sample, run the Polarization map widget to the end, save a screenshot of the window."""
    from qtpy.QtWidgets import QApplication

    if not os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        from ..errors import PolarstemError

        raise PolarstemError("no display for the screenshot: run under `xvfb-run -a` (make demo does)")
    viewer = open_viewer(sample, run=False, show=True)
    try:
        widget = viewer.window.polarstem_widgets["Polarization map"]
        i = widget.model_combo.findData(model)
        if i >= 0:
            widget.model_combo.setCurrentIndex(i)
        widget.run()
        app = QApplication.instance()
        import time

        t0 = time.monotonic()
        while widget._worker is not None and time.monotonic() - t0 < 600:
            app.processEvents()
            time.sleep(0.05)
        for _ in range(20):
            app.processEvents()
            time.sleep(0.02)
        if widget.result is not None:
            r, c = (s // 2 for s in widget.result.classes.shape)
            widget.show_position(r, c)
        viewer.window.resize(1500, 950)
        for _ in range(10):
            app.processEvents()
        viewer.reset_view()  # fit the image to the canvas of the resized window
        for _ in range(10):
            app.processEvents()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(out_png), canvas_only=False)
        return out_png
    finally:
        viewer.close()
