"""Lattice finding, cell averaging, anomaly scoring and the export folder, on constructed maps."""

from __future__ import annotations

import numpy as np
import pytest

from polarstem.anomaly import score_anomaly
from polarstem.classify import ClassificationResult, cell_average
from polarstem.export import export_result, read_map, read_maps
from polarstem.io import Calibration, Dataset4D
from polarstem.lattice import find_lattice


def lattice_image(shape=(60, 72), period=(4.6, 4.6), origin=(1.0, 2.0)):
    rr, cc = np.indices(shape)
    return (np.cos(2 * np.pi * (rr - origin[0]) / period[0]) + 1) * (np.cos(2 * np.pi * (cc - origin[1]) / period[1]) + 1)


def test_find_lattice_period_and_origin():
    lat = find_lattice(lattice_image())
    assert lat.period == pytest.approx((4.6, 4.6), abs=0.1)
    assert lat.origin[0] == pytest.approx(1.0, abs=0.2) and lat.origin[1] == pytest.approx(2.0, abs=0.2)
    assert lat.resolved and lat.window == (5, 5)


def test_find_lattice_uses_scan_step():
    # 0.0864 nm steps: a KNN cell (0.3975 nm) is 4.6 px
    lat = find_lattice(lattice_image(), scan_step_nm=(0.0864, 0.0864))
    assert lat.period == pytest.approx((4.6, 4.6), abs=0.15)
    assert find_lattice(lattice_image(), scan_step_nm=(0.5, 0.5)) is None  # cell < 2 steps: unresolved


def test_no_lattice_in_noise():
    assert find_lattice(np.random.default_rng(0).random((40, 40))) is None
    assert find_lattice(np.zeros((40, 40))) is None


def test_cell_average_is_a_box_mean():
    f = np.random.default_rng(1).random((9, 9, 3, 3)).astype(np.float32)
    avg = cell_average(f, (3, 3))
    np.testing.assert_allclose(avg[4, 4], f[3:6, 3:6].mean(axis=(0, 1)), rtol=1e-5)


def synthetic_result(shape=(40, 48), period=4):
    """Two domains; confidence dips periodically (hard positions) and at a 4x4 defect."""
    rng = np.random.default_rng(2)
    res = ClassificationResult.empty(shape)
    res.classes[:] = 1
    res.classes[:, shape[1] // 2:] = 5
    rr, cc = np.indices(shape)
    hard = ((rr % period) == 0) & ((cc % period) == 0)
    conf = 0.95 - 0.4 * hard + rng.normal(0, 0.02, shape)
    defect = (slice(18, 23), slice(10, 15))
    conf[defect] = 0.4
    res.classes[defect] = rng.integers(0, 8, (5, 5))
    res.confidence[:] = conf
    res.margin[:] = conf - 0.05
    res.embedding_distance[:] = rng.normal(1.0, 0.1, shape)
    res.embedding_distance[defect] = 3.0
    res.proba[:] = (1 - conf[..., None]) / 7
    res.done[:] = True
    res.informative[:] = True
    from polarstem.lattice import Lattice

    res.lattice = Lattice(period=(period, period))
    truth = np.zeros(shape, bool)
    truth[defect] = True
    return res, truth


def test_anomaly_highest_at_defect_not_at_hard_positions():
    res, truth = synthetic_result()
    a = score_anomaly(res)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(truth.ravel(), a.ravel()) > 0.95
    rr, cc = np.indices(a.shape)
    hard = ((rr % 4) == 0) & ((cc % 4) == 0) & ~truth
    assert np.nanmax(a[~truth]) < np.nanmax(a[truth])
    assert np.nanmean(a[hard]) < 0.5 * np.nanmean(a[truth])


def test_domain_walls_are_not_anomalies_but_islands_inside_a_domain_are():
    """Patterns at a wall are mixed (low confidence), as at a defect; the wall between two large
    domains is discounted, the defect (low confidence, small islands of other classes) is not."""
    from polarstem.anomaly import domain_walls

    res, truth = synthetic_result()
    wall_cols = slice(22, 26)
    res.confidence[:, wall_cols] = 0.45
    res.embedding_distance[:, wall_cols] = 2.5
    walls = domain_walls(res.classes, res.done, res.lattice.window)
    assert walls[:, wall_cols].all() and not walls[truth].any()
    a = score_anomaly(res)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(truth.ravel(), a.ravel()) > 0.95
    assert np.nanmax(a[:, wall_cols]) < 0.5 * np.nanmean(a[truth])
    # a large region of another class that itself looks irregular (misclassified around a defect)
    # is not a domain: no wall is discounted next to it
    sick = np.zeros(res.classes.shape)
    sick[:, 24:] = 3.0
    assert not domain_walls(res.classes, res.done, res.lattice.window, sick).any()


def _fingerprints(res, rng, shift_mask=None, shift=0.25, n=36):
    """Synthetic fingerprints: each place in the cell has its own pattern, plus noise; an optional
    consistent small shift (about one position's spread) at ``shift_mask``."""
    bins = res.lattice.phase_bins(res.classes.shape)
    fp = rng.normal(0, 1, (16, n))[bins] + rng.normal(0, 0.3, res.classes.shape + (n,))
    if shift_mask is not None:
        fp[shift_mask] += shift * rng.normal(0, 1, n)
    return fp.astype(np.float16)


def test_a_defect_on_a_wall_is_seen_by_its_own_patterns(monkeypatch):
    """The vote mixes two domains at a wall, so its confidence there is low everywhere; the
    positions' own patterns are not mixed: a defect on the wall (two or more px off the other domain)
    that lowers the confidence no more than the wall does is found by them. Without the pattern term
    it is lost in its wall."""
    from sklearn.metrics import roc_auc_score

    from polarstem import anomaly

    res, _ = synthetic_result()
    rng = np.random.default_rng(5)
    wall_cols = slice(20, 28)  # classes 1 | 5 meet at column 24
    res.confidence[:, wall_cols] = 0.5 + rng.normal(0, 0.03, res.confidence[:, wall_cols].shape)
    on_wall = np.zeros(res.classes.shape, bool)
    on_wall[26:34, 20:23] = True  # 2-4 px from domain 5
    res.fingerprint = _fingerprints(res, rng, on_wall)
    assert anomaly.domain_walls(res.classes, res.done, res.lattice.window)[on_wall].all()
    near = np.zeros_like(on_wall)
    near[:, 16:32] = True  # the wall and its surroundings, away from the synthetic interior defect
    assert roc_auc_score(on_wall[near], score_anomaly(res)[near]) > 0.9
    monkeypatch.setattr(anomaly, "FINGERPRINT_WEIGHT", 0.0)
    assert roc_auc_score(on_wall[near], score_anomaly(res)[near]) < 0.7


def test_a_wall_defect_below_the_walls_own_confidence_is_seen(monkeypatch):
    """A non-polar block on a wall, which the vote calls one of the two domains, lowers the
    confidence below what the rest of the wall gives: what exceeds the wall positions' 0.9 quantile
    counts (scan H). Until session 11 a wall's confidence counted nothing."""
    from sklearn.metrics import roc_auc_score

    from polarstem import anomaly

    res, _ = synthetic_result()
    rng = np.random.default_rng(5)
    wall_cols = slice(20, 28)
    res.confidence[:, wall_cols] = 0.5 + rng.normal(0, 0.03, res.confidence[:, wall_cols].shape)
    block = np.zeros(res.classes.shape, bool)
    block[26:34, 22:26] = True  # across the wall, both sides
    res.confidence[block] = 0.35
    res.fingerprint = _fingerprints(res, rng, np.zeros_like(block))  # its patterns look like the wall's
    assert anomaly.domain_walls(res.classes, res.done, res.lattice.window)[block].all()
    near = np.zeros_like(block)
    near[:, 16:32] = True
    assert roc_auc_score(block[near], score_anomaly(res)[near]) > 0.9
    monkeypatch.setattr(anomaly, "WALL_EXCESS_QUANTILE", 1.0)  # the wall's own maximum: nothing counts
    assert roc_auc_score(block[near], score_anomaly(res)[near]) < 0.7


def test_noise_free_patterns_do_not_make_the_pattern_term_explode():
    """A noise-free simulation (one phonon configuration) can give identical patterns at every clean
    position of a place in the cell: a group spread of 0 must not turn a tiny difference elsewhere into
    an astronomical score (the bundled sample once had 1e10 at one position)."""
    from polarstem import anomaly

    res, _ = synthetic_result()
    rng = np.random.default_rng(3)
    bins = res.lattice.phase_bins(res.classes.shape)
    fp = rng.normal(0, 1, (16, 36))[bins]  # the same pattern at every position of a place in the cell...
    fp[(bins == 0) & (res.classes == 1)] += rng.normal(0, 0.3, ((bins == 0) & (res.classes == 1)).sum())[:, None]
    fp[5, 5] += 0.01  # ...and one position a hair off
    res.fingerprint = fp.astype(np.float32)
    valid = res.done & (res.classes >= 0)
    group = res.classes.astype(np.int64) * 64 + bins
    z = anomaly._residual_z(res.fingerprint, group, np.ones_like(valid), valid, 5)
    assert np.isfinite(z).all() and z.max() < 1e3
    assert np.nanmax(score_anomaly(res)) < 1e3


def test_a_defect_that_keeps_the_confidence_is_found_by_its_patterns(monkeypatch):
    """Thin-crystal O vacancies barely lower the confidence, but shift the patterns a little against
    the other positions of the same class and place in the cell: the fingerprint term finds them."""
    from sklearn.metrics import roc_auc_score

    from polarstem import anomaly

    res, _ = synthetic_result()
    rng = np.random.default_rng(7)
    quiet = np.zeros(res.classes.shape, bool)
    quiet[28:36, 4:12] = True  # inside domain 1, away from the wall and the synthetic defect
    res.fingerprint = _fingerprints(res, rng, quiet)
    others = quiet | (~quiet & (res.classes == 1))
    assert roc_auc_score(quiet[others], score_anomaly(res)[others]) > 0.9
    monkeypatch.setattr(anomaly, "FINGERPRINT_WEIGHT", 0.0)
    assert roc_auc_score(quiet[others], score_anomaly(res)[others]) < 0.7


def test_export_folder_roundtrip(tmp_path):
    res, _ = synthetic_result()
    res.anomaly = score_anomaly(res)
    res.model, res.model_sha256 = "cnn", "ab" * 32
    ds = Dataset4D(data=np.zeros(res.classes.shape + (4, 4)), source="",
                   calibration=Calibration(scan_step_nm=(0.08, 0.08)))
    export_result(tmp_path, res, ds, background=lattice_image(res.classes.shape))
    for name in ("class.tif", "confidence.tif", "anomaly.tif", "maps.hspy", "provenance.json", "overlay.png"):
        assert (tmp_path / name).exists(), name
    cls, meta = read_map(tmp_path / "class.tif")
    np.testing.assert_array_equal(cls, res.classes)
    assert meta["calibration"]["scan_step_nm"] == [0.08, 0.08]
    assert meta["provenance"]["model"]["sha256"] == "ab" * 32
    maps = read_maps(tmp_path)
    np.testing.assert_allclose(maps["confidence"], res.confidence)
    np.testing.assert_allclose(maps["anomaly"], res.anomaly, equal_nan=True)
    np.testing.assert_allclose(maps["p3"], res.proba[..., 3])
    assert not list(tmp_path.glob("*.partial"))


def test_phase_bins_are_even_on_a_scan_with_whole_steps_per_cell():
    from polarstem.lattice import Lattice

    lat = Lattice(period=(3.0289, 3.0248), origin=(2.876, 2.910))
    counts = np.bincount(lat.phase_bins((30, 30)).ravel())
    assert len(counts) == 9 and counts.min() >= 80 and counts.max() <= 120


def test_phase_bins_keep_one_place_of_the_cell_each_when_the_origin_is_half_a_step_off():
    """Scan C's found lattice (4 steps per cell found as 4.014, origin 0.457 px): the positions' phases
    sit near bin edges, and fixed edges put two places of the cell in one bin across the scan."""
    from polarstem.lattice import Lattice

    lat = Lattice(period=(4.0144, 4.0211), origin=(0.4575, 1.3743))
    bins = lat.phase_bins((32, 32))
    rr, cc = np.indices((32, 32))
    place = (rr % 4) * 4 + cc % 4
    assert len(set(zip(bins.ravel().tolist(), place.ravel().tolist()))) == 16
    assert np.bincount(bins.ravel()).tolist() == [64] * 16


def test_wall_bands_of_the_bisecting_direction_go_to_the_adjacent_domains():
    """A [110] domain above a [-110] one, with a two-row band of [010] (their sum's direction) at
    the wall: the band is the wall. Thin bands that bisect nothing stay."""
    from polarstem.walls import assign_wall_bands

    h, w = 24, 24
    classes = np.full((h, w), 1, np.int8)
    classes[12:] = 3
    classes[11:13] = 2  # the wall band
    proba = np.full((h, w, 8), 0.05, np.float32)
    proba[:12, :, 1] = 0.6
    proba[12:, :, 3] = 0.6
    valid = np.ones((h, w), bool)
    out, changed = assign_wall_bands(classes, proba, valid, (3, 3))
    assert changed[11:13].all() and changed.sum() == 2 * w
    np.testing.assert_array_equal(out[11], 1)
    np.testing.assert_array_equal(out[12], 3)
    # a thin band of another direction (not between these domains' directions) is kept
    other = classes.copy()
    other[11:13] = 6
    out2, changed2 = assign_wall_bands(other, proba, valid, (3, 3))
    assert not changed2.any() and (out2 == other).all()
    # opposite domains (a 180° wall) have no bisecting direction: nothing changes
    flip = np.where(classes == 3, 5, classes).astype(np.int8)
    flip[11:13] = 3
    assert not assign_wall_bands(flip, proba, valid, (3, 3))[1].any()


def test_edge_bands_go_to_the_domain_beside_them_within_90_degrees():
    """A wall along the scan border has its far domain outside the scan: a thin band at the border
    whose direction is within 90° of the domain beside it is that wall; farther directions, and
    the same band away from the border, stay."""
    from polarstem.walls import assign_wall_bands

    h, w = 24, 24
    proba = np.full((h, w, 8), 0.05, np.float32)
    proba[..., 1] = 0.6
    valid = np.ones((h, w), bool)
    for band, moved in ((2, True), (0, True), (7, True), (3, True), (5, False), (4, False)):
        classes = np.full((h, w), 1, np.int8)
        classes[0] = band  # 45°, 45°, 90°, 90°: walls; 180°, 135°: not
        out, changed = assign_wall_bands(classes, proba, valid, (3, 3))
        assert changed[0].all() == moved and changed[1:].sum() == 0, band
        assert (out[0] == (1 if moved else band)).all()
    inner = np.full((h, w), 1, np.int8)
    inner[12] = 2  # inside the scan with one domain on both sides: not a wall band
    assert not assign_wall_bands(inner, proba, valid, (3, 3))[1].any()


def test_a_wall_band_one_cell_thick_still_goes_but_a_thicker_domain_stays():
    """Bands up to one cell (3 positions at 3 steps per cell) are walls; 4 positions is a domain."""
    from polarstem.walls import assign_wall_bands

    h, w = 30, 24
    proba = np.full((h, w, 8), 0.05, np.float32)
    proba[:15, :, 1] = 0.6
    proba[15:, :, 3] = 0.6
    valid = np.ones((h, w), bool)
    for rows, moved in ((3, True), (4, False)):
        classes = np.full((h, w), 1, np.int8)
        classes[15:] = 3
        classes[14:14 + rows] = 2
        out, changed = assign_wall_bands(classes, proba, valid, (3, 3))
        assert changed[14:14 + rows].all() == moved and changed.sum() == (rows * w if moved else 0), rows


def test_a_thin_edge_of_a_domain_is_not_a_wall_band_between_its_neighbours():
    """Validation scan Q: a [-110] domain (3) above a [110] domain (1) in whose top-right corner a
    large block is called [100] (0, a defect the vote calls one class). The one-cell strip of 1
    between 3 and the block lies 22.5° from the sum of 3 and 0, but it is the edge of domain 1, not
    a wall band between 3 and 0: it stays 1. The same strip as an island of its own still goes."""
    from polarstem.walls import assign_wall_bands

    h, w = 32, 32
    classes = np.full((h, w), 1, np.int8)
    classes[:16] = 3
    classes[19:28, 20:30] = 0  # the block, three cells below the wall, 3 x 3 cells
    proba = np.full((h, w, 8), 0.02, np.float32)
    proba[..., 1] = 0.5
    proba[:16, :, 3] = 0.6
    proba[16:19, 20:30, 0] = 0.55  # the strip's windows lean to the block
    proba[19:28, 20:30, 0] = 0.7
    valid = np.ones((h, w), bool)
    out, changed = assign_wall_bands(classes, proba, valid, (3, 3))
    assert (out[16:19, 20:30] == 1).all() and not changed[16:19].any()
    # cut off from domain 1 (a 2 on its left and below), the strip is a band between 3 and 0 again
    island = classes.copy()
    island[16:, :20] = 2
    island[28:, :] = 2
    island[16:28, 30:] = 2
    out2, changed2 = assign_wall_bands(island, proba, valid, (3, 3))
    assert changed2[16:19, 20:30].all() and (out2[16:19, 20:30] == 0).all()


def test_a_thin_band_along_the_scan_edge_is_capped_but_a_defect_at_the_edge_is_not():
    """A sliver of a domain cut by the scan edge (low confidence in the outermost row only) is not a
    defect; a defect one cell thick that reaches the edge, or one inside, keeps its score."""
    from sklearn.metrics import roc_auc_score

    from polarstem import anomaly
    from polarstem.anomaly import limit_edge_bands

    res, truth = synthetic_result(period=3)
    res.confidence[-1, :] = 0.35  # the last scan row: a sliver beyond a wall that hugs the edge
    res.embedding_distance[-1, :] = 3.0
    res.confidence[:3, 30:36] = 0.4  # a one-cell-thick defect at the top edge
    res.embedding_distance[:3, 30:36] = 3.0
    truth[:3, 30:36] = True
    a = score_anomaly(res)
    assert np.nanmean(a[-1]) < 0.3 * np.nanmean(a[truth])
    assert np.nanmean(a[:3, 30:36]) > 0.5 * np.nanmean(a[18:23, 10:15])
    assert roc_auc_score(truth.ravel(), a.ravel()) > 0.95
    anomaly.EDGE_BANDS = False
    try:
        off = score_anomaly(res)
    finally:
        anomaly.EDGE_BANDS = True
    assert np.nanmean(off[-1]) > 2 * np.nanmean(a[-1])  # the rule is what removed the sliver
    # the rule itself: only bands thinner than half a cell, capped by the score further in
    s = np.zeros((12, 12))
    s[0, :] = 5.0
    s[11, 4:6] = 5.0
    s[10, 4:6] = 2.0
    capped = limit_edge_bands(s, np.ones(s.shape, bool), (3.0, 3.0))
    assert capped[0].max() == 0 and np.allclose(capped[11, 4:6], 2.0) and np.allclose(capped[1:11], s[1:11])
    assert np.array_equal(limit_edge_bands(s, np.ones(s.shape, bool), (2.0, 2.0)), s)  # no band thinner than half


def test_positions_without_a_usable_pattern_of_their_own_do_not_set_the_reference():
    """Preprocessing zeroes the input of a pattern it cannot use (on the bundled sample: most probes on an
    atomic column at one place in the cell). Those zero fingerprints are no reference for the one usable
    member of their (class, place) group: it must not score as an outlier of a clean domain."""
    res, truth = synthetic_result()
    rng = np.random.default_rng(7)
    res.fingerprint = _fingerprints(res, rng)
    bins = res.lattice.phase_bins(res.classes.shape)
    on_column = (bins == 0) & (res.classes == 1) & ~truth
    rr, cc = np.indices(bins.shape)
    kept = tuple(np.argwhere(on_column & (rr > 4) & (rr < 14) & (cc > 4) & (cc < 16))[0])  # inside domain 1
    res.fingerprint[on_column] = 0
    res.fingerprint[kept] = rng.normal(0, 1, res.fingerprint.shape[-1])
    a = score_anomaly(res)
    clean = ~truth & (res.classes == 1) & (bins != 0)
    assert a[kept] < np.nanmedian(a[clean]) + 1.0  # as clean positions of its domain score
