"""The "Virtual detector" dock widget: see the mean pattern and the detector on it, pick BF / ADF / CoM.

The widget only lays out controls and reacts to updates. Every pass over the file (mean pattern,
virtual image) runs in a ``thread_worker`` over :func:`._workers.virtual_detector_updates`, which
yields typed updates. Each kind of virtual image gets its own layer beside the opened one
("<name> · BF", "· ADF", "· CoM"), updated in place when that kind is computed again; the opened
image is never overwritten.
"""

from __future__ import annotations

import threading
from functools import partial

import numpy as np
from qtpy.QtCore import QPointF, Qt, QTimer
from qtpy.QtGui import QBrush, QColor, QImage, QPainter, QPen, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..errors import PolarstemError
from ..virtual import DetectorGeometry, VirtualDetector, annulus_edge_warning
from ._calibration import CalibrationForm
from ._layout import scrolling_body
from ._state import (
    DETECTOR_KEY,
    SOURCE_KEY,
    active_dataset_layer,
    dataset_layers,
    dataset_of,
    dataset_picker,
    set_calibration,
    source_of,
    state_events,
    state_for,
)
from ._workers import (
    ImageReady,
    JobCancelled,
    JobFailed,
    PatternReady,
    Progress,
    detector_label,
    read_pattern,
    virtual_detector_updates,
)

KIND_LABELS = {"bf": "bright field (BF)", "adf": "annular dark field (ADF)", "com": "centre of mass (CoM)"}
#: "vectors": the DPC view, descan plane removed, hue = direction, brightness = length (polarstem.com_vectors)
COM_COMPONENTS = ("magnitude", "x", "y", "vectors")
#: Side of the pattern view (px): beside the detector controls, so the dock stays short.
PATTERN_SIZE = 170
#: Suffix of each virtual-image layer's name, after the opened layer's ("scan.mib · ADF").
LAYER_SUFFIX = {"bf": "BF", "adf": "ADF", "com": "CoM", "com-vectors": "CoM vectors"}
#: ``layer.metadata`` key of the kind of virtual image a layer holds.
KIND_KEY = "polarstem_virtual_kind"


def dataset_status(dataset, note: str = "") -> str:
    """A status line naming the open dataset: "scan.mib: 2x4 scan, 256x256 px patterns · <note>"."""
    (rows, cols), (ky, kx) = dataset.scan_shape, dataset.detector_shape
    return f"{dataset.name}: {rows}x{cols} scan, {ky}x{kx} px patterns" + (f" · {note}" if note else "")


def com_component(com: np.ndarray, component: str) -> np.ndarray:
    """One 2D view of a (2, rows, cols) centre-of-mass result (com_y, com_x)."""
    if component == "x":
        return com[1]
    if component == "y":
        return com[0]
    return np.hypot(com[0], com[1])


def pattern_image(pattern: np.ndarray) -> QImage:
    """A diffraction pattern as a log-scaled greyscale QImage (percentile-clipped, so hot pixels don't matter)."""
    img = np.log1p(np.clip(np.nan_to_num(np.asarray(pattern, np.float64)), 0, None))
    lo, hi = np.percentile(img, [1, 99.8])
    img = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)
    data = np.ascontiguousarray((img * 255).astype(np.uint8))
    return QImage(data.data, data.shape[1], data.shape[0], data.strides[0], QImage.Format_Grayscale8).copy()


def detector_radii_px(detector: VirtualDetector, geometry: DetectorGeometry) -> tuple[float, float | None]:
    """(inner, outer) radius in px of what ``detector`` integrates, with the same defaults as the core."""
    inner = geometry.to_px(detector.inner, detector.units)
    outer = geometry.to_px(detector.outer, detector.units)
    if detector.kind == "adf":
        return (1.1 * geometry.disk_radius_px if inner is None else inner), outer
    return 0.0, (geometry.disk_radius_px if outer is None else outer)


def detector_pixmap(pattern: np.ndarray, geometry: DetectorGeometry | None, detector: VirtualDetector | None,
                    size: int = 240) -> QPixmap:
    """The mean pattern with the detector drawn on it: BF disk (green), ADF annulus (orange), CoM centre."""
    qimg = pattern_image(pattern)
    ky, kx = pattern.shape
    s = size / max(ky, kx)
    pm = QPixmap.fromImage(qimg).scaled(max(1, round(kx * s)), max(1, round(ky * s)),
                                        Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
    if geometry is None or detector is None:
        return pm
    p = QPainter(pm)
    p.setRenderHint(QPainter.Antialiasing)
    c = QPointF((geometry.center[1] + 0.5) * s, (geometry.center[0] + 0.5) * s)
    try:
        inner, outer = detector_radii_px(detector, geometry)
    except PolarstemError:
        inner, outer = 0.0, None
    if detector.kind == "bf":
        color = QColor(60, 220, 90)
        p.setPen(QPen(color, 2))
        fill = QColor(color)
        fill.setAlpha(60)
        p.setBrush(QBrush(fill))
        p.drawEllipse(c, outer * s, outer * s)
    elif detector.kind == "adf":
        color = QColor(255, 150, 40)
        edge = float(np.hypot(ky, kx))
        hi = edge if outer is None else outer
        fill = QColor(color)
        fill.setAlpha(70)
        from qtpy.QtGui import QPainterPath

        ring = QPainterPath()
        ring.addEllipse(c, hi * s, hi * s)
        hole = QPainterPath()
        hole.addEllipse(c, inner * s, inner * s)
        p.setClipRect(0, 0, pm.width(), pm.height())
        p.fillPath(ring.subtracted(hole), QBrush(fill))
        p.setPen(QPen(color, 2))
        p.setBrush(Qt.NoBrush)
        p.drawEllipse(c, inner * s, inner * s)
        if outer is not None:
            p.drawEllipse(c, outer * s, outer * s)
    else:  # centre of mass: the 0-mrad point and the bright-field disk for reference
        color = QColor(80, 180, 255)
        p.setPen(QPen(color, 1, Qt.DashLine))
        r = geometry.disk_radius_px * s
        p.drawEllipse(c, r, r)
        p.setPen(QPen(color, 2))
        arm = max(6.0, 0.4 * r)
        p.drawLine(QPointF(c.x() - arm, c.y()), QPointF(c.x() + arm, c.y()))
        p.drawLine(QPointF(c.x(), c.y() - arm), QPointF(c.x(), c.y() + arm))
    p.end()
    return pm


def _mark_dead(widget, *_) -> None:
    widget._dead = True
    try:
        widget.viewer.mouse_drag_callbacks.remove(widget._on_click)
    except (ValueError, RuntimeError):
        pass
    widget._rerun = False
    widget._cancel.set()
    if widget._progress is not None:
        widget._progress.close()
        widget._progress = None


def _disconnect_state_events(slot, *_) -> None:
    try:
        state_events.changed.disconnect(slot)
    except (ValueError, RuntimeError):
        pass


class VirtualDetectorWidget(QWidget):
    """Dock widget: dataset, mean pattern with the detector drawn on it, detector controls, progress."""

    #: Delay before a changed control recomputes, so dragging a spin box starts one job, not twenty.
    DEBOUNCE_MS = 300

    def __init__(self, napari_viewer):
        super().__init__()
        self._dead = False  # the Qt side is gone (dock closed, viewer closed): ignore late updates
        self.viewer = napari_viewer
        self._worker = None
        self._worker_layer = None
        self._cancel = threading.Event()
        self._progress = None
        self._rerun = False  # a newer request arrived while a job was running
        self.edge_warning = None  # the last detector applied reaches beyond the detector edge

        self._fitted = False
        self._build_pattern_view(napari_viewer)
        self._build_detector_controls()
        self._lay_out()
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(self.DEBOUNCE_MS)
        self._debounce.timeout.connect(self.apply)
        self._connect_signals()
        self._units_shown = "mrad"
        self._sync_enabled()
        active = active_dataset_layer(self.viewer)
        if active is not None:
            self.dataset_picker.value = active
        self._on_dataset_changed()

    def _build_pattern_view(self, napari_viewer) -> None:
        """The dataset picker, its calibration form, and the pattern (mean or clicked) the detector is drawn on."""
        self.dataset_picker = dataset_picker(napari_viewer)
        self.calibration = CalibrationForm()
        self.pattern_view = QLabel("open a 4D-STEM file or File ▸ Open Sample ▸ napari-polarstem")
        self.pattern_view.setAlignment(Qt.AlignCenter)
        self.pattern_view.setFixedSize(PATTERN_SIZE, PATTERN_SIZE)
        self.pattern_view.setWordWrap(True)
        self.geometry_label = QLabel()
        self.geometry_label.setWordWrap(True)
        self.geometry_label.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
        self.geometry_label.setStyleSheet("font-size: 10px;")
        self.mean_button = QPushButton("back to the mean pattern")
        self.mean_button.setToolTip("click a scan position in the image to see its own pattern")
        self.mean_button.setVisible(False)
        self._clicked = None  # (dataset, (row, col), pattern) shown instead of the mean
        self._pattern_worker = None

    def _build_detector_controls(self) -> None:
        """Detector kind, angles and CoM component; Apply/Cancel, progress and status."""
        self.kind_combo = QComboBox()
        for kind, text in KIND_LABELS.items():
            self.kind_combo.addItem(text, kind)
        self.units_combo = QComboBox()
        self.units_combo.addItems(["mrad", "px"])
        self.inner_spin = self._angle_spin("inner angle; 'auto' = just outside the bright-field disk")
        self.outer_spin = self._angle_spin("outer angle; 'auto' = the bright-field disk (BF) or the detector edge (ADF)")
        self.component_combo = QComboBox()
        self.component_combo.addItems(COM_COMPONENTS)
        self.apply_button = QPushButton("Apply")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximum(1)
        self.progress_bar.setMaximumHeight(14)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
        self.kind_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.kind_combo.setMinimumContentsLength(8)

    def _lay_out(self) -> None:
        """The pattern beside the detector form, the status below, the calibration form last."""
        top = QFormLayout()
        top.addRow("dataset", self.dataset_picker.native)
        form = QFormLayout()
        form.setVerticalSpacing(3)
        form.addRow("detector", self.kind_combo)
        form.addRow("angles in", self.units_combo)
        form.addRow("inner", self.inner_spin)
        form.addRow("outer", self.outer_spin)
        form.addRow("show", self.component_combo)
        self._form = form
        buttons = QHBoxLayout()
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.cancel_button)
        controls = QVBoxLayout()
        controls.addLayout(form)
        controls.addLayout(buttons)
        controls.addStretch(1)
        pattern = QVBoxLayout()
        pattern.addWidget(self.pattern_view)
        pattern.addWidget(self.mean_button)
        side_by_side = QHBoxLayout()
        side_by_side.addLayout(pattern)
        side_by_side.addLayout(controls, 1)
        layout = scrolling_body(self)
        # stacked with the Polarization map dock, this one keeps its natural height and gives the rest
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)
        layout.addLayout(top)
        layout.addLayout(side_by_side)
        layout.addWidget(self.geometry_label)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.calibration)  # below the controls: unfolded, it never pushes Apply away
        layout.addStretch(1)

    def _connect_signals(self) -> None:
        """Controls, clicks, layer changes and the shared dataset state to their handlers; the
        state connection is undone when the widget goes (the state outlives it)."""
        self.dataset_picker.changed.connect(self._on_dataset_changed)
        self.calibration.given.connect(self._on_calibration_given)
        self.kind_combo.currentIndexChanged.connect(self._on_controls_changed)
        self.units_combo.currentIndexChanged.connect(self._on_units_changed)
        self.inner_spin.valueChanged.connect(self._on_controls_changed)
        self.outer_spin.valueChanged.connect(self._on_controls_changed)
        self.component_combo.currentIndexChanged.connect(self._on_component_changed)
        self.apply_button.clicked.connect(self.apply)
        self.mean_button.clicked.connect(self.show_mean_pattern)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.selection.events.active.connect(self._on_selection)
        state_events.changed.connect(self._on_state_changed)
        self.destroyed.connect(partial(_disconnect_state_events, self._on_state_changed))
        self.destroyed.connect(partial(_mark_dead, self))

    def _update_decimals(self, units: str, geometry: DetectorGeometry | None) -> None:
        """About a tenth of a detector pixel: 1 decimal in px, more in mrad on finely sampled detectors."""
        decimals = 1
        if units == "mrad" and geometry is not None and geometry.mrad_per_px:
            decimals = max(1, int(np.ceil(-np.log10(geometry.mrad_per_px))) + 1)
        for spin in (self.inner_spin, self.outer_spin):
            spin.blockSignals(True)
            spin.setDecimals(decimals)
            spin.setSingleStep(10.0 ** (1 - decimals))
            spin.blockSignals(False)

    @staticmethod
    def _angle_spin(tip: str) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(0.0, 1e5)
        spin.setDecimals(1)
        spin.setSpecialValueText("auto")  # 0 = let the core choose from the bright-field disk
        spin.setKeyboardTracking(False)
        spin.setToolTip(tip)
        return spin

    # ---------------------------------------------------------------------------------------------
    # which dataset

    def layer(self):
        """The dataset layer the controls act on."""
        layer = self.dataset_picker.value
        if layer is not None and layer in self.viewer.layers and dataset_of(layer) is not None:
            return layer
        return None

    def _on_layer_removed(self, event=None) -> None:
        if self._dead:
            return
        if self._worker is not None and self._worker_layer is not None and self._worker_layer not in self.viewer.layers:
            self.cancel()

    def _on_selection(self, event=None) -> None:
        """Follow the selected layer: a dataset, or an image computed from one, picks that dataset."""
        if self._dead:
            return
        layer = self.viewer.layers.selection.active
        ds = source_of(layer) if layer is not None else None
        if ds is None:
            return
        base = next((ly for ly in dataset_layers(self.viewer) if dataset_of(ly) is ds), None)
        if base is not None and base is not self.dataset_picker.value:
            self.dataset_picker.value = base

    def _on_dataset_changed(self, *_) -> None:
        """Show the new dataset's detector in the controls; compute its mean pattern if not known yet."""
        if self._dead:
            return
        layer = self.layer()
        self.calibration.set_dataset(dataset_of(layer) if layer is not None else None)
        if layer is None:
            self.pattern_view.setPixmap(QPixmap())
            self.pattern_view.setText("open a 4D-STEM file or File ▸ Open Sample ▸ napari-polarstem")
            self.geometry_label.setText("")
            self.status_label.setText("")
            self._sync_enabled()
            return
        ds = dataset_of(layer)
        state = state_for(ds)
        self._show_detector_in_controls(state.detector, state.geometry)
        self._draw()
        if self._worker is None:
            self.status_label.setText(dataset_status(ds))
        if state.mean_pattern is None and self._worker is None and not state.busy:
            self._start(layer, None)

    def _on_calibration_given(self, given: dict) -> None:
        layer = self.layer()
        if layer is None:
            return
        try:
            set_calibration(self.viewer, dataset_of(layer), given)
        except PolarstemError as exc:
            self._fail(str(exc))
            self.calibration.set_dataset(dataset_of(layer))

    def _on_state_changed(self, state) -> None:
        """Another job (the reader's, for big files) computed something for the dataset shown."""
        try:
            layer = self.layer()
        except RuntimeError:  # the Qt side of this widget is gone
            _disconnect_state_events(self._on_state_changed)
            return
        if layer is None or state_for(dataset_of(layer)) is not state:
            return
        self.calibration.set_dataset(dataset_of(layer))
        if state.geometry is not None and not state.geometry.mrad_per_px and self.units_combo.currentText() == "mrad":
            self.units_combo.setCurrentText("px")  # the mrad calibration was taken back
        self._sync_enabled()
        self._draw()
        if state.mean_pattern is None and self._worker is None and not state.busy:
            self._start(layer, None)

    def _show_detector_in_controls(self, det: VirtualDetector, geometry: DetectorGeometry | None) -> None:
        has_mrad = geometry is not None and bool(geometry.mrad_per_px)
        units = det.units if (det.units == "px" or has_mrad) else "px"
        for w in (self.kind_combo, self.units_combo, self.inner_spin, self.outer_spin):
            w.blockSignals(True)
        self.kind_combo.setCurrentIndex(self.kind_combo.findData(det.kind))
        self.units_combo.setCurrentText(units)
        self._units_shown = units
        self._update_decimals(units, geometry)
        self.inner_spin.setValue(det.inner or 0.0)
        self.outer_spin.setValue(det.outer or 0.0)
        for w in (self.kind_combo, self.units_combo, self.inner_spin, self.outer_spin):
            w.blockSignals(False)
        self._sync_enabled()

    # ---------------------------------------------------------------------------------------------
    # controls

    def detector(self) -> VirtualDetector:
        """The detector the controls describe (raises PolarstemError for impossible angles)."""
        kind = self.kind_combo.currentData()
        inner = self.inner_spin.value() or None
        outer = self.outer_spin.value() or None
        if kind == "bf":
            inner = None
        if kind == "com":
            inner = outer = None
        return VirtualDetector(kind=kind, inner=inner, outer=outer, units=self.units_combo.currentText())

    def set_detector(self, kind: str, inner: float | None = None, outer: float | None = None,
                     units: str | None = None) -> None:
        """Set the controls (as a user would) and recompute; for scripts and tests."""
        for w in (self.kind_combo, self.units_combo, self.inner_spin, self.outer_spin):
            w.blockSignals(True)
        self.kind_combo.setCurrentIndex(self.kind_combo.findData(kind))
        if units is not None:
            self.units_combo.setCurrentText(units)
            self._units_shown = units
        layer = self.layer()
        self._update_decimals(self.units_combo.currentText(),
                              state_for(dataset_of(layer)).geometry if layer is not None else None)
        self.inner_spin.setValue(inner or 0.0)
        self.outer_spin.setValue(outer or 0.0)
        for w in (self.kind_combo, self.units_combo, self.inner_spin, self.outer_spin):
            w.blockSignals(False)
        self._sync_enabled()
        self._draw()
        self.apply()

    def _sync_enabled(self) -> None:
        kind = self.kind_combo.currentData()
        layer = self.layer()
        geometry = state_for(dataset_of(layer)).geometry if layer is not None else None
        has_mrad = geometry is not None and bool(geometry.mrad_per_px)
        self.units_combo.model().item(0).setEnabled(has_mrad)  # mrad needs a calibration
        self.inner_spin.setEnabled(kind == "adf")
        self.outer_spin.setEnabled(kind in ("bf", "adf"))
        self.units_combo.setEnabled(kind in ("bf", "adf"))
        self.component_combo.setEnabled(kind == "com")
        self._form.labelForField(self.component_combo).setEnabled(kind == "com")
        for w in (self.kind_combo, self.apply_button):
            w.setEnabled(layer is not None)

    def _on_units_changed(self, *_) -> None:
        """Convert the angles shown to the new units, so the detector stays where it was."""
        layer = self.layer()
        new = self.units_combo.currentText()
        geometry = state_for(dataset_of(layer)).geometry if layer is not None else None
        if geometry is not None and geometry.mrad_per_px and new != self._units_shown:
            f = 1 / geometry.mrad_per_px if new == "px" else geometry.mrad_per_px
            values = [spin.value() * f for spin in (self.inner_spin, self.outer_spin)]
            self._update_decimals(new, geometry)
            for spin, value in zip((self.inner_spin, self.outer_spin), values):
                spin.blockSignals(True)
                spin.setValue(value)
                spin.blockSignals(False)
        self._units_shown = new
        self._on_controls_changed()

    def _on_controls_changed(self, *_) -> None:
        self._sync_enabled()
        self._draw()
        self._debounce.start()

    def _on_component_changed(self, *_) -> None:
        layer = self.layer()
        if layer is None:
            return
        state = state_for(dataset_of(layer))
        shown = [self.virtual_layer(layer, kind) for kind in ("com", "com-vectors")]
        if state.com is not None and any(ly is not None for ly in shown):
            self._put_image(layer, VirtualDetector("com"), state.com)

    def _draw(self) -> None:
        layer = self.layer()
        if layer is None:
            return
        state = state_for(dataset_of(layer))
        if state.mean_pattern is None:
            self.pattern_view.setPixmap(QPixmap())
            self.pattern_view.setText("computing the mean pattern…")
            return
        try:
            det = self.detector()
        except PolarstemError:
            det = None
        clicked = self._clicked if self._clicked is not None and self._clicked[0] is dataset_of(layer) else None
        pattern = state.mean_pattern if clicked is None else clicked[2]
        self.pattern_view.setPixmap(detector_pixmap(pattern, state.geometry, det, size=PATTERN_SIZE))
        self.mean_button.setVisible(clicked is not None)
        what = "mean pattern" if clicked is None else f"pattern at scan row {clicked[1][0]}, col {clicked[1][1]}"
        g = state.geometry
        if g is not None:
            cal = f"{g.mrad_per_px:.3g} mrad/px" if g.mrad_per_px else "no mrad calibration: angles in px"
            disk = (f"bright-field disk r = {g.disk_radius_px:.1f} px" if state.geometry_found
                    else "no bright-field disk found (centre = detector centre)")
            self.geometry_label.setText(f"{what} · {disk} at ({g.center[0]:.1f}, {g.center[1]:.1f}) · {cal}")

    def _on_click(self, viewer, event) -> None:
        """A click on the image shows that scan position's pattern under the detector."""
        layer = self.layer()
        if self._dead or layer is None or event.type != "mouse_press" or not layer.visible:
            return
        r, c = (int(round(v)) for v in np.asarray(layer.world_to_data(event.position))[-2:])
        rows, cols = dataset_of(layer).scan_shape
        if 0 <= r < rows and 0 <= c < cols:
            self.show_pattern_at(r, c)

    def show_pattern_at(self, row: int, col: int) -> None:
        """Read the pattern at (row, col) in a worker and show it with the detector drawn on it."""
        from napari.qt.threading import thread_worker

        layer = self.layer()
        if layer is None or self._pattern_worker is not None:
            return
        ds = dataset_of(layer)
        worker = thread_worker(read_pattern, start_thread=False)(ds, row, col)

        def shown(pattern) -> None:
            if not self._dead:
                self._clicked = (ds, (row, col), pattern)
                self._draw()

        def done() -> None:
            self._pattern_worker = None

        worker.returned.connect(shown)
        worker.errored.connect(lambda exc: None if self._dead else self._fail(f"cannot read that pattern: {exc}"))
        worker.finished.connect(done)
        self._pattern_worker = worker
        worker.start()

    def show_mean_pattern(self) -> None:
        self._clicked = None
        self._draw()

    # ---------------------------------------------------------------------------------------------
    # running

    def apply(self) -> None:
        """Compute the virtual image the controls describe into its layer (cancels a job already running)."""
        self._debounce.stop()
        layer = self.layer()
        if layer is None:
            return
        try:
            det = self.detector()
            state = state_for(dataset_of(layer))
            if state.geometry is not None:
                detector_radii_px(det, state.geometry)  # raises for mrad without calibration
        except PolarstemError as exc:
            self._fail(str(exc))
            return
        self.edge_warning = None
        if state.geometry is not None:
            self.edge_warning = annulus_edge_warning(det, state.geometry, dataset_of(layer).detector_shape)
            if self.edge_warning:
                from napari.utils.notifications import show_warning

                show_warning(f"{layer.name}: {self.edge_warning}")
        if self._worker is not None:
            self._rerun = True
            self._cancel.set()
            return
        self._start(layer, det)

    def _start(self, layer, det: VirtualDetector | None) -> None:
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        ds = dataset_of(layer)
        state = state_for(ds)
        self._rerun = False
        self._cancel = threading.Event()
        what = "mean pattern" if det is None else detector_label(det)
        self._progress = progress(total=0, desc=f"{layer.name}: {what}")
        worker = thread_worker(virtual_detector_updates, start_thread=False)(
            ds, det, self._cancel, geometry=state.geometry, pattern=state.mean_pattern)
        worker.yielded.connect(lambda update, layer=layer: self._on_update(layer, update))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._worker_layer = layer
        state.busy = True
        self.cancel_button.setEnabled(True)
        self.status_label.setText(f"computing {what}…")
        worker.start()

    def cancel(self) -> None:
        """Stop the running job after its current chunk; the layer keeps its previous image."""
        self._rerun = False
        self._debounce.stop()
        self._cancel.set()

    def is_busy(self) -> bool:
        return self._worker is not None or self._debounce.isActive()

    def _on_update(self, layer, update) -> None:
        if self._dead:
            return
        state = state_for(dataset_of(layer))
        if isinstance(update, Progress):
            self.progress_bar.setMaximum(max(update.total, 1))
            self.progress_bar.setValue(update.done)
            self.status_label.setText(f"computing {update.stage}… {update.done}/{update.total}")
            bar = self._progress
            if bar is not None:
                desc = f"{layer.name}: {update.stage}"
                if bar.desc != desc:
                    bar.set_description(desc)
                bar.total = update.total
                bar.n = update.done
                bar.refresh()
        elif isinstance(update, PatternReady):
            state.mean_pattern = update.pattern
            if state.geometry is None:
                state.geometry, state.geometry_found = update.geometry, update.disk_found
            self.status_label.setText(dataset_status(dataset_of(layer)))
            state_events.changed.emit(state)  # redraws here (if shown) and in any other widget
        elif isinstance(update, ImageReady):
            state.detector = update.detector
            if update.detector.kind == "com":
                state.com = update.image
            if layer in self.viewer.layers:
                self._put_image(layer, update.detector, update.image)
            kind = update.detector.kind
            kind = "com-vectors" if kind == "com" and self.component_combo.currentText() == "vectors" else kind
            text = f"{layer.name}: {self._shown_label(update.detector)} in layer '{self._layer_name(layer, kind)}'"
            if self.edge_warning and update.detector.kind != "com":
                text += f"\n⚠ {self.edge_warning}"
            self.status_label.setText(text)
        elif isinstance(update, JobCancelled):
            self.status_label.setText("cancelled: the layers keep their previous images")
        elif isinstance(update, JobFailed):
            self._fail(update.message)

    def _shown_label(self, det: VirtualDetector) -> str:
        label = detector_label(det)
        return f"{label} {self.component_combo.currentText()}" if det.kind == "com" else label

    @staticmethod
    def _layer_name(base, kind: str) -> str:
        return f"{base.name} · {LAYER_SUFFIX[kind]}"

    def virtual_layer(self, base, kind: str):
        """The layer holding ``kind`` (bf, adf, com) of the dataset shown by ``base``, if made already."""
        ds = dataset_of(base)
        for ly in self.viewer.layers:
            if ly.metadata.get(SOURCE_KEY) is ds and ly.metadata.get(KIND_KEY) == kind:
                return ly
        return None

    def _put_image(self, base, det: VirtualDetector, image: np.ndarray) -> None:
        """Show the image in its kind's layer beside ``base`` (made on first use, then updated in place)."""
        component = self.component_combo.currentText()
        if det.kind == "com" and component == "vectors":
            self._put_vectors(base, det, image)
            return
        if det.kind == "com":
            image = com_component(image, component)
        image = np.asarray(image, dtype=np.float32)
        colormap = "twilight_shifted" if det.kind == "com" and component != "magnitude" else "gray"
        finite = image[np.isfinite(image)]
        limits = (float(finite.min()), float(finite.max())) if finite.size and finite.max() > finite.min() else None
        layer = self.virtual_layer(base, det.kind)
        if layer is None:
            kwargs = {"contrast_limits": limits} if limits else {}
            layer = self.viewer.add_image(
                image, name=self._layer_name(base, det.kind), scale=tuple(base.scale)[-2:],
                units=tuple(base.units)[-2:], colormap=colormap,
                metadata={SOURCE_KEY: dataset_of(base), KIND_KEY: det.kind, DETECTOR_KEY: self._shown_label(det)},
                **kwargs)
            return
        layer.data = image
        layer.metadata[DETECTOR_KEY] = self._shown_label(det)
        if limits:
            layer.contrast_limits = limits
        layer.colormap = colormap

    def _put_vectors(self, base, det: VirtualDetector, com: np.ndarray) -> None:
        """The CoM as RGB vectors (descan plane removed) in its own RGB layer beside ``base``."""
        from ..com_vectors import remove_descan, vector_rgb

        rgb = vector_rgb(*remove_descan(com)[0])
        layer = self.virtual_layer(base, "com-vectors")
        if layer is not None:
            layer.data = rgb
            return
        self.viewer.add_image(rgb, rgb=True, name=self._layer_name(base, "com-vectors"), scale=tuple(base.scale)[-2:],
                              units=tuple(base.units)[-2:],
                              metadata={SOURCE_KEY: dataset_of(base), KIND_KEY: "com-vectors",
                                        DETECTOR_KEY: self._shown_label(det)})

    def _on_finished(self) -> None:
        done_layer = self._worker_layer
        self._worker = None
        self._worker_layer = None
        if done_layer is not None and dataset_of(done_layer) is not None:
            state_for(dataset_of(done_layer)).busy = False
        if self._dead:
            return
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.cancel_button.setEnabled(False)
        self.progress_bar.setValue(0)
        if self._rerun:
            self._rerun = False
            self.apply()
        elif self.layer() is not None:
            state = state_for(dataset_of(self.layer()))
            if state.mean_pattern is None and not state.busy:
                self._start(self.layer(), None)  # the dataset shown changed while another job ran

    def _fail(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        self.status_label.setText(message)
        show_warning(message)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        """Fit the image to the canvas again once the docks have taken their room."""
        super().showEvent(event)
        if not self._fitted:
            self._fitted = True
            QTimer.singleShot(0, self.viewer.reset_view)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.cancel()
        super().closeEvent(event)
