"""Model registry, weights files and the model interface: hashes, no code execution, shapes."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polarstem.errors import ModelFileError, PolarstemError
from polarstem.models import list_models, load_model
from polarstem.models.registry import MODEL_DEFS, clear_cache, write_index

SRC = Path(__file__).resolve().parents[1] / "src" / "polarstem"


def _card(name, mode, fname, arch=None, prototype=None):
    return {"name": name, "mode": mode, "weights_file": fname, "input_grid": {"size": 32, "mrad_per_px": 2.0},
            "temperature": 1.5, "architecture": {"arch": arch, "kwargs": {}, "prototype": prototype},
            "acquisition": {"beam_energy_kev": [195, 205], "convergence_mrad": [17, 23]}}


@pytest.fixture
def weights(tmp_path):
    """A weights folder with a small CNN (pattern), a prototype CNN and a PCA+kNN, with index."""
    from safetensors.torch import save_file

    from polarstem.models.nets import create_model
    from polarstem.models.pca_knn import make_pipeline, save_npz

    for name, proto in (("cnn", None), ("cnn-proto", {"per_class": 2, "scale": 16.0})):
        net = create_model("cnn", prototype=proto)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / f"{name}-pattern.safetensors"))
        (tmp_path / f"{name}-pattern.json").write_text(json.dumps(_card(name, "pattern", f"{name}-pattern.safetensors", "cnn", proto)))
    rng = np.random.default_rng(0)
    pipe = make_pipeline(n_components=5, n_neighbors=3).fit(rng.normal(size=(80, 32 * 32)), np.arange(80) % 8)
    save_npz(pipe, tmp_path / "pca-knn-cell.npz")
    (tmp_path / "pca-knn-cell.json").write_text(json.dumps(_card("pca-knn", "cell", "pca-knn-cell.npz")))
    write_index(tmp_path)
    clear_cache()
    yield tmp_path
    clear_cache()


def test_registry_lists_every_model(weights):
    entries = {e["name"]: e for e in list_models(weights)}
    assert set(MODEL_DEFS) <= set(entries)
    assert {"resnet", "vgg", "cnn", "pca-knn"} <= set(entries)
    assert entries["cnn"]["modes"] == ["pattern"] and entries["pca-knn"]["modes"] == ["cell"]
    assert entries["cnn"]["acquisition"]["convergence_mrad"] == [17, 23]


def test_load_predict_and_cache(weights):
    m = load_model("cnn", mode="pattern", folder=weights)
    assert m is load_model("cnn", mode="pattern", folder=weights)
    assert m.input_shape == (32, 32) and len(m.card["sha256"]) == 64
    yy, xx = np.indices((80, 80)) - 39.5
    frames = np.stack([np.where(np.hypot(yy, xx) < 10, 50.0, 1.0)] * 3)
    from polarstem.io import Calibration

    x, ok = m.preprocess(frames, Calibration(mrad_per_px=2.0))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and ok.shape == (3,)
    out = m.predict(x)
    assert out["proba"].shape == (3, 8) and np.allclose(out["proba"].sum(1), 1, atol=1e-5)
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape[0] == 3
    tta = m.predict(x, tta=True)
    assert np.allclose(tta["proba"].sum(1), 1, atol=1e-5)
    proto = load_model("cnn-proto", mode="pattern", folder=weights).predict(x)
    assert np.allclose(np.linalg.norm(proto["embedding"], axis=1), 1, atol=1e-4)
    knn = load_model("pca-knn", mode="cell", folder=weights).predict(np.zeros((2, 32, 32), np.float32))
    assert knn["proba"].shape == (2, 8) and knn["embedding"].shape == (2, 5)


def test_wrong_hash_fails_clearly(weights):
    f = weights / "cnn-pattern.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        load_model("cnn", mode="pattern", folder=weights)


def test_weights_that_do_not_fit_fail_clearly(weights):
    card = json.loads((weights / "cnn-pattern.json").read_text())
    card["architecture"]["arch"] = "vgg11"
    (weights / "cnn-pattern.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model("cnn", mode="pattern", folder=weights)


def test_missing_mode_and_unknown_model(weights):
    with pytest.raises(ModelFileError, match="no weights"):
        load_model("cnn", mode="cell", folder=weights)
    with pytest.raises(PolarstemError, match="unknown model"):
        load_model("alexnet", folder=weights)


def test_npz_with_objects_cannot_load(weights):
    """A model file holding a pickled object is refused (allow_pickle=False), even with a matching hash."""
    f = weights / "pca-knn-cell.npz"
    arrays = dict(np.load(f))
    arrays["knn_X"] = np.array([{"evil": 1}], dtype=object)
    np.savez(f, **arrays)
    write_index(weights)
    with pytest.raises(ModelFileError):
        load_model("pca-knn", mode="cell", folder=weights)


def test_safetensors_file_holds_only_tensors(weights):
    raw = (weights / "cnn-pattern.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])  # plain JSON header, then raw tensor bytes: nothing to execute
    assert all(set(v) >= {"dtype", "shape", "data_offsets"} for k, v in header.items() if k != "__metadata__")


def test_no_pickle_anywhere_in_src():
    bad = []
    for p in SRC.rglob("*.py"):
        text = p.read_text()
        if re.search(r"^\s*(import|from)\s+(pickle|joblib|cloudpickle|dill)\b", text, re.M):
            bad.append(str(p))
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                bad.append(f"{p}: {m.group(0)}")
        if re.search(r"allow_pickle\s*=\s*True", text):
            bad.append(f"{p}: allow_pickle=True")
    assert not bad, bad


def test_importing_registry_does_not_import_torch():
    code = "import sys, polarstem, polarstem.models, polarstem.models.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shipped_weights_verify_and_are_small():
    """Every shipped weights file matches its sha256, is under 15 MB and has a card."""
    from polarstem.models.registry import read_index, sha256_file, weights_dir

    index = read_index()["files"]
    for key, e in index.items():
        f = weights_dir() / e["file"]
        assert f.stat().st_size < 15e6, key
        assert sha256_file(f) == e["sha256"], key
        card = json.loads((weights_dir() / e["card"]).read_text())
        assert card["name"] == e["name"] and card["mode"] == e["mode"]
        assert "acquisition" in card and "input_grid" in card


def test_models_cli_json(capsys):
    from polarstem.cli import main

    assert main(["models", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert isinstance(entries, list) and all("name" in e for e in entries)
    assert {"resnet", "vgg", "cnn", "pca-knn"} <= {e["name"] for e in entries}


def test_friedel_channel_is_the_antisymmetric_part():
    """With ``friedel`` the first conv sees (x, x - rot180 x): zero second channel for a centrosymmetric input."""
    import torch

    from polarstem.models.nets import create_model

    for arch in ("cnn", "resnet18", "vgg11"):
        net = create_model(arch, friedel=True).eval()
        seen = {}
        first = next(m for m in net.backbone if isinstance(m, torch.nn.Conv2d))
        assert first.in_channels == 2
        first.register_forward_hook(lambda m, inp, out, seen=seen: seen.update(x=inp[0]))
        x = torch.rand(2, 1, 48, 48)
        sym = x + torch.flip(x, dims=(-2, -1))  # centrosymmetric about the grid centre
        net(sym)
        assert torch.allclose(seen["x"][:, 1], torch.zeros(2, 48, 48), atol=1e-6)
        net(x)
        assert torch.allclose(seen["x"][:, 1], (x - torch.flip(x, dims=(-2, -1)))[:, 0])
    assert next(m for m in create_model("cnn").backbone if isinstance(m, torch.nn.Conv2d)).in_channels == 1


def test_default_model_ranks_by_the_accuracy_of_default_inference():
    """The default model is the best per-pattern held-out accuracy with the 8 symmetry images the tools
    average by default, read from the card's own held-out folder; other folders or one-image figures
    do not count as that figure."""
    from polarstem.acquisition import default_model
    from polarstem.models import list_models
    from polarstem.models.registry import _symmetry8_accuracy

    card = {"training": {"config": {"heldout": "h6"}},
            "heldout_other": {"other folder": {"data": "xs", "tta": True, "ideal": {"accuracy": 0.99}},
                              "one image": {"data": "h6", "tta": False, "ideal": {"accuracy": 0.95}},
                              "8 images": {"data": "h6", "tta": True, "ideal": {"accuracy": 0.91}}}}
    assert _symmetry8_accuracy(card) == 0.91
    assert _symmetry8_accuracy({"training": {"config": "a string"}}) is None
    entries = {e["name"]: e for e in list_models() if e["available"]}
    ranked = {n: e["accuracy_8_images"]["pattern"] for n, e in entries.items()
              if (e.get("accuracy_8_images") or {}).get("pattern") is not None}
    assert ranked, "the shipped cards carry 8-image held-out figures"
    assert default_model() == max(ranked, key=ranked.get)


def test_models_listing_marks_the_default_and_its_8_image_accuracy(capsys):
    from polarstem.acquisition import default_model
    from polarstem.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [ln for ln in lines if ln.endswith("[default]")]
    assert len(marked) == 1 and marked[0].split()[0] == default_model()
    assert "(8 images 0." in marked[0]


def test_every_model_names_its_family_and_regime(capsys):
    """`polarstem models --json` and each shipped card say which of the study's families and regimes a model is."""
    from polarstem.cli import main
    from polarstem.models import read_card

    assert main(["models", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries and all(e["family"] in {"ResNet", "VGG", "CNN", "PCA-kNN"} for e in entries)
    assert all(e["regime"] in {"classification", "regression", "prototype"} for e in entries)
    for e in entries:
        for mode in e["modes"]:
            card = read_card(e["name"], mode)
            assert (card["family"], card["regime"]) == (e["family"], e["regime"])


def test_a_capped_family_says_so_where_it_is_picked(capsys):
    """PCA-kNN's measured cap travels from its card to `models --json` and the dock's card text."""
    from polarstem._napari._polarization_widget import card_text, is_baseline
    from polarstem.cli import main

    assert main(["models", "--json"]) == 0
    entry = {e["name"]: e for e in json.loads(capsys.readouterr().out)}["pca-knn"]
    assert entry["baseline"] is True and "0.3 per pattern" in entry["limits"]
    assert is_baseline(entry) and entry["limits"] in card_text(entry)


def test_a_card_calibrated_per_acquisition_cell_lists_its_cells_in_the_dock():
    """The dock's card says in how many acquisition cells the model is trusted; the tooltip lists each."""
    from polarstem._napari._polarization_widget import card_text, card_tooltip

    cells = [{"beam_energy_kev": [78.0, 100.0], "disk_overlap": [1.3, 2.0], "rows": 30, "accuracy": 0.61},
             {"beam_energy_kev": [160.0, 240.0], "disk_overlap": [2.6, 3.3], "rows": 101, "accuracy": 0.99}]
    entry = {"name": "wide", "summary": "ResNet-18 across acquisitions", "modes": ["pattern"],
             "acquisition": {"beam_energy_kev": [80.0, 300.0], "convergence_mrad": [15.0, 30.0], "cells": cells}}
    assert "trusted in 1 of 2 acquisition cells" in card_text(entry)
    tip = card_tooltip(entry).splitlines()
    assert "78-100 keV, disk overlap 1.3-2: 0.61 per cell on 30 held-out rows (withheld)" in tip
    assert "160-240 keV, disk overlap 2.6-3.3: 0.99 per cell on 101 held-out rows" in tip
    assert not any(line.startswith("cells:") for line in tip)
