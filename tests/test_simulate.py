"""The simulator: physics sanity on tiny.yaml, determinism, resume, LocalCluster equality, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from polarstem.cli import main
from polarstem.io import load

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "simulate" / "tiny.yaml"

#: A minute-sized config for format and determinism checks: 2 structures, thin, coarse.
MINI = {
    "kind": "training", "seed": 5,
    "numerics": {"gpts_per_cell": 24},
    "detector": {"max_mrad": 25},
    "structure": {"classes": [1, 6], "cells": 3, "a_angstrom": [3.95, 4.0], "nb_shift_angstrom": [0.1, 0.2]},
    "phonons": {"configs": 1},
    "training": {"structures": 2, "probes": {"random": 3}, "thickness_nm": [1.0, 3.0], "thicknesses": 2},
}


def _arrays(folder: Path) -> np.ndarray:
    return np.asarray(load(folder).data.compute())


def _rot90(p: np.ndarray) -> np.ndarray:
    """Rotate by +90° (from +x towards +y) about the centre pixel: new[y, x] = old[-x, y]."""
    return np.swapaxes(p, -1, -2)[..., ::-1]


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "tiny"
    assert main(["simulate", str(TINY), "-o", str(out), "--quiet"]) == 0
    return out


@pytest.mark.slow
def test_tiny_physics_symmetry(tiny_out):
    """Class k rotated +90° equals class k+2; k and k+4 differ (Friedel's law broken)."""
    ds = load(tiny_out)
    labels = np.load(tiny_out / "labels.npy")
    assert labels.dtype == np.int8 and labels.shape == ds.scan_shape
    cy, cx = ds.calibration.detector_center_px
    ky, kx = ds.detector_shape
    assert (cy, cx) == ((ky - 1) / 2, (kx - 1) / 2)  # 0 mrad is the centre pixel: rotation is exact
    data = np.asarray(ds.data.compute(), dtype=np.float64)
    mean = np.stack([data[labels == k].mean(0) for k in range(8)])
    for k in range(8):
        assert _rel(_rot90(mean[k]), mean[(k + 2) % 8]) < 0.02
        assert _rel(mean[k], mean[(k + 4) % 8]) > 0.02


@pytest.mark.slow
def test_tiny_output_format(tiny_out):
    m = json.loads((tiny_out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["data_file"] == "data.zspy"
    assert m["config"]["structure"]["k_fraction"] == 1.0 and m["config"]["phonons"]["configs"] == 0
    ds = load(tiny_out)
    assert ds.shape == tuple(m["shape"]) == (8, 16, 51, 51)
    cal = ds.calibration
    assert cal.beam_energy_kev == 200 and cal.convergence_mrad == 20
    assert abs(cal.mrad_per_px - 1.587) < 0.01
    labels = np.load(tiny_out / "labels.npy")
    np.testing.assert_array_equal(labels[:, 0], np.arange(8))
    thick = np.load(tiny_out / "thickness_nm.npy")
    assert np.allclose(thick, 30 * 3.95 / 10)  # one thickness, a whole number of cells near 12 nm
    frac = np.load(tiny_out / "probe_frac.npy")
    assert frac.shape == (8, 16, 2) and set(np.round(frac.ravel(), 6)) == {0.0, 0.25, 0.5, 0.75}
    import rsciio.zspy

    r = rsciio.zspy.file_reader(str(tiny_out / "data.zspy"), lazy=True)[0]
    assert tuple(r["data"].shape) == (8, 16, 51, 51)


@pytest.mark.slow
def test_local_cluster_gives_same_arrays(tiny_out, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        out = tmp_path / "cluster"
        assert main(["simulate", str(TINY), "-o", str(out), "--scheduler", cluster.scheduler_address,
                     "--quiet"]) == 0
    np.testing.assert_array_equal(_arrays(out), _arrays(tiny_out))
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.load(tiny_out / "labels.npy"))


def _write_cfg(tmp_path: Path, cfg: dict, name="c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_deterministic_and_resumable(tmp_path):
    cfg = _write_cfg(tmp_path, MINI)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["simulate", str(cfg), "-o", str(a), "--quiet"]) == 0
    # b: interrupted after one task, then resumed
    assert main(["simulate", str(cfg), "-o", str(b), "--quiet", "--max-tasks", "1"]) == 0
    part = json.loads((b / "manifest.json").read_text())
    assert part["status"] == "running" and part["tasks_done"] == 1
    lab = np.load(b / "labels.npy")
    assert (lab[:2] >= 0).all() and (lab[2:] == -1).all()  # unfinished rows are "no class"
    assert load(b).shape == load(a).shape  # a partial folder is readable
    assert main(["simulate", str(cfg), "-o", str(b), "--quiet"]) == 0
    np.testing.assert_array_equal(_arrays(a), _arrays(b))
    for name in ("labels", "thickness_nm", "probe_frac", "structure", "variant"):
        np.testing.assert_array_equal(np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy"))
    data = _arrays(a)
    assert np.all(data >= 0) and data.sum((2, 3)).max() <= 1.0 + 1e-3
    # the two structures (classes 1 and 6) differ, positions differ
    assert not np.allclose(data[0, 0], data[2, 0])
    th = np.load(a / "thickness_nm.npy")
    assert th.min() >= 0.9 and th.max() <= 3.1


@pytest.mark.slow
def test_two_local_workers_give_same_arrays(tmp_path):
    cfg = _write_cfg(tmp_path, MINI)
    a, c = tmp_path / "a", tmp_path / "c"
    assert main(["simulate", str(cfg), "-o", str(a), "--quiet"]) == 0
    assert main(["simulate", str(cfg), "-o", str(c), "--quiet", "--workers", "2"]) == 0
    np.testing.assert_array_equal(_arrays(a), _arrays(c))


def test_other_seed_or_config_refuses_resume(tmp_path, capsys):
    cfg = _write_cfg(tmp_path, MINI)
    out = tmp_path / "o"
    assert main(["simulate", str(cfg), "-o", str(out), "--quiet", "--max-tasks", "0"]) == 0
    other = _write_cfg(tmp_path, dict(MINI, seed=6), "d.yaml")
    assert main(["simulate", str(other), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different simulation" in err[0]


@pytest.mark.parametrize("text,expect", [
    ("kind: training\nbogus: 1\n", "unknown key 'bogus'"),
    ("structure: {classes: [9]}\n", "structure.classes"),
    ("optics: {energy_kev: -5}\n", "optics.energy_kev"),
    ("kind: [unclosed\n", "not valid YAML"),
    ("detector: {bin: 2}\n", "detector.bin"),
    ("- just\n- a list\n", "mapping"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, text, expect):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    assert main(["simulate", str(p), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and expect in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_config_exits_2(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "o")]) == 2
    assert "no such config" in capsys.readouterr().err


def test_scan_with_domains_and_defects(tmp_path):
    cfg = {
        "kind": "scan", "seed": 3,
        "numerics": {"gpts_per_cell": 20}, "detector": {"max_mrad": 20, "bin": 1},
        "structure": {"cells": 4, "a_angstrom": 3.97, "nb_shift_angstrom": 0.15},
        "phonons": {"configs": 0},
        "scan": {"cells": [4, 4], "steps_per_cell": 2, "offset_frac": [0.0, 0.0], "thickness_nm": 1.2,
                 "rows_per_task": 4,
                 "domains": [{"class": 1, "rows": [0, 4], "cols": [0, 2]}, {"class": 5, "rows": [0, 4], "cols": [2, 4]}],
                 "defects": [{"kind": "nonpolar", "rows": [0, 1], "cols": [0, 1]},
                             {"kind": "o_vacancy", "rows": [3, 4], "cols": [3, 4]}]},
    }
    out = tmp_path / "scan"
    assert main(["simulate", str(_write_cfg(tmp_path, cfg)), "-o", str(out), "--quiet"]) == 0
    ds = load(out)
    assert ds.shape[:2] == (8, 8)
    assert abs(ds.calibration.scan_step_nm[1] - 0.3970 / 2) < 1e-6
    labels, defects = np.load(out / "labels.npy"), np.load(out / "defects.npy")
    assert labels.dtype == np.int8 and defects.dtype == bool
    assert (labels[:2, :2] == -1).all() and (labels[2:, :4] == 1).all() and (labels[:, 4:] == 5).all()
    assert defects[:2, :2].all() and defects[6:, 6:].all() and defects.sum() == 8
    data = _arrays(out)
    # the two domains of opposite P give different patterns at equivalent positions
    assert _rel(data[4, 0], data[4, 4]) > 0.01


def test_structure_displacements_follow_class():
    from polarstem.simulate.structures import knn_supercell, uniform_cells

    rng = np.random.default_rng(0)
    for variant, k in [((1, 1, 0), 1), ((0, -1, 1), 6), ((-1, 0, -1), 4)]:
        atoms = knn_supercell(uniform_cells(variant, 2, 2, 0.2), 4.0, 2, rng, k_fraction=1.0)
        nb = atoms.positions[atoms.numbers == 41]
        d = (nb % 4.0) - 2.0
        mean = d.mean(0)
        np.testing.assert_allclose(mean, 0.2 * np.asarray(variant) / np.sqrt(2), atol=1e-9)
        from polarstem.classes import CLASS_DIRECTIONS

        proj = mean[:2] / np.linalg.norm(mean[:2])
        np.testing.assert_allclose(proj, CLASS_DIRECTIONS[k], atol=1e-9)
    atoms = knn_supercell(uniform_cells((1, 1, 0), 2, 2, 0.15), 3.97, 3, rng, k_fraction=0.5)
    assert len(atoms) == 2 * 2 * 3 * 5 and {"K", "Na"} <= set(atoms.get_chemical_symbols())


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, polarstem, polarstem.simulate, polarstem.simulate.corruptions, "
            "polarstem.commands.simulate; bad = [m for m in ('abtem', 'ase', 'distributed', 'napari') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_training_set_grows_and_shrinks_keeping_finished_structures(tmp_path):
    small = dict(MINI, training=dict(MINI["training"], structures=1))
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["simulate", str(_write_cfg(tmp_path, MINI)), "-o", str(a), "--quiet"]) == 0
    assert main(["simulate", str(_write_cfg(tmp_path, small, "s.yaml")), "-o", str(b), "--quiet"]) == 0
    assert load(b).shape[0] == 2
    assert main(["simulate", str(_write_cfg(tmp_path, MINI, "m.yaml")), "-o", str(b), "--quiet"]) == 0
    assert load(b).shape == load(a).shape
    np.testing.assert_array_equal(_arrays(a), _arrays(b))
    np.testing.assert_array_equal(np.load(a / "labels.npy"), np.load(b / "labels.npy"))
    assert main(["simulate", str(_write_cfg(tmp_path, small, "s2.yaml")), "-o", str(b), "--quiet"]) == 0
    np.testing.assert_array_equal(_arrays(b), _arrays(a)[:2])
    assert json.loads((b / "manifest.json").read_text())["status"] == "complete"


def test_a_ratio_range_is_drawn_per_structure_and_fixed_ratio_plans_unchanged():
    from polarstem.simulate.config import resolve
    from polarstem.simulate.runner import plan

    fixed = plan(resolve(MINI))
    ranged = plan(resolve(dict(MINI, structure=dict(MINI["structure"], a_ratio=[0.2, 0.8]))))
    ratios = [t["a_ratio"] for t in ranged["tasks"]]
    assert all(0.2 <= r <= 0.8 for r in ratios) and len(set(ratios)) == len(ratios)
    for a, b in zip(fixed["tasks"], ranged["tasks"]):  # everything else drawn as before
        assert {k: v for k, v in a.items() if k != "a_ratio"} == {k: v for k, v in b.items() if k != "a_ratio"}


def test_a_ratio_range_is_validated(tmp_path, capsys):
    bad = dict(MINI, structure=dict(MINI["structure"], a_ratio=[0.8, 0.2]))
    assert main(["simulate", str(_write_cfg(tmp_path, bad)), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert "a_ratio" in capsys.readouterr().err


def test_training_loads_the_finished_structures_of_an_unfinished_set(tmp_path):
    from polarstem.training import load_simset

    cfg = _write_cfg(tmp_path, MINI)
    b = tmp_path / "b"
    assert main(["simulate", str(cfg), "-o", str(b), "--quiet", "--max-tasks", "1"]) == 0
    part = load_simset(b)
    assert len(part) == 2 * 3 and (part.labels == 1).all()  # task 0: class 1, 2 thicknesses x 3 probes
    np.testing.assert_array_equal(np.asarray(part.frames), _arrays(b)[:2].reshape(6, *part.frames.shape[1:]))
    assert main(["simulate", str(cfg), "-o", str(b), "--quiet"]) == 0
    assert len(load_simset(b)) == 4 * 3


def test_o_vacancy_training_sets_label_vacancies_and_leave_other_plans_unchanged(tmp_path, capsys):
    """``training.o_vacancy_fraction``: whole structures with one O site missing in every other cell
    along the beam, marked in a per-pattern ``defects`` array; the structures' other draws, and the
    hash of configs without the key (so the resume check of existing folders), do not change."""
    from polarstem.simulate.config import resolve
    from polarstem.simulate.runner import config_hash, plan, run_task

    base = resolve(MINI)
    assert "o_vacancy_fraction" not in base["training"]
    assert config_hash(base) == config_hash(resolve(json.loads(json.dumps(MINI))))
    clean = plan(base)
    assert "defects" not in clean["arrays"]
    vac_cfg = resolve(dict(MINI, training=dict(MINI["training"], o_vacancy_fraction=1.0)))
    vac = plan(vac_cfg)
    assert vac["arrays"]["defects"].all() and vac["arrays"]["defects"].shape == vac["arrays"]["labels"].shape
    for a, b in zip(clean["tasks"], vac["tasks"]):
        assert b["o_vacancy_site"] in (0, 1, 2)
        assert {k: v for k, v in b.items() if k != "o_vacancy_site"} == a
    half = plan(resolve(dict(MINI, training=dict(MINI["training"], structures=40, o_vacancy_fraction=0.5))))
    frac = np.mean(["o_vacancy_site" in t for t in half["tasks"]])
    assert 0.2 < frac < 0.8
    # the physics: static (no phonons) twins differ only by the vacancies, and the patterns see them
    static = lambda t: dict(t, phonons=dict(t["phonons"], configs=0))  # noqa: E731
    p_clean, p_vac = run_task(static(clean["tasks"][0])), run_task(static(vac["tasks"][0]))
    assert p_clean.shape == p_vac.shape
    assert _rel(p_vac, p_clean) > 1e-3
    bad = dict(MINI, training=dict(MINI["training"], o_vacancy_fraction=1.5))
    assert main(["simulate", str(_write_cfg(tmp_path, bad)), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert "o_vacancy_fraction" in capsys.readouterr().err


def test_potential_choices_are_optional_validated_and_change_the_physics_a_little(tmp_path, capsys):
    """``numerics.parametrization`` / ``numerics.projection`` (a held-out set from "another setup"):
    absent, the plan and hash are unchanged; named, only the optics of each task carry them; a bad
    value is one clear line; Kirkland's potential moves a static pattern by a little, not by a class."""
    from polarstem.simulate.config import resolve
    from polarstem.simulate.runner import config_hash, plan, run_task

    base = resolve(MINI)
    assert "parametrization" not in base["numerics"] and "projection" not in base["numerics"]
    assert config_hash(base) == config_hash(resolve(json.loads(json.dumps(MINI))))
    other = plan(resolve(dict(MINI, numerics=dict(MINI["numerics"], parametrization="kirkland"))))
    clean = plan(base)
    for a, b in zip(clean["tasks"], other["tasks"]):
        assert b["optics"].pop("parametrization") == "kirkland"
        assert a == b
    static = lambda t: dict(t, phonons=dict(t["phonons"], configs=0))  # noqa: E731
    task = clean["tasks"][0]
    lobato = run_task(static(task))
    kirkland = run_task(static(dict(task, optics=dict(task["optics"], parametrization="kirkland"))))
    assert 1e-4 < _rel(kirkland, lobato) < 0.05
    for key, value in (("parametrization", "doyle"), ("projection", "halfway")):
        bad = dict(MINI, numerics=dict(MINI["numerics"], **{key: value}))
        assert main(["simulate", str(_write_cfg(tmp_path, bad)), "-o", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"numerics.{key}" in err[0]


#: Two structures, each seen at two acquisitions (energy stratified over 80-300 kV), stored in 1/Å.
ACQ = {
    "kind": "training", "seed": 4,
    "optics": {"energy_kev": [80, 300], "convergence_mrad": [15, 30]},
    "numerics": {"gpts_per_cell": 24},
    "detector": {"max_mrad": 40, "max_g": 6.0},
    "structure": {"classes": [1, 6], "cells": 3, "a_angstrom": 3.97},
    "phonons": {"configs": 0},
    "training": {"structures": 2, "acquisitions": 2, "probes": {"grid": 2, "offset": "random"},
                 "thickness_nm": [2.0, 4.0], "thicknesses": 2},
}


def test_training_sets_across_acquisitions_store_reciprocal_units_and_per_row_optics(tmp_path):
    """Rows = structure x acquisition x thickness; each row's energy and convergence are stored, the
    detector axis is 1/Å, and the bright-field disk measures alpha / lambda in those units (the
    physics the models' lattice-unit input relies on)."""
    from polarstem.io import electron_wavelength_angstrom
    from polarstem.ruler import measure_ruler

    cfg = tmp_path / "acq.yaml"
    cfg.write_text(yaml.safe_dump(ACQ))
    out = tmp_path / "acq"
    assert main(["simulate", str(cfg), "-o", str(out), "--quiet"]) == 0
    ds = load(out)
    energy = np.load(out / "energy_kev.npy")[:, 0]
    alpha = np.load(out / "convergence_mrad.npy")[:, 0]
    assert ds.scan_shape == (2 * 2 * 2, 4) and ds.calibration.detector_units == "1/Å"
    assert ds.calibration.mrad_per_px is None  # the angle scale differs per row
    k = json.loads((out / "manifest.json").read_text())["calibration"]["inv_angstrom_per_px"]
    assert k == pytest.approx(1 / (3 * 3.97))
    for s in range(2):  # one energy in each half of the range per structure, thicknesses inside
        e = energy[4 * s:4 * s + 4]
        assert e[0] == e[1] and e[2] == e[3] and 80 <= e[0] < 190 <= e[2] <= 300
    data = np.asarray(ds.data)
    for row in range(0, len(energy), 2):  # one acquisition: both thicknesses, 8 patterns
        expected_px = alpha[row] * 1e-3 / electron_wavelength_angstrom(energy[row]) / k
        ruler = measure_ruler(data[row:row + 2].reshape((-1,) + data.shape[2:]))
        assert ruler.disk_radius_px == pytest.approx(expected_px, rel=0.08)  # coarse grid: a few % low


def test_out_of_scope_crystals_are_built_and_need_a_scan_without_domains(tmp_path, capsys):
    from polarstem.simulate.structures import knn_supercell, silicon_supercell, uniform_cells

    si = silicon_supercell(2, 5.431, 2)
    assert len(si) == 8 * 2 * 2 * 2 and set(si.get_chemical_symbols()) == {"Si"}
    sto = knn_supercell(uniform_cells(None, 2, 2, 0.0), 3.905, 2, np.random.default_rng(0), k_fraction=1.0,
                        material="srtio3")
    assert sorted(set(sto.get_chemical_symbols())) == ["O", "Sr", "Ti"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"kind": "training", "structure": {"material": "srtio3"}}))
    assert main(["simulate", str(bad), "-o", str(tmp_path / "x"), "--quiet"]) == 2
    assert "material" in capsys.readouterr().err


def test_non_polar_training_sets_are_labelled_minus_one_and_keep_the_cubic_symmetry(tmp_path, capsys):
    """``classes: [-1]`` with no Nb shift: the outliers of outlier-exposure training. Every pattern is
    labelled -1, the material is recorded, and with neither polarization nor tilt the pattern keeps
    the square symmetry of the cubic cell (a polar KNN pattern does not)."""
    def run(name, structure):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(MINI | {"structure": MINI["structure"] | structure,
                                              "phonons": {"configs": 0}, "training": MINI["training"] | {
                                                  "structures": 1, "probes": {"grid": 1, "offset": [0.5, 0.5]}}}))
        assert main(["simulate", str(cfg), "-o", str(tmp_path / name), "--quiet"]) == 0
        return _arrays(tmp_path / name)

    bto = run("bto", {"material": "batio3", "classes": [-1], "nb_shift_angstrom": 0.0, "a_angstrom": 4.0,
                      "k_fraction": 1.0, "a_ratio": 0.5})
    assert set(np.load(tmp_path / "bto" / "labels.npy").ravel()) == {-1}
    assert json.loads((tmp_path / "bto" / "structures.json").read_text())[0]["material"] == "batio3"
    polar = run("polar", {"classes": [1], "nb_shift_angstrom": 0.2, "a_angstrom": 4.0, "k_fraction": 1.0})
    thick_bto, thick_polar = bto[-1, 0], polar[-1, 0]  # the thicker exit plane, probe on the B-site column
    assert _rel(_rot90(thick_bto), thick_bto) < 1e-3 < 0.1 < _rel(_rot90(thick_polar), thick_polar)
    for bad in ({"classes": [-1], "nb_shift_angstrom": [0.1, 0.2]}, {"material": "batio3"}):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump(MINI | {"structure": MINI["structure"] | bad}))
        assert main(["simulate", str(cfg), "-o", str(tmp_path / "x"), "--quiet"]) == 2
        assert "non-polar" in capsys.readouterr().err


def test_a_disk_overlap_range_sets_each_acquisitions_convergence_from_its_energy(tmp_path, capsys):
    """``optics.disk_overlap`` draws alpha/(lambda/a) instead of alpha: every acquisition stays inside a
    model card's overlap range whatever its energy; sets without it plan as before."""
    from polarstem.acquisition import disk_overlap
    from polarstem.simulate.config import DEFAULTS, resolve
    from polarstem.simulate.runner import plan

    cfg = resolve(ACQ | {"optics": ACQ["optics"] | {"disk_overlap": [2.7, 3.6]}, "seed": 11,
                                "training": ACQ["training"] | {"structures": 40}})
    acq = [a for t in plan(cfg)["tasks"] for a in t["acquisitions"]]
    energy = np.array([a["energy_kev"] for a in acq])
    alpha = np.array([a["convergence_mrad"] for a in acq])
    overlap = disk_overlap(energy, alpha)
    assert overlap.min() >= 2.7 and overlap.max() <= 3.6 and np.ptp(overlap) > 0.6
    assert alpha[energy < 150].mean() > 1.3 * alpha[energy > 250].mean()  # lambda falls with energy
    plain = [a["convergence_mrad"] for t in plan(resolve(ACQ))["tasks"] for a in t["acquisitions"]]
    assert all(15 <= c <= 30 for c in plain) and DEFAULTS["optics"].get("disk_overlap") is None
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(ACQ | {"optics": ACQ["optics"] | {"disk_overlap": [2.7, 3.6]},
                                         "detector": {"max_mrad": 40}}))
    assert main(["simulate", str(bad), "-o", str(tmp_path / "x"), "--quiet"]) == 2
    assert "disk_overlap" in capsys.readouterr().err
