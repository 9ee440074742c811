"""The compiled preprocessing loops (polarstem.frame_kernels) give bitwise what numpy and scipy give."""

import numpy as np
import pytest
from scipy import ndimage

from polarstem import frame_kernels as fk
from polarstem.preprocess import _axis_weights, clean_pixels, find_disk_centers


def frames_of(kind, shape, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "counts":
        yy, xx = np.indices(shape[1:])
        lam = 3 + 100 * (np.hypot(yy - shape[1] / 2 + 1.5, xx - shape[2] / 2 - 2) < min(shape[1:]) / 5)
        f = rng.poisson(lam, shape).astype(np.float32)
    else:  # floats over many decades, so that the order of float operations shows
        f = (rng.random(shape) * 10.0 ** rng.uniform(-3, 5, (shape[0], 1, 1))).astype(np.float32)
    f[:, 2, 3] = 60000.0  # hot
    f[:, shape[1] // 2, shape[2] // 2] = 0.0  # dead
    return f


def reference_clean(frames):
    """clean_pixels with scipy's uniform filter and numpy's means."""
    def nb_of(f):
        return (ndimage.uniform_filter(f, size=(1, 3, 3), mode="nearest") * 9.0 - f) / 8.0

    nb = nb_of(frames)
    mean = np.maximum(frames.reshape(len(frames), -1).mean(axis=1)[:, None, None], 1e-12)
    hot = frames > 5.0 * nb + 5.0 * mean
    if hot.any():
        frames[hot] = nb[hot]
        nb = nb_of(frames)
        mean = np.maximum(frames.reshape(len(frames), -1).mean(axis=1)[:, None, None], 1e-12)
    dead = (frames <= 0) & (nb > 5.0 * mean)
    frames[dead] = nb[dead]
    return frames


def reference_centers(frames, sigma=1.0, expected_radius_px=None):
    """find_disk_centers with scipy's gaussian filter and numpy's percentiles and sums."""
    n, ky, kx = frames.shape
    smooth = ndimage.gaussian_filter(frames, sigma=(0, sigma, sigma), mode="nearest")
    flat = smooth.reshape(n, -1)
    frac = 0.15 if not expected_radius_px else min(0.5, np.pi * expected_radius_px ** 2 / (ky * kx))
    q = float(np.clip(100.0 - 100.0 * 0.06 * frac, 95.0, 99.95))
    lo, hi = np.percentile(flat[:, ::3] if flat.shape[1] > 4096 else flat, [5, q], axis=1)
    valid = ((hi - lo) > 0)[:, None, None]
    mask = (smooth > (lo + 0.1 * (hi - lo))[:, None, None]) & valid
    area = mask.reshape(n, -1).sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (mask.sum(axis=2) @ np.arange(ky, dtype=float)) / area
        cx = (mask.sum(axis=1) @ np.arange(kx, dtype=float)) / area
    cy[area == 0], cx[area == 0] = (ky - 1) / 2, (kx - 1) / 2
    half = ((smooth > (lo + 0.35 * (hi - lo))[:, None, None]) & valid).reshape(n, -1).sum(axis=1)
    return np.stack([cy, cx], axis=1), np.sqrt(half / np.pi)


@pytest.mark.parametrize("n", [1, 7, 8, 127, 128, 129, 1000, 4096, 16384, 65536 + 13])
def test_pairwise_sum_and_mean_are_numpys(n):
    rng = np.random.default_rng(n)
    a = (rng.random(n) * 10.0 ** rng.uniform(-3, 6, n)).astype(np.float32)
    assert fk._pairwise_sum(a) == np.add.reduce(a)
    assert fk._frame_mean(a.reshape(1, -1)) == a.reshape(1, -1).mean(axis=1)[0]


@pytest.mark.parametrize("kind", ["counts", "floats"])
@pytest.mark.parametrize("shape", [(6, 64, 64), (3, 37, 50), (2, 130, 129), (2, 8, 9)])
def test_clean_pixels_is_the_scipy_result(kind, shape):
    f = frames_of(kind, shape)
    np.testing.assert_array_equal(clean_pixels(f.copy()), reference_clean(f.copy()))


@pytest.mark.parametrize("kind", ["counts", "floats"])
@pytest.mark.parametrize("shape", [(6, 64, 64), (3, 37, 50), (2, 130, 129), (2, 8, 9)])
@pytest.mark.parametrize("expected", [None, 6.0, 40.0])
def test_find_disk_centers_is_the_scipy_result(kind, shape, expected):
    f = clean_pixels(frames_of(kind, shape, seed=1))
    f[0] = 5.0  # flat: no disk
    for frames in (f, f.astype(np.float64)):
        got, want = find_disk_centers(frames, expected_radius_px=expected), reference_centers(frames, 1.0, expected)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    got, want = find_disk_centers(f, sigma=1.7), reference_centers(f, sigma=1.7)
    np.testing.assert_array_equal(got[0], want[0])


def test_gaussian_lines_are_scipys():
    rng = np.random.default_rng(3)
    f = (rng.random((33, 47)) * 1000).astype(np.float32)
    for sigma in (0.6, 1.0, 2.5):
        r = int(4.0 * sigma + 0.5)
        x = np.arange(-r, r + 1)
        w = np.exp(-0.5 / (sigma * sigma) * x ** 2)
        w = np.ascontiguousarray((w / w.sum())[::-1])
        acc, tmp, out = np.empty(2 * (47 + len(w))), np.empty_like(f), np.empty_like(f)
        fk._gauss_lines(f, tmp, w, 0, acc)
        fk._gauss_lines(tmp, out, w, 1, acc)
        np.testing.assert_array_equal(out, ndimage.gaussian_filter(f, sigma, mode="nearest"))


def test_order_statistics_by_radix_are_exact():
    rng = np.random.default_rng(4)
    cand, hist = np.empty(3000, np.uint32), np.empty(2048, np.int64)
    for x in (rng.normal(size=3000).astype(np.float32), np.round(rng.random(3000) * 5).astype(np.float32),
              np.full(3000, 2.5, np.float32), np.arange(3000, dtype=np.float32) - 1000.5,
              (1 + np.arange(3000) * 2.0 ** -23).astype(np.float32)):
        keys = np.empty(3000, np.uint32)
        fk._order_keys(x, keys)
        s = np.sort(x)
        for k in (0, 1, 150, 2999):
            assert fk._key_value(fk._select(keys, k, cand, hist)) == s[k]
        for k in (0, 1, 150, 1499, 2998):
            assert [fk._key_value(v) for v in fk._select_pair(keys, k, cand, hist)] == [s[k], s[k + 1]]


@pytest.mark.parametrize("step", [0.3, 1.0, 2.7])
def test_axis_weights_are_the_triangle_formula(step):
    centers = np.array([31.5, 0.0, 70.2, -3.0, np.nan])
    u = centers[:, None] + (np.arange(48) - 47 / 2.0)[None, :] * step
    width = max(step, 1.0)
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(64.0)[None, None, :] - u[:, :, None]) / width)
    np.testing.assert_array_equal(_axis_weights(centers, 64, 48, step), (w / width).astype(np.float32))


@pytest.mark.parametrize("dtype,factor", [(np.uint16, 1), (np.uint16, 2), (np.uint8, 3), (np.int32, 4)])
def test_load_binned_is_numpys_conversion_and_block_sums(dtype, factor):
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 1000, (3, 67, 70)).astype(dtype)
    n, ky, kx = raw.shape
    out = np.empty((n, ky // factor, kx // factor), np.float32)
    totals = np.empty(n)
    assert fk.load_binned(raw, factor, out, totals) == raw.max()
    f = raw.astype(np.float32)[:, :ky // factor * factor, :kx // factor * factor]
    np.testing.assert_array_equal(out, f.reshape(n, ky // factor, factor, kx // factor, factor).sum(axis=(2, 4)))
    np.testing.assert_array_equal(totals, raw.astype(np.float32).reshape(n, -1).sum(axis=1, dtype=np.float64))
