"""Abstention: class-conditional Gaussians of the embedding, conformal thresholds, -2 in the class map."""

from __future__ import annotations

import numpy as np
import pytest

from polarstem.abstain import Abstention, scan_verdict


def _clusters(rng, n_per_class=400, dim=16, spread=1.0):
    means = rng.normal(0, 6, (8, dim))
    y = np.repeat(np.arange(8), n_per_class)
    z = means[y] + spread * rng.normal(size=(len(y), dim))
    return z.astype(np.float32), y


def test_distance_is_about_one_in_scope_and_large_far_away():
    rng = np.random.default_rng(0)
    z, y = _clusters(rng)
    ab = Abstention.fit(z, y)
    fresh, _ = _clusters(np.random.default_rng(0), n_per_class=50)  # same means, new draws
    d_in = ab.distance(fresh + 0 * rng.normal(size=fresh.shape))
    d_far = ab.distance(rng.normal(0, 6, (200, 16)).astype(np.float32) * 3)
    assert 0.7 < np.median(d_in) < 1.3
    assert np.median(d_far) > 3 * np.median(d_in)


def test_conformal_thresholds_let_the_chosen_fraction_of_in_scope_windows_abstain():
    rng = np.random.default_rng(1)
    z, y = _clusters(rng)
    ab = Abstention.fit(z, y)
    cal_d = ab.distance(_clusters(np.random.default_rng(1), 200)[0] + rng.normal(size=(1600, 16)).astype(np.float32))
    cal_p = rng.uniform(0.3, 1.0, len(cal_d))
    ab.calibrate(cal_d, cal_p, 1, alpha=0.05)
    ab.calibrate(cal_d * 0.8, cal_p, 9, alpha=0.05)
    test_d = ab.distance(_clusters(np.random.default_rng(1), 200)[0] + rng.normal(size=(1600, 16)).astype(np.float32))
    frac = ab.uncertain(test_d, rng.uniform(0.3, 1.0, len(test_d)), np.ones(len(test_d))).mean()
    assert 0.04 < frac < 0.16  # two tests at 5 % each
    d1, c1 = ab.thresholds(np.array([1.0, 3.0, 9.0, 30.0]))
    assert d1[0] == pytest.approx(ab.max_distance[1]) and d1[2] == pytest.approx(ab.max_distance[9])
    assert d1[0] > d1[1] > d1[2] == d1[3]  # interpolated in log n, clipped beyond the calibrated sizes
    assert ab.uncertain(np.array([np.nan]), np.array([0.9]), np.array([1.0]))[0]  # nothing to judge by


def test_round_trip_through_the_card():
    rng = np.random.default_rng(2)
    z, y = _clusters(rng, dim=8)
    ab = Abstention.fit(z, y)
    ab.calibrate(ab.distance(z), rng.uniform(0.5, 1, len(z)), 4)
    back = Abstention.from_dict(ab.to_dict())
    np.testing.assert_allclose(back.distance(z[:50]), ab.distance(z[:50]), rtol=1e-4)
    assert back.max_distance == pytest.approx(ab.max_distance, rel=1e-4) and back.calibrated


def test_a_whole_scan_of_unsure_patterns_is_out_of_scope_though_each_passes():
    """Single in-scope patterns may be as unsure as another crystal's, so each position passes the
    per-position thresholds; the median of a scan is judged against in-scope scans' medians."""
    rng = np.random.default_rng(3)
    z, y = _clusters(rng, dim=8)
    ab = Abstention.fit(z, y)
    d = ab.distance(z)
    conf_in = rng.uniform(0.15, 1.0, len(d))  # single KNN patterns: from near chance to sure
    ab.calibrate(d, conf_in, 1)
    rows_c = np.median(rng.uniform(0.15, 1.0, (200, 36)), axis=1)  # in-scope rows: medians near 0.57
    ab.calibrate_scan(np.median(d[:3200].reshape(200, 16), axis=1), rows_c, 1)
    judged = np.ones(400, bool)
    unsure = np.full(400, 0.26)  # every position just above the per-position threshold
    assert ab.uncertain(d[:400], unsure, np.ones(400)).mean() < 0.05  # (the distance test lets 1 % go)
    assert ab.scan_out_of_scope(d[:400], unsure, np.ones(400), judged)
    assert not ab.scan_out_of_scope(d[:400], conf_in[:400], np.ones(400), judged)
    back = Abstention.from_dict(ab.to_dict())
    assert back.scan_min_confidence == pytest.approx(ab.scan_min_confidence, rel=1e-4)
    assert back.scan_out_of_scope(d[:400], unsure, np.ones(400), judged)


def test_the_scan_median_counts_the_windows_the_per_position_thresholds_withhold():
    """The calibration rows' medians are over all their windows, so a scan's is too: a crystal whose
    least sure half is withheld one by one must not pass the scan test on its surer half."""
    from polarstem.classify import ClassificationResult, abstain

    ab = Abstention.fit(*_clusters(np.random.default_rng(4), dim=8))
    ab.calibrate(np.full(100, 2.0), np.linspace(0.2, 1.0, 100), 1, alpha=0.01)  # per position: >= ~0.2
    ab.calibrate_scan(np.full(100, 2.0), np.linspace(0.3, 0.9, 100), 1, alpha=0.01)  # scan median: >= ~0.3
    res = ClassificationResult.empty((10, 20))
    res.done[:] = res.informative[:] = res.usable[:] = True
    res.classes[:] = 1
    res.distance[:], res.votes[:] = 1.0, 1.0
    res.confidence[:, :10], res.confidence[:, 10:] = 0.15, 0.32  # half below the per-position threshold
    abstain(res, ab)
    assert res.uncertain.all() and res.verdict  # survivors' median 0.32 would pass, the scan's 0.235 not
    res.classes[:], res.confidence[:, :10] = 1, 0.5  # a KNN scan with a few unsure positions: median 0.41
    res.confidence[0, :3] = 0.15
    abstain(res, ab)
    assert res.uncertain.sum() == 3


def test_a_scan_that_mostly_abstains_gets_one_sentence():
    done = np.ones((4, 4), bool)
    unc = np.zeros((4, 4), bool)
    assert scan_verdict(unc, done) is None
    unc[:3] = True
    assert "does not look like polar KNN" in scan_verdict(unc, done)


def test_noise_abstains_everywhere_and_says_so():
    """A scan of shot noise has no bright-field disk: every position is uncertain (-2), with one sentence."""
    from polarstem.analysis.trust import NoiseScan
    from polarstem.classify import classify_scan

    ds = NoiseScan(shape=(6, 6, 48, 48)).dataset()
    res = classify_scan(ds, "cnn", mode="pattern", anomaly=False)
    assert (res.classes[res.done] == -2).all() and res.uncertain[res.done].all()
    assert res.verdict and "does not look like polar KNN" in res.verdict
    assert res.maps()["class"].min() == -2


def test_an_acquisition_outside_the_cards_range_abstains_and_says_which():
    """The bundled sample told it was taken at 300 kV: the canonical models were validated at 200 kV only,
    so every position is uncertain and the sentence names the value and the model's range; at its own
    200 kV the same model gives directions."""
    from polarstem.classify import classify_scan
    from polarstem.io import apply_calibration, load
    from polarstem.sample import sample_dataset_path

    ds = load(sample_dataset_path())
    region = (slice(0, 6), slice(0, 6))
    own = classify_scan(ds, "cnn", mode="pattern", anomaly=False, roi=_roi(ds, region))
    assert not own.uncertain[own.done].all() and own.verdict is None
    apply_calibration(ds, {"beam_energy_kev": 300.0})
    far = classify_scan(ds, "cnn", mode="pattern", anomaly=False, roi=_roi(ds, region))
    assert far.done.sum() == 36 and (far.classes[far.done] == -2).all()
    assert "beam energy 300 keV" in far.verdict and "validated at" in far.verdict


def _roi(ds, region):
    mask = np.zeros(ds.scan_shape, bool)
    mask[region] = True
    return mask


def test_the_default_model_is_one_validated_at_the_files_acquisition():
    """Only models whose card covers the beam energy and convergence compete, the narrowest range first;
    a file that says nothing keeps the overall best."""
    from polarstem.acquisition import default_model
    from polarstem.io import Calibration
    from polarstem.models import list_models

    entries = [e for e in list_models() if e.get("available")]
    best = default_model(entries)
    wide = dict(entries[-1], name="wide", acquisition={"beam_energy_kev": [80.0, 300.0], "convergence_mrad": [15.0, 30.0]})
    entries = entries + [wide]
    assert default_model(entries, Calibration(beam_energy_kev=300.0, convergence_mrad=20.0)) == "wide"
    assert default_model(entries, Calibration(beam_energy_kev=200.0, convergence_mrad=20.0)) == best
    assert default_model(entries, Calibration()) == default_model(entries)


def test_the_default_model_reads_other_beam_energies_at_the_disk_overlap_it_knows():
    """resnet-proto reads its input in reciprocal-lattice units, so its card's range is a disk overlap
    alpha/(lambda/a): 300 kV / 15 mrad (overlap 3.0, as 200 kV / 20 mrad's 3.15) is inside it, 300 kV /
    20 mrad (4.0) and 80 kV are not, and the sentence says why. The bundled sample is a 200 kV
    recording: told 300 kV, its disks fall on the wrong pixels of the lattice-unit grid, and the scores
    catch that instead (a wrong energy typed in is not mapped)."""
    from polarstem.acquisition import acquisition_warnings, disk_overlap
    from polarstem.classify import classify_scan
    from polarstem.io import Calibration, apply_calibration, load
    from polarstem.sample import sample_dataset_path

    assert disk_overlap(200.0, 20.0) == pytest.approx(3.15, abs=0.01)
    assert disk_overlap(300.0, 15.0) == pytest.approx(3.01, abs=0.01)
    ds = load(sample_dataset_path())
    roi = _roi(ds, (slice(0, 6), slice(0, 6)))
    apply_calibration(ds, {"beam_energy_kev": 300.0, "convergence_mrad": 15.0})
    near = classify_scan(ds, "resnet-proto", mode="pattern", anomaly=False, roi=roi)
    assert "validated at" not in near.verdict and "does not look like polar KNN" in near.verdict
    apply_calibration(ds, {"beam_energy_kev": 300.0, "convergence_mrad": 20.0})
    far = classify_scan(ds, "resnet-proto", mode="pattern", anomaly=False, roi=roi)
    assert (far.classes[far.done] == -2).all() and "disk overlap" in far.verdict and "13.4-18.0 mrad at 300 keV" in far.verdict
    apply_calibration(ds, {"beam_energy_kev": 80.0, "convergence_mrad": 30.0})
    low = classify_scan(ds, "resnet-proto", mode="pattern", anomaly=False, roi=roi)
    assert (low.classes[low.done] == -2).all() and "beam energy 80 keV" in low.verdict
    warn = acquisition_warnings("resnet-proto", Calibration(beam_energy_kev=300.0, convergence_mrad=21.5))
    assert any("disk overlap" in w and "beam energy 300 keV" in w for w in warn)


def test_a_model_calibrated_per_acquisition_cell_is_judged_at_the_files_acquisition():
    """Across acquisitions a model may read one cell (300 kV, overlap 3) surely and another (80 kV, overlap
    1.4) near chance. Thresholds pooled over both let a confident non-polar crystal through everywhere;
    per cell (Mondrian conformal) the sure cell keeps its own tight thresholds, and the cell read below
    COVERED_ACCURACY is withheld whole, with one sentence, as outside a card's range."""
    from polarstem.acquisition import COVERED_ACCURACY, covers, outside_scope
    from polarstem.io import Calibration
    from polarstem.training.abstention import calibrate_cells

    rng = np.random.default_rng(4)
    z, y = _clusters(rng, dim=8)
    ab = Abstention.fit(z, y)
    rows, g = 80, 6
    energy = np.repeat([300.0, 80.0], rows // 2)
    conv = np.full(rows, 15.0)  # overlap 3.01 at 300 kV, 1.42 at 80 kV
    labels = rng.integers(0, 8, rows)
    sure = energy == 300.0
    logits = rng.normal(0, 1, (rows, g, g, 8))
    logits[sure, :, :, labels[sure]] += 4.0  # sure and right at 300 kV; at 80 kV a guess
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    dist = rng.uniform(0.8, 1.2, (rows, g, g))
    for n in (1, 4, 9, 36):  # pooled thresholds, as fit_abstention sets them
        ab.calibrate(dist.reshape(-1), np.exp(logp).max(-1).reshape(-1), n)
    calibrate_cells(ab, energy, conv, dist, logp, labels, log=lambda *_: None)
    assert len(ab.cells) == 2
    at_300, at_80, pooled = ab.at(300.0, 15.0), ab.at(80.0, 15.0), ab.at(None, None)
    assert pooled is ab and at_300.cells == [] and at_80.cells == []
    assert at_300.min_confidence[36] > pooled.min_confidence[36] > at_80.min_confidence[36] - 1e-9
    # a confident crystal the pooled thresholds let through is withheld at the sure cell's acquisition
    crystal = np.full(36, 0.5 * (pooled.min_confidence[1] + at_300.min_confidence[1]))
    assert not pooled.uncertain(np.ones(36), crystal, np.ones(36)).any()
    assert at_300.uncertain(np.ones(36), crystal, np.ones(36)).all()
    back = Abstention.from_dict(ab.to_dict())
    assert back.at(300.0, 15.0).min_confidence == pytest.approx(at_300.min_confidence, rel=1e-4)

    card = {"beam_energy_kev": [78.0, 306.0], "convergence_mrad": [14.0, 31.0], "cells": ab.coverage()}
    acc = {c["beam_energy_kev"][0]: c["accuracy"] for c in card["cells"]}
    assert acc[240.0] >= COVERED_ACCURACY > acc[78.0]
    assert outside_scope("wide", card, Calibration(beam_energy_kev=300.0, convergence_mrad=15.0)) == []
    low = outside_scope("wide", card, Calibration(beam_energy_kev=80.0, convergence_mrad=15.0))
    assert len(low) == 1 and f"at {acc[78.0]:.2f} per cell" in low[0] and "overlap alpha/(lambda/a) 1.42" in low[0]
    none = outside_scope("wide", card, Calibration(beam_energy_kev=200.0, convergence_mrad=24.0))
    assert len(none) == 1 and "no held-out data" in none[0]
    assert covers({"acquisition": card}, Calibration(beam_energy_kev=300.0, convergence_mrad=15.0))
    assert not covers({"acquisition": card}, Calibration(beam_energy_kev=80.0, convergence_mrad=15.0))
    assert covers({"acquisition": card}, Calibration())  # a file that does not say: the pooled thresholds judge
