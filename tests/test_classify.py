"""classify_scan mechanics with a real (untrained) network: shapes, ROI, cancel, chunking, CLI export."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from polarstem.classify import classify_scan
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

    n_positions = int(np.prod(ds.scan_shape))
    seen = []

    def progress(done, total):  # in scan positions while classifying, at least after every block
        if total == n_positions:
            seen.append(done)
            if done >= 4 * ds.scan_shape[1]:
                cancel.set()

    res = classify_scan(ds, model=model, mode="pattern", device="cpu", progress=progress, cancel=cancel,
                        chunk_bytes=64 * 64 * 2 * 14)
    assert seen[0] == 0 and seen == sorted(seen)
    assert not res.complete
    assert 0 < res.done.sum() < res.done.size
    assert (res.classes[res.done] >= 0).all() and (res.classes[~res.done] == -1).all()
    full = classify_scan(ds, model=model, mode="pattern", device="cpu")
    np.testing.assert_array_equal(res.classes[res.done], full.classes[res.done])


def test_every_classified_position_keeps_its_own_fingerprint(scan, model):
    """The anomaly score's pattern term needs each position's own coarse pattern, in pattern mode and
    in the cell vote (which pools the predictions, not the fingerprints), on a cluster as locally."""
    from polarstem.anomaly import fingerprint
    from polarstem.lattice import Lattice

    ds = load(scan)
    roi = np.zeros(ds.scan_shape, bool)
    roi[2:9, 3:11] = True
    own = fingerprint(model.preprocess(np.asarray(ds.data)[roi], ds.calibration)[0]).astype(np.float32)
    for mode, lat in (("pattern", None), ("cell", Lattice(period=(3.0, 3.0)))):
        res = classify_scan(ds, model=model, mode=mode, roi=roi, device="cpu", lattice=lat, chunk_bytes=64 * 64 * 2 * 20)
        fp = res.fingerprint.astype(np.float32)
        assert fp.shape == ds.scan_shape + (own.shape[1],) and own.shape[1] == (model.input_shape[0] // 4) ** 2
        np.testing.assert_allclose(fp[roi], own, atol=2e-3)
        assert np.isnan(fp[~roi]).all()


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
    n_positions = int(np.prod(ds.scan_shape))
    partial = classify_scan(ds, model=model, mode="pattern", device="cpu", chunk_bytes=small, cancel=cancel,
                            progress=lambda d, t: cancel.set() if t == n_positions and d >= 3 * ds.scan_shape[1]
                            else None)
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
    # the anomaly score's pattern term survives the checkpoint too
    np.testing.assert_allclose(resumed.fingerprint.astype(np.float32), full.fingerprint.astype(np.float32))
    np.testing.assert_allclose(resumed.anomaly, full.anomaly, atol=1e-4, equal_nan=True)


def _manual_vote(pattern_result, window):
    """Mean log-probability of the usable patterns over each window (zeros beyond the scan, normalised
    by the count), softmax."""
    from scipy import ndimage

    logp = np.log(np.clip(pattern_result.proba, 1e-6, 1.0)) * pattern_result.usable[..., None]
    n = ndimage.uniform_filter(pattern_result.usable.astype(np.float32), size=window, mode="constant")
    s = ndimage.uniform_filter(logp.astype(np.float32), size=window + (1,), mode="constant")
    m = s / np.maximum(n, 1e-6)[..., None]
    p = np.exp(m - m.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def test_cell_vote_pools_the_pattern_predictions_of_each_window(scan, model):
    from polarstem.lattice import Lattice

    lat = Lattice(period=(3.0, 3.0))
    pat = classify_scan(load(scan), model=model, mode="pattern", device="cpu", lattice=lat)
    small = load(scan, chunk_bytes=64 * 64 * 2 * 14 * 2)  # 2-row chunks: windows cross block edges
    vote = classify_scan(small, model=model, mode="cell", device="cpu", lattice=lat, chunk_bytes=64 * 64 * 2 * 14 * 4,
                         cell_method="vote-centred", wall_bands=False)  # the vote itself, no wall-band pass
    assert vote.mode == "cell" and vote.params["cell_method"] == "vote-centred" and vote.done.all()
    np.testing.assert_allclose(vote.proba, _manual_vote(pat, lat.window), atol=2e-5)
    np.testing.assert_array_equal(vote.classes, np.argmax(vote.proba, axis=-1))
    # an ROI: only its positions are classified, from windows that reach outside it
    roi = np.zeros(vote.classes.shape, bool)
    roi[4:7, 5:9] = True
    part = classify_scan(load(scan), model=model, mode="cell", device="cpu", lattice=lat, roi=roi,
                         cell_method="vote-centred")
    assert (part.done == roi).all()
    np.testing.assert_allclose(part.proba[roi], vote.proba[roi], atol=2e-5)
    mean = classify_scan(load(scan), model=model, mode="cell", device="cpu", lattice=lat, cell_method="mean")
    assert mean.params["cell_method"] == "mean" and not np.allclose(mean.proba, vote.proba)


def _manual_edge_vote(pattern_result, window):
    """Per position: among the windows containing it (at least half full, or its own), the one whose
    mean log-probability of its leading class is highest; plain loops, no shared code."""
    logp = np.log(np.clip(pattern_result.proba, 1e-6, 1.0)) * pattern_result.usable[..., None]
    ok = pattern_result.usable.astype(float)
    h, w = ok.shape
    wy, wx = window

    def win(qy, qx):  # scipy's alignment: q - w//2 .. q + (w - 1 - w//2)
        ys = slice(max(0, qy - wy // 2), min(h, qy + wy - wy // 2))
        xs = slice(max(0, qx - wx // 2), min(w, qx + wx - wx // 2))
        n = ok[ys, xs].sum()
        m = logp[ys, xs].sum(axis=(0, 1)) / max(n, 1e-6)
        return n, m

    out = np.zeros(pattern_result.proba.shape)
    for py in range(h):
        for px in range(w):
            n0, best_m = win(py, px)
            best = best_m.max() if n0 > 0.5 else -np.inf
            for dy in range(-(wy - 1 - wy // 2), wy // 2 + 1):
                for dx in range(-(wx - 1 - wx // 2), wx // 2 + 1):
                    qy, qx = py + dy, px + dx
                    if (dy, dx) == (0, 0) or not (0 <= qy < h and 0 <= qx < w):
                        continue
                    n, m = win(qy, qx)
                    if n >= 0.5 * wy * wx and m.max() > best:
                        best, best_m = m.max(), m
            p = np.exp(best_m - best_m.max())
            out[py, px] = p / p.sum()
    return out


def test_edge_preserving_vote_picks_the_most_consistent_window(scan, model):
    from polarstem.lattice import Lattice

    lat = Lattice(period=(3.0, 3.0))
    pat = classify_scan(load(scan), model=model, mode="pattern", device="cpu", lattice=lat)
    small = load(scan, chunk_bytes=64 * 64 * 2 * 14 * 2)  # 2-row chunks: candidate windows cross block edges
    vote = classify_scan(small, model=model, mode="cell", device="cpu", lattice=lat, chunk_bytes=64 * 64 * 2 * 14 * 4)
    assert vote.params["cell_method"] == "vote" and vote.done.all()
    np.testing.assert_allclose(vote.proba, _manual_edge_vote(pat, lat.window), atol=2e-5)
    centred = classify_scan(load(scan), model=model, mode="cell", device="cpu", lattice=lat, cell_method="vote-centred")
    assert not np.allclose(vote.proba, centred.proba)
    roi = np.zeros(vote.classes.shape, bool)
    roi[3:6, 2:9] = True
    part = classify_scan(load(scan), model=model, mode="cell", device="cpu", lattice=lat, roi=roi)
    np.testing.assert_allclose(part.proba[roi], vote.proba[roi], atol=2e-5)


def test_patterns_without_a_disk_do_not_vote_and_their_windows_abstain(tmp_path, model):
    """A pattern whose detector edge is as bright as its disk (a faint disk on a uniform background:
    there is no disk to centre or scale) and an empty one are broken: the filter map flags them, they
    do not vote, and a cell window holding only such patterns is uncertain (-2)."""
    from polarstem.lattice import Lattice

    frames = disk_patterns(shape=(9, 9)).astype(np.float32)
    yy, xx = np.indices(frames.shape[2:])
    faint = 20.0 * (np.hypot(yy - 32, xx - 32) < 64 / 6) + 130.0  # a disk only 1.15x brighter than everywhere else
    frames[0:3, 0:3] = np.random.default_rng(1).poisson(faint, (3, 3) + faint.shape)
    frames[6, 6] = 0.0  # broken: empty
    np.save(tmp_path / "scan.npy", frames.astype(np.uint16))
    (tmp_path / "scan.json").write_text(json.dumps({"scan_step_nm": 0.1, "mrad_per_px": 1.2, "beam_energy_kev": 200,
                                                   "convergence_mrad": 20}))
    lat = Lattice(period=(3.0, 3.0))
    pat = classify_scan(load(tmp_path / "scan.npy"), model=model, mode="pattern", device="cpu", lattice=lat)
    broken = np.zeros((9, 9), bool)
    broken[0:3, 0:3] = broken[6, 6] = True
    np.testing.assert_array_equal(pat.usable, ~broken)
    np.testing.assert_array_equal(pat.informative, ~broken)
    assert (pat.classes[broken] == -2).all() and (pat.classes[~broken] >= 0).all()
    cell = classify_scan(load(tmp_path / "scan.npy"), model=model, mode="cell", device="cpu", lattice=lat,
                         cell_method="vote-centred", wall_bands=False)
    np.testing.assert_allclose(cell.proba[~broken], _manual_vote(pat, lat.window)[~broken], atol=2e-5)
    assert not cell.usable[1, 1] and cell.classes[1, 1] == -2  # its window holds only broken patterns
    assert cell.usable[2, 2] and cell.classes[2, 2] >= 0  # (2, 2)'s window reaches usable ones
    assert cell.done.all()


def test_edge_preserving_vote_keeps_a_domain_wall_sharp():
    """Two domains meeting at a wall, noisy per-pattern predictions (about half right): near the wall
    the centred window mixes both domains' votes; choosing the most consistent window containing the
    position does better there and overall."""
    from polarstem.classify.vote import _pooled_proba, _window_sum, best_windows

    rng = np.random.default_rng(0)
    h, w = 30, 30
    truth = np.where(np.arange(w) < 15, 1, 5)[None].repeat(h, 0)
    logits = rng.normal(0, 1.5, (h, w, 8))
    logits[np.arange(h)[:, None], np.arange(w)[None], truth] += 2.0
    proba = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    s, n = _window_sum(np.log(proba).astype(np.float32), (3, 3)), _window_sum(np.ones((h, w), np.float32), (3, 3))
    centred = _pooled_proba(s, n).argmax(-1)
    qy, qx = best_windows(s, n, (3, 3))
    edge = _pooled_proba(s[qy, qx], n[qy, qx]).argmax(-1)
    assert 0.4 < (proba.argmax(-1) == truth).mean() < 0.6
    near = slice(13, 17)
    assert (edge[:, near] == truth[:, near]).mean() > (centred[:, near] == truth[:, near]).mean() + 0.03
    assert (edge == truth).mean() > (centred == truth).mean()
    # every chosen window contains its position
    yy, xx = np.indices((h, w))
    assert (np.abs(qy - yy) <= 1).all() and (np.abs(qx - xx) <= 1).all()


def test_tta_averages_the_symmetry_images(scan, model):
    ds = load(scan)
    plain = classify_scan(ds, model=model, mode="pattern", device="cpu", anomaly=False, tta=1)
    tta = classify_scan(ds, model=model, mode="pattern", device="cpu", anomaly=False, tta=True)
    frames = np.asarray(ds.data[2, :5])
    x, _ = model.preprocess(frames, ds.calibration)
    np.testing.assert_allclose(tta.proba[2, :5], model.predict(x, tta=True)["proba"], atol=1e-5)
    assert not np.allclose(tta.proba, plain.proba)
    # two images: the pattern and its 180° rotation (the opposite polarization's image, classes k -> k + 4)
    pair = classify_scan(ds, model=model, mode="pattern", device="cpu", anomaly=False, tta=2)
    assert pair.params["tta"] == 2 and tta.params["tta"] == 8 and plain.params["tta"] == 1
    from polarstem.models.symmetry import class_permutation

    flipped = model.predict(np.rot90(x, 2, axes=(-2, -1)).copy())["proba"]
    perm = class_permutation((2, False), model.generators)
    own = model.predict(x)["proba"]
    expect = np.exp((np.log(own + 1e-12) + np.log(flipped[:, perm] + 1e-12)) / 2)
    np.testing.assert_allclose(pair.proba[2, :5], expect / expect.sum(1, keepdims=True), atol=1e-5)
    from polarstem.errors import PolarstemError

    with pytest.raises(PolarstemError, match="1, 2, 4 or 8"):
        classify_scan(ds, model=model, mode="pattern", device="cpu", tta=3)


def test_iter_classify_yields_a_partial_result_after_every_block_and_the_finished_one_last(scan, model):
    from polarstem.classify import ClassifyParams, iter_classify

    row = 64 * 64 * 2 * 14  # one scan row per block
    ds = load(scan, chunk_bytes=row)
    params = ClassifyParams(model=model, mode="pattern", device="cpu", chunk_bytes=row * 3)
    seen = []
    for result in iter_classify(ds, params):
        seen.append((result.finished, int(result.done.sum())))
    rows = ds.scan_shape[0]
    assert len(seen) == -(-rows // 3) + 1
    assert [f for f, _ in seen] == [False] * (len(seen) - 1) + [True]
    assert [n for _, n in seen[:-1]] == sorted(n for _, n in seen[:-1]) and seen[-1][1] == ds.scan_shape[0] * ds.scan_shape[1]
    assert result.complete and result.anomaly is not None and result.uncertain is not None
    once = classify_scan(ds, model=model, mode="pattern", device="cpu", chunk_bytes=row * 3)
    np.testing.assert_array_equal(result.classes, once.classes)
    np.testing.assert_array_equal(result.proba, once.proba)


def test_an_interrupt_inside_on_block_ends_the_run_as_a_cancel_does(scan, model):
    row = 64 * 64 * 2 * 14
    ds = load(scan, chunk_bytes=row)

    def on_block(result):
        if result.done.sum() >= 2 * ds.scan_shape[1]:
            raise KeyboardInterrupt

    res = classify_scan(ds, model=model, mode="pattern", device="cpu", chunk_bytes=row, on_block=on_block)
    assert res.finished and not res.complete
    assert res.done.sum() == 2 * ds.scan_shape[1] and res.anomaly is not None
