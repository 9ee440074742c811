"""Model cards: what a trained model is, what it was trained on, how well it does on held-out
simulations, as JSON beside the weights and as Markdown in ``docs/model_cards/``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..classes import N_CLASSES
from ..fileio import write_text
from ..models.registry import MODEL_DEFS, read_card, read_index
from ..preprocess import CANONICAL_CONVERGENCE_MRAD, CANONICAL_ENERGY_KEV, InputGrid
from .augment import cell_augment, corrupt_and_preprocess
from .config import TrainConfig
from .data import SimSet, raw_index, raw_inputs, thickness_bins

#: Acquisition ranges the shipped models are meant for (physics.md, "canonical acquisition").
ACQUISITION = {
    "beam_energy_kev": [195.0, 205.0],
    "convergence_mrad": [17.0, 23.0],
    "zone_axis": "[001]pc",
    "thickness_nm": [4.0, 45.0],
    "mistilt_mrad": [0.0, 1.5],
    "defocus_nm": [-5.0, 5.0],
    "dose_electrons_per_pattern": [1e4, None],
    "detector_px": [64, 256],
    "mrad_per_px": [0.5, 2.0],
    "descan_px": 3,
    "elliptical_distortion": 0.01,
}

#: The Markdown cards of the source checkout the package runs from; an installed package has none,
#: and then none are written.
SOURCE_MODEL_CARDS = Path(__file__).resolve().parents[3] / "docs" / "model_cards"


def make_card(cfg: TrainConfig, mode: str, weights_file: str, grid: InputGrid, temperature: float,
              train_info: dict, heldout: dict, sim: SimSet, generators: dict, architecture: dict | None,
              history=None, extra: dict | None = None) -> dict:
    """The JSON card of one trained mode."""
    d = MODEL_DEFS.get(cfg.name, {})
    card = {
        "name": cfg.name, "family": d.get("family"), "regime": d.get("regime"), "mode": mode, "summary": d.get("summary"),
        "weights_file": weights_file, "format": "npz" if weights_file.endswith(".npz") else "safetensors",
        "architecture": architecture, "input_grid": grid.to_dict(), "temperature": round(float(temperature), 4),
        "symmetry_generators": generators,
        "acquisition": dict(ACQUISITION, **cfg.acquisition,
                            canonical={"beam_energy_kev": CANONICAL_ENERGY_KEV,
                                       "convergence_mrad": CANONICAL_CONVERGENCE_MRAD}),
        "training": {"config": cfg.to_dict(), "data": cfg.data if isinstance(cfg.data, (list, tuple)) else str(sim.folder),
                     "n_patterns_raw": len(sim),
                     "data_manifest": {k: v for k, v in sim.manifest.items() if isinstance(v, (str, int, float, list, dict))},
                     **train_info, "history": history or []},
        "heldout": heldout_summary(heldout),
        "heldout_detail": heldout,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card.update(extra or {})
    return card


def heldout_summary(heldout: dict) -> dict:
    """The card's headline: held-out accuracy, ideal and corrupted."""
    if not heldout:
        return {}
    return {"accuracy": heldout.get("ideal", {}).get("accuracy"),
            "accuracy_corrupted": heldout.get("corrupted", {}).get("accuracy")}


def heldout_accuracy(model, sim: SimSet | None, mode: str, grid: InputGrid, seed: int = 123,
                     max_patterns: int = 4000, aug: dict | None = None) -> dict:
    """Accuracy per thickness on held-out simulations, ideal and with experiment-like corruptions."""
    if sim is None:
        return {}
    rng = np.random.default_rng(seed)
    if mode == "cell":
        aug = cell_augment(aug or {})
    res = {}
    for cond in ("ideal", "corrupted"):
        x, y, t = _heldout_inputs(sim, mode, grid, seed, max_patterns, aug, cond == "ideal", rng)
        pred = model.predict(x)["proba"].argmax(1)
        keep = y >= 0
        per_t = {}
        bins, centres = thickness_bins(t)
        for i, tv in enumerate(centres):
            sel = keep & (bins == i)
            if sel.any():
                per_t[f"{tv:.1f}"] = round(float((pred[sel] == y[sel]).mean()), 4)
        res[cond] = {"accuracy": round(float((pred[keep] == y[keep]).mean()), 4), "n": int(keep.sum()),
                     "per_thickness_nm": per_t}
    return res


def _heldout_inputs(sim: SimSet, mode: str, grid: InputGrid, seed: int, max_patterns: int, aug: dict | None,
                    ideal: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, labels, thickness) of the held-out inputs: a random sample of ``max_patterns`` patterns across all
    structures (pattern mode), or every cell input."""
    pick = None
    if mode == "pattern" and len(sim) > max_patterns:
        pick = np.sort(np.random.default_rng(seed).choice(len(sim), max_patterns, replace=False))
        source = [(np.asarray(sim.frames[pick[i:i + 1000]]), sim.labels[pick[i:i + 1000]],
                   sim.thickness[pick[i:i + 1000]], None) for i in range(0, len(pick), 1000)]
    else:
        source = raw_inputs(sim, mode, cell_subsets=False, rng=np.random.default_rng(seed))
    xs, ys, ts = [], [], []
    start = 0
    for frames, y, t, g in source:
        index = pick[start:start + len(y)] if g is None else raw_index(sim, mode, start, y, g)
        start += len(y)
        mrad, energy, convergence = sim.acquisition(index)
        x, _ = corrupt_and_preprocess(frames, mrad, rng, aug, ideal, grid, energy=energy, convergence=convergence)
        xs.append(x)
        ys.append(y)
        ts.append(t)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ts)


def class_mean_embeddings(model, arrays: dict, per_class: int = 500) -> list | None:
    """(8, D) mean embedding of each class over (up to ``per_class``) training inputs, rounded for the card."""
    y = arrays["y"]
    means = []
    for k in range(N_CLASSES):
        idx = np.nonzero((y == k) & arrays["informative"])[0][:per_class]
        if len(idx) == 0:
            return None
        emb = model.predict(arrays["x"][idx].astype(np.float32))["embedding"]
        means.append(np.round(emb.mean(0), 5).tolist())
    return means


def write_markdown_cards(weights: Path, docs: Path | None = None) -> None:
    """Render every model's JSON cards in ``weights`` as ``<docs>/<name>.md`` (default: the source
    checkout's docs/model_cards), when that folder exists."""
    docs = SOURCE_MODEL_CARDS if docs is None else Path(docs)
    if not docs.is_dir():
        return
    by_name: dict[str, list] = {}
    for entry in read_index(weights)["files"].values():
        by_name.setdefault(entry["name"], []).append(read_card(entry["name"], entry["mode"], weights))
    for name, cards in by_name.items():
        cards.sort(key=lambda c: c["mode"] != "pattern")
        write_text(docs / f"{name}.md", markdown_card(cards))


def markdown_card(cards: list[dict]) -> str:
    """A model card in Markdown (docs/model_cards/<name>.md) from the JSON cards of its modes."""
    c0 = cards[0]
    arch = c0.get("architecture") or {}
    lines = [f"# Model card: `{c0['name']}`", "", f"{c0.get('summary') or ''}", "",
             f"- Family: {c0.get('family')}; regime: {c0.get('regime') or ('prototype' if arch.get('prototype') else 'classification')}",
             f"- Architecture: `{json.dumps(arch)}`",
             f"- Input grid: {c0['input_grid']['size']} x {c0['input_grid']['size']} px at "
             f"{c0['input_grid']['mrad_per_px']} mrad/px about the bright-field disk centre, "
             f"{c0['input_grid']['intensity']} intensities (see docs/models.md)",
             f"- Training data: `{c0['training'].get('data')}` ({c0['training'].get('n_patterns_raw')} simulated patterns), "
             f"{c0['training']['config'].get('copies')} copies each (copy 0 ideal, the rest with experiment-like corruptions"
             f"{_source_note(c0['training']['config'])}), square-symmetry augmentation", "",
             "## Meant for (outside the beam energy and convergence ranges the model abstains on the whole scan; "
             "outside the others the tools warn)", ""]
    for k, v in c0.get("acquisition", {}).items():
        lines.append(f"- {k}: {v}")
    if c0.get("acquisition_note"):
        lines += ["", c0["acquisition_note"]]
    for c in cards:
        lines += _mode_section(c)
    lines += ["", "Limitations: trained on simulations only; see docs/models.md for the domain gap and the filter."
              + (f" {c0['limits']}" if c0.get("limits") else ""), ""]
    return "\n".join(lines)


def _mode_section(c: dict) -> list[str]:
    """The Markdown lines of one mode's card: weights, temperature, validation and held-out accuracy."""
    h = c.get("heldout_detail") or {}
    lines = ["", f"## Mode `{c['mode']}`", "",
             f"- Weights: `{c['weights_file']}` (sha256 `{c.get('sha256', '')}`)",
             f"- Softmax temperature (fitted on the validation thicknesses): {c.get('temperature')}",
             f"- Validation accuracy (held-out thickness bins {c['training'].get('val_thickness_nm')}): "
             f"{c['training'].get('val_accuracy')}",
             f"- Training time: {c['training'].get('train_minutes')} min on CPU"]
    for cond in ("ideal", "corrupted"):
        if cond in h:
            lines += ["", f"Held-out simulations ({cond}): accuracy **{h[cond]['accuracy']}** on {h[cond]['n']} inputs", "",
                      *_thickness_table(h[cond]["per_thickness_nm"])]
    for label, other in (c.get("heldout_other") or {}).items():
        for cond in ("ideal", "corrupted"):
            if cond in other:
                lines += ["", f"Independent simulations `{label}` ({other['data']}, {cond}"
                          f"{', test-time symmetry averaging' if other.get('tta') else ''}): accuracy "
                          f"**{other[cond]['accuracy']}** on {other[cond]['n']} inputs", "",
                          *_thickness_table(other[cond]["per_thickness_nm"])]
    return lines


def _thickness_table(per_thickness: dict) -> list[str]:
    """Accuracy per thickness as a one-row Markdown table."""
    return ["| thickness (nm) | " + " | ".join(per_thickness) + " |", "|---|" + "---|" * len(per_thickness),
            "| accuracy | " + " | ".join(f"{v:.2f}" for v in per_thickness.values()) + " |"]


def _source_note(config: dict) -> str:
    """The finite-source augmentation of a training config, as the card states it (or nothing)."""
    src = (config.get("augment") or {}).get("source_sigma_a")
    if not src:
        return ""
    return (f"; on sets with a >= 6 x 6 probe grid also a finite source of std {src[0]}-{src[1]} Å, "
            "polarstem.simulate.coherence")
