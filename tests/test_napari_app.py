"""`polarstem view`: napari opens the file through the polarstem reader with both dock widgets."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_open_viewer_docks_both_widgets(tmp_path, qtbot):
    from polarstem._napari.app import WIDGETS, open_viewer
    from tests.test_classify import disk_patterns

    np.save(tmp_path / "scan.npy", disk_patterns((6, 7)))
    (tmp_path / "scan.json").write_text(json.dumps({"scan_step_nm": 0.2}))
    viewer = open_viewer(tmp_path / "scan.npy", run=False, show=False)
    try:
        assert set(viewer.window.polarstem_widgets) == set(WIDGETS)
        layer = viewer.layers["scan.npy"]
        assert layer.data.shape == (6, 7) and layer.scale[-1] == pytest.approx(0.2)
        assert layer.metadata["polarstem_dataset"].shape == (6, 7, 64, 64)
    finally:
        viewer.close()


def test_view_of_a_bad_file_is_one_line(tmp_path, capsys):
    from polarstem.cli import main

    (tmp_path / "bad.mib").write_bytes(b"\x00" * 100)
    assert main(["view", str(tmp_path / "bad.mib")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.mib" in err[0]
