"""Training on a small synthetic labeled folder (the real pipeline: corruptions, preprocessing, nets),
and ``polarstem evaluate`` on it."""

import json

import numpy as np
import pytest

from polarstem.errors import PolarstemError
from polarstem.models.registry import clear_cache
from polarstem.preprocess import InputGrid
from polarstem.training import (
    AUX_TARGETS,
    DEFAULT_AUGMENT,
    SimSet,
    TrainConfig,
    build_arrays,
    copy_partners,
    corrupt,
    load_simset,
    run,
    train_network,
    transform_positions,
    write_synthetic_simset,
)
from polarstem.training import cache as training_cache
from polarstem.training.data import raw_inputs
from polarstem.training.loop import _warm_start, save_state_dict


@pytest.fixture(scope="module")
def simfolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    write_synthetic_simset(root / "train", n_structures=8, n_positions=8, thicknesses=(6, 12, 18, 24), det_px=48)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(training_cache, "CACHE", tmp_path / "cache")
    return tmp_path / "cache"


def _cfg(simfolder, out, **kw):
    base = dict(name="cnn", arch="cnn", data=str(simfolder / "train"), heldout=None, copies=1, epochs=2,
                cell_epochs=2, batch_size=16, lr=3e-3, out=str(out), threads=1,
                grid={"size": 32, "mrad_per_px": 2.0, "intensity": "sqrt"})
    base.update(kw)
    return TrainConfig(**base)


def test_corrupt_is_seeded_and_counts():
    f = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    a, ma = corrupt(f, 1.5, np.random.default_rng(1))
    b, mb = corrupt(f, 1.5, np.random.default_rng(1))
    assert ma == mb and np.array_equal(a, b)
    assert np.all(a == np.round(a)) and a.min() >= 0


def test_short_training_reduces_loss(simfolder, cache, tmp_path):
    import torch
    import torch.nn.functional as F

    cfg = _cfg(simfolder, tmp_path / "w", val_every=3, epochs=8, patience=100)
    sim = load_simset(cfg.data)
    arrays = build_arrays(sim, "pattern", InputGrid.from_dict(cfg.grid), 1, DEFAULT_AUGMENT, 0)
    assert arrays["x"].shape[1:] == (32, 32) and len(arrays["y"]) == len(sim)
    x = torch.from_numpy(arrays["x"][:128].astype(np.float32))[:, None]
    y = torch.from_numpy(arrays["y"][:128])
    torch.manual_seed(0)
    from polarstem.models.nets import create_model

    before = create_model("cnn")
    before.eval()
    with torch.no_grad():
        loss0 = F.cross_entropy(before(x), y).item()
    net, history, temp, info = train_network(cfg, "pattern", arrays, None, progress=False, log=lambda *_: None)
    net.eval()
    with torch.no_grad():
        loss1 = F.cross_entropy(net(x), y).item()
    assert loss1 < loss0
    assert 0.05 < temp < 20 and history and info["n_val"] > 0


def test_train_run_writes_weights_cards_index_and_evaluate(simfolder, cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "weights"
    cfg = _cfg(simfolder, out, modes=["pattern", "cell"])
    cards = run(cfg, progress=False, log=lambda *_: None)
    assert [c["mode"] for c in cards] == ["pattern", "cell"]
    index = json.loads((out / "index.json").read_text())["files"]
    assert set(index) == {"cnn-pattern", "cnn-cell"}
    card = json.loads((out / "cnn-pattern.json").read_text())
    assert card["input_grid"]["size"] == 32 and len(card["class_mean_embeddings"]) == 8
    # a rerun resumes from the checkpoint instead of starting again
    assert (cache / "train" / "cnn-pattern" / "last.pt").exists()

    cfg2 = _cfg(simfolder, out, name="pca-knn", arch=None, modes=["pattern"], pca_components=8, knn_neighbors=3)
    run(cfg2, progress=False, log=lambda *_: None)

    monkeypatch.setenv("POLARSTEM_WEIGHTS", str(out))
    clear_cache()
    d = simfolder / "train"
    labels = np.load(d / "labels.npy")
    defects = np.zeros(labels.shape, bool)
    defects[:2, :3] = True
    np.save(simfolder / "defects.npy", defects)
    from polarstem.cli import main

    for model in ("cnn", "pca-knn"):
        assert main(["evaluate", str(d), "--labels", str(d / "labels.npy"), "--defects", str(simfolder / "defects.npy"),
                     "--model", model, "--mode", "pattern", "--device", "cpu", "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert 0 <= res["accuracy"] <= 1 and len(res["per_class"]) == 8
        assert np.array(res["confusion"]).shape == (8, 8) and np.array(res["confusion"]).sum() == (labels >= 0).sum()
        assert "anomaly_auc" in res and "accuracy_outside_defects" in res
    assert main(["models", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert listed["cnn"]["modes"] == ["pattern", "cell"]
    clear_cache()


def test_cell_inputs_are_scan_like_subgrid_means():
    """A g x g probe grid per row gives the full mean, every 3 x 3 (stride 2 of 6) sub-grid mean, two 2 x 2 ones."""
    from pathlib import Path

    from polarstem.io import Calibration

    g, rows, det = 6, 3, 5
    rng = np.random.default_rng(0)
    frames = rng.random((rows * g * g, det, det)).astype(np.float32) + 0.1
    sim = SimSet(frames, np.repeat(np.arange(rows), g * g), np.repeat([5.0, 10.0, 15.0], g * g),
                 np.zeros(rows * g * g, np.int64), Calibration(mrad_per_px=1.0), Path("."),
                 {"shape": [rows, g * g, det, det], "config": {"training": {"probes": {"grid": g}}}})
    out = list(raw_inputs(sim, "cell", True, np.random.default_rng(1)))
    assert len(out) == 1 + 4 + 2  # full, four 3x3 (stride 2), two of the nine 2x2 (stride 3)
    norm = frames / frames.sum(axis=(1, 2), keepdims=True)
    grid = norm.reshape(rows, g, g, det, det)
    np.testing.assert_allclose(out[0][0], grid.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(out[1][0], grid[:, 0::2, 0::2].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(out[4][0], grid[:, 1::2, 1::2].mean(axis=(1, 2)), rtol=1e-5)
    assert all(np.array_equal(o[1], [0, 1, 2]) and np.array_equal(o[2], [5.0, 10.0, 15.0]) for o in out)
    assert len(list(raw_inputs(sim, "cell", False, np.random.default_rng(1)))) == 1


def test_probe_positions_follow_the_pattern_symmetry():
    """The auxiliary position targets move with the pattern under every D4 element: a spot at the
    pattern centre + (dx, dy) lands where transform_positions sends (dx, dy)."""
    from polarstem.models.symmetry import ELEMENTS, transform

    n, c = 21, 10
    pos = np.array([[0.2, 0.3]])
    for e in ELEMENTS:
        img = np.zeros((n, n))
        img[c + round(10 * pos[0, 1]), c + round(10 * pos[0, 0])] = 1  # row = y, column = x
        iy, ix = np.unravel_index(np.argmax(transform(img, e)), img.shape)
        moved = transform_positions(pos, e)[0]
        expect = (np.array([ix - c, iy - c]) / 10.0) % 1.0
        assert np.allclose(moved, expect), (e, moved, expect)


def test_auxiliary_position_and_thickness_head_trains_and_ships(simfolder, cache, tmp_path, monkeypatch):
    import torch

    sim = load_simset(simfolder / "train")
    grid = InputGrid.from_dict({"size": 32, "mrad_per_px": 2.0, "intensity": "sqrt"})
    arrays = build_arrays(sim, "pattern", grid, 1, DEFAULT_AUGMENT, 0)
    assert arrays["probe"].shape == (len(arrays["y"]), 2)
    arrays["probe"] = np.random.default_rng(0).random(arrays["probe"].shape).astype(np.float32)
    cfg = _cfg(simfolder, tmp_path / "w", val_every=3, epochs=2, aux_weight=0.5, arch_kwargs={"aux_dim": 5})
    net, history, temp, info = train_network(cfg, "pattern", arrays, None, progress=False, log=lambda *_: None)
    assert net.aux is not None and net.aux.out_features == len(AUX_TARGETS)
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 8)
    # aux_weight without the head is a configuration error, not a silent no-op
    with pytest.raises(PolarstemError, match="aux_dim"):
        train_network(_cfg(simfolder, tmp_path / "w2", aux_weight=0.5), "pattern", arrays, None,
                      progress=False, log=lambda *_: None)


def test_probe_positions_are_rebuilt_for_arrays_cached_without_them(tmp_path, cache):
    root = tmp_path / "sim"
    write_synthetic_simset(root, n_structures=40, n_positions=8, thicknesses=(6, 12), det_px=40)  # > one 512 chunk
    labels = np.load(root / "labels.npy")
    probe = np.random.default_rng(1).random(labels.shape + (2,)).astype(np.float32)
    np.save(root / "probe_frac.npy", probe)
    sim = load_simset(root)
    grid = InputGrid.from_dict({"size": 32, "mrad_per_px": 2.0, "intensity": "sqrt"})
    fresh = build_arrays(sim, "pattern", grid, 2, DEFAULT_AUGMENT, 0, progress=False)
    (cached,) = list((cache / "train").glob("arrays-pattern-*.npz"))
    with np.load(cached) as z:
        old = {k: z[k] for k in z.files if k != "probe"}
    np.savez(cached, **old)
    again = build_arrays(sim, "pattern", grid, 2, DEFAULT_AUGMENT, 0, progress=False)
    assert np.array_equal(again["probe"], fresh["probe"]) and np.isfinite(fresh["probe"]).all()


def test_warm_start_keeps_a_prototype_nets_trained_prototypes(tmp_path):
    """Continuing a prototype run must not reset its prototypes to class means; a plain start must."""
    import torch

    from polarstem.models.nets import create_model

    proto = {"per_class": 2, "scale": 16.0}
    donor = create_model("cnn", prototype=proto)
    with torch.no_grad():
        donor.head.prototypes.copy_(torch.arange(donor.head.prototypes.numel(), dtype=torch.float32)
                                    .reshape(donor.head.prototypes.shape))
    path = tmp_path / "donor.safetensors"
    save_state_dict(donor, path)
    net = create_model("cnn", prototype=proto)
    assert _warm_start(net, str(path), "pattern", log=lambda *_: None) is True
    assert torch.equal(net.head.prototypes, donor.head.prototypes)
    plain = tmp_path / "plain.safetensors"
    save_state_dict(create_model("cnn"), plain)
    assert _warm_start(create_model("cnn", prototype=proto), str(plain), "pattern", log=lambda *_: None) is False


def test_copy_partners_pair_each_ideal_input_with_its_corrupted_version(tmp_path, cache):
    root = tmp_path / "sim"
    write_synthetic_simset(root, n_structures=40, n_positions=8, thicknesses=(6, 12), det_px=40)  # > one 512 chunk
    sim = load_simset(root)
    grid = InputGrid.from_dict({"size": 32, "mrad_per_px": 2.0, "intensity": "sqrt"})
    arrays = build_arrays(sim, "pattern", grid, 2, DEFAULT_AUGMENT, 0, progress=False)
    partner = copy_partners(arrays["copy"])
    ideal = arrays["copy"] == 0
    assert (partner[ideal] >= 0).all() and (partner[~ideal] == -1).all()
    assert (arrays["copy"][partner[ideal]] == 1).all()
    # the partner is the same raw pattern: same label, thickness, structure and probe position
    for k in ("y", "thickness", "group", "probe"):
        assert np.array_equal(arrays[k][ideal], arrays[k][partner[ideal]], equal_nan=k == "probe"), k
    assert not np.array_equal(arrays["x"][ideal], arrays["x"][partner[ideal]])  # corrupted differs


def test_prototype_consistency_term_trains_for_a_fixed_step_count(simfolder, cache, tmp_path):
    sim = load_simset(simfolder / "train")
    grid = InputGrid.from_dict({"size": 32, "mrad_per_px": 2.0, "intensity": "sqrt"})
    arrays = build_arrays(sim, "pattern", grid, 2, DEFAULT_AUGMENT, 0, progress=False)
    proto = {"per_class": 2, "scale": 16.0}
    cfg = _cfg(simfolder, tmp_path / "w", copies=2, prototype=proto, consistency=1.0, steps=7, epochs=50, val_every=3)
    net, history, temp, info = train_network(cfg, "pattern", arrays, None, progress=False, log=lambda *_: None)
    assert history[-1]["step"] == 7 and np.isfinite(history[-1]["loss"])
    # the term belongs to the prototype regime, and it needs paired views
    with pytest.raises(PolarstemError, match="prototype"):
        train_network(_cfg(simfolder, tmp_path / "w2", consistency=1.0), "pattern", arrays, None,
                      progress=False, log=lambda *_: None)
    single = build_arrays(sim, "pattern", grid, 1, DEFAULT_AUGMENT, 0, progress=False)
    with pytest.raises(PolarstemError, match="copies: 2"):
        train_network(_cfg(simfolder, tmp_path / "w3", prototype=proto, consistency=1.0), "pattern", single,
                      None, progress=False, log=lambda *_: None)
    import torch

    from polarstem.models.prototype import assignment_consistency

    z = torch.randn(6, net.embed_dim)
    assert float(assignment_consistency(net, torch.cat([z[:3], z[:3]]), 3)) < 1e-6  # identical views: no cost
    assert float(assignment_consistency(net, z, 3)) > 0


def test_a_config_is_validated_once_and_a_wrong_key_or_value_is_named(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("name: cnn\nmax_minutes: 80\nlr: 0.001\ndata: [a, b]\n")
    cfg = TrainConfig.from_yaml(p)
    assert cfg.max_minutes == 80 and isinstance(cfg.max_minutes, int)  # kept as written: the fingerprint is too
    assert cfg.data == ["a", "b"] and cfg.out is None and cfg.out_dir().name == "weights"
    for text, message in (("name: cnn\nbogus: 1\n", "unknown keys bogus"),
                          ("lr: fast\n", "lr: should be a valid number"),
                          ("modes: [pattern, cel]\n", "modes.1: should be 'pattern' or 'cell'"),
                          ("epochs: 2.5\n", "epochs: should be a valid integer"),
                          ("- a\n- b\n", "a mapping of keys")):
        p.write_text(text)
        with pytest.raises(PolarstemError, match=message):
            TrainConfig.from_yaml(p)


def test_temperature_minimises_the_validation_nll():
    from polarstem.training import fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (400, 8))
    p = np.exp(logits / 2.0)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(8, p=q) for q in p])
    t = fit_temperature(logits, y)

    def nll(temp):
        z = logits / temp
        z = z - z.max(1, keepdims=True)
        return -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(y)), y].mean()

    assert 1.5 < t < 2.7 and nll(t) <= min(nll(t * 0.99), nll(t * 1.01))
    assert fit_temperature(logits, logits.argmax(1)) < 0.051  # always right: as sharp as allowed
    assert fit_temperature(np.zeros((0, 8)), np.zeros(0, int)) == 1.0


def test_the_schedule_warms_up_then_follows_a_cosine_per_step():
    import torch

    from polarstem.training.loop import lr_schedule, warmup_cosine

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    seen = []
    for first in (0, 37):  # a new schedule per round, from where the run stands
        schedule = lr_schedule(opt, 2e-3, first, 100)
        for _ in range(37 if first == 0 else 63):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
    assert seen == [2e-3 * warmup_cosine(s, 100) for s in range(100)]
    assert seen[0] == 2e-3 * 0.1 and max(seen) == seen[5] and abs(seen[-1] - 2e-3 * 0.02) < 1e-6


def test_the_regression_regime_trains_a_direction_vector_and_ships(simfolder, cache, tmp_path, monkeypatch):
    """A regression net predicts a vector; its class is the nearest direction to the vector's angle, the
    loss is circular (a 180 degree miss costs more than a 45 degree one), and a run ships a model the
    registry loads and classifies with, its card naming the regime."""
    import torch

    from polarstem.classes import CLASS_DIRECTIONS
    from polarstem.models import load_model
    from polarstem.models.regression import class_of_angle, von_mises_nll

    v = torch.tensor([[3.0, 0.0]] * 3)
    near, side, far = (float(von_mises_nll(v, torch.tensor([k] * 3))) for k in (0, 2, 4))
    assert near < side < far
    theta = np.arctan2(CLASS_DIRECTIONS[:, 1], CLASS_DIRECTIONS[:, 0]) + 0.3
    assert class_of_angle(theta).tolist() == list(range(8))

    out = tmp_path / "weights"
    cfg = _cfg(simfolder, out, name="resnet-regression", arch="cnn", regression=True, modes=["pattern"], steps=6)
    cards = run(cfg, progress=False, log=lambda *_: None)
    assert cards[0]["regime"] == "regression" and cards[0]["architecture"]["regression"] is True
    monkeypatch.setenv("POLARSTEM_WEIGHTS", str(out))
    clear_cache()
    model = load_model("resnet-regression", mode="pattern")
    x = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    res = model.predict(x, tta=1)
    assert res["proba"].shape == (5, 8) and np.allclose(res["proba"].sum(1), 1, atol=1e-5)
    with torch.no_grad():
        vec = model.net.head.vector(model.net.embed(torch.from_numpy(x)[:, None]))
    assert (res["proba"].argmax(1) == class_of_angle(np.arctan2(vec[:, 1], vec[:, 0]).numpy())).all()
    clear_cache()
    with pytest.raises(PolarstemError, match="two regimes"):
        TrainConfig.from_dict({"prototype": {"per_class": 2}, "regression": True})


def test_the_studys_pipeline_crops_about_the_centre_of_mass_and_trains_a_resnet50(simfolder, cache, tmp_path,
                                                                                   monkeypatch):
    """The study's input is a crop about the intensity centre of mass (no disk finding; in mrad when the
    detector is calibrated, raw pixels when not) and
    its encoder a ResNet-50; a seeds study varies the training seed over one data draw (data_seed), so
    the cached arrays are made once."""
    from polarstem.io import Calibration
    from polarstem.models import load_model
    from polarstem.models.nets import ResNet50
    from polarstem.preprocess import preprocess

    frames = np.zeros((2, 80, 96), np.float32)
    frames[0, 10:20, 60:70] = 100.0  # a bright spot off the detector centre: the crop follows it
    frames[1, 50:60, 20:30] = 100.0
    x, ok, info = preprocess(frames, None, InputGrid(size=16, intensity="log", raw_crop=True), return_info=True)
    assert x.shape == (2, 16, 16) and ok.all()
    assert np.allclose(info["centers"], [[14.5, 64.5], [54.5, 24.5]])
    assert all(np.unravel_index(np.argmax(xi), xi.shape) in {(r, c) for r in range(3, 13) for c in range(3, 13)}
               for xi in x)
    # with a calibrated detector the crop is in mrad: one disk recorded at 1 and at 0.5 mrad/px reads alike
    yy, xx = np.mgrid[:64, :64] - 31.5
    coarse = ((np.hypot(yy, xx + 6) < 10) * 100.0 + (np.hypot(yy, xx - 8) < 5) * 40.0)[None].astype(np.float32)
    yy, xx = (np.mgrid[:128, :128] - 63.5) / 2
    fine = ((np.hypot(yy, xx + 6) < 10) * 100.0 + (np.hypot(yy, xx - 8) < 5) * 40.0)[None].astype(np.float32)
    g = InputGrid(size=32, mrad_per_px=1.0, intensity="log", raw_crop=True)
    a, _ = preprocess(coarse, Calibration(mrad_per_px=1.0), g)
    b, _ = preprocess(fine, Calibration(mrad_per_px=0.5), g)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
    assert np.corrcoef(a.ravel(), preprocess(fine, None, g)[0].ravel())[0, 1] < 0.8  # raw pixels: another scale

    out = tmp_path / "study"
    grid = {"size": 32, "intensity": "log", "raw_crop": True}
    cards = [run(_cfg(simfolder, out / f"seed{s}", name="study-resnet50", arch="resnet50", modes=["pattern"], steps=2,
                      grid=grid, seed=s, data_seed=0), progress=False, log=lambda *_: None)[0] for s in (1, 2)]
    assert len(list(cache.glob("train/arrays-pattern-*.npz"))) == 1  # one data draw for both seeds
    assert cards[0]["architecture"]["arch"] == "resnet50" and cards[0]["input_grid"]["raw_crop"] is True
    monkeypatch.setenv("POLARSTEM_WEIGHTS", str(out / "seed1"))
    clear_cache()
    model = load_model("study-resnet50", mode="pattern")
    assert isinstance(model.net, ResNet50)
    raw = np.random.default_rng(0).poisson(3.0, (3, 48, 48)).astype(np.uint16)
    xin, _ = model.preprocess(raw, None)
    assert xin.shape == (3, 32, 32) and model.predict(xin, tta=1)["proba"].shape == (3, 8)
    clear_cache()


def test_outlier_exposure_spreads_the_probability_of_non_polar_patterns(simfolder, cache, tmp_path):
    """With outliers (patterns without the polar tilt) a step adds the cross-entropy to the uniform class
    distribution: after 120 steps (the term weighted 3) the network's class distribution on such
    patterns is uniform, its confidence on them well below that on polar ones, and it is about as
    accurate on the polar ones as without them (here 2.09 / 0.15 / 0.42 / 0.95, without the term
    2.26 / 0.21 / 0.36 / 0.45: cross-entropy to uniform, top probability on outliers and on polar
    patterns, validation accuracy); every round logs the outliers' confidence."""
    from scipy.special import softmax

    from polarstem.training.loop import _logits_numpy

    flat = write_synthetic_simset(tmp_path / "flat", n_structures=8, n_positions=8, thicknesses=(6, 12, 18, 24),
                                  det_px=48, signal=0.0)
    grid = InputGrid.from_dict({"size": 32, "mrad_per_px": 2.0, "intensity": "sqrt"})
    arrays = build_arrays(load_simset(simfolder / "train"), "pattern", grid, 1, DEFAULT_AUGMENT, 0, progress=False)
    outliers = build_arrays(load_simset(flat), "pattern", grid, 1, DEFAULT_AUGMENT, 0, progress=False)
    top_p, acc, spread = {}, {}, {}
    for name, extra in (("plain", None), ("exposed", outliers)):
        cfg = _cfg(simfolder, tmp_path / name, name=name, steps=120, epochs=50, val_every=3,
                   outlier_weight=3.0)
        net, history, _, info = train_network(cfg, "pattern", arrays, None, progress=False, log=lambda *_: None,
                                              outliers=extra)
        p_out = softmax(_logits_numpy(net, outliers["x"], "cpu"), axis=1)
        spread[name] = float(-np.log(p_out).mean())  # cross-entropy to uniform: log 8 = 2.08 at best
        top_p[name] = float(np.median(p_out.max(1)))
        top_p[name + " polar"] = float(np.median(softmax(_logits_numpy(net, arrays["x"], "cpu"), axis=1).max(1)))
        acc[name] = info["val_accuracy"]
    assert "outlier_top_p" in history[-1]
    assert spread["exposed"] < np.log(8) + 0.02  # uniform on them, as the term asks
    assert top_p["exposed polar"] > 2 * top_p["exposed"] and top_p["exposed"] < 0.2
    assert acc["exposed"] >= acc["plain"] - 0.15
    with pytest.raises(PolarstemError, match="PCA-kNN"):
        TrainConfig.from_dict({"arch": None, "outliers": [str(flat)]})


def test_the_abstention_is_calibrated_on_a_separate_set_of_structures(tmp_path, cache):
    """Split conformal wants calibration data exchangeable with the user's: structures the network never
    trained on. With ``abstention_data`` the thresholds come from that folder's rows (all of them are new
    structures), the class Gaussians from the training folder's."""
    manifest = {"kind": "training", "status": "complete", "config": {"training": {"probes": {"grid": 6}}}}
    for name, n in (("train", 8), ("calibration", 16)):
        folder = write_synthetic_simset(tmp_path / name, n_structures=n, n_positions=36, thicknesses=(6, 12, 18, 24),
                                        det_px=48)
        (folder / "manifest.json").write_text(json.dumps(dict(manifest, shape=[n * 4, 36, 48, 48])))
    logs = []
    cfg = _cfg(tmp_path, tmp_path / "w", data=str(tmp_path / "train"), abstention=True,
               abstention_data=str(tmp_path / "calibration"), modes=["pattern"])
    card = run(cfg, progress=False, log=logs.append)[0]
    assert card["abstention"]["max_distance"] and card["abstention"]["min_confidence"]
    assert any("(64 rows)" in line for line in logs if line.startswith("abstention at 36"))  # 16 structures x 4
    clear_cache()
