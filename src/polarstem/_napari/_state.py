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


@dataclass
class DatasetState:
    """What has been computed for one dataset; filled as the widgets and the reader go.

    It holds its dataset weakly: the registry must not keep a closed file's data alive.
    """

    dataset_ref: "weakref.ref[Dataset4D]"
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
