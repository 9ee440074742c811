"""Generate a labeled dataset folder from a config: planned on the client, computed task by task.

Every random choice is drawn from ``default_rng([seed, task])`` on the client, so the data depend on
the config and seed only, never on the number of workers or the order tasks finish. Tasks return a
block of patterns; the client writes it into one chunk of the zarr-backed ``data.zspy`` and records
it in ``progress.json``, so memory stays at a few blocks, a re-run skips finished blocks, and a
partial folder is readable at any time (unfinished rows: zero patterns, label -1).

Folder layout (conventions.md "Labeled data"):
    data.zspy            4D (rows, cols, ky, kx) float32, calibrated axes (RosettaSciIO/HyperSpy)
    labels.npy           int8 (rows, cols): class, -1 = not polar or not computed yet
    manifest.json        every parameter, "data_file", layout, calibration, software versions
    progress.json        finished task indices
    training: thickness_nm.npy (rows, cols) float32, probe_frac.npy (rows, cols, 2) float32 (x, y
              fraction of the cell from the A column), structure.npy (rows, cols) int32,
              variant.npy (rows, cols, 3) int8, structures.json (per-structure parameters)
    scan:     defects.npy (rows, cols) bool
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..acquisition import convergence_for_overlap
from ..classes import NO_CLASS
from ..errors import PolarstemError
from ..fileio import save_npy, write_json
from .config import DEFAULTS
from .multislice import Optics, detector_geometry, reciprocal_detector
from .structures import O_SITES, domain_cells, variant_for_class

DATA_FILE = "data.zspy"
FORMAT_VERSION = 1


def _draw(v, rng: np.random.Generator) -> float:
    if isinstance(v, (list, tuple)):
        return float(rng.uniform(float(v[0]), float(v[1])))
    return float(v)


def _mid(v) -> float:
    return 0.5 * (float(v[0]) + float(v[1])) if isinstance(v, (list, tuple)) else float(v)


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def resume_hash(cfg: dict) -> str:
    """Hash of everything but the number of training structures: structure i depends on (seed, i)
    only, so a training set can grow or shrink and keep its finished structures."""
    c = json.loads(json.dumps(cfg))
    if c.get("kind") == "training":
        c["training"].pop("structures", None)
    return config_hash(c)


# --------------------------------------------------------------------------------------------------
# planning (client side, cheap, no abTEM)


def _optics_for(cfg: dict, rng: np.random.Generator) -> dict:
    o = cfg["optics"]
    tilt = _draw(o["mistilt_mrad"], rng)
    phi = rng.uniform(0, 2 * np.pi)
    # the potential's choices only when a config names them, so existing tasks keep their content
    extra = {k: cfg["numerics"][k] for k in ("parametrization", "projection") if k in cfg["numerics"]}
    return extra | {
        "energy_kev": _mid(o["energy_kev"]), "convergence_mrad": _mid(o["convergence_mrad"]),
        "defocus_nm": _draw(o["defocus_nm"], rng),
        "tilt_mrad": [float(tilt * np.cos(phi)), float(tilt * np.sin(phi))],
        "gpts_per_cell": cfg["numerics"]["gpts_per_cell"], "slices_per_cell": cfg["numerics"]["slices_per_cell"],
        "max_mrad": float(cfg["detector"]["max_mrad"]), "bin": int(cfg["detector"]["bin"]),
    }


def _acquisitions_for(cfg: dict, base: dict, seed: int, index: int) -> list[dict]:
    """The acquisitions one structure is seen in (``training.acquisitions``, reciprocal-unit sets only).

    Drawn from a stream of their own, so the structure's other draws do not depend on them. The beam
    energy is stratified (one draw from each of n equal parts of its range, so every structure spans
    it); convergence, defocus and mistilt are drawn independently for each acquisition. With
    ``optics.disk_overlap`` the convergence is drawn as a disk overlap alpha/(lambda/a) instead (the
    one geometric parameter left in reciprocal-lattice units), so every acquisition of a set stays
    inside the overlap range a model's card states, whatever its energy.
    """
    o = cfg["optics"]
    n = int(cfg["training"].get("acquisitions", 1))
    rng = np.random.default_rng([seed, index, 11])
    out = []
    for j in range(n):
        e = o["energy_kev"]
        energy = float(e[0] + (e[1] - e[0]) * (j + rng.random()) / n) if isinstance(e, (list, tuple)) else float(e)
        tilt, phi = _draw(o["mistilt_mrad"], rng), rng.uniform(0, 2 * np.pi)
        if "disk_overlap" in o:
            convergence = convergence_for_overlap(energy, _draw(o["disk_overlap"], rng))
        else:
            convergence = _draw(o["convergence_mrad"], rng)
        out.append(base | {"energy_kev": energy, "convergence_mrad": float(convergence),
                           "defocus_nm": _draw(o["defocus_nm"], rng),
                           "tilt_mrad": [float(tilt * np.cos(phi)), float(tilt * np.sin(phi))]})
    return out


def _thickness_cells(cfg_t: dict, a: float, rng: np.random.Generator) -> list[int]:
    th, n = cfg_t["thickness_nm"], cfg_t["thicknesses"]
    if isinstance(th, list) and len(th) == 2:
        lo, hi = max(1, math.ceil(th[0] * 10 / a - 1e-9)), max(1, math.floor(th[1] * 10 / a + 1e-9))
        choices = np.arange(lo, max(lo, hi) + 1)
        if n >= len(choices):
            return [int(c) for c in choices]
        # stratified: one thickness from each of n equal bins, so every structure spans the range
        edges = np.linspace(0, len(choices), n + 1)
        idx = [int(rng.integers(int(edges[i]), max(int(edges[i]) + 1, int(edges[i + 1])))) for i in range(n)]
        return sorted({int(choices[i]) for i in idx})
    vals = th if isinstance(th, list) else [th]
    cells = sorted({max(1, int(round(v * 10 / a))) for v in vals})
    if n < len(cells):
        cells = sorted(int(c) for c in rng.choice(cells, n, replace=False))
    return cells


def _training_thickness_count(cfg: dict) -> int:
    t = cfg["training"]
    th = t["thickness_nm"]
    if isinstance(th, list) and len(th) == 2:
        return int(t["thicknesses"])
    return min(int(t["thicknesses"]), len(th) if isinstance(th, list) else 1)


def plan(cfg: dict) -> dict:
    """Tasks, output shape, per-pattern arrays and calibration of a config (deterministic)."""
    seed = int(cfg["seed"])
    if cfg["kind"] == "training":
        return _plan_training(cfg, seed)
    return _plan_scan(cfg, seed)


def _plan_training(cfg: dict, seed: int) -> dict:
    """:func:`plan` of a training config: one task per structure, its rows = acquisition x thickness."""
    s, t = cfg["structure"], cfg["training"]
    n_struct = int(t["structures"])
    pr = t["probes"]
    n_pos = int(pr["grid"]) ** 2 if "grid" in pr else int(pr["random"])
    n_th = _training_thickness_count(cfg)
    extent = s["cells"] * _mid(s["a_angstrom"])
    mrad_fixed = isinstance(s["a_angstrom"], (list, tuple)) and s["a_angstrom"][0] != s["a_angstrom"][1]
    reciprocal = "max_g" in cfg["detector"]  # stored in 1/Å: the same grid for every beam energy
    n_acq = int(t.get("acquisitions", 1)) if reciprocal else 1
    size, mrad, center, k_per_px = _training_detector(cfg, extent, reciprocal)
    per_task = n_acq * n_th
    rows, cols = n_struct * per_task, n_pos
    per_row = _empty_training_arrays(rows, cols)
    vac_fraction = float(t.get("o_vacancy_fraction", 0.0))
    tasks = []
    for i in range(n_struct):
        task, pos = _training_task(cfg, seed, i, per_task, n_th, n_pos, mrad if mrad_fixed else None, vac_fraction)
        if reciprocal:
            task["acquisitions"] = _acquisitions_for(cfg, task["optics"], seed, i)
            task["out_inv_angstrom_per_px"] = k_per_px
            task["detector_size"] = size
        tasks.append(task)
        _fill_training_rows(per_row, task, pos, n_acq, n_th)
    arrays = {k: per_row[k] for k in ("labels", "thickness_nm", "probe_frac", "structure", "variant")}
    if vac_fraction > 0:  # per pattern: the structure has an O vacancy in every other cell along the beam
        arrays["defects"] = per_row["defects"]
    calib = {"scan_step_nm": [None, None], "mrad_per_px": mrad, "detector_center_px": [center, center]}
    if reciprocal:  # the angle scale differs per row: energy and convergence travel as per-pattern arrays
        arrays["energy_kev"], arrays["convergence_mrad"] = per_row["energy_kev"], per_row["convergence_mrad"]
        calib["inv_angstrom_per_px"] = k_per_px
    return {"shape": [rows, cols, size, size], "chunk_rows": per_task, "tasks": tasks, "arrays": arrays,
            "calibration": calib}


def _training_detector(cfg: dict, extent: float, reciprocal: bool) -> tuple[int, float | None, float, float | None]:
    """(size, mrad per px, centre px, 1/Å per px) of a training set's patterns: a reciprocal-lattice
    grid (no mrad scale) when the set spans beam energies, else the mrad grid of the one energy."""
    s = cfg["structure"]
    if reciprocal:
        k_per_px = 1.0 / extent
        size, center = reciprocal_detector(float(cfg["detector"]["max_g"]), k_per_px, _mid(s["a_angstrom"]))
        return size, None, center, k_per_px
    optics = Optics(energy_kev=cfg["optics"]["energy_kev"], max_mrad=cfg["detector"]["max_mrad"],
                    bin=cfg["detector"]["bin"])
    size, mrad, center = detector_geometry(extent, optics)
    return size, mrad, center, None


def _empty_training_arrays(rows: int, cols: int) -> dict[str, np.ndarray]:
    """Every per-pattern array a training set may record, unlabelled (-1) and zero."""
    return {"labels": np.full((rows, cols), -1, np.int8), "thickness_nm": np.zeros((rows, cols), np.float32),
            "probe_frac": np.zeros((rows, cols, 2), np.float32), "structure": np.zeros((rows, cols), np.int32),
            "variant": np.zeros((rows, cols, 3), np.int8), "defects": np.zeros((rows, cols), bool),
            "energy_kev": np.zeros((rows, cols), np.float32), "convergence_mrad": np.zeros((rows, cols), np.float32)}


def _training_task(cfg: dict, seed: int, i: int, per_task: int, n_th: int, n_pos: int,
                   out_mrad_per_px: float | None, vac_fraction: float) -> tuple[dict, np.ndarray]:
    """(task, probe positions (n_pos, 2) as cell fractions) of structure ``i``. The draws from
    ``default_rng([seed, i])`` keep their order: a reordering would change every existing set."""
    s, pr = cfg["structure"], cfg["training"]["probes"]
    rng = np.random.default_rng([seed, i])
    k = int(s["classes"][i % len(s["classes"])])
    sign = s["out_of_plane_sign"]
    if k == NO_CLASS:  # a non-polar structure (config check: nb_shift 0): no variant
        v = (0, 0, 0)
    else:
        v = variant_for_class(k, rng) if sign == "random" else variant_for_class(k, z_sign=1 if sign == "+" else -1)
    a = _draw(s["a_angstrom"], rng)
    nb = _draw(s["nb_shift_angstrom"], rng)
    opt = _optics_for(cfg, rng)
    cells = _thickness_cells(cfg["training"], a, rng)
    if len(cells) != n_th:  # a range too narrow for distinct thicknesses: repeat the last
        cells = (cells + [cells[-1]] * n_th)[:n_th]
    pos = _probe_positions(pr, n_pos, rng)
    task = {
        "kind": "training", "index": i, "rows": [i * per_task, (i + 1) * per_task], "class": k,
        "variant": list(v), "a": a, "nb_shift": nb, "a_ratio": _mid(s["a_ratio"]),
        "k_fraction": float(s["k_fraction"]), "cells": int(s["cells"]), "exit_cells": cells,
        "positions_frac": pos.tolist(), "optics": opt,
        "phonons": {"configs": int(cfg["phonons"]["configs"]), "sigmas": cfg["phonons"]["sigmas"],
                    "seed": int(rng.integers(2**31))},
        "structure_seed": int(rng.integers(2**31)),
        "out_mrad_per_px": out_mrad_per_px,
    } | ({"material": s["material"]} if "material" in s else {})
    if isinstance(s["a_ratio"], (list, tuple)):  # drawn last: fixed-ratio configs keep their streams
        task["a_ratio"] = _draw(s["a_ratio"], rng)
    if vac_fraction > 0:  # own stream: the structure's other draws do not depend on it
        vr = np.random.default_rng([seed, i, 7])
        if vr.random() < vac_fraction:
            task["o_vacancy_site"] = int(vr.integers(len(O_SITES)))
    return task, pos


def _probe_positions(pr: dict, n_pos: int, rng: np.random.Generator) -> np.ndarray:
    """(n_pos, 2) probe positions (x, y fractions of the cell): a g x g grid at a random or given
    offset, or ``n_pos`` random ones."""
    if "grid" in pr:
        g = int(pr["grid"])
        off = rng.random(2) / g if pr.get("offset", "random") == "random" else np.asarray(pr["offset"], float)
        gy, gx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        return (np.stack([gx.ravel(), gy.ravel()], 1) / g + off) % 1.0
    return rng.random((n_pos, 2))


def _fill_training_rows(per_row: dict[str, np.ndarray], task: dict, pos: np.ndarray, n_acq: int, n_th: int) -> None:
    """Record a training task's labels, thicknesses, probe positions and optics in its rows."""
    r0, r1 = task["rows"]
    if "acquisitions" in task:
        acq = task["acquisitions"]
        per_row["energy_kev"][r0:r1] = np.repeat([q["energy_kev"] for q in acq], n_th)[:, None]
        per_row["convergence_mrad"][r0:r1] = np.repeat([q["convergence_mrad"] for q in acq], n_th)[:, None]
    per_row["labels"][r0:r1] = task["class"]
    per_row["thickness_nm"][r0:r1] = np.tile(np.asarray(task["exit_cells"], np.float32) * task["a"] / 10.0,
                                             n_acq)[:, None]
    per_row["probe_frac"][r0:r1] = pos[None].astype(np.float32)
    per_row["structure"][r0:r1] = task["index"]
    per_row["variant"][r0:r1] = np.asarray(task["variant"], np.int8)
    per_row["defects"][r0:r1] = "o_vacancy_site" in task


def _plan_scan(cfg: dict, seed: int) -> dict:
    """:func:`plan` of a scan config: one structure, tasks of ``rows_per_task`` scan rows."""
    s, sc = cfg["structure"], cfg["scan"]
    n = int(sc["cells"][0])
    rng = np.random.default_rng([seed, 0])
    a = _draw(s["a_angstrom"], rng)
    nb = _draw(s["nb_shift_angstrom"], rng)
    opt = _optics_for(cfg, rng)
    phonon_seed, structure_seed = int(rng.integers(2**31)), int(rng.integers(2**31))
    a_ratio = _draw(s["a_ratio"], rng)  # after the seeds: fixed-ratio configs keep their streams
    _, cell_labels, cell_defects = domain_cells(n, n, sc["domains"], nb, sc["defects"])
    spc = int(sc["steps_per_cell"])
    rows = cols = n * spc
    off = np.asarray(sc["offset_frac"], float)  # (x, y)
    ys = (off[1] + np.arange(rows) / spc) * a
    xs = (off[0] + np.arange(cols) / spc) * a
    cr = np.floor(ys / a + 1e-9).astype(int) % n
    cc = np.floor(xs / a + 1e-9).astype(int) % n
    labels = cell_labels[cr[:, None], cc[None, :]].astype(np.int8)
    defects = cell_defects[cr[:, None], cc[None, :]]
    optics = Optics(energy_kev=cfg["optics"]["energy_kev"], max_mrad=cfg["detector"]["max_mrad"],
                    bin=cfg["detector"]["bin"])
    size, mrad, center = detector_geometry(n * a, optics)
    n_cells_z = max(1, int(round(float(sc["thickness_nm"]) * 10 / a)))
    tasks = []
    rpt = int(sc["rows_per_task"])
    for i, r0 in enumerate(range(0, rows, rpt)):
        r1 = min(rows, r0 + rpt)
        tasks.append({
            "kind": "scan", "index": i, "rows": [r0, r1], "a": a, "nb_shift": nb,
            "a_ratio": a_ratio, "k_fraction": float(s["k_fraction"]), "cells": n,
            "domains": sc["domains"], "defects": sc["defects"], "exit_cells": [n_cells_z],
            "ys": ys[r0:r1].tolist(), "xs": xs.tolist(), "optics": opt,
            "phonons": {"configs": int(cfg["phonons"]["configs"]), "sigmas": cfg["phonons"]["sigmas"],
                        "seed": phonon_seed},
            "structure_seed": structure_seed, "out_mrad_per_px": None,
        } | ({"material": s["material"]} if "material" in s else {}))
    step_nm = a / spc / 10.0
    calib = {"scan_step_nm": [step_nm, step_nm], "mrad_per_px": mrad, "detector_center_px": [center, center]}
    return {"shape": [rows, cols, size, size], "chunk_rows": rpt, "tasks": tasks,
            "arrays": {"labels": labels, "defects": defects}, "calibration": calib,
            "cell_labels": cell_labels.tolist(), "thickness_nm": n_cells_z * a / 10.0}


# --------------------------------------------------------------------------------------------------
# one task (runs on a worker)


def run_task(task: dict) -> np.ndarray:
    """Simulate one block of rows: (rows, cols, ky, kx) float32."""
    from dataclasses import replace

    from .multislice import diffraction_series
    from .structures import THERMAL_SIGMAS, knn_supercell, silicon_supercell, uniform_cells

    rng = np.random.default_rng(task["structure_seed"])
    a, n = float(task["a"]), int(task["cells"])
    nz = int(max(task["exit_cells"]))
    if task["kind"] == "training":
        cells = uniform_cells(tuple(task["variant"]) if any(task["variant"]) else None, n, n, task["nb_shift"])
        if task.get("o_vacancy_site") is not None:  # every cell: one missing O site (see knn_supercell)
            cells = [[replace(c, o_vacancies=(task["o_vacancy_site"],)) for c in row] for row in cells]
        # probes in the middle cell, so the O cage around them is the one the fractions refer to
        pos = (np.asarray(task["positions_frac"], float) + n // 2) * a
    else:
        cells, _, _ = domain_cells(n, n, task["domains"], task["nb_shift"], task["defects"])
        ys, xs = np.asarray(task["ys"]), np.asarray(task["xs"])
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        pos = np.stack([xx.ravel(), yy.ravel()], 1)
    material = task.get("material", "knn")
    if material == "si":
        atoms = silicon_supercell(n, a, nz)
    else:
        atoms = knn_supercell(cells, a, nz, rng, k_fraction=task["k_fraction"], a_ratio=task["a_ratio"],
                              material=material)
    o = task["optics"]
    optics = Optics(energy_kev=o["energy_kev"], convergence_mrad=o["convergence_mrad"],
                    defocus_nm=o["defocus_nm"], tilt_mrad=tuple(o["tilt_mrad"]),
                    gpts_per_cell=o["gpts_per_cell"], slices_per_cell=o["slices_per_cell"],
                    max_mrad=o["max_mrad"], bin=o["bin"], parametrization=o.get("parametrization", "lobato"),
                    projection=o.get("projection", "infinite"))
    species = set(atoms.get_chemical_symbols())  # the config's sigmas, and the defaults of other species
    sigmas = {el: v for el, v in (THERMAL_SIGMAS | (task["phonons"]["sigmas"] or {})).items() if el in species}
    ph = dict(task["phonons"], sigmas=sigmas)
    if "acquisitions" in task:
        from .multislice import acquisition_series

        optics_list = [replace(optics, energy_kev=q["energy_kev"], convergence_mrad=q["convergence_mrad"],
                               defocus_nm=q["defocus_nm"], tilt_mrad=tuple(q["tilt_mrad"]))
                       for q in task["acquisitions"]]
        pats = acquisition_series(atoms, a, pos, task["exit_cells"], optics_list, ph["configs"],
                                  ph["sigmas"], ph["seed"], task["out_inv_angstrom_per_px"],
                                  task["detector_size"])
        return pats.reshape((-1,) + pats.shape[2:])  # (acquisition x thickness, position, ky, kx)
    pats = diffraction_series(atoms, a, pos, task["exit_cells"], optics, phonon_configs=ph["configs"],
                              phonon_sigmas=ph["sigmas"], phonon_seed=ph["seed"],
                              out_mrad_per_px=task["out_mrad_per_px"])
    if task["kind"] == "training":
        return pats  # (thickness, position, ky, kx) = (rows, cols, ...)
    r = task["rows"][1] - task["rows"][0]
    return pats[0].reshape((r, len(task["xs"])) + pats.shape[-2:])


# --------------------------------------------------------------------------------------------------
# output folder


def _create_data_file(path: Path, shape, chunk_rows: int, calibration, title: str):
    """An empty calibrated .zspy of the full shape (chunks of whole task blocks, fill value 0)."""
    import zarr

    from ..io import save

    rows, cols, ky, kx = shape
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        save(path, np.zeros((1, 1, ky, kx), np.float32), calibration, title=title)
    group = zarr.open_group(_nested_store(path), mode="r+")
    exp = group["Experiments"]
    name = next(iter(exp.group_keys()))
    node = exp[name]
    old = node["data"]
    compressor = old.compressor
    del node["data"]
    node.create_dataset("data", shape=tuple(shape), chunks=(chunk_rows, cols, ky, kx), dtype="float32",
                        compressor=compressor, fill_value=0.0, dimension_separator="/")
    for i, size in enumerate((rows, cols)):
        node[f"axis-{i}"].attrs["size"] = int(size)
    return node["data"]


def _nested_store(path: Path):
    """The store .zspy files use (zarr 2 warns it is deprecated for zarr 3; RosettaSciIO needs it)."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return zarr.storage.NestedDirectoryStore(str(path))


def _open_data(path: Path):
    import zarr

    group = zarr.open_group(_nested_store(path), mode="r+")
    exp = group["Experiments"]
    return exp[next(iter(exp.group_keys()))]["data"]


def _set_axis_sizes(path: Path, sizes) -> None:
    import zarr

    group = zarr.open_group(_nested_store(path), mode="r+")
    exp = group["Experiments"]
    node = exp[next(iter(exp.group_keys()))]
    for i, size in enumerate(sizes):
        node[f"axis-{i}"].attrs["size"] = int(size)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("napari-polarstem", "abtem", "ase", "numpy", "dask", "zarr", "rosettasciio"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def simulate(cfg: dict, out: str | Path, workers: int = 1, scheduler: str | None = None,
             progress: bool = True, config_path: str | None = None, max_tasks: int | None = None) -> dict:
    """Write (or resume) the labeled dataset of ``cfg`` into folder ``out``; returns the manifest.

    ``max_tasks`` stops after that many new tasks (for measuring rates); the folder stays resumable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PolarstemError(f"{out}: exists and is not a folder")
    p = plan(cfg)
    h, rh = config_hash(cfg), resume_hash(cfg)
    cal = _calibration(cfg, p["calibration"])
    data, done = _open_or_create(out, cfg, p, cal, (h, rh))
    for name, arr in p["arrays"].items():
        if name != "labels":
            save_npy(out / f"{name}.npy", arr)
    folder = _Folder(out, data, p, done, (h, rh), _manifest(cfg, p, cal, h, config_path))
    if cfg["kind"] == "training":
        keys = ("index", "class", "variant", "a", "nb_shift", "exit_cells", "optics", "structure_seed", "acquisitions",
                "material")
        structures = [{k: t[k] for k in keys if k in t} | {"phonon_seed": t["phonons"]["seed"]} for t in p["tasks"]]
        write_json(out / "structures.json", structures, indent=1)
    folder.write_labels()
    folder.write_manifest("running" if len(done) < len(p["tasks"]) else "complete")
    todo = [t for t in p["tasks"] if t["index"] not in done]
    if max_tasks is not None:
        todo = todo[: int(max_tasks)]

    from tqdm import tqdm

    bar = tqdm(total=len(p["tasks"]), initial=len(done), unit="task", file=sys.stderr, disable=not progress,
               desc=f"simulate {out.name}")
    t0 = time.perf_counter()

    def finish(task, block):
        folder.store(task, block)
        bar.update(1)

    try:
        if scheduler is None and workers <= 1:
            for task in todo:
                finish(task, run_task(task))
        else:
            _run_distributed(todo, finish, workers, scheduler)
    finally:
        bar.close()
        folder.write_manifest("complete" if len(done) == len(p["tasks"]) else "running")
    elapsed = time.perf_counter() - t0
    manifest, n_new = folder.manifest, folder.n_new
    manifest["last_run"] = {"seconds": elapsed, "tasks": n_new, "workers": workers, "scheduler": scheduler,
                            "patterns_per_s": n_new * p["chunk_rows"] * p["shape"][1] / elapsed if elapsed else None}
    write_json(out / "manifest.json", manifest, indent=1)
    return manifest


def _calibration(cfg: dict, pc: dict):
    """The data file's calibration from a plan's: reciprocal-length detector axes for a set spanning
    beam energies (the energies travel per row), else mrad and the config's optics."""
    from ..io import Calibration

    if "inv_angstrom_per_px" in pc:  # several beam energies: reciprocal-length axes, per-row energies
        k = pc["inv_angstrom_per_px"]
        return Calibration(detector_scale=(k, k), detector_units="1/Å",
                           detector_center_px=tuple(pc["detector_center_px"]))
    return Calibration(scan_step_nm=tuple(pc["scan_step_nm"]), mrad_per_px=pc["mrad_per_px"],
                       beam_energy_kev=cfg["optics"]["energy_kev"], convergence_mrad=cfg["optics"]["convergence_mrad"],
                       detector_center_px=tuple(pc["detector_center_px"]))


def _open_or_create(out: Path, cfg: dict, p: dict, cal, hashes: tuple[str, str]):
    """(zarr data array, finished task indices) of the folder ``out``: an existing simulation of the
    same config is resumed (a training set resized to its new number of structures), another one
    is refused, a new folder gets an empty data file."""
    h, rh = hashes
    progress_path = out / "progress.json"
    if not progress_path.exists():
        out.mkdir(parents=True, exist_ok=True)
        data = _create_data_file(out / DATA_FILE, p["shape"], p["chunk_rows"], cal,
                                 title=f"KNN simulation ({cfg['kind']})")
        write_json(progress_path, {"config_hash": h, "resume_hash": rh, "done": []}, indent=1)
        return data, set()
    try:
        prog = json.loads(progress_path.read_text())
    except ValueError:
        raise PolarstemError(f"{progress_path}: unreadable; delete the folder to start again") from None
    if prog.get("config_hash") != h and prog.get("resume_hash") != rh:
        raise PolarstemError(f"{out}: holds a different simulation (config or seed changed); "
                             "choose another folder or delete it")
    done = set(int(i) for i in prog.get("done", []) if int(i) < len(p["tasks"]))
    data = _open_data(out / DATA_FILE)
    if tuple(data.shape) != tuple(p["shape"]):  # more or fewer training structures than before
        data.resize(tuple(p["shape"]))
        _set_axis_sizes(out / DATA_FILE, p["shape"][:2])
    write_json(progress_path, {"config_hash": h, "resume_hash": rh, "done": sorted(done)}, indent=1)
    return data, done


def _manifest(cfg: dict, p: dict, cal, h: str, config_path: str | None) -> dict:
    """The manifest of a simulation folder before any task runs (the status fields come later)."""
    arrays = p["arrays"]
    manifest = {
        "format": "polarstem-simulation", "format_version": FORMAT_VERSION, "data_file": DATA_FILE,
        "kind": cfg["kind"], "config": cfg, "config_file": config_path, "config_hash": h,
        "shape": p["shape"], "chunk_rows": p["chunk_rows"], "layout": (
            "rows = structure x acquisition x thickness (chunk_rows rows per structure), cols = probe positions"
            if cfg["kind"] == "training" else "real scan: rows = y, cols = x"),
        "calibration": cal.to_dict() | {k: v for k, v in p["calibration"].items() if k == "inv_angstrom_per_px"},
        "n_tasks": len(p["tasks"]), "software": _versions(),
        "arrays": sorted(["labels"] + [k for k in arrays if k != "labels"]),
        "defaults": DEFAULTS,
    }
    if cfg["kind"] == "training":
        manifest["structures"] = "structures.json"
    else:
        manifest["cell_labels"] = p["cell_labels"]
        manifest["thickness_nm"] = p["thickness_nm"]
    return manifest


class _Folder:
    """A simulation folder while its tasks finish. Each finished block is written at once, with its
    task in progress.json and its rows in labels.npy (unfinished rows -1), so an interrupted run
    leaves a readable folder that resumes where it stopped."""

    def __init__(self, out: Path, data, p: dict, done: set[int], hashes: tuple[str, str], manifest: dict):
        self.out, self.data, self.p, self.done, self.hashes, self.manifest = out, data, p, done, hashes, manifest
        self.full_labels = p["arrays"]["labels"]
        self.row_done = np.zeros(p["shape"][0], bool)
        for t in p["tasks"]:
            if t["index"] in done:
                self.row_done[t["rows"][0]:t["rows"][1]] = True
        self.n_new = 0

    def write_labels(self) -> None:
        lab = np.where(self.row_done[:, None], self.full_labels, np.int8(-1)).astype(np.int8)
        save_npy(self.out / "labels.npy", lab)

    def write_manifest(self, status: str) -> None:
        self.manifest["status"] = status
        self.manifest["tasks_done"] = len(self.done)
        self.manifest["patterns_done"] = int(self.row_done.sum()) * self.p["shape"][1]
        write_json(self.out / "manifest.json", self.manifest, indent=1)

    def store(self, task: dict, block) -> None:
        """Write a finished task's block and record it (the manifest every 10 tasks: it is larger)."""
        r0, r1 = task["rows"]
        self.data[r0:r1] = np.asarray(block, np.float32)
        self.done.add(task["index"])
        self.row_done[r0:r1] = True
        h, rh = self.hashes
        write_json(self.out / "progress.json", {"config_hash": h, "resume_hash": rh, "done": sorted(self.done)},
                   indent=1)
        self.write_labels()
        self.n_new += 1
        if self.n_new % 10 == 0:
            self.write_manifest("running")


def _run_distributed(todo: list[dict], finish, workers: int, scheduler: str | None) -> None:
    """Tasks on a dask.distributed cluster (given, or a local one with ``workers`` processes),
    a bounded number in flight so results never pile up in memory."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise PolarstemError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from None
        else:
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                   dashboard_address=None, host="127.0.0.1")
            client = Client(cluster)
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or int(workers))
        in_flight = 2 * n_workers
        queue = list(todo)
        futures = {}
        ac = as_completed()
        while queue and len(futures) < in_flight:
            t = queue.pop(0)
            f = client.submit(run_task, t, pure=False)
            futures[f.key] = t
            ac.add(f)
        for f in ac:
            task = futures.pop(f.key)
            block = f.result()
            f.release()
            finish(task, block)
            if queue:
                t = queue.pop(0)
                nf = client.submit(run_task, t, pure=False)
                futures[nf.key] = t
                ac.add(nf)
        client.close()
    finally:
        if cluster is not None:
            cluster.close()
