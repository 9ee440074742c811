"""A finite source (polarstem.simulate.coherence): the Gaussian average over probe positions."""

import numpy as np
import pytest

from polarstem.errors import PolarstemError
from polarstem.simulate.coherence import source_blur_grid, source_blur_scan
from polarstem.training import SimSet, finite_source, source_grid


def _grid_function(g, a_frac_y, a_frac_x):
    """A pattern whose intensities depend on the probe position through two Fourier terms."""
    return 2 + np.cos(2 * np.pi * a_frac_x) + 0.5 * np.sin(2 * np.pi * (2 * a_frac_y + a_frac_x))


def test_grid_blur_is_the_gaussian_average_of_a_band_limited_position_dependence():
    g, a, s = 6, 4.0, 0.3
    yy, xx = np.meshgrid(np.arange(g) / g, np.arange(g) / g, indexing="ij")
    pat = np.array([[1.0, 0.5], [0.25, 2.0]])  # the pattern's shape: scaled by the position term
    p = _grid_function(g, yy, xx)[:, :, None, None] * pat
    out = source_blur_grid(p, s, cell_a=a)
    damp = lambda k2: np.exp(-2 * np.pi**2 * s**2 * k2 / a**2)  # noqa: E731
    ref = 2 + np.cos(2 * np.pi * xx) * damp(1) + 0.5 * np.sin(2 * np.pi * (2 * yy + xx)) * damp(5)
    np.testing.assert_allclose(out, ref[:, :, None, None] * pat, rtol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), p.mean(axis=(0, 1)), rtol=1e-6)  # cell average kept


def test_grid_blur_per_row_sizes_point_source_and_bad_input():
    rng = np.random.default_rng(0)
    p = rng.random((3, 6, 6, 4, 4)).astype(np.float32)
    out = source_blur_grid(p, np.array([0.0, 0.2, 5.0]))
    np.testing.assert_allclose(out[0], p[0], rtol=1e-5)  # a point source changes nothing
    assert not np.allclose(out[1], p[1])
    np.testing.assert_allclose(out[2], np.broadcast_to(p[2].mean(axis=(0, 1)), p[2].shape), rtol=1e-4)  # huge source
    assert (out >= 0).all() and out.dtype == np.float32
    with pytest.raises(ValueError, match="square probe grid"):
        source_blur_grid(p[:, :, :4], 0.2)
    with pytest.raises(ValueError, match=">= 0"):
        source_blur_grid(p, -0.1)


def test_scan_blur_spreads_a_point_by_sigma_and_keeps_flat_scans():
    step, s = 0.5, 1.0
    d = np.zeros((41, 41, 2, 2), np.float32)
    d[20, 20] = 1.0
    out = source_blur_scan(d, s, step)[..., 0, 0]
    yy, xx = np.indices(out.shape)
    w = out / out.sum()
    var_x = float((w * (xx - 20) ** 2).sum()) * step**2
    assert abs(np.sqrt(var_x) - s) < 0.02
    flat = np.full((7, 9, 3, 3), 4.0, np.float32)
    np.testing.assert_allclose(source_blur_scan(flat, 0.3, (0.4, 0.5)), flat, rtol=1e-6)  # no edge artefacts
    with pytest.raises(ValueError, match="sy, sx, ky, kx"):
        source_blur_scan(flat[0], 0.3, 0.4)


def test_training_blurs_only_sets_with_a_fine_probe_grid():
    from pathlib import Path

    from polarstem.io import Calibration

    def simset(g, rows=2, det=5):
        frames = np.random.default_rng(g).random((rows * g * g, det, det)).astype(np.float32) + 0.1
        return SimSet(frames, np.zeros(rows * g * g, np.int64), np.full(rows * g * g, 10.0),
                      np.zeros(rows * g * g, np.int64), Calibration(mrad_per_px=1.0), Path("."),
                      {"shape": [rows, g * g, det, det], "config": {"training": {"probes": {"grid": g}}}})

    aug = {"source_sigma_a": [0.2, 0.4]}
    assert source_grid(simset(6), "pattern", aug) == 6
    assert source_grid(simset(4), "pattern", aug) == 0  # 1 A steps: keeps the point source
    assert source_grid(simset(6), "cell", aug) == 0
    assert source_grid(simset(6), "pattern", {}) == 0
    with pytest.raises(PolarstemError, match="source_sigma_a"):
        source_grid(simset(6), "pattern", {"source_sigma_a": [0.4, 0.1]})
    sim = simset(6)
    f = finite_source(sim.frames, 6, (0.2, 0.4), np.random.default_rng(0))
    assert f.shape == sim.frames.shape and not np.allclose(f, sim.frames)
    # each row is blurred on its own: row means (cell averages) stay
    np.testing.assert_allclose(f.reshape(2, 36, 5, 5).mean(1), sim.frames.reshape(2, 36, 5, 5).mean(1), rtol=1e-5)
