"""State the polarstem widgets share: which layers carry a dataset, and what was computed for it.

A layer made by the polarstem reader (or the sample) keeps its lazy :class:`~polarstem.io.Dataset4D`
in ``layer.metadata[DATASET_KEY]``, so any widget (Virtual detector, Polarization map) finds it from
the layer alone. What is expensive to recompute (mean pattern, detector geometry, last centre of
mass) lives in a :class:`DatasetState`, looked up by dataset through a small module-level registry,
so every widget reuses it instead of walking the file again.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
from psygnal import Signal

from ..io import Dataset4D
from ..virtual import DetectorGeometry, VirtualDetector

#: ``layer.metadata`` key of the lazy dataset behind a virtual image layer.
DATASET_KEY = "polarstem_dataset"
#: ``layer.metadata`` key of the detector the layer currently shows (a short text such as "BF").
DETECTOR_KEY = "polarstem_detector"
#: ``layer.metadata`` key of the dataset a derived layer (virtual image, result map) was computed from.
SOURCE_KEY = "polarstem_source_dataset"


@dataclass
class DatasetState:
    """What has been computed for one dataset; filled as the widgets and the reader go.

    It holds its dataset weakly: the registry must not keep a closed file's data alive.
    """

    dataset_ref: weakref.ref[Dataset4D]
    geometry: DetectorGeometry | None = None
    geometry_found: bool = True  # False: no bright-field disk found, geometry is the detector centre
    mean_pattern: np.ndarray | None = None  # full-scan mean, (det_rows, det_cols)
    detector: VirtualDetector = field(default_factory=VirtualDetector)
    com: np.ndarray | None = None  # last centre of mass, (2, scan_rows, scan_cols)
    busy: bool = False  # a pass over the file for this dataset is running (reader or widget)

    @property
    def dataset(self) -> Dataset4D | None:
        return self.dataset_ref()


class StateEvents:
    """``changed(state)`` fires (in the main thread) when a DatasetState gains a result or is freed."""

    changed = Signal(object)


#: Connect here to redraw when another widget or the reader finished something for a dataset.
state_events = StateEvents()

_STATES: dict[int, DatasetState] = {}  # by id(dataset); an entry goes when its dataset goes


def state_for(dataset: Dataset4D) -> DatasetState:
    """The shared state of ``dataset`` (created on first use, forgotten with the dataset)."""
    state = _STATES.get(id(dataset))
    if state is not None and state.dataset is dataset:
        return state
    state = DatasetState(weakref.ref(dataset))
    _STATES[id(dataset)] = state
    weakref.finalize(dataset, _STATES.pop, id(dataset), None)
    return state


def dataset_of(layer) -> Dataset4D | None:
    """The lazy dataset behind ``layer``, or None for layers polarstem did not make."""
    ds = getattr(layer, "metadata", {}).get(DATASET_KEY)
    return ds if isinstance(ds, Dataset4D) else None


def dataset_layers(viewer) -> list:
    """Layers of ``viewer`` that carry a polarstem dataset, in layer-list order."""
    return [ly for ly in viewer.layers if dataset_of(ly) is not None]


def active_dataset_layer(viewer):
    """The dataset layer a widget should act on: the selected one, else the topmost one."""
    active = viewer.layers.selection.active
    if active is not None and dataset_of(active) is not None:
        return active
    layers = dataset_layers(viewer)
    return layers[-1] if layers else None


def source_of(layer) -> Dataset4D | None:
    """The dataset a layer shows or was computed from (dataset, virtual-image and result layers)."""
    md = getattr(layer, "metadata", {})
    ds = md.get(DATASET_KEY) or md.get(SOURCE_KEY)
    return ds if isinstance(ds, Dataset4D) else None


def dataset_picker(viewer, label: str = "dataset"):
    """A magicgui layer picker of the layers that carry a dataset; it follows the layer list."""
    import napari
    from magicgui.widgets import create_widget

    picker = create_widget(annotation=napari.layers.Image, label=label, options={
        "choices": lambda _widget: [(ly.name, ly) for ly in dataset_layers(viewer)]})
    follow_layer_list(viewer, picker)
    return picker


def follow_layer_list(viewer, picker) -> None:
    """Refresh ``picker``'s choices when layers are added, removed, moved or renamed."""
    alive = [True]

    def refresh(*_):
        if not alive[0]:
            return
        try:
            picker.reset_choices()
        except RuntimeError:  # its Qt side is gone (dock closed): stop following
            alive[0] = False

    def follow_name(event) -> None:
        if alive[0]:
            event.value.events.name.connect(refresh)

    for emitter in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
        emitter.connect(refresh)
    viewer.layers.events.inserted.connect(follow_name)
    for layer in viewer.layers:
        layer.events.name.connect(refresh)
    picker.reset_choices()


def set_calibration(viewer, dataset: Dataset4D, given: dict) -> None:
    """Use the calibration values the user gave for ``dataset`` everywhere it shows.

    The dataset's calibration changes in place (:func:`polarstem.io.apply_calibration`; it raises
    :class:`~polarstem.errors.PolarstemError` for an impossible value), every layer made from it takes
    the new scan step, the detector geometry follows the new angular sampling, and the widgets hear
    of it through ``state_events.changed``.
    """
    from ..io import apply_calibration
    from ._workers import geometry_or_centre

    apply_calibration(dataset, given)
    cal = dataset.calibration
    units = "nm" if all(s is not None for s in cal.scan_step_nm) else "pixel"
    for layer in viewer.layers:
        if source_of(layer) is dataset and layer.ndim == 2:
            layer.scale = cal.scan_scale()
            layer.units = (units, units)
    state = state_for(dataset)
    if state.mean_pattern is not None or state.geometry is not None:
        state.geometry, state.geometry_found = geometry_or_centre(dataset, state.mean_pattern)
    state_events.changed.emit(state)
