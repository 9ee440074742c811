"""The "Polarization map" dock widget: pick a model, run it over the scan or ROIs, see and export maps.

The widget only lays out controls and reacts to updates: the classification runs in a
``thread_worker`` (``_classify_worker.classify_updates``) that yields typed updates.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..classes import CLASS_NAMES, N_CLASSES, direction_colors
from ._classify_worker import ClassifyDone, ClassifyPartial, classify_updates
from ._layers import shapes_to_mask, show_result
from ._state import DATASET_KEY, dataset_layers
from ._widget import pattern_image
from ._workers import JobFailed, Progress


def legend_pixmap(size: int = 120) -> QPixmap:
    """Direction colour wheel: class k at 45°·k from +x towards +y (+y down on screen)."""
    pm = QPixmap(size, size)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.Antialiasing)
    colors = direction_colors()
    r = size * 0.42
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


def pattern_pixmap(pattern: np.ndarray, size: int = 160) -> QPixmap:
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


class PolarizationMapWidget(QWidget):
    """Dock widget: model picker (with card and ranges), device, ROI, Run/Cancel, legend, export."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result = None
        self.result_dataset = None
        self._worker = None
        self._cancel = threading.Event()
        self._progress = None
        self.chunk_bytes = None  # block size of the scan walk (None: the core's default)

        self.dataset_combo = QComboBox()
        self.model_combo = QComboBox()
        self.card_label = QLabel()
        self.card_label.setWordWrap(True)
        self.warning_label = QLabel()
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet("color: #e0a000;")
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["auto", "cell", "pattern"])
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.tta_combo = QComboBox()  # symmetry images averaged per pattern (models.symmetry.TTA_ELEMENTS)
        for n, text in ((0, "auto (8 images; 2 for > 20,000 patterns on a CPU)"), (1, "off"),
                        (2, "pattern + 180° rotation (2x time)"), (4, "4 rotations (4x time)"),
                        (8, "all 8 symmetry images (8x time)")):
            self.tta_combo.addItem(text, n)
        self.tta_combo.setToolTip("average every pattern's prediction over square-symmetry images of it: "
                                  "slower, more accurate")
        self.walls_check = QCheckBox("give wall bands to their domains (cell mode)")
        self.walls_check.setChecked(True)
        self.walls_check.setToolTip("a probe on a domain wall sees both domains and reads as their sum's "
                                    "direction: thin bands of it between domains (or along the scan edge) "
                                    "go to the adjacent domain; untick to see the model's raw map")
        self.roi_check = QCheckBox("use ROIs from Shapes layer")
        self.roi_combo = QComboBox()
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.export_button = QPushButton("Export maps…")
        self.export_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("open a 4D-STEM file or the sample data")
        self.status_label.setWordWrap(True)
        self.legend = QLabel()
        self.legend.setPixmap(legend_pixmap())
        self.legend_text = QLabel("\n".join(f"{k}: {n}" for k, n in enumerate(CLASS_NAMES)))
        self.pattern_view = QLabel()
        self.pattern_view.setMinimumSize(160, 160)
        self.pattern_info = QLabel("click a scan position to see its pattern and prediction")
        self.pattern_info.setWordWrap(True)

        form = QFormLayout()
        form.addRow("dataset", self.dataset_combo)
        form.addRow("model", self.model_combo)
        form.addRow("", self.card_label)
        form.addRow("mode", self.mode_combo)
        form.addRow("device", self.device_combo)
        form.addRow("symmetry averaging", self.tta_combo)
        form.addRow("", self.walls_check)
        form.addRow(self.roi_check, self.roi_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        legend = QHBoxLayout()
        legend.addWidget(self.legend)
        legend.addWidget(self.legend_text)
        clicked = QHBoxLayout()
        clicked.addWidget(self.pattern_view)
        clicked.addWidget(self.pattern_info)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.warning_label)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(QLabel("<b>direction legend</b> (+x right, +y down)"))
        layout.addLayout(legend)
        layout.addWidget(self.export_button)
        layout.addLayout(clicked)
        layout.addStretch(1)

        self._models = []
        self._fill_models()
        self._refresh_layers()
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.dataset_combo.currentIndexChanged.connect(self._on_model_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self._export_clicked)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self._on_model_changed()

    # ---------------------------------------------------------------------------------------------
    # choices

    def _fill_models(self) -> None:
        from ..models import list_models

        from ..acquisition import default_model
        from ..models.registry import default_inference_accuracy

        self._models = [m for m in list_models() if m.get("available")]
        default = default_model(self._models) if self._models else None
        self.model_combo.clear()
        for m in self._models:
            acc = default_inference_accuracy(m)  # per pattern, as the tools run it (8 symmetry images)
            label = m["name"] + (f"  (held-out acc. {acc:.2f})" if acc is not None else "")
            self.model_combo.addItem(label + ("  · default" if m["name"] == default else ""), m["name"])
        if default is not None:
            self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(default)))
        if not self._models:
            self.status_label.setText("no pretrained models are installed")

    def _refresh_layers(self, *_) -> None:
        current = self.dataset_combo.currentText()
        self.dataset_combo.clear()
        for ly in dataset_layers(self.viewer):
            self.dataset_combo.addItem(ly.name)
        if current:
            i = self.dataset_combo.findText(current)
            if i >= 0:
                self.dataset_combo.setCurrentIndex(i)
        current_roi = self.roi_combo.currentText()
        self.roi_combo.clear()
        for ly in self.viewer.layers:
            if ly._type_string == "shapes":
                self.roi_combo.addItem(ly.name)
        if current_roi and self.roi_combo.findText(current_roi) >= 0:
            self.roi_combo.setCurrentIndex(self.roi_combo.findText(current_roi))

    def model_name(self) -> str | None:
        return self.model_combo.currentData()

    def dataset_layer(self):
        name = self.dataset_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _on_model_changed(self, *_) -> None:
        name = self.model_name()
        entry = next((m for m in self._models if m["name"] == name), None)
        if entry is None:
            self.card_label.setText("")
            return
        acq = entry.get("acquisition") or {}
        ranges = ", ".join(f"{k} {_span(v)}" for k, v in acq.items() if k != "canonical")
        acc = entry.get("accuracy") or {}
        # cell mode votes the pattern weights by default; the cell weights serve the "mean" method only
        accs = ", ".join(f"{'cell (window mean)' if m == 'cell' else m}: {a:.2f}" for m, a in acc.items()
                         if isinstance(a, (int, float)))
        self.card_label.setText(f"{entry['summary']}\nmodes: {', '.join(entry['modes'])}"
                                + (f"\nheld-out accuracy: {accs}" if accs else "")
                                + (f"\ntrained for: {ranges}" if ranges else ""))
        self.card_label.setToolTip(str(entry.get("input_grid", {})))
        layer = self.dataset_layer()
        warnings = []
        if layer is not None:
            from ..acquisition import acquisition_warnings

            ds = layer.metadata[DATASET_KEY]
            warnings = acquisition_warnings(name, ds.calibration, ds.detector_shape)
        self.warning_label.setText("\n".join("⚠ " + w for w in warnings))

    # ---------------------------------------------------------------------------------------------
    # running

    def roi_mask(self, layer, dataset) -> np.ndarray | None:
        if not self.roi_check.isChecked():
            return None
        name = self.roi_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise ValueError("'use ROIs' is ticked but there is no Shapes layer: draw a rectangle first")
        shapes = self.viewer.layers[name]
        if len(shapes.data) == 0:
            raise ValueError(f"the Shapes layer '{name}' has no shapes: draw a rectangle first")
        mask = shapes_to_mask(shapes, layer, dataset.scan_shape)
        if not mask.any():
            raise ValueError(f"the shapes of '{name}' do not cover any scan position")
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
        dataset = layer.metadata[DATASET_KEY]
        try:
            roi = self.roi_mask(layer, dataset)
        except (ValueError, PolarstemError) as exc:
            self._notify(str(exc))
            return
        self._cancel = threading.Event()
        self.result_dataset = dataset
        self._progress = progress(total=0, desc=f"polarization map ({name})")
        worker = thread_worker(classify_updates, start_thread=False)(
            dataset, name, self.mode_combo.currentText(), roi, self.device_combo.currentText(), self._cancel,
            chunk_bytes=self.chunk_bytes, tta=int(self.tta_combo.currentData()) or None,
            wall_bands=self.walls_check.isChecked())
        worker.yielded.connect(self._on_update)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status_label.setText(f"classifying with '{name}'…")
        worker.start()

    def cancel(self) -> None:
        self._cancel.set()
        self.status_label.setText("cancelling after the current batch…")

    def _on_update(self, update) -> None:
        if isinstance(update, Progress):
            self.progress_bar.setMaximum(max(update.total, 1))
            self.progress_bar.setValue(update.done)
            if self._progress is not None:
                self._progress.total = update.total
                self._progress.n = update.done
                self._progress.refresh()
        elif isinstance(update, ClassifyPartial):
            self._show(update.result)
        elif isinstance(update, ClassifyDone):
            self.result = update.result
            self._show(update.result)
            r = update.result
            rate = r.n_patterns / r.seconds if r.seconds else 0.0
            state = "done" if r.complete else "cancelled: partial map"
            self.status_label.setText(f"{state}: {r.n_patterns} positions, {r.mode_label}, {r.device}, "
                                      f"{r.seconds:.1f} s ({rate:.0f}/s)")
            self.export_button.setEnabled(True)
        elif isinstance(update, JobFailed):
            self.status_label.setText(update.message)
            self._notify(update.message)

    def _on_finished(self) -> None:
        self._worker = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _show(self, result) -> None:
        show_result(self.viewer, result, self.result_dataset.calibration, self.result_dataset)

    # ---------------------------------------------------------------------------------------------
    # inspecting and exporting

    def _on_click(self, viewer, event) -> None:
        """Show the diffraction pattern, class and probabilities of the clicked scan position."""
        layer = self.dataset_layer()
        if layer is None or event.type != "mouse_press":
            return
        dataset = layer.metadata[DATASET_KEY]
        pos = np.asarray(layer.world_to_data(event.position))[-2:]
        r, c = (int(round(v)) for v in pos)
        if not (0 <= r < dataset.scan_shape[0] and 0 <= c < dataset.scan_shape[1]):
            return
        self.show_position(r, c)

    def show_position(self, r: int, c: int) -> None:
        layer = self.dataset_layer()
        dataset = layer.metadata[DATASET_KEY]
        from ..chunks import read_region
        from ..errors import PolarstemError

        try:
            pattern = read_region(dataset, r, c)
        except PolarstemError as exc:
            self._notify(str(exc))
            return
        self.pattern_view.setPixmap(pattern_pixmap(pattern))
        text = f"scan position (row {r}, col {c})"
        res = self.result
        if res is not None and res.classes.shape == dataset.scan_shape and res.done[r, c]:
            k = int(res.classes[r, c])
            probs = "  ".join(f"{j}:{p:.2f}" for j, p in enumerate(res.proba[r, c]))
            anomaly = "" if res.anomaly is None else f"\nanomaly {res.anomaly[r, c]:.2f}"
            text += (f"\nclass {k} {CLASS_NAMES[k]}  (confidence {res.confidence[r, c]:.2f})\n"
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
        layer = self.dataset_layer()
        background = np.asarray(layer.data) if layer is not None and np.ndim(layer.data) == 2 else None
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
