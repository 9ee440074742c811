"""The "Polarization map" dock widget: pick a model, run it over the scan or ROIs, see and export maps.

The widget only lays out controls and reacts to updates: the classification runs in a
``thread_worker`` (``_classify_worker.classify_updates``) that yields typed updates. Layer pickers
are magicgui widgets that follow the layer list; the dock is laid out to fit a 1600x1000 screen
beside the Virtual detector dock (Run, Cancel and Export sit near the top).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from ..classes import CLASS_NAMES, N_CLASSES, direction_colors
from ..overlay import ANOMALY_MEANING, ANOMALY_OUTLINE, UNCERTAIN_RGBA
from ._calibration import CalibrationForm
from ._classify_worker import ClassifyDone, ClassifyPartial, classify_updates
from ._layers import OUTLINE_RGBA, class_label, shapes_to_mask, show_result
from ._layout import scrolling_body
from ._state import dataset_of, dataset_picker, follow_layer_list, set_calibration, state_events
from ._widget import dataset_status, pattern_image
from ._workers import JobFailed, Progress

#: Card entries shown in the dock (the whole card is in the tooltip).
CARD_RANGES = {"beam_energy_kev": "keV", "convergence_mrad": "mrad", "thickness_nm": "nm thick",
               "detector_px": "px detector", "mrad_per_px": "mrad/px", "disk_overlap": "disk overlap α/(λ/a)"}
#: Side of the clicked position's pattern (px).
PATTERN_SIZE = 90
#: Model families kept as baselines for comparison (a card may say so itself with "baseline": true).
BASELINE_FAMILIES = {"PCA-kNN"}


def legend_pixmap(size: int = 60) -> QPixmap:
    """Direction colour wheel: class k at 45°·k from +x towards +y (+y down on screen)."""
    pm = QPixmap(size, size)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.Antialiasing)
    colors = direction_colors()
    r = size * 0.45
    c = size / 2
    for k in range(N_CLASSES):
        col = QColor.fromRgbF(*[float(v) for v in colors[k][:3]])
        p.setBrush(col)
        p.setPen(Qt.NoPen)
        # Qt angles: counter-clockwise from +x in 1/16 degree, screen y down -> class angle negated
        p.drawPie(int(c - r), int(c - r), int(2 * r), int(2 * r), int((-45 * k - 22.5) * 16), int(45 * 16))
    p.setPen(QPen(Qt.black, 1.5))
    for k in range(N_CLASSES):
        a = np.pi / 4 * k
        p.drawLine(int(c), int(c), int(c + 0.7 * r * np.cos(a)), int(c + 0.7 * r * np.sin(a)))
    p.end()
    return pm


def swatch_pixmap(rgba, size: int = 12, outline: bool = False) -> QPixmap:
    """A small square of one colour; transparent ones drawn as an empty box."""
    pm = QPixmap(size, size)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    color = QColor.fromRgbF(*[float(v) for v in rgba])
    if outline:
        p.setPen(QPen(Qt.black, 3))
        p.drawRect(1, 1, size - 3, size - 3)
        p.setPen(QPen(color, 1.5))
        p.drawRect(1, 1, size - 3, size - 3)
    elif rgba[3] > 0:
        p.fillRect(0, 0, size, size, color)
    else:
        p.setPen(QPen(Qt.gray, 1))
        p.drawRect(0, 0, size - 1, size - 1)
    p.end()
    return pm


def legend_entries() -> list[tuple[QPixmap, str]]:
    """(swatch, text) for every value of the class map, and the anomaly outline."""
    colors = direction_colors()
    entries = [(swatch_pixmap(colors[k]), f"{k} {CLASS_NAMES[k]}") for k in range(N_CLASSES)]
    entries.append((swatch_pixmap(UNCERTAIN_RGBA), "uncertain"))
    entries.append((swatch_pixmap((0, 0, 0, 0)), "not classified"))
    entries.append((swatch_pixmap(OUTLINE_RGBA, outline=True), f"anomaly ≥ {ANOMALY_OUTLINE:g}"))
    return entries


def pattern_pixmap(pattern: np.ndarray, size: int = 90) -> QPixmap:
    """A diffraction pattern as a log-scaled greyscale pixmap of ``size`` px."""
    return QPixmap.fromImage(pattern_image(pattern)).scaled(size, size, Qt.KeepAspectRatio, Qt.SmoothTransformation)


def _span(v) -> str:
    """A card range as text: [lo, hi] -> "lo–hi", open ends as "≥ lo" / "≤ hi"."""
    if isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = v
        if lo is not None and hi is not None:
            return f"{lo:g}–{hi:g}"
        return f"≥ {lo:g}" if lo is not None else (f"≤ {hi:g}" if hi is not None else "any")
    return str(v)


def is_baseline(entry: dict) -> bool:
    """A model kept for comparison with the study, not for maps."""
    return bool(entry.get("baseline", entry.get("family") in BASELINE_FAMILIES))


def card_text(entry: dict) -> str:
    """The dock's short card: what the model is, its held-out accuracy, what it was trained for."""
    acq = entry.get("acquisition") or {}
    ranges = ", ".join(f"{_span(acq[k])} {unit}" for k, unit in CARD_RANGES.items() if k in acq)
    if acq.get("zone_axis"):
        ranges += f", zone axis {acq['zone_axis']}"
    from ..models.registry import default_inference_accuracy

    acc = default_inference_accuracy(entry)  # the figure the picker shows: per pattern, as the tools run it
    lines = []
    if is_baseline(entry):
        lines.append("Baseline for comparison with the study, not for maps.")
    lines.append(entry["summary"])
    if entry.get("limits"):
        lines.append(entry["limits"])
    if acc is not None:
        lines.append(f"held-out accuracy {acc:.2f} per pattern (unseen simulated structures)")
    if ranges:
        lines.append(f"trained for: {ranges}")
    if acq.get("cells"):
        from ..acquisition import COVERED_ACCURACY

        trusted = sum(c["accuracy"] >= COVERED_ACCURACY for c in acq["cells"])
        lines.append(f"trusted in {trusted} of {len(acq['cells'])} acquisition cells (beam energy x disk overlap; "
                     "the others are withheld): hover for the list")
    return "\n".join(lines)


def card_tooltip(entry: dict) -> str:
    """The whole card: modes, every accuracy figure, every acquisition range."""
    acq = entry.get("acquisition") or {}
    from ..acquisition import describe_cells

    rows = [f"{k}: {_span(v)}" for k, v in acq.items() if k not in ("canonical", "cells")]
    rows += describe_cells(acq.get("cells") or [])
    accs = [f"accuracy ({'cell window mean' if m == 'cell' else m}, one image): {a:.3f}"
            for m, a in (entry.get("accuracy") or {}).items() if isinstance(a, (int, float))]
    return "\n".join([entry["name"], entry["summary"], "modes: " + ", ".join(entry.get("modes", []))] + accs + rows)


class PolarizationMapWidget(QWidget):
    """Dock widget: dataset, calibration, model (with card), options, Run/Cancel/Export, legend, clicked position."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result = None
        self.result_dataset = None
        self._result_calibration = None  # the calibration the shown result was made with
        self._run_dataset = None
        self._run_calibration = None
        self._started = 0.0  # time.monotonic() when the run started, for the time left
        self._worker = None
        self._settled = True
        self._cancel = threading.Event()
        self._progress = None
        self._fitted = False
        self.last_position = None
        self.chunk_bytes = None  # block size of the scan walk (None: the core's default)

        self._build_dataset_and_model(napari_viewer)
        self._build_options()
        self._build_run_controls()
        self._build_legend_and_clicked()
        self._lay_out()

        self._models = []
        self._fill_models()
        self._connect_signals()
        self._on_dataset_changed()

    def _build_dataset_and_model(self, napari_viewer) -> None:
        """Dataset and ROI pickers, the calibration form, the model choice with its card and warnings."""
        import napari
        from magicgui.widgets import create_widget

        self.dataset_picker = dataset_picker(napari_viewer)
        self.roi_picker = create_widget(annotation=napari.layers.Shapes, options={
            "choices": lambda _w: [(ly.name, ly) for ly in napari_viewer.layers if isinstance(ly, napari.layers.Shapes)
                                   and not ly.metadata.get("polarstem_result")]})  # not the anomaly outline
        follow_layer_list(napari_viewer, self.roi_picker)
        self.calibration = CalibrationForm()
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.card_label = QLabel()
        self.card_label.setWordWrap(True)
        self.card_label.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
        self.card_label.setStyleSheet("color: #a0a0a0;")
        self.warning_label = QLabel()
        self.warning_label.setWordWrap(True)
        self.warning_label.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
        self.warning_label.setStyleSheet("color: #e0a000;")

    def _build_options(self) -> None:
        """Mode, device, symmetry images (their cost in the choices), wall bands and ROI."""
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["auto", "cell", "pattern"])
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.tta_combo = QComboBox()  # symmetry images averaged per pattern (models.symmetry.TTA_ELEMENTS)
        for n, text in ((0, "auto (8; 2 for > 20,000 CPU patterns)"), (1, "off"),
                        (2, "pattern + 180° rotation (2x time)"), (4, "4 rotations (4x time)"),
                        (8, "all 8 symmetry images (8x time)")):
            self.tta_combo.addItem(text, n)
        self.tta_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.tta_combo.setToolTip("average every pattern's prediction over square-symmetry images of it: "
                                  "slower, more accurate")
        self.walls_check = QCheckBox("wall bands to domains")
        self.walls_check.setChecked(True)
        self.walls_check.setToolTip("cell mode: give wall bands to their domains. A probe on a domain wall sees "
                                    "both domains and reads as their sum's direction: thin bands of it between "
                                    "domains (or along the scan edge) go to the adjacent domain; untick to see the "
                                    "model's raw map")
        self.roi_check = QCheckBox("ROIs:")
        self.roi_check.setToolTip("classify only the positions inside the shapes of this Shapes layer")

    def _build_run_controls(self) -> None:
        """Run/Cancel/Export, the progress bar and the status line."""
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.export_button = QPushButton("Export maps…")
        self.export_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumHeight(14)
        self.status_label = QLabel("open a 4D-STEM file or the sample data")
        self.status_label.setWordWrap(True)
        self.status_label.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)

    def _build_legend_and_clicked(self) -> None:
        """The direction legend, and the clicked position's pattern with its prediction."""
        self.legend = QLabel()
        self.legend.setPixmap(legend_pixmap())
        self.legend.setToolTip("class k points at 45°·k from +x (right) towards +y (down); the colours are "
                               "those of the 'polarization classes' layer")
        self.pattern_view = QLabel()
        self.pattern_view.setFixedSize(PATTERN_SIZE, PATTERN_SIZE)
        self.pattern_info = QLabel("click a scan position to see its pattern and prediction")
        self.pattern_info.setWordWrap(True)
        self.pattern_info.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.pattern_info.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Minimum)

    def _lay_out(self) -> None:
        """Dataset and model, options, buttons and status; the calibration form, legend and clicked
        position below, so unfolding the form never pushes Run away."""
        top = QFormLayout()
        top.setVerticalSpacing(3)
        top.addRow("dataset", self.dataset_picker.native)
        top.addRow("model", self.model_combo)
        options = self._options_form()
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.export_button)
        legend = self._legend_row()
        self.anomaly_note = QLabel(f"directions: +x right, +y down · {ANOMALY_MEANING}; regions from "
                                   f"{ANOMALY_OUTLINE:g} outlined")
        self.anomaly_note.setWordWrap(True)
        self.anomaly_note.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
        self.anomaly_note.setStyleSheet("font-size: 10px; color: #a0a0a0;")
        clicked = QHBoxLayout()
        clicked.addWidget(self.pattern_view, 0, Qt.AlignTop)
        clicked.addWidget(self.pattern_info, 1)
        layout = scrolling_body(self)
        layout.addLayout(top)
        layout.addWidget(self.card_label)
        layout.addWidget(self.warning_label)
        layout.addLayout(options)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.calibration)  # below Run: unfolded, it never pushes the buttons away
        layout.addLayout(legend)
        layout.addWidget(self.anomaly_note)
        layout.addLayout(clicked)
        layout.addStretch(1)

    def _options_form(self) -> QFormLayout:
        """Mode and device on one row, symmetry, then wall bands and ROI on one row."""
        options = QFormLayout()
        options.setVerticalSpacing(3)
        mode_device = QHBoxLayout()
        mode_device.addWidget(self.mode_combo, 1)
        mode_device.addWidget(QLabel("device"))
        mode_device.addWidget(self.device_combo, 1)
        options.addRow("mode", mode_device)
        options.addRow("symmetry", self.tta_combo)
        walls_roi = QHBoxLayout()
        walls_roi.addWidget(self.walls_check)
        walls_roi.addWidget(self.roi_check)
        walls_roi.addWidget(self.roi_picker.native, 1)
        options.addRow(walls_roi)
        return options

    def _legend_row(self) -> QHBoxLayout:
        """The colour wheel beside the swatches of every class (four rows per column)."""
        swatches = QGridLayout()
        swatches.setHorizontalSpacing(4)
        swatches.setVerticalSpacing(0)
        for i, (pm, text) in enumerate(legend_entries()):
            col, row = divmod(i, 4)
            icon = QLabel()
            icon.setPixmap(pm)
            swatches.addWidget(icon, row, 2 * col)
            label = QLabel(text)
            label.setStyleSheet("font-size: 10px;")
            swatches.addWidget(label, row, 2 * col + 1)
            swatches.setColumnStretch(2 * col + 1, 1)
        legend = QHBoxLayout()
        legend.addWidget(self.legend, 0, Qt.AlignTop)
        legend.addLayout(swatches, 1)
        return legend

    def _connect_signals(self) -> None:
        """Controls, clicks and the shared dataset state to their handlers; the state connection is
        undone when the widget goes (the state outlives it)."""
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self._model_picked = False  # the user chose a model: opening another dataset keeps it
        self.model_combo.activated.connect(lambda *_: setattr(self, "_model_picked", True))
        self.dataset_picker.changed.connect(self._on_dataset_changed)
        self.calibration.given.connect(self._on_calibration_given)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self._export_clicked)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        state_events.changed.connect(self._on_state_changed)
        self.destroyed.connect(lambda *_: _disconnect(state_events.changed, self._on_state_changed))

    # ---------------------------------------------------------------------------------------------
    # choices

    def _fill_models(self) -> None:
        from ..acquisition import default_model
        from ..models import list_models
        from ..models.registry import default_inference_accuracy

        self._models = [m for m in list_models() if m.get("available")]
        default = default_model(self._models) if self._models else None
        self.model_combo.clear()
        for m in self._models:
            acc = default_inference_accuracy(m)  # per pattern, as the tools run it (8 symmetry images)
            label = m["name"] + (f"  (held-out acc. {acc:.2f})" if acc is not None else "")
            if is_baseline(m):
                label += "  · baseline"
            self.model_combo.addItem(label + ("  · default" if m["name"] == default else ""), m["name"])
        if default is not None:
            self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(default)))
        if not self._models:
            self.status_label.setText("no pretrained models are installed")

    def model_name(self) -> str | None:
        return self.model_combo.currentData()

    def dataset_layer(self):
        layer = self.dataset_picker.value
        return layer if layer is not None and layer in self.viewer.layers else None

    def dataset(self):
        layer = self.dataset_layer()
        return dataset_of(layer) if layer is not None else None

    def _on_dataset_changed(self, *_) -> None:
        ds = self.dataset()
        self.calibration.set_dataset(ds)
        if ds is not None and self._models and not self._model_picked:
            from ..acquisition import default_model

            # the model validated at this dataset's acquisition (beam energy, convergence)
            index = self.model_combo.findData(default_model(self._models, ds.calibration))
            if index >= 0 and index != self.model_combo.currentIndex():
                self.model_combo.setCurrentIndex(index)
        self._on_model_changed()  # the card's warnings are about this dataset; the status line too

    def _show_ready(self) -> None:
        """The status line when idle: the dataset open, and whether the map shown is current."""
        ds = self.dataset()
        if ds is None:
            self.status_label.setText("open a 4D-STEM file or the sample data (File ▸ Open Sample ▸ napari-polarstem)")
            return
        text = dataset_status(ds)
        if self.result is not None and self.result_dataset is ds:
            if self._result_is_stale():
                text += " · the calibration changed since the map shown: Run again to export"
            else:
                text += f" · map shown: {int(self.result.done.sum())} positions ({self.result.model})"
        else:
            text += f" · Run classifies it with '{self.model_name()}'"
        self.status_label.setText(text)

    def _result_is_stale(self) -> bool:
        return self.result_dataset is not None and self.result_dataset.calibration != self._result_calibration

    def _on_model_changed(self, *_) -> None:
        name = self.model_name()
        entry = next((m for m in self._models if m["name"] == name), None)
        if entry is None:
            self.card_label.setText("")
            return
        self.card_label.setText(card_text(entry))
        self.card_label.setToolTip(card_tooltip(entry))
        ds = self.dataset()
        warnings = []
        if ds is not None:
            from ..acquisition import acquisition_warnings

            warnings = acquisition_warnings(name, ds.calibration, ds.detector_shape)
        self.warning_label.setText("\n".join("⚠ " + w for w in warnings))
        self.warning_label.setVisible(bool(warnings))
        if self._worker is None:
            self._show_ready()

    def _on_calibration_given(self, given: dict) -> None:
        from ..errors import PolarstemError

        ds = self.dataset()
        if ds is None:
            return
        try:
            set_calibration(self.viewer, ds, given)
        except PolarstemError as exc:
            self._notify(str(exc))
            self.calibration.set_dataset(ds)

    def _on_state_changed(self, state) -> None:
        """A dataset's calibration or geometry changed (here or in the other dock)."""
        try:
            ds = self.dataset()
        except RuntimeError:  # the Qt side of this widget is gone
            _disconnect(state_events.changed, self._on_state_changed)
            return
        if ds is not None and state.dataset is ds:
            self.calibration.set_dataset(ds)
            self._on_model_changed()
        self.export_button.setEnabled(self._worker is None and self.result is not None and not self._result_is_stale())

    # ---------------------------------------------------------------------------------------------
    # running

    def roi_mask(self, layer, dataset) -> np.ndarray | None:
        if not self.roi_check.isChecked():
            return None
        shapes = self.roi_picker.value
        if shapes is None or shapes not in self.viewer.layers:
            raise ValueError("'ROIs from' is ticked but there is no Shapes layer: draw a rectangle first")
        if len(shapes.data) == 0:
            raise ValueError(f"the Shapes layer '{shapes.name}' has no shapes: draw a rectangle first")
        mask = shapes_to_mask(shapes, layer, dataset.scan_shape)
        if not mask.any():
            raise ValueError(f"the shapes of '{shapes.name}' do not cover any scan position")
        return mask

    def run(self) -> None:
        """Start classifying in a worker thread; the UI stays responsive."""
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        from ..errors import PolarstemError

        if self._worker is not None:
            return
        layer = self.dataset_layer()
        name = self.model_name()
        if layer is None or name is None:
            self._notify("open a 4D-STEM dataset and choose a model first")
            return
        dataset = dataset_of(layer)
        try:
            roi = self.roi_mask(layer, dataset)
        except (ValueError, PolarstemError) as exc:
            self._notify(str(exc))
            return
        self._cancel = threading.Event()
        self._run_dataset = dataset
        self._run_calibration = dataset.calibration
        self._progress = progress(total=0, desc=f"polarization map ({name})")
        worker = thread_worker(classify_updates, start_thread=False)(
            dataset, name, self.mode_combo.currentText(), roi, self.device_combo.currentText(), self._cancel,
            chunk_bytes=self.chunk_bytes, tta=int(self.tta_combo.currentData()) or None,
            wall_bands=self.walls_check.isChecked())
        worker.yielded.connect(self._on_update)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._settled = False
        self._started = time.monotonic()
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.export_button.setEnabled(False)  # until this run has a result (or settles without one)
        self.calibration.setEnabled(False)
        self.progress_bar.setValue(0)
        self.status_label.setText(f"classifying {dataset.name} with '{name}'…")
        worker.start()

    def cancel(self) -> None:
        if self._worker is None:
            return
        self._cancel.set()
        self.status_label.setText("cancelling after the current batch…")

    def _on_update(self, update) -> None:
        try:
            self._apply_update(update)
        except Exception as exc:  # noqa: BLE001 - a notification and a settled status, never a traceback
            message = f"cannot show the result: {type(exc).__name__}: {' '.join(str(exc).split())}"
            self._settled = True
            self.status_label.setText(message)
            self._notify(message)

    def _apply_update(self, update) -> None:
        if isinstance(update, Progress):
            self.progress_bar.setMaximum(max(update.total, 1))
            self.progress_bar.setValue(update.done)
            if 0 < update.done < update.total and not self._cancel.is_set():
                elapsed = time.monotonic() - self._started
                left = elapsed * (update.total - update.done) / update.done
                rate = update.done / max(elapsed, 1e-9)
                self.status_label.setText(f"classifying {self._run_dataset.name}: {update.done}/{update.total} "
                                          f"({100 * update.done / update.total:.0f} %), {rate:.0f} positions/s, "
                                          f"about {left:.0f} s left")
            if self._progress is not None:
                self._progress.total = update.total
                self._progress.n = update.done
                self._progress.refresh()
        elif isinstance(update, ClassifyPartial):
            if update.result.done.any():
                show_result(self.viewer, update.result, self._run_dataset.calibration, self._run_dataset)
        elif isinstance(update, ClassifyDone):
            r = update.result
            self._settled = True
            if not r.done.any():  # cancelled before the first block: nothing replaces the previous map
                if self.result is not None:
                    show_result(self.viewer, self.result, self._result_calibration, self.result_dataset)
                kept = "the previous map is kept" if self.result is not None else "no map"
                self.status_label.setText(f"cancelled before any position was classified: {kept}")
                return
            self.result, self.result_dataset, self._result_calibration = r, self._run_dataset, self._run_calibration
            show_result(self.viewer, r, self._run_calibration, self._run_dataset)
            rate = r.n_patterns / r.seconds if r.seconds else 0.0
            state = "done" if r.complete else "cancelled: partial map"
            uncertain = int(r.uncertain.sum()) if r.uncertain is not None else 0
            text = (f"{state}: {r.n_patterns} positions ({uncertain} uncertain), {r.mode_label}, {r.device}, "
                    f"{r.seconds:.1f} s ({rate:.0f}/s)")
            for line in list(r.notes) + ([r.verdict] if r.verdict else []):
                text += f"\n{line}"
            self.status_label.setText(text)
            if r.verdict:
                self._notify(r.verdict)
        elif isinstance(update, JobFailed):
            self._settled = True
            self.status_label.setText(update.message)
            self._notify(update.message)

    def _on_finished(self) -> None:
        self._worker = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        try:
            self.run_button.setEnabled(True)
        except RuntimeError:  # the dock was closed while the job ran
            return
        self.cancel_button.setEnabled(False)
        self.calibration.setEnabled(True)
        self.export_button.setEnabled(self.result is not None and not self._result_is_stale())
        if not self._settled:  # the job ended without a result or an error (e.g. cancelled at once)
            self._settled = True
            kept = "the previous map is kept" if self.result is not None else "no map"
            self.status_label.setText(f"stopped before any position was classified: {kept}")

    # ---------------------------------------------------------------------------------------------
    # inspecting and exporting

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        """Fit the image to the canvas again once the docks have taken their room."""
        super().showEvent(event)
        if not self._fitted:
            self._fitted = True
            QTimer.singleShot(0, self.viewer.reset_view)

    def _on_click(self, viewer, event) -> None:
        """Show the diffraction pattern, class and probabilities of the clicked scan position."""
        try:
            layer = self.dataset_layer()
        except RuntimeError:  # the Qt side of this widget is gone
            return
        if layer is None or event.type != "mouse_press":
            return
        dataset = dataset_of(layer)
        pos = np.asarray(layer.world_to_data(event.position))[-2:]
        r, c = (int(round(v)) for v in pos)
        if not (0 <= r < dataset.scan_shape[0] and 0 <= c < dataset.scan_shape[1]):
            return
        self.show_position(r, c)

    def show_position(self, r: int, c: int) -> None:
        from ..chunks import read_region
        from ..errors import PolarstemError

        dataset = self.dataset()
        if dataset is None:
            return
        try:
            pattern = read_region(dataset, r, c)
        except PolarstemError as exc:
            self._notify(str(exc))
            return
        self.pattern_view.setPixmap(pattern_pixmap(pattern))
        text = f"scan position (row {r}, col {c})"
        res = self.result
        if res is not None and self.result_dataset is dataset and res.done[r, c]:
            k = int(res.classes[r, c])
            probs = "  ".join(f"{j}:{p:.2f}" for j, p in enumerate(res.proba[r, c]))
            anomaly = "" if res.anomaly is None else f"\nanomaly {res.anomaly[r, c]:.2f}"
            text += (f"\nclass {class_label(k)}  (confidence {res.confidence[r, c]:.2f})\n"
                     f"p: {probs}{anomaly}")
        self.pattern_info.setText(text)
        self.last_position = (r, c)

    def _export_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export polarization maps to folder")
        if folder:
            self.export(folder)

    def export(self, folder: str | Path) -> Path | None:
        """Write the same folder as ``polarstem classify -o`` (atomic files, with provenance)."""
        from ..errors import PolarstemError
        from ..export import export_result

        if self.result is None:
            self._notify("run a classification first")
            return None
        if self._result_is_stale():
            self._notify("the calibration changed since this map was made: run again to export it")
            return None
        background = None
        for layer in self.viewer.layers:  # the dataset's opened image (its virtual bright field)
            if dataset_of(layer) is self.result_dataset and np.ndim(layer.data) == 2:
                background = np.asarray(layer.data)
                break
        try:
            out = export_result(folder, self.result, self.result_dataset, background=background)
        except (OSError, PolarstemError) as exc:
            self._notify(f"export failed: {exc}")
            return None
        self.status_label.setText(f"maps written to {out}")
        return out

    def _notify(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        show_warning(message)


def _disconnect(signal, slot) -> None:
    try:
        signal.disconnect(slot)
    except (ValueError, RuntimeError, TypeError):
        pass
