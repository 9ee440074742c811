"""classify_scan mechanics with a real (untrained) network: shapes, ROI, cancel, chunking, CLI export."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from polarstem.infer import classify_scan
from polarstem.io import load


def disk_patterns(shape=(12, 14), det=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((det, det))
    cy, cx = det / 2 + rng.normal(0, 0.3, shape), det / 2 + rng.normal(0, 0.3, shape)
    r = np.hypot(yy - cy[..., None, None], xx - cx[..., None, None])
    lam = 200 * (r < det / 6) + 5 * np.exp(-r / 10)
    return rng.poisson(lam).astype(np.uint16)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan")
    np.save(d / "scan.npy", disk_patterns())
    (d / "scan.json").write_text(json.dumps({"scan_step_nm": 0.1, "mrad_per_px": 1.2, "beam_energy_kev": 200,
                                             "convergence_mrad": 20}))
    return d / "scan.npy"


@pytest.fixture(scope="module")
def model():
    import torch

    from polarstem.models.base import NetModel
    from polarstem.models.nets import create_model

    torch.manual_seed(0)
    card = {"name": "untrained-cnn", "mode": "pattern", "input_grid": {"size": 32, "mrad_per_px": 2.0},
            "sha256": "0" * 64}
    return NetModel(create_model("cnn"), card)


def test_maps_shapes_and_ranges(scan, model):
    ds = load(scan, chunk_bytes=64 * 64 * 2 * 14 * 3)  # 3 scan rows per chunk -> several blocks
    res = classify_scan(ds, model=model, mode="pattern", device="cpu")
    assert res.classes.shape == ds.scan_shape and res.classes.dtype == np.int8
    assert res.complete and res.done.all()
    assert res.classes.min() >= 0 and res.classes.max() <= 7
    assert np.all((res.confidence >= 1 / 8 - 1e-6) & (res.confidence <= 1))
    np.testing.assert_allclose(res.proba.sum(axis=-1), 1, atol=1e-5)
    assert res.anomaly.shape == ds.scan_shape and np.isfinite(res.anomaly).all()


def test_same_result_whatever_the_chunking(scan, model):
    a = classify_scan(load(scan, chunk_bytes=64 * 64 * 2 * 14), model=model, mode="pattern", device="cpu",
                      chunk_bytes=64 * 64 * 2 * 14 * 2)
    b = classify_scan(load(scan), model=model, mode="pattern", device="cpu")
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.proba, b.proba, atol=1e-5)


def test_roi_restricts_work(scan, model):
    ds = load(scan)
    roi = np.zeros(ds.scan_shape, bool)
    roi[2:5, 3:9] = True
    res = classify_scan(ds, model=model, mode="pattern", roi=roi, device="cpu")
    assert res.n_patterns == roi.sum()
    np.testing.assert_array_equal(res.done, roi)
    assert (res.classes[~roi] == -1).all() and np.isnan(res.confidence[~roi]).all()


def test_cancel_leaves_valid_partial_map(scan, model):
    ds = load(scan, chunk_bytes=64 * 64 * 2 * 14)  # one scan row per block
    cancel = threading.Event()

    def progress(done, total):
        if done == 4:
            cancel.set()

    res = classify_scan(ds, model=model, mode="pattern", device="cpu", progress=progress, cancel=cancel,
                        chunk_bytes=64 * 64 * 2 * 14)
    assert not res.complete
    assert 0 < res.done.sum() < res.done.size
    assert (res.classes[res.done] >= 0).all() and (res.classes[~res.done] == -1).all()
    full = classify_scan(ds, model=model, mode="pattern", device="cpu")
    np.testing.assert_array_equal(res.classes[res.done], full.classes[res.done])


def test_cell_mode_needs_a_lattice(scan, model):
    from polarstem.errors import PolarstemError
    from polarstem.lattice import Lattice

    ds = load(scan)
    with pytest.raises(PolarstemError, match="lattice"):
        classify_scan(ds, model=model, mode="cell", device="cpu")
    res = classify_scan(ds, model=model, mode="cell", device="cpu", lattice=Lattice(period=(4.0, 4.0)))
    assert res.mode == "cell" and res.done.all()


def test_bad_roi_and_device(scan, model):
    from polarstem.errors import PolarstemError

    ds = load(scan)
    with pytest.raises(PolarstemError, match="does not match"):
        classify_scan(ds, model=model, roi=np.ones((3, 3), bool), device="cpu")
    with pytest.raises(PolarstemError, match="no scan positions"):
        classify_scan(ds, model=model, roi=np.zeros(ds.scan_shape, bool), device="cpu")
    with pytest.raises(PolarstemError, match="not available|unknown device"):
        classify_scan(ds, model=model, mode="pattern", device="tpu")


def test_resume_after_interruption_equals_a_full_run(scan, model, tmp_path):
    from polarstem.export import load_checkpoint, save_checkpoint

    small = 64 * 64 * 2 * 14
    ds = load(scan, chunk_bytes=small)
    cancel = threading.Event()
    partial = classify_scan(ds, model=model, mode="pattern", device="cpu", chunk_bytes=small, cancel=cancel,
                            progress=lambda d, t: cancel.set() if d == 3 else None)
    assert not partial.complete
    key = {"input_sha256": "x", "model": "m", "mode": "pattern", "roi_sha256": None}
    save_checkpoint(tmp_path, partial, key)
    assert load_checkpoint(tmp_path, {**key, "model": "other"}, ds.scan_shape) is None
    restored = load_checkpoint(tmp_path, key, ds.scan_shape)
    np.testing.assert_array_equal(restored.done, partial.done)
    resumed = classify_scan(ds, model=model, mode="pattern", device="cpu", chunk_bytes=small, resume_from=restored)
    assert resumed.complete and resumed.done.all()
    assert resumed.n_patterns == ds.scan_shape[0] * ds.scan_shape[1]
    full = classify_scan(ds, model=model, mode="pattern", device="cpu")
    np.testing.assert_array_equal(resumed.classes, full.classes)
    np.testing.assert_allclose(resumed.proba, full.proba, atol=1e-5)


def _manual_vote(pattern_result, window):
    """Mean log-probability over each window (zeros beyond the scan, normalised by the count), softmax."""
    from scipy import ndimage

    logp = np.log(np.clip(pattern_result.proba, 1e-6, 1.0)) * pattern_result.informative[..., None]
    n = ndimage.uniform_filter(pattern_result.informative.astype(np.float32), size=window, mode="constant")
    s = ndimage.uniform_filter(logp.astype(np.float32), size=window + (1,), mode="constant")
    m = s / np.maximum(n, 1e-6)[..., None]
    p = np.exp(m - m.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def test_cell_vote_pools_the_pattern_predictions_of_each_window(scan, model):
    from polarstem.lattice import Lattice

    lat = Lattice(period=(3.0, 3.0))
    pat = classify_scan(load(scan), model=model, mode="pattern", device="cpu", lattice=lat)
    small = load(scan, chunk_bytes=64 * 64 * 2 * 14 * 2)  # 2-row chunks: windows cross block edges
    vote = classify_scan(small, model=model, mode="cell", device="cpu", lattice=lat, chunk_bytes=64 * 64 * 2 * 14 * 4)
    assert vote.mode == "cell" and vote.params["cell_method"] == "vote" and vote.done.all()
    np.testing.assert_allclose(vote.proba, _manual_vote(pat, lat.window), atol=2e-5)
    np.testing.assert_array_equal(vote.classes, np.argmax(vote.proba, axis=-1))
    # an ROI: only its positions are classified, from windows that reach outside it
    roi = np.zeros(vote.classes.shape, bool)
    roi[4:7, 5:9] = True
    part = classify_scan(load(scan), model=model, mode="cell", device="cpu", lattice=lat, roi=roi)
    assert (part.done == roi).all()
    np.testing.assert_allclose(part.proba[roi], vote.proba[roi], atol=2e-5)
    mean = classify_scan(load(scan), model=model, mode="cell", device="cpu", lattice=lat, cell_method="mean")
    assert mean.params["cell_method"] == "mean" and not np.allclose(mean.proba, vote.proba)


def test_tta_averages_the_symmetry_images(scan, model):
    ds = load(scan)
    plain = classify_scan(ds, model=model, mode="pattern", device="cpu", anomaly=False)
    tta = classify_scan(ds, model=model, mode="pattern", device="cpu", anomaly=False, tta=True)
    assert tta.params["tta"] and not plain.params["tta"]
    frames = np.asarray(ds.data[2, :5])
    x, _ = model.preprocess(frames, ds.calibration)
    np.testing.assert_allclose(tta.proba[2, :5], model.predict(x, tta=True)["proba"], atol=1e-5)
    assert not np.allclose(tta.proba, plain.proba)
