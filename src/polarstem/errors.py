"""User-facing errors.

Everything the user can cause (a bad file, a wrong option, a tampered model) raises a
:class:`PolarstemError` with a one-line message that names the file and the problem. The CLI turns
it into exit status 2 without a traceback; the napari shell turns it into a notification.
"""


class PolarstemError(Exception):
    """A problem with the user's input, reported as one line, never as a traceback."""


class NotFourDError(PolarstemError):
    """The file holds data, but not a 2D scan of 2D diffraction patterns."""


class CalibrationError(PolarstemError):
    """A calibration needed for the requested operation is missing or inconsistent."""


class ModelFileError(PolarstemError):
    """A model weights file is missing, has the wrong hash, or does not fit its architecture."""


class Cancelled(Exception):
    """Raised inside long jobs when the user asked to stop; results so far stay valid."""
