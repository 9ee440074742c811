"""A whole training run (``polarstem train CONFIG.yaml``): every mode of one config, from the
simulated folders to weights, cards and the registry index."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..classes import N_CLASSES
from ..fileio import write_json
from ..models.base import NetModel
from ..models.pca_knn import PcaKnnModel, save_npz
from ..models.registry import weights_dir, write_index
from ..models.symmetry import CONVENTION_GENERATORS, measure_generators
from ..preprocess import InputGrid
from .abstention import fit_abstention, write_into_card
from .augment import DEFAULT_AUGMENT
from .cards import class_mean_embeddings, heldout_accuracy, heldout_summary, make_card, write_markdown_cards
from .config import TrainConfig
from .data import SimSet, build_arrays, concat_arrays, load_simset
from .loop import save_state_dict, train_network
from .pca_knn import train_pca_knn


def run(cfg: TrainConfig, progress: bool = True, log=print) -> list[dict]:
    """Train every mode of one config, write weights + card + index; returns the cards.

    The Markdown cards (docs/model_cards) are rewritten when the run writes the shipped weights."""
    if cfg.threads and cfg.arch:
        import torch

        torch.set_num_threads(int(cfg.threads))
    grid = InputGrid.from_dict(cfg.grid)
    aug = dict(DEFAULT_AUGMENT, **cfg.augment)
    folders = cfg.data if isinstance(cfg.data, (list, tuple)) else [cfg.data]
    sims = [load_simset(f) for f in folders]
    held = load_simset(cfg.heldout) if cfg.heldout and Path(cfg.heldout).exists() else None
    out_dir = cfg.out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    outliers = [load_simset(f) for f in cfg.outliers]
    cards = [_train_mode(cfg, mode, sims, held, grid, aug, out_dir, progress, log, outliers) for mode in cfg.modes]
    if out_dir.resolve() == weights_dir().resolve():  # only the shipped models get docs pages
        write_markdown_cards(out_dir)
    return cards


def _train_mode(cfg: TrainConfig, mode: str, sims: list[SimSet], held: SimSet | None, grid: InputGrid, aug: dict,
                out_dir: Path, progress: bool, log, outlier_sims: list[SimSet] = ()) -> dict:
    """One mode: arrays, training, the card (held-out accuracy, class means, abstention), weights + index."""
    sim = sims[0]
    log(f"== {cfg.name} / {mode}: {sum(len(s) for s in sims)} raw patterns from {', '.join(str(s.folder) for s in sims)}")
    arrays = _mode_arrays(cfg, mode, sims, grid, aug, progress)
    log(f"{len(arrays['y'])} inputs, {int((~arrays['informative']).sum())} flagged uninformative")
    gens = class_mean_generators(arrays, log)
    outliers = None
    if outlier_sims:  # the same inputs as the in-scope data (grid, corruptions, copies), labels ignored
        outliers = _mode_arrays(cfg, mode, outlier_sims, grid, aug, progress)
        log(f"{len(outliers['x'])} outlier inputs from {', '.join(str(s.folder) for s in outlier_sims)}")
    t0 = time.time()
    model, card, info = _fit(cfg, mode, arrays, gens, sim, grid, out_dir, progress, log, outliers)
    info["train_minutes"] = round((time.time() - t0) / 60, 2)
    card["training"]["n_patterns_raw"] = int(sum(len(s_) for s_ in sims))
    card["training"]["n_structures"] = int(sum(len(np.unique(s_.structure)) for s_ in sims))
    card["class_mean_embeddings"] = class_mean_embeddings(model, arrays)
    if cfg.abstention and cfg.arch and mode == "pattern":
        del arrays  # the calibration reads raw patterns again; free the cached inputs first
        calibration = load_simset(cfg.abstention_data) if cfg.abstention_data else None
        abst = fit_abstention(model, sim, grid, aug, seed=cfg.seed, by_cell=cfg.abstention_cells,
                              calibration=calibration, log=log)
        write_into_card(card, abst)
    held_res = heldout_accuracy(model, held, mode, grid, aug=aug)
    card["heldout"] = heldout_summary(held_res)
    card["heldout_detail"] = held_res
    card["training"]["train_minutes"] = info["train_minutes"]
    card["training"]["val_accuracy"] = info.get("val_accuracy")
    write_json(out_dir / f"{cfg.name}-{mode}.json", card, indent=1)
    write_index(out_dir)
    log(f"{cfg.name}/{mode}: val {info.get('val_accuracy')}, held-out {card['heldout']} -> {out_dir / card['weights_file']}")
    return card


def _mode_arrays(cfg: TrainConfig, mode: str, sims: list[SimSet], grid: InputGrid, aug: dict, progress: bool) -> dict:
    """The cached training arrays of ``mode`` for every folder of ``sims``, as one."""
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    parts = [build_arrays(s, mode, grid, cfg.copies, aug, data_seed, cfg.cell_subsets, progress) for s in sims]
    return parts[0] if len(parts) == 1 else concat_arrays(parts)  # (the parts are freed on return)


def _fit(cfg: TrainConfig, mode: str, arrays: dict, gens: dict, sim: SimSet, grid: InputGrid, out_dir: Path,
         progress: bool, log, outliers: dict | None = None):
    """Train the network (or fit PCA + kNN), write its weights; (model, first card, training info)."""
    if cfg.arch is None:
        pipe, temp, info = train_pca_knn(cfg, arrays, gens, log)
        fname = f"{cfg.name}-{mode}.npz"
        save_npz(pipe, out_dir / fname)
        architecture = {"kind": "pca_knn", "n_components": int(pipe.named_steps["pca"].n_components_),
                        "n_neighbors": int(pipe.named_steps["knn"].n_neighbors)}
        card = make_card(cfg, mode, fname, grid, temp, info, {}, sim, gens, architecture)
        return PcaKnnModel(pipe, card), card, info
    from ..models.nets import n_parameters  # (torch)

    net, history, temp, info = train_network(cfg, mode, arrays, gens, progress, log=log, outliers=outliers)
    fname = f"{cfg.name}-{mode}.safetensors"
    save_state_dict(net, out_dir / fname)
    architecture = {"arch": cfg.arch, "kwargs": cfg.arch_kwargs, "prototype": cfg.prototype,
                    "regression": cfg.regression, "parameters": n_parameters(net)}
    card = make_card(cfg, mode, fname, grid, temp, info, {}, sim, gens, architecture, history)
    return NetModel(net, card), card, info


def class_mean_generators(arrays: dict, log=print) -> dict:
    """Class permutations of the symmetry generators: the conventions, checked against the data.

    Class means of single patterns differ too little for a reliable measurement, so the measurement
    only warns; the conventions are used (a simulator is checked for them with matched pairs).
    """
    y = arrays["y"]
    if all((y == k).any() for k in range(N_CLASSES)):
        means = np.stack([arrays["x"][y == k][:5000].astype(np.float32).mean(0) for k in range(N_CLASSES)])
        gens, err = measure_generators(means)
        if gens != CONVENTION_GENERATORS:
            log(f"WARNING: class means suggest other symmetry permutations {gens} (error {err:.3f}); using the conventions")
    return dict(CONVENTION_GENERATORS)
