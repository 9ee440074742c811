"""Preprocessing: calibration-aware resampling, descan removal, pixel cleaning and the filter."""

import numpy as np
import pytest

from polarstem.io import Calibration
from polarstem.preprocess import InputGrid, find_disk_centers, preprocess

GRID = InputGrid(size=64, mrad_per_px=1.0)


def disk_pattern(n, mrad_per_px, radius_mrad=20.0, shift_px=(0.0, 0.0), level=100.0):
    c = ((n - 1) / 2 + shift_px[0], (n - 1) / 2 + shift_px[1])
    yy, xx = np.indices((n, n), dtype=float)
    r_mrad = np.hypot(yy - c[0], xx - c[1]) * mrad_per_px
    # a tilted disk: an asymmetric intensity inside, like a polarized pattern
    return np.where(r_mrad <= radius_mrad, level * (1 + 0.3 * (xx - c[1]) * mrad_per_px / radius_mrad), 1.0)


def canonical_radius(x):
    """Radius (canonical px) of the area above the mid level of a preprocessed disk."""
    img = x - x.min()
    return np.sqrt((img > 0.5 * np.median(img[img > img.max() * 0.3])).sum() / np.pi)


@pytest.mark.parametrize("n,mrad", [(256, 0.5), (64, 2.0), (128, 1.0), (96, 1.5)])
def test_disk_maps_to_same_canonical_radius(n, mrad):
    x, ok = preprocess(disk_pattern(n, mrad)[None], Calibration(mrad_per_px=mrad), GRID)
    assert x.shape == (1, 64, 64) and x.dtype == np.float32 and ok.all()
    assert canonical_radius(x[0]) == pytest.approx(20.0, abs=1.0)  # 20 mrad = 20 px at 1 mrad/px


def test_same_disk_at_two_samplings_gives_same_input():
    a, _ = preprocess(disk_pattern(256, 0.5)[None], Calibration(mrad_per_px=0.5), GRID)
    b, _ = preprocess(disk_pattern(64, 2.0)[None], Calibration(mrad_per_px=2.0), GRID)
    inner = (slice(16, 48), slice(16, 48))
    assert np.abs(a[0][inner] - b[0][inner]).mean() < 0.1


def test_descan_shift_is_removed():
    ref, _ = preprocess(disk_pattern(128, 1.0)[None], Calibration(mrad_per_px=1.0), GRID)
    shifted, _ = preprocess(disk_pattern(128, 1.0, shift_px=(3.0, -2.5))[None], Calibration(mrad_per_px=1.0), GRID)
    assert np.abs(shifted - ref).mean() < 0.1 * np.abs(ref).mean()
    centers, radius = find_disk_centers(disk_pattern(128, 1.0, shift_px=(3.0, -2.5))[None].astype(np.float32))
    assert centers[0] == pytest.approx([63.5 + 3.0, 63.5 - 2.5], abs=0.5)  # a tilted disk biases it slightly
    assert radius[0] == pytest.approx(20.0, abs=1.0)


def test_hot_and_dead_pixels_do_not_matter():
    p = disk_pattern(128, 1.0)
    ref, _ = preprocess(p[None], Calibration(mrad_per_px=1.0), GRID)
    bad = p.copy()
    bad[10, 10] = 1e6
    bad[64, 70] = 0.0
    x, ok = preprocess(bad[None], Calibration(mrad_per_px=1.0), GRID)
    assert ok.all()
    assert np.abs(x - ref).max() < 0.5


def test_filter_flags_bad_patterns():
    good = np.random.default_rng(0).poisson(disk_pattern(128, 1.0, level=20.0))
    nan = good.astype(float)
    nan[5, 5] = np.nan
    featureless = np.random.default_rng(1).poisson(np.full((128, 128), 5.0))
    weak = np.random.default_rng(2).poisson(disk_pattern(128, 1.0, level=0.004) * 0.01)
    frames = np.stack([good, nan, np.zeros((128, 128)), featureless, np.full((128, 128), 7.0), weak])
    x, ok = preprocess(frames, Calibration(mrad_per_px=1.0), GRID)
    assert ok.tolist() == [True, False, False, False, False, False]
    assert np.isfinite(x).all()


def test_counts_and_dose_do_not_change_the_input():
    p = disk_pattern(128, 1.0)
    a, _ = preprocess((p * 10)[None], Calibration(mrad_per_px=1.0), GRID)
    b, _ = preprocess((p * 1000)[None], Calibration(mrad_per_px=1.0), GRID)
    assert np.allclose(a, b, atol=1e-4)


def test_sampling_from_convergence_when_uncalibrated():
    x, ok = preprocess(disk_pattern(128, 1.5)[None], Calibration(convergence_mrad=20.0), GRID)
    assert ok.all() and canonical_radius(x[0]) == pytest.approx(20.0, abs=1.0)


def test_no_sampling_and_no_disk_means_nothing_to_classify_not_an_error():
    """Frames without a detector calibration and without a bright-field disk (noise, a blank detector)
    are not usable: zero inputs, flagged, so a scan of them abstains instead of failing."""
    frames = np.zeros((5, 32, 32), np.float32)
    x, ok, info = preprocess(frames, None, InputGrid(size=16), return_info=True)
    assert x.shape == (5, 16, 16) and not x.any() and not ok.any() and not info["usable"].any()
