"""Domain gap in napari: the model embedding of simulated training patterns and of the open dataset.

:func:`domain_gap_layers` turns an :class:`~polarstem.analysis.domain_gap.EmbeddingMap` into two Points
layers (training: small, by true class; dataset: edged, by predicted class, with each point's scan
position in ``features``), so a user sees whether their data lie where the model was trained.
:class:`DomainGapWidget` computes the map in a ``thread_worker`` (the worker yields a typed result,
the widget only lays out controls and adds layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ..classes import CLASS_NAMES, direction_colors

TRAIN_LAYER = "domain gap: training (simulated)"
DATA_LAYER = "domain gap: dataset"


def domain_gap_layers(emap) -> list[tuple]:
    """LayerData tuples (data, kwargs, "points"): PCA coordinates as (row = -PC2, col = PC1)."""
    colors = direction_colors()

    def yx(xy):  # napari points are (row, col); put PC2 upwards
        xy = np.asarray(xy, float).reshape(-1, 2)
        return np.stack([-xy[:, 1], xy[:, 0]], axis=1)

    span = float(np.ptp(np.asarray(emap.train_xy, float), axis=0).max()) if len(emap.train_xy) else 1.0
    size = max(span, 1e-6) / 120
    train = (yx(emap.train_xy), {
        "name": TRAIN_LAYER, "size": size, "face_color": colors[np.asarray(emap.train_class, int)],
        "border_width": 0, "opacity": 0.5,
        "features": {"class": np.asarray(emap.train_class, int),
                     "class_name": [CLASS_NAMES[k] for k in np.asarray(emap.train_class, int)]},
        "metadata": {"polarstem_domain_gap": emap.summary()}}, "points")
    data = (yx(emap.user_xy), {
        "name": DATA_LAYER, "size": 2.5 * size, "face_color": colors[np.asarray(emap.user_class, int)],
        "border_color": "black", "border_width": 0.15,
        "features": {"class": np.asarray(emap.user_class, int), "confidence": np.asarray(emap.user_confidence, float),
                     "row": np.asarray(emap.user_positions, int)[:, 0], "col": np.asarray(emap.user_positions, int)[:, 1]},
        "metadata": {"polarstem_domain_gap": emap.summary()}}, "points")
    return [train, data]


def add_domain_gap_layers(viewer, emap) -> list:
    """Add (or replace in place) the two domain-gap Points layers; returns them."""
    layers = []
    for data, kwargs, _ in domain_gap_layers(emap):
        name = kwargs["name"]
        if name in viewer.layers:
            viewer.layers.remove(name)
        layers.append(viewer.add_points(data, **kwargs))
    return layers


@dataclass(frozen=True)
class GapReady:
    emap: object  # EmbeddingMap


def gap_updates(model: str, mode: str, dataset, train_folder: str, n_train: int, n_user: int):
    """Worker generator: one :class:`GapReady` or a one-line :class:`~._workers.JobFailed`."""
    from ..errors import PolarstemError
    from ._workers import JobFailed

    try:
        from ..analysis.domain_gap import embedding_map

        yield GapReady(embedding_map(model, dataset, train_folder, mode=mode, n_train=n_train, n_user=n_user))
    except PolarstemError as exc:
        yield JobFailed(str(exc))
    except Exception as exc:  # noqa: BLE001 - a notification, never a traceback
        yield JobFailed(f"{type(exc).__name__}: {' '.join(str(exc).split())}")


class DomainGapWidget(QWidget):
    """Dock widget: model, mode, simulated reference folder, dataset layer -> the two Points layers."""

    def __init__(self, napari_viewer):
        from ..analysis.domain_gap import default_reference_folder
        from ..models import list_models
        from ._polarization_widget import is_baseline
        from ._state import dataset_picker

        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self.emap = None
        self.model = QComboBox()
        for e in list_models():
            if e["available"]:
                self.model.addItem(e["name"] + ("  · baseline" if is_baseline(e) else ""), e["name"])
        self.mode = QComboBox()
        self.mode.addItems(["pattern", "cell"])
        self.layer = dataset_picker(napari_viewer)
        folder, what = default_reference_folder()
        self.train = QLineEdit(str(folder))
        self.train.setToolTip("a folder written by `polarstem simulate` (labels.npy beside the data): the "
                              "training set, or any simulated reference")
        self.train_note = QLabel(f"reference: {what}")
        self.train_note.setWordWrap(True)
        self.train_note.setStyleSheet("font-size: 10px; color: #a0a0a0;")
        self.train.textChanged.connect(lambda _text: self.train_note.setText("reference: the folder above"))
        self.n_points = QSpinBox()
        self.n_points.setRange(50, 20000)
        self.n_points.setValue(1000)
        self.run_button = QPushButton("Compute embedding map")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        for label, widget in (("Model", self.model), ("Mode", self.mode), ("Dataset", self.layer.native),
                              ("Reference", self.train), ("", self.train_note), ("Points each", self.n_points)):
            form.addRow(label, widget)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.run_button)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.run_button.clicked.connect(self.start)

    def start(self):
        from napari.qt.threading import thread_worker

        from ._state import dataset_of

        layer = self.layer.value
        model = self.model.currentData()
        if not model or layer is None or layer not in self.viewer.layers:
            self.status.setText("open a dataset and pick a model with weights first")
            return
        folder = Path(self.train.text().strip()).expanduser()
        if not (folder / "labels.npy").exists():
            self.status.setText(f"{folder}: not a simulated labeled folder (no labels.npy); give a folder "
                                "written by `polarstem simulate`, e.g. the bundled sample_data")
            return
        self.run_button.setEnabled(False)
        self.status.setText("computing embeddings ...")
        n = self.n_points.value()
        self._worker = thread_worker(gap_updates, start_thread=False)(
            model, self.mode.currentText(), dataset_of(layer), str(folder), n, n)
        self._worker.yielded.connect(self._on_update)
        self._worker.finished.connect(self._on_finished)
        self._worker.start()

    def _on_finished(self):
        # a bound method, not a lambda: Qt drops the connection if the dock is closed while the worker runs
        self.run_button.setEnabled(True)

    def _on_update(self, update):
        from ._workers import JobFailed

        if isinstance(update, GapReady):
            self.emap = update.emap
            add_domain_gap_layers(self.viewer, update.emap)
            s = update.emap.summary()
            self.status.setText(f"{s['n_user']} positions against {s['n_train']} training patterns; "
                                f"outside the training data: {s['outside_fraction']:.0%}")
        elif isinstance(update, JobFailed):
            from napari.utils.notifications import show_warning

            self.status.setText(update.message)
            show_warning(update.message)
