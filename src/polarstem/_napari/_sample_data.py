"""napari sample data: the bundled simulated KNN scan (four domains and a defect), opened lazily."""

from __future__ import annotations

from ..errors import PolarstemError
from ..sample import sample_dataset_path
from ._reader import open_dataset, virtual_image_layer


def make_sample_data() -> list[tuple]:
    """The sample's virtual bright-field image, with its dataset for the widgets.

    :func:`polarstem.sample.sample_dataset_path` finds it in a source checkout (``sample_data/``)
    or inside an installed wheel.
    """
    from napari.utils.notifications import show_error

    try:
        path = sample_dataset_path()
        ds = open_dataset(path)
        return [virtual_image_layer(ds, name="KNN sample", background=False)]
    except PolarstemError as exc:
        show_error(str(exc))
        return []
