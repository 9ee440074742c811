"""napari-polarstem: map ferroelectric polarization from 4D-STEM data.

The core (this package minus ``_napari``) never imports napari or Qt; torch and abTEM are imported
lazily inside the functions that need them.
"""

try:
    from importlib.metadata import version as _version

    __version__ = _version("napari-polarstem")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

from .errors import PolarstemError
from .io import Calibration, Dataset4D, load

__all__ = ["Calibration", "Dataset4D", "PolarstemError", "load", "__version__"]
