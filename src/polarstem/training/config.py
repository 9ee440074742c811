"""A training run's configuration: :class:`TrainConfig`, a pydantic model validated once, where the
YAML file is read; a wrong key or value is named in a one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import PolarstemError
from ..models.registry import package_weights_dir

#: A number as the YAML writes it: an int stays an int, so the config's fingerprint (the key a
#: checkpoint is resumed by) and the card's copy of the config keep the values as given.
Number = int | float


class TrainConfig(BaseModel):
    """One training run; the YAML keys are these field names."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = "cnn"  # registry name
    arch: str | None = "cnn"  # None for pca-knn
    arch_kwargs: dict = Field(default_factory=dict)
    prototype: dict | None = None  # {"per_class": 4, "scale": 16} -> prototype regime
    regression: bool = False  # True -> regression regime: a direction vector, von Mises loss (models.regression)
    warm_start: str | None = None  # registry name (or a .safetensors file) whose trained backbone starts this one
    modes: list[Literal["pattern", "cell"]] = Field(default_factory=lambda: ["pattern", "cell"])
    data: str | list[str] = ".cache/sim/canonical"  # one simulated folder or several
    heldout: str | None = ".cache/sim/heldout"
    grid: dict = Field(default_factory=lambda: {"size": 64, "mrad_per_px": 1.0, "intensity": "sqrt"})
    augment: dict = Field(default_factory=dict)
    copies: int = 2  # augmented copies of every raw pattern (copy 0 is only resampled)
    cell_subsets: bool = True
    val_every: int = 4  # every 4th distinct thickness goes to validation
    epochs: int = 20
    cell_epochs: int = 60
    batch_size: int = 64
    lr: Number = 2e-3
    weight_decay: Number = 1e-4
    label_smoothing: Number = 0.05
    aux_weight: Number = 0.0  # > 0: auxiliary regression of probe position and thickness (loop.AUX_TARGETS)
    consistency: Number = 0.0  # > 0 (prototype regime): paired ideal/corrupted views, prototype-assignment term
    outliers: list[str] = Field(default_factory=list)  # simulated folders of what is not polar KNN (outlier exposure)
    outlier_weight: Number = 0.5  # weight of the outlier term (cross-entropy to the uniform class distribution)
    steps: int | None = None  # fixed number of optimiser steps (equal-footing comparisons); else the time budget
    patience: int = 4
    max_minutes: Number = 30.0  # time budget of the pattern mode
    cell_max_minutes: Number = 8.0
    seed: int = 0
    data_seed: int | None = None  # the corruption draws of the cached arrays (None: seed); fixed across a seeds study
    threads: int | None = None
    device: str = "cpu"
    pca_components: int = 50
    knn_neighbors: int = 10
    knn_max_train: int = 40000
    abstention: bool = False  # fit and calibrate the abstention (polarstem.abstain) on the first data folder
    abstention_cells: bool = False  # ... and per acquisition cell (a set simulated across acquisitions)
    abstention_data: str | None = None  # calibrate on this folder's structures (never trained on); None: the
    # first data folder's validation thicknesses
    acquisition: dict = Field(default_factory=dict)  # ranges the card states (default: cards.ACQUISITION)
    out: str | None = None  # weights folder to write; None: the package's own (models.registry.package_weights_dir)

    @classmethod
    def from_yaml(cls, path) -> TrainConfig:
        """Read and validate a YAML config; a one-line :class:`PolarstemError` names what is wrong."""
        import yaml

        p = Path(path)
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PolarstemError(f"{p}: unreadable training config ({' '.join(str(exc).split())[:160]})") from None
        if not isinstance(d, dict):
            raise PolarstemError(f"{p}: a training config is a mapping of keys (see configs/train/)")
        return cls.from_dict(d, source=str(p))

    @classmethod
    def from_dict(cls, d: dict, source: str = "training config") -> TrainConfig:
        """Validate a mapping of keys; a one-line :class:`PolarstemError` names the wrong keys or values."""
        unknown = set(d) - set(cls.model_fields)
        if unknown:
            raise PolarstemError(f"{source}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        try:
            return cls(**d)
        except ValidationError as exc:
            raise PolarstemError(f"{source}: {validation_message(exc)}") from None

    def to_dict(self) -> dict:
        return self.model_dump()

    @model_validator(mode="after")
    def _one_regime(self) -> TrainConfig:
        if self.prototype and self.regression:
            raise ValueError("prototype and regression are two regimes: set one of them")
        if self.outliers and self.arch is None:
            raise ValueError("outliers (outlier exposure) are for networks: PCA-kNN has no loss to add them to")
        return self

    def out_dir(self) -> Path:
        """The folder the weights, cards and index are written to."""
        return Path(self.out) if self.out else package_weights_dir()


def validation_message(exc: ValidationError) -> str:
    """The errors of a validation as one line, one ``key: what it should be (got value)`` per key."""
    by_key: dict[str, list] = {}
    for err in exc.errors():
        loc = err["loc"]
        key = ".".join(str(k) for k in loc[:1] + tuple(k for k in loc[1:] if isinstance(k, int)))
        by_key.setdefault(key, []).append(err)
    parts = []
    for key, errs in by_key.items():  # a union reports one error per alternative: "a or b"
        if not key:  # a check across keys (a model validator): its own sentence
            parts.append("; ".join(e["msg"].removeprefix("Value error, ") for e in errs))
            continue
        wants = [e["msg"].split(", ")[0].removeprefix("Input should be ") for e in errs]
        if "a valid number" in wants:  # a Number: int or float
            wants = [w for w in wants if w != "a valid integer"]
        parts.append(f"{key}: should be {' or '.join(dict.fromkeys(wants))} (got {errs[0].get('input')!r})")
    return "; ".join(parts)
