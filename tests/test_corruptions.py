"""The corruptions do what they say: totals, shifts, conservation, determinism."""

import numpy as np

from polarstem.simulate.corruptions import (
    Compose,
    DescanShift,
    DetectorBlur,
    EllipticalDistortion,
    HotDeadPixels,
    InelasticBackground,
    PixelGain,
    PoissonDose,
    PsfTails,
    ReadoutNoise,
    Resample,
    random_experimental,
)


def _disk_patterns(n=6, size=64, radius=10.0, center=None):
    c = ((size - 1) / 2, (size - 1) / 2) if center is None else center
    yy, xx = np.mgrid[:size, :size]
    disk = (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) <= radius**2).astype(np.float32)
    rng = np.random.default_rng(1)
    return disk[None] * (0.5 + rng.random((n, 1, 1), dtype=np.float32)) / disk.sum()


def _com(p):
    yy, xx = np.mgrid[: p.shape[-2], : p.shape[-1]]
    t = p.sum((-2, -1))
    return np.stack([(p * yy).sum((-2, -1)) / t, (p * xx).sum((-2, -1)) / t], -1)


def test_dose_total_counts_on_average():
    p = _disk_patterns(200)
    out = PoissonDose(1e4)(p, np.random.default_rng(0))
    totals = out.sum((1, 2))
    assert abs(totals.mean() - 1e4) < 3 * 100 / np.sqrt(200) + 1
    assert np.all(out == np.round(out)) and out.min() >= 0
    assert 50 < totals.std() < 150  # Poisson: sqrt(1e4) = 100


def test_dose_range_is_log_uniform_and_seeded():
    p = _disk_patterns(50)
    a = PoissonDose((1e4, 1e6))(p, 3)
    b = PoissonDose((1e4, 1e6))(p, 3)
    np.testing.assert_array_equal(a, b)
    t = a.sum((1, 2))
    assert t.min() > 0.8e4 and t.max() < 1.2e6


def test_shift_moves_centre_of_mass():
    p = _disk_patterns(3)
    out = DescanShift((2.3, -1.7))(p, 0)
    np.testing.assert_allclose(_com(out) - _com(p), [[2.3, -1.7]] * 3, atol=1e-3)
    np.testing.assert_allclose(out.sum((1, 2)), p.sum((1, 2)), rtol=1e-4)


def test_random_shift_within_bounds():
    p = _disk_patterns(20)
    d = _com(DescanShift(3.0)(p, 5)) - _com(p)
    assert np.abs(d).max() <= 3.0 + 1e-3 and np.abs(d).max() > 0.5


def test_blur_conserves_counts_and_smooths():
    p = _disk_patterns(2)
    out = DetectorBlur(1.0)(p, 0)
    np.testing.assert_allclose(out.sum((1, 2)), p.sum((1, 2)), rtol=1e-4)
    assert (out > 0).sum() > (p > 0).sum()  # spreads beyond the disk edge
    np.testing.assert_allclose(_com(out), _com(p), atol=1e-3)
    np.testing.assert_array_equal(DetectorBlur(0.0)(p, 0), p)


def test_background_fraction_and_conservation():
    p = _disk_patterns(2)
    out = InelasticBackground(0.05, 8.0)(p, 0)
    np.testing.assert_allclose(out.sum((1, 2)), p.sum((1, 2)), rtol=0.02)  # a little tail leaves the detector
    outside = p == 0
    frac = out[outside].sum() / p.sum()
    assert 0.005 < frac < 0.05  # part of the 5 % lands outside the disk, smoothly
    assert np.all(out >= 0)


def test_ellipse_keeps_centre_and_stretches():
    p = _disk_patterns(1, size=96, radius=30)
    out = EllipticalDistortion(0.02)(p, 0)
    np.testing.assert_allclose(_com(out), _com(p), atol=0.05)
    np.testing.assert_allclose(out.sum(), p.sum(), rtol=0.02)
    # second moments: one principal axis longer, one shorter, by about ±1 %
    yy, xx = np.mgrid[:96, :96] - 47.5
    w = out[0] / out[0].sum()
    cov = np.array([[(w * yy * yy).sum(), (w * yy * xx).sum()], [(w * yy * xx).sum(), (w * xx * xx).sum()]])
    ev = np.sqrt(np.linalg.eigvalsh(cov)) / np.sqrt((p[0] / p[0].sum() * yy * yy).sum())
    assert 0.985 < ev[0] < 0.995 and 1.005 < ev[1] < 1.015


def test_hot_dead_pixels_same_positions_across_batch():
    p = _disk_patterns(4) + 1e-4
    out = HotDeadPixels(hot_fraction=0.01, dead_fraction=0.01, hot_level=3.0)(p, 0)
    dead = out == 0
    assert dead.sum() > 0 and np.all(dead == dead[:1])
    hot = out > p.max((1, 2), keepdims=True) * 2
    assert hot.sum() > 0 and np.all(hot == hot[:1])


def test_resample_conserves_counts_and_maps_centre():
    p = _disk_patterns(2, size=96, radius=12)
    out = Resample(in_mrad_per_px=1.0, out_mrad_per_px=1.5, out_shape=(64, 64))(p)
    assert out.shape == (2, 64, 64)
    np.testing.assert_allclose(out.sum((1, 2)), p.sum((1, 2)), rtol=0.02)
    np.testing.assert_allclose(_com(out), [[31.5, 31.5]] * 2, atol=0.05)
    up = Resample(1.0, 0.5, (128, 128))(p)
    np.testing.assert_allclose(up.sum((1, 2)), p.sum((1, 2)), rtol=0.02)


def test_compose_is_seeded_and_pure():
    p = _disk_patterns(8)
    keep = p.copy()
    t = random_experimental(1.0)
    a, b = t(p, np.random.default_rng(7)), t(p, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(p, keep)
    assert a.shape == p.shape and a.dtype == np.float32
    c = t(p, np.random.default_rng(8))
    assert not np.array_equal(a, c)


def test_strength_zero_without_noise_is_identity():
    p = _disk_patterns(3)
    out = random_experimental(0.0, noise=False)(p, 0)
    np.testing.assert_allclose(out, p, atol=1e-7)


def test_leading_dims_are_kept():
    p = _disk_patterns(6).reshape(2, 3, 64, 64)
    assert Compose([DescanShift(1.0), DetectorBlur(0.5)])(p, 0).shape == (2, 3, 64, 64)


def test_unseen_detector_effects():
    """Tails move signal out of the disk and keep it on the detector; the gain map is one per detector; read noise
    has the requested spread and never goes negative."""
    p = _disk_patterns(4)
    tails = PsfTails(0.3, 3.0)(p, 0)
    assert np.allclose(tails.sum((1, 2)), p.sum((1, 2)), rtol=0.03)  # the far tail leaves the detector
    outside = p == 0
    assert tails[outside].sum() > 0.2 * p.sum() * 0.5  # a good part of the 30 % lands outside the disk
    flat = np.ones((3, 32, 32), np.float32)
    g = PixelGain(0.05)(flat, 1)
    assert np.allclose(g[0], g[1]) and 0.04 < g[0].std() < 0.06
    assert not np.allclose(PixelGain(0.05)(flat, 2)[0], g[0])
    r = ReadoutNoise(2.0)(np.full((2, 64, 64), 100, np.float32), 3)
    assert 1.8 < r.std() < 2.2 and abs(r.mean() - 100) < 0.1
    assert ReadoutNoise(2.0)(np.zeros((1, 16, 16), np.float32), 3).min() == 0


def test_unseen_benchmark_condition_is_seeded():
    from polarstem.analysis.testsets import apply_corruption

    p = _disk_patterns(3)
    a, b = apply_corruption(p, "unseen", 1.0, 5), apply_corruption(p, "unseen", 1.0, 5)
    assert np.array_equal(a, b) and a.min() >= 0
    assert abs(a.sum((1, 2)).mean() / 1e5 - 1) < 0.1
