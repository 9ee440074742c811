"""Train the shipped models on simulated data: ``polarstem train CONFIG.yaml``.

A run, from config to card, one module per step:

- ``config``: :class:`TrainConfig`, the YAML validated once (a wrong key or value named);
- ``data``: simulated labeled folders (a labeled folder as ``polarstem simulate`` writes), the raw
  inputs of each mode, and the preprocessed arrays, cached in ``$POLARSTEM_CACHE/train/`` (``cache``)
  and reused by every model of the same mode;
- ``augment``: experiment-like corruptions (dose, blur, background, detector resampling and descan,
  hot/dead pixels, a finite source) before the shared preprocessing;
- ``loop``: training with the square symmetry as exact augmentation, early stopping on a validation
  split by thickness, checkpoints every round (a rerun resumes); ``temperature``: the softmax
  temperature fitted on the validation split; ``pca_knn``: the scikit-learn Pipeline instead of a network;
- ``cards``: held-out accuracy per thickness and the model card (JSON beside the weights, Markdown in
  docs/model_cards); ``abstention``: the abstention's Gaussians and thresholds;
- ``run``: every mode of one config, weights (safetensors / npz), cards and the registry index.

``pattern`` mode learns single patterns; ``cell`` mode learns position-averaged patterns (PACBED):
means over the probe grid of one (structure, thickness) and over its regular sub-grids, as a
scan's cell window makes them.
"""

from .abstention import fit_abstention
from .augment import DEFAULT_AUGMENT, cell_augment, corrupt, corrupt_and_preprocess, finite_source
from .cards import (
    ACQUISITION,
    heldout_accuracy,
    heldout_summary,
    make_card,
    markdown_card,
    write_markdown_cards,
)
from .config import TrainConfig
from .data import SimSet, build_arrays, copy_partners, load_simset, source_grid, thickness_bins
from .loop import AUX_TARGETS, train_network, transform_positions
from .pca_knn import train_pca_knn
from .run import run
from .synthetic import write_synthetic_simset
from .temperature import fit_temperature

__all__ = [
    "ACQUISITION", "AUX_TARGETS", "DEFAULT_AUGMENT", "SimSet", "TrainConfig", "build_arrays", "cell_augment",
    "copy_partners", "corrupt", "corrupt_and_preprocess", "finite_source", "fit_abstention", "fit_temperature",
    "heldout_accuracy", "heldout_summary", "load_simset", "make_card", "markdown_card", "run", "source_grid",
    "thickness_bins", "train_network", "train_pca_knn", "transform_positions", "write_markdown_cards",
    "write_synthetic_simset",
]
