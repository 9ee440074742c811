"""The calibration fields both docks show: what the file says, and what the user gives instead.

Each field is empty when the file's value is used (shown greyed inside the field, or "not in the
file"); a number typed in overrides the file for this dataset everywhere (layers' scale, detector
angles, classification, export provenance) through :func:`._state.set_calibration`, the same
:func:`polarstem.io.apply_calibration` the CLI flags use. Emptying a field returns to the file's value.
"""

from __future__ import annotations

from qtpy.QtCore import QTimer, Signal
from qtpy.QtGui import QDoubleValidator
from qtpy.QtWidgets import QGridLayout, QLabel, QLineEdit, QScrollArea, QToolButton, QVBoxLayout, QWidget

from ..errors import PolarstemError
from ..io import CALIBRATION_ENTRIES, Dataset4D

#: Field label per calibration entry (the CLI flag in the tooltip).
FIELDS = {
    "beam_energy_kev": ("beam energy", "keV", "--beam-energy"),
    "convergence_mrad": ("convergence", "mrad", "--convergence"),
    "mrad_per_px": ("detector", "mrad/px", "--mrad-per-px"),
    "scan_step_nm": ("scan step", "nm", "--scan-step"),
}


def _file_value(dataset: Dataset4D, key: str):
    cal = dataset.file_calibration or dataset.calibration
    v = getattr(cal, key)
    if key == "scan_step_nm":
        v = v[1] if v[1] is not None else v[0]
    return v


def calibration_summary(dataset: Dataset4D) -> str:
    """One line of the calibration in use, e.g. "200 keV · 20 mrad · 1.2 mrad/px · 0.1 nm step"."""
    cal = dataset.calibration
    parts = []
    for key, (what, unit, _flag) in FIELDS.items():
        v = getattr(cal, key)
        if key == "scan_step_nm":
            v = v[1] if v[1] is not None else v[0]
        mark = "*" if key in dataset.calibration_given else ""
        parts.append(f"{what} ?" if v is None else f"{v:.4g} {unit}{mark}")
    return " · ".join(parts)


class CalibrationForm(QWidget):
    """Four fields (beam energy, convergence, detector sampling, scan step), folded by default.

    ``given(dict)`` fires with the values the user typed (None = the file's) when a field is edited;
    the dock applies them with :func:`._state.set_calibration`.
    """

    given = Signal(dict)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._dataset: Dataset4D | None = None
        self.toggle = QToolButton()
        self.toggle.setCheckable(True)
        self.toggle.setAutoRaise(True)
        self.toggle.setStyleSheet("QToolButton { border: none; text-align: left; }")
        self.toggle.toggled.connect(self._fold)
        self.body = QWidget()
        grid = QGridLayout(self.body)
        grid.setContentsMargins(12, 0, 0, 0)
        grid.setVerticalSpacing(2)
        self.fields: dict[str, QLineEdit] = {}
        for i, (key, (what, unit, flag)) in enumerate(FIELDS.items()):
            _, _, lo, hi = CALIBRATION_ENTRIES[key]
            edit = QLineEdit()
            # any positive number passes here; apply_calibration names the sane range when it is not
            edit.setValidator(QDoubleValidator(0.0, 1e12, 8, edit))
            edit.setClearButtonEnabled(True)
            edit.setToolTip(f"{what} in {unit} (usually {lo:g}-{hi:g}); empty = the file's value "
                            f"({flag} on the command line)")
            edit.editingFinished.connect(self._edited)
            edit.textChanged.connect(lambda text: None if text else self._edited())  # emptied: the file's value
            self.fields[key] = edit
            row, col = divmod(i, 2)
            grid.addWidget(QLabel(f"{what} ({unit})"), 2 * row, col)
            grid.addWidget(edit, 2 * row + 1, col)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.toggle)
        lay.addWidget(self.body)
        self._fold(False)
        self.set_dataset(None)

    def _fold(self, open_: bool) -> None:
        self.body.setVisible(open_)
        self._update_title()
        if open_:  # in a scrolling dock, bring the fields into view
            QTimer.singleShot(0, self._scroll_into_view)

    def _scroll_into_view(self) -> None:
        parent = self.parentWidget()
        while parent is not None and not isinstance(parent, QScrollArea):
            parent = parent.parentWidget()
        if parent is not None:
            parent.ensureWidgetVisible(self)

    def _update_title(self) -> None:
        arrow = "▾" if self.toggle.isChecked() else "▸"
        text = "calibration: " + (calibration_summary(self._dataset) if self._dataset is not None else "no dataset")
        self.toggle.setText(f"{arrow} {text}")
        self.toggle.setToolTip("the calibration in use (* = given here, overriding the file); click to edit")

    def set_dataset(self, dataset: Dataset4D | None) -> None:
        """Show ``dataset``'s calibration: given values as text, the file's as placeholders."""
        self._dataset = dataset
        for key, edit in self.fields.items():
            edit.blockSignals(True)
            edit.setEnabled(dataset is not None)
            if dataset is None:
                edit.clear()
                edit.setPlaceholderText("")
            else:
                given = dataset.calibration_given.get(key)
                edit.setText("" if given is None else f"{given['given']:g}")
                v = _file_value(dataset, key)
                edit.setPlaceholderText("not in the file" if v is None else f"file: {v:.4g}")
            edit.blockSignals(False)
        self._update_title()

    def values(self) -> dict[str, float | None]:
        """What the fields hold: a number for a value given, None for the file's."""
        out = {}
        for key, edit in self.fields.items():
            text = edit.text().strip().replace(",", ".")
            try:
                out[key] = float(text) if text else None
            except ValueError:
                raise PolarstemError(f"{FIELDS[key][0]}: '{text}' is not a number") from None
        return out

    def set_values(self, **values: float | None) -> None:
        """Type values in (None empties a field) and apply them, as a user would; for scripts and tests."""
        for key, v in values.items():
            self.fields[key].setText("" if v is None else f"{v:g}")
        self._edited()

    def _edited(self) -> None:
        if self._dataset is None:
            return
        try:
            values = self.values()
        except PolarstemError as exc:
            from napari.utils.notifications import show_warning

            show_warning(str(exc))
            return
        current = {k: v["given"] for k, v in self._dataset.calibration_given.items()}
        if {k: v for k, v in values.items() if v is not None} != current:
            self.given.emit(values)
