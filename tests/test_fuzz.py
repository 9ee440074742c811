"""Fuzzing the loaders and preprocessing: any input gives a result or a one-line PolarstemError."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from polarstem.cli import main
from polarstem.errors import PolarstemError
from polarstem.io import load
from polarstem.virtual import virtual_image
from tests.conftest import _realdata_root

RS = _realdata_root() / "rosettasciio"
EXTS = [".mib", ".blo", ".hspy", ".emd", ".h5", ".app5", ".npy", ".zspy", ".hdr", ".zarr"]


def _open_and_read(path: Path) -> None:
    """What a user does: open, then compute a virtual image. Only PolarstemError may escape."""
    try:
        ds = load(path)
        virtual_image(ds, "bf")
    except PolarstemError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ext=st.sampled_from(EXTS), blob=st.binary(min_size=0, max_size=3000))
def test_random_bytes_with_a_4dstem_extension(tmp_path, ext, blob):
    p = tmp_path / f"fuzz{ext}"
    if p.is_dir():
        shutil.rmtree(p)
    p.write_bytes(blob)
    _open_and_read(p)


def _real_4d_files(tmp: Path) -> list[Path]:
    files = [RS / "blockfile/test1.blo", RS / "emd/py4DSTEM_size2x3x4x5.h5", RS / "topspin/topspin_test_A.app5"]
    with zipfile.ZipFile(RS / "quantumdetector/Merlin_navigation4x2_ROI.zip") as zf:
        zf.extractall(tmp)
    files.append(tmp / "001_4x2_6bit.mib")
    files.append(tmp / "001_4x2_6bit.hdr")
    return [f for f in files if f.exists()]


@pytest.mark.skipif(not RS.exists(), reason="shared/realdata not beside the checkout")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 3), fraction=st.floats(0.0, 0.999), flip=st.integers(0, 255))
def test_truncated_and_corrupted_real_files(tmp_path_factory, which, fraction, flip):
    tmp = tmp_path_factory.mktemp("trunc")
    files = [f for f in _real_4d_files(tmp) if f.suffix != ".hdr"]
    src = files[which % len(files)]
    data = bytearray(src.read_bytes())
    cut = int(len(data) * fraction)
    data = data[:cut]
    if data:
        data[len(data) // 2] ^= flip
    dst = tmp / ("bad" + src.suffix)
    dst.write_bytes(bytes(data))
    if src.suffix == ".mib":
        shutil.copy(src.with_suffix(".hdr"), dst.with_suffix(".hdr"))
    _open_and_read(dst)


def test_cli_header_claims_more_frames_than_the_file_holds(tmp_path, capsys):
    """A .npy whose header promises a bigger scan than its bytes: exit 2, one line."""
    arr = np.ones((4, 4, 8, 8), np.uint16)
    np.save(tmp_path / "short.npy", arr)
    raw = (tmp_path / "short.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(raw.replace(b"(4, 4, 8, 8)", b"(9, 4, 8, 8)"))
    assert main(["virtual", str(tmp_path / "short.npy"), "--kind", "bf", "--outer", "2", "--units", "px",
                 "-o", str(tmp_path / "bf.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "short.npy" in err[0]
    assert not (tmp_path / "bf.tif").exists()


@settings(max_examples=60, deadline=None)
@given(frames=arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(2, 40), st.integers(2, 40)),
                     elements=st.one_of(st.floats(-1e6, 1e9, width=32), st.just(np.nan), st.just(np.inf))),
       mrad=st.one_of(st.none(), st.floats(0.1, 5.0)))
def test_preprocessing_never_crashes(frames, mrad):
    """Any frames (NaN, inf, zeros, tiny detectors): model-ready inputs and a flag, or a PolarstemError."""
    from polarstem.io import Calibration
    from polarstem.preprocess import InputGrid, preprocess

    grid = InputGrid(size=32, mrad_per_px=2.0)
    try:
        x, ok = preprocess(frames, Calibration(mrad_per_px=mrad, convergence_mrad=20.0), grid)
    except PolarstemError:
        return
    assert x.shape == (len(frames), 32, 32) and np.isfinite(x).all()
    assert ok.shape == (len(frames),)
    bad = ~np.isfinite(frames).reshape(len(frames), -1).all(axis=1)
    assert not ok[bad].any()
