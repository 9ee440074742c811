"""Dock layout shared by the polarstem widgets: content that scrolls instead of pushing the window
taller than the screen when docks are stacked on a small display."""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget


class _BodyArea(QScrollArea):
    """A scroll area that asks for its content's full size, and scrolls only when it gets less."""

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        inner = self.widget().sizeHint() if self.widget() is not None else QSize(0, 0)
        return QSize(inner.width() + self.verticalScrollBar().sizeHint().width(), inner.height())


def scrolling_body(dock_widget: QWidget) -> QVBoxLayout:
    """Give ``dock_widget`` a frameless vertical scroll area and return the layout to fill.

    The dock keeps its natural height when there is room; when docks share a short screen they
    shrink and scroll rather than growing the window off screen.
    """
    area = _BodyArea(dock_widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    body = QWidget()
    area.setWidget(body)
    outer = QVBoxLayout(dock_widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    layout = QVBoxLayout(body)
    layout.setSpacing(4)
    return layout
