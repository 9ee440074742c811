"""abTEM multislice for KNN: probe, frozen phonons, exit planes, patterns in numpy order.

Dynamical scattering is the point: kinematic patterns obey Friedel's law and cannot tell +P from -P.
Returned patterns are (thickness, position, ky, kx) float32 fractions of the incident beam, with
[row = ky, col = kx] as conventions.md wants (abTEM gives [..., kx, ky]), cropped to ±``max_mrad``
about the 0-mrad pixel, which sits exactly at the centre pixel (odd detector size), so rotations
about the optical axis map pixels onto pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Optics:
    """Microscope and numerics of one simulation."""

    energy_kev: float = 200.0
    convergence_mrad: float = 20.0
    defocus_nm: float = 0.0
    tilt_mrad: tuple[float, float] = (0.0, 0.0)  # (x, y) beam tilt = specimen mistilt
    gpts_per_cell: int = 40  # real-space grid points per pseudo-cubic cell
    slices_per_cell: int = 2  # one slice per atomic plane (AO, then BO2)
    max_mrad: float = 40.0  # detector crop half-width
    bin: int = 1  # odd detector binning factor (big supercells sample reciprocal space finely)
    parametrization: str = "lobato"  # abTEM's atomic potential parametrization ("lobato" or "kirkland")
    projection: str = "infinite"  # "infinite" (projected per slice) or "finite" (integrated over z)


def native_mrad_per_px(extent_angstrom: float, energy_kev: float) -> float:
    """Reciprocal sampling of a periodic supercell: 1/extent, as an angle."""
    from ..io import electron_wavelength_angstrom

    return electron_wavelength_angstrom(energy_kev) / extent_angstrom * 1e3


def detector_geometry(extent_angstrom: float, optics: Optics) -> tuple[int, float, float]:
    """(size, mrad_per_px, center_px) of the stored square detector."""
    native = native_mrad_per_px(extent_angstrom, optics.energy_kev)
    mrad = native * optics.bin
    half = int(np.floor(optics.max_mrad / mrad + 1e-9))
    return 2 * half + 1, mrad, float(half)


def _bin_centered(p: np.ndarray, b: int, half: int) -> np.ndarray:
    """Sum b×b blocks so that the 0-mrad pixel stays the centre of the central block."""
    if b == 1:
        return p
    n = 2 * half + 1
    lead = p.shape[:-2]
    return p.reshape(lead + (n, b, n, b)).sum(axis=(-3, -1))


def _potential(atoms, cell_a: float, exit_cells: list[int], optics: Optics, phonon_configs: int,
               phonon_sigmas: dict | None, phonon_seed: int | None):
    """abTEM potential of ``atoms`` with exit planes at the bottom of the given whole cells."""
    import abtem

    # FFTW_MEASURE (abTEM's default) picks plans by timing, so rounding differs run to run;
    # FFTW_ESTIMATE plans are fixed: same config and seed, bit-identical data on any worker.
    abtem.config.set({"device": "cpu", "fftw.planning_effort": "FFTW_ESTIMATE"})
    nz = int(max(exit_cells))
    rows_cols = np.round(np.diag(atoms.cell)[:2] / cell_a).astype(int)
    gpts = tuple(int(n * optics.gpts_per_cell) for n in rows_cols)
    if gpts[0] != gpts[1] or abs(atoms.cell[0, 0] - atoms.cell[1, 1]) > 1e-6:
        raise ValueError("the supercell must be square laterally (rotation checks need a square detector grid)")
    thickness_cells = int(round(atoms.cell[2, 2] / cell_a))
    if thickness_cells < nz:
        raise ValueError(f"the structure is {thickness_cells} cells thick, exit planes need {nz}")
    unique_cells = sorted({int(n) for n in exit_cells})  # abTEM wants strictly increasing planes
    exit_planes = tuple(n * optics.slices_per_cell - 1 for n in unique_cells)
    if phonon_configs > 0:
        source = abtem.FrozenPhonons(atoms, num_configs=int(phonon_configs), sigmas=dict(phonon_sigmas),
                                     seed=phonon_seed)
    else:
        source = atoms
    # a hair thicker than a/n, so that abTEM's ceil(thickness / slice) never rounds up to an extra slice
    slice_thickness = cell_a / optics.slices_per_cell * (1 + 1e-9)
    return abtem.Potential(source, gpts=gpts, slice_thickness=slice_thickness, projection=optics.projection,
                           parametrization=optics.parametrization, exit_planes=exit_planes)


def _exit_order(exit_cells: list[int]) -> np.ndarray:
    """Index of each requested exit plane among the sorted unique planes abTEM returns."""
    unique_cells = sorted({int(n) for n in exit_cells})
    return np.searchsorted(unique_cells, [int(n) for n in exit_cells])


def _scan(potential, positions_xy: np.ndarray, optics: Optics, native_half: int, native_mrad: float,
          n_exit: int) -> np.ndarray:
    """Patterns (exit planes, positions, 2 native_half + 1, same) about the 0-mrad pixel, numpy order."""
    import abtem

    probe = abtem.Probe(energy=optics.energy_kev * 1e3, semiangle_cutoff=optics.convergence_mrad,
                        tilt=tuple(float(t) for t in optics.tilt_mrad), defocus=optics.defocus_nm * 10.0)
    detector = abtem.PixelatedDetector(max_angle=(native_half + 2) * native_mrad)
    scan = abtem.CustomScan(np.asarray(positions_xy, dtype=float).reshape(-1, 2))
    measured = probe.scan(potential, scan=scan, detectors=detector, lazy=True)
    result = measured.compute(scheduler="synchronous", progress_bar=False)
    arr = np.asarray(result.array, dtype=np.float32)
    if n_exit == 1 and arr.ndim == 3:
        arr = arr[None]
    kx_axis = result.axes_metadata[-2]
    c = int(round(-kx_axis.offset / kx_axis.sampling))  # index of the 0-mrad pixel
    if abs(kx_axis.offset + c * kx_axis.sampling) > 1e-6 * kx_axis.sampling:
        raise RuntimeError("abTEM's reciprocal axis has no pixel at 0 mrad")
    arr = arr[..., c - native_half : c + native_half + 1, c - native_half : c + native_half + 1]
    return np.swapaxes(arr, -1, -2)  # abTEM [.., kx, ky] -> numpy [.., ky, kx]


def diffraction_series(atoms, cell_a: float, positions_xy: np.ndarray, exit_cells: list[int], optics: Optics,
                       phonon_configs: int = 0, phonon_sigmas: dict | None = None,
                       phonon_seed: int | None = None, out_mrad_per_px: float | None = None) -> np.ndarray:
    """Patterns (len(exit_cells), len(positions), size, size) for probes at ``positions_xy`` (Å, (x, y)).

    ``atoms`` must be at least ``max(exit_cells)`` cells thick; each exit plane is the bottom of a whole
    cell. ``phonon_configs`` > 0 averages that many frozen-phonon configurations (seeded), which gives
    thermal diffuse scattering; 0 uses the static structure. ``out_mrad_per_px`` resamples onto a
    common detector (the native sampling 1/extent changes with the cell parameter); the detector size
    is then that of ``detector_geometry`` at that sampling.
    """
    potential = _potential(atoms, cell_a, exit_cells, optics, phonon_configs, phonon_sigmas, phonon_seed)
    extent = float(atoms.cell[0, 0])
    size, mrad, _ = detector_geometry(extent, optics)
    native = native_mrad_per_px(extent, optics.energy_kev)
    resample = out_mrad_per_px is not None and abs(out_mrad_per_px / mrad - 1) > 1e-9
    if resample:  # crop wider than needed, resample below
        size = 2 * int(np.floor(optics.max_mrad / out_mrad_per_px + 1e-9)) + 1
        half = int(np.ceil((optics.max_mrad + 2 * out_mrad_per_px) / mrad))
    else:
        half = size // 2
    native_half = half * optics.bin + optics.bin // 2
    arr = _scan(potential, positions_xy, optics, native_half, native, len(set(exit_cells)))
    arr = _bin_centered(arr, optics.bin, half)
    if resample:
        from .corruptions import Resample

        arr = Resample(mrad, out_mrad_per_px, (size, size), (half, half), (size // 2, size // 2))(arr)
    return np.ascontiguousarray(arr[_exit_order(exit_cells)], dtype=np.float32)


def reciprocal_detector(max_g: float, inv_angstrom_per_px: float, a_ref: float) -> tuple[int, float]:
    """(size, center_px) of a detector stored in reciprocal-lattice units: half-width ``max_g`` / ``a_ref``."""
    half = int(np.floor(max_g / a_ref / inv_angstrom_per_px + 1e-9))
    return 2 * half + 1, float(half)


def acquisition_series(atoms, cell_a: float, positions_xy: np.ndarray, exit_cells: list[int],
                       optics_list: list[Optics], phonon_configs: int, phonon_sigmas: dict | None,
                       phonon_seed: int | None, out_inv_angstrom_per_px: float, size: int) -> np.ndarray:
    """Patterns (len(optics_list), len(exit_cells), len(positions), size, size) of one structure seen
    in several acquisitions (beam energy, convergence, defocus, tilt), sampled in reciprocal space.

    The potential (and its frozen-phonon snapshot) is built once and every probe propagates through
    it. Patterns are stored at ``out_inv_angstrom_per_px`` (1/Å per pixel, the same for every energy:
    in these units a pattern's lattice geometry does not change with the wavelength, only the disk
    radius alpha / lambda does), centred on the 0-angle pixel of an odd ``size``.
    """
    from ..io import electron_wavelength_angstrom
    from .corruptions import Resample

    potential = _potential(atoms, cell_a, exit_cells, optics_list[0], phonon_configs, phonon_sigmas,
                           phonon_seed).build(lazy=False)
    extent = float(atoms.cell[0, 0])
    native_k = 1.0 / extent
    half_out = size // 2
    # crop wide enough for the resampling below (two output pixels of margin)
    native_half = int(np.ceil((half_out + 2) * out_inv_angstrom_per_px / native_k))
    order = _exit_order(exit_cells)
    out = np.empty((len(optics_list), len(exit_cells), len(positions_xy), size, size), np.float32)
    for i, optics in enumerate(optics_list):
        native_mrad = native_k * electron_wavelength_angstrom(optics.energy_kev) * 1e3
        arr = _scan(potential, positions_xy, optics, native_half, native_mrad, len(set(exit_cells)))
        if abs(out_inv_angstrom_per_px / native_k - 1) > 1e-9:
            arr = Resample(native_k, out_inv_angstrom_per_px, (size, size), (native_half, native_half),
                           (half_out, half_out))(arr)
        else:
            arr = arr[..., native_half - half_out:native_half + half_out + 1,
                      native_half - half_out:native_half + half_out + 1]
        out[i] = arr[order]
    return out
