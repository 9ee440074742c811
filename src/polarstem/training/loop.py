"""Training one network on the cached arrays: symmetry-augmented batches, AdamW with a warm-up +
cosine schedule (``torch.optim.lr_scheduler.LambdaLR``) over the steps the time budget allows,
validation and a checkpoint every round (a rerun resumes), early stopping, the best round's weights
and the softmax temperature fitted on the validation split.

With outliers (patterns of what is not polar KNN: non-polar perovskites), every step also takes
``OUTLIER_FRACTION`` of a batch of them and adds the cross-entropy of their class distribution to the
uniform one (outlier exposure, Hendrycks et al., ICLR 2019): the network learns to spread its
probability where nothing polar is seen, so the calibrated confidence of the abstention separates
such crystals from KNN. In the regression regime the same term drives the direction vector to zero."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import N_CLASSES
from ..errors import PolarstemError
from ..fileio import atomic_path
from ..models.prototype import assignment_consistency, init_prototypes, prototype_loss
from ..models.registry import verified_weights_path
from ..models.regression import von_mises_nll
from ..models.symmetry import ELEMENTS, class_permutation, transform
from .cache import checkpoint_dir, fingerprint
from .config import TrainConfig
from .data import bin_centres, copy_partners, progress_bar, thickness_split
from .temperature import fit_temperature

#: Fraction of the steps over which the learning rate warms up (from 0.1 of the configured rate).
WARMUP = 0.05
#: Steps between validations and checkpoints (at most; fewer when an epoch is shorter).
ROUND_STEPS = 300
#: Outlier inputs a step adds, as a fraction of its in-scope inputs (with ``outliers``).
OUTLIER_FRACTION = 0.5

#: What the auxiliary head regresses (``TrainConfig.aux_weight`` > 0): the probe position in the cell
#: as cos/sin of 2 pi x and 2 pi y (periodic, no wrap-around jump) and the thickness, centred and scaled.
AUX_TARGETS = ("cos 2pi x", "sin 2pi x", "cos 2pi y", "sin 2pi y", "(thickness - 25 nm) / 12 nm")


def warmup_cosine(step: int, total: int) -> float:
    """The learning-rate factor at ``step`` of ``total``: from 0.1 up to 1 over the first ``WARMUP`` of
    the steps, then a cosine down to 0.02 at the end."""
    t = step / max(1, total)
    if t < WARMUP:
        return 0.1 + 0.9 * t / WARMUP
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - WARMUP) / (1 - WARMUP))))


def lr_schedule(opt, base_lr: float, first_step: int, total_steps: int):
    """:func:`warmup_cosine` from ``first_step`` of ``total_steps`` on, as a ``LambdaLR`` of ``opt``.

    A run makes one per round: the total may shrink after the first round (to what the time budget
    allows) and a resumed run starts where its checkpoint stands. The rate scaled is always the
    configured one (a checkpoint's optimizer state holds the last step's rate)."""
    from torch.optim.lr_scheduler import LambdaLR

    for group in opt.param_groups:
        group["initial_lr"] = base_lr
    return LambdaLR(opt, lambda i: warmup_cosine(first_step + i, total_steps))


def train_network(cfg: TrainConfig, mode: str, arrays: dict, generators: dict, progress: bool = True,
                  max_steps: int | None = None, log=print, outliers: dict | None = None):
    """Train one network on cached arrays; returns (net, history, temperature, val metrics).

    ``outliers``: arrays (as :func:`~.data.build_arrays` makes them) of patterns that are not polar
    KNN, for the outlier-exposure term; their labels are ignored. ``max_steps`` stops after that
    many steps (smoke runs); such a run neither resumes from nor ends with the best checkpoint, but
    still writes them."""
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    loop = _Loop.start(cfg, mode, arrays, generators, rng, resume=max_steps is None, log=log, outliers=outliers)
    patience_rounds = max(2, cfg.patience * max(1, loop.steps_per_epoch // loop.round_steps))
    steps = 0
    while loop.state["step"] < loop.state["total_steps"]:
        t_round = time.time()
        losses, done = loop.run_round(progress, None if max_steps is None else max_steps - steps)
        steps += done
        loop.state["seconds"] += time.time() - t_round
        if len(loop.state["history"]) == 0 and max_steps is None and not cfg.steps:
            loop.fit_budget(log)
        loop.validate(losses, log)
        if max_steps is not None and steps >= max_steps:
            break
        if loop.state["bad_rounds"] >= patience_rounds:
            log(f"{cfg.name}/{mode}: early stop (no validation gain for {patience_rounds} rounds)")
            break
    return loop.finish(use_best=max_steps is None)


@dataclass
class _Loop:
    """One network's training: the data split, the network and optimizer, and the resumable state."""

    cfg: TrainConfig
    mode: str
    arrays: dict
    generators: dict
    net: object
    opt: object
    device: object
    tr_idx: np.ndarray
    val_idx: np.ndarray
    val_check: np.ndarray  # validated every round (at most 4000 inputs)
    pool: np.ndarray  # what an epoch permutes
    per_step: int  # how many of the pool one step takes
    partner: np.ndarray | None  # the corrupted view of each ideal one (consistency > 0)
    use_aux: bool
    steps_per_epoch: int
    round_steps: int
    ckdir: Path
    run_fingerprint: str
    state: dict = field(default_factory=dict)
    outliers: dict | None = None
    outlier_tr: np.ndarray | None = None  # outlier inputs trained on (thicknesses not held out)
    outlier_val: np.ndarray | None = None  # their held-out thicknesses, whose confidence each round logs

    @classmethod
    def start(cls, cfg: TrainConfig, mode: str, arrays: dict, generators: dict, rng: np.random.Generator,
              resume: bool, log, outliers: dict | None = None) -> _Loop:
        """Split, build (or warm-start) the network, and resume from the checkpoint of the same run."""
        import torch

        from ..models.nets import create_model

        y = arrays["y"]
        use_aux = cfg.aux_weight > 0 and arrays.get("probe") is not None and mode == "pattern"
        tr, tr_idx, val_idx = _split(arrays, cfg.val_every, rng)
        if len(tr_idx) == 0:
            raise PolarstemError("no training patterns left after filtering")
        pool, per_step, partner = _step_pool(cfg, arrays, tr, tr_idx)
        net = create_model(cfg.arch, prototype=cfg.prototype, regression=cfg.regression, **cfg.arch_kwargs)
        if use_aux and getattr(_base(net), "aux", None) is None:
            raise PolarstemError("aux_weight > 0 needs arch_kwargs aux_dim: 5 (probe position and thickness)")
        device = torch.device(cfg.device)
        ckdir = checkpoint_dir(cfg.name, mode)
        ckdir.mkdir(parents=True, exist_ok=True)
        warm_prototypes = bool(cfg.warm_start) and _warm_start(net, cfg.warm_start, mode, log)
        net.to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, len(pool) // per_step)
        epochs = cfg.epochs if mode == "pattern" else cfg.cell_epochs
        state = {"step": 0, "total_steps": cfg.steps if cfg.steps else epochs * steps_per_epoch, "best_acc": -1.0,
                 "bad_rounds": 0, "history": [], "seconds": 0.0, "order_seed": int(rng.integers(1 << 31))}
        val_check = val_idx if len(val_idx) <= 4000 else \
            np.random.default_rng(cfg.seed).choice(val_idx, 4000, replace=False)
        loop = cls(cfg, mode, arrays, generators, net, opt, device, tr_idx, val_idx, val_check, pool, per_step,
                   partner, use_aux, steps_per_epoch, max(1, min(steps_per_epoch, ROUND_STEPS)), ckdir,
                   _run_fingerprint(cfg, mode, arrays, outliers), state)
        if outliers is not None:
            loop.outliers = outliers
            loop.outlier_tr, loop.outlier_val = _outlier_split(outliers, cfg.val_every)
        resumed = resume and loop.resume(log)
        if cfg.prototype and not resumed and not warm_prototypes:  # (a stale checkpoint must not skip this)
            z = _embed_numpy(net, arrays["x"][tr_idx[:4000]], device)
            init_prototypes(net, z, y[tr_idx[:4000]], cfg.seed)
        return loop

    def resume(self, log) -> bool:
        """Continue from ``last.pt`` when it was written by this run (same config and arrays)."""
        import torch

        ck = self.ckdir / "last.pt"
        if not ck.exists():
            return False
        saved = torch.load(ck, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") != self.run_fingerprint:
            return False
        self.net.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["opt"])
        self.state = json.loads(saved["state"])
        log(f"resumed {self.cfg.name}/{self.mode} at step {self.state['step']}")
        return True

    def run_round(self, progress: bool, steps_left: int | None) -> tuple[list[float], int]:
        """Up to ``round_steps`` optimiser steps (fewer at the end or after ``steps_left``): (losses, steps)."""
        cfg, state = self.cfg, self.state
        self.net.train()
        losses = []
        bar = progress_bar(self.round_steps * cfg.batch_size,
                           f"{cfg.name}/{self.mode} step {state['step']}/{state['total_steps']}", progress)
        schedule = lr_schedule(self.opt, cfg.lr, state["step"], state["total_steps"])
        steps = 0
        for _ in range(self.round_steps):
            idx = self._batch_indices(state["step"])
            loss = self._loss(idx, np.random.default_rng((state["order_seed"], state["step"])))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.update(len(idx))
            state["step"] += 1
            steps += 1
            if state["step"] >= state["total_steps"] or (steps_left is not None and steps >= steps_left):
                break
        bar.close()
        return losses, steps

    def _batch_indices(self, step: int) -> np.ndarray:
        """The inputs of one step: the next slice of this epoch's permutation (ideal views, then their partners)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(self.state["order_seed"] + epoch).permutation(self.pool)
        idx = order[pos * self.per_step:(pos + 1) * self.per_step]
        if self.cfg.consistency > 0:  # ideal views first, then their corrupted partners
            idx = np.concatenate([idx, self.partner[idx]])
        return idx

    def _loss(self, idx: np.ndarray, brng: np.random.Generator):
        """The loss of one batch under one random symmetry element."""
        import torch
        import torch.nn.functional as F

        cfg, a, net, base_net = self.cfg, self.arrays, self.net, _base(self.net)
        if self.use_aux:
            xb, yb, pb = _d4_batch(a["x"][idx].astype(np.float32), a["y"][idx], brng, self.generators, a["probe"][idx])
        else:
            xb, yb = _d4_batch(a["x"][idx].astype(np.float32), a["y"][idx], brng, self.generators)
        n_in = len(xb)
        if self.outliers is not None:  # one forward pass: the batch norm sees both
            xb = np.concatenate([xb, self._outlier_batch(brng, max(1, int(OUTLIER_FRACTION * n_in)))])
        xt = torch.from_numpy(xb)[:, None].to(self.device)
        yt = torch.from_numpy(yb).to(self.device)
        z_all = base_net.embed(xt)
        z = z_all[:n_in]
        if cfg.prototype:
            logits = net.head(z)
            loss = prototype_loss(net, logits, z, yt)
            if cfg.consistency > 0:
                loss = loss + cfg.consistency * assignment_consistency(net, z, len(idx) // 2)
        elif cfg.regression:
            loss = von_mises_nll(base_net.head.vector(z), yt)
        else:
            logits = base_net.head(z)
            loss = F.cross_entropy(logits, yt, label_smoothing=cfg.label_smoothing)
        if self.outliers is not None:
            out_logits = (net.head if cfg.prototype else base_net.head)(z_all[n_in:])
            loss = loss + cfg.outlier_weight * uniform_cross_entropy(out_logits)
        if self.use_aux:
            target = torch.from_numpy(aux_targets(pb, a["thickness"][idx])).to(self.device)
            known = torch.isfinite(target).all(dim=1)
            if bool(known.any()):
                loss = loss + cfg.aux_weight * F.mse_loss(base_net.aux(z[known]), target[known])
        return loss

    def _outlier_batch(self, brng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` training outliers under a random symmetry element of their own (float32)."""
        pick = brng.choice(self.outlier_tr, size=n, replace=len(self.outlier_tr) < n)
        x, _ = _d4_batch(self.outliers["x"][pick].astype(np.float32), np.zeros(n, np.int64), brng, self.generators)
        return x

    def fit_budget(self, log) -> None:
        """After the first round: as many steps as the time budget allows at the speed measured."""
        cfg, state = self.cfg, self.state
        budget_s = 60.0 * (cfg.max_minutes if self.mode == "pattern" else cfg.cell_max_minutes)
        rate = state["step"] / max(state["seconds"], 1e-6)  # steps per second, incl. validation later
        state["total_steps"] = int(min(state["total_steps"], max(self.round_steps, 0.9 * rate * budget_s)))
        log(f"{cfg.name}/{self.mode}: {rate * cfg.batch_size:.0f} inputs/s -> {state['total_steps']} steps "
            f"({state['total_steps'] / self.steps_per_epoch:.2f} epochs) in the {budget_s / 60:.0f} min budget")

    def validate(self, losses: list[float], log) -> None:
        """Validation accuracy of the round into the history; the best weights and the checkpoint saved."""
        import torch

        cfg, state, x, y = self.cfg, self.state, self.arrays["x"], self.arrays["y"]
        logits_v = _logits_numpy(self.net, x[self.val_check], self.device)
        acc = float((logits_v.argmax(1) == y[self.val_check]).mean()) if len(self.val_check) else float("nan")
        epoch = state["step"] / self.steps_per_epoch
        state["history"].append({"step": state["step"], "epoch": round(epoch, 3),
                                 "loss": float(np.mean(losses)) if losses else None, "val_accuracy": acc,
                                 "minutes": round(state["seconds"] / 60, 2)})
        outlier_note = ""
        if self.outliers is not None and len(self.outlier_val):
            from scipy.special import softmax

            p_out = softmax(_logits_numpy(self.net, self.outliers["x"][self.outlier_val[:4000]], self.device), axis=1)
            state["history"][-1]["outlier_top_p"] = round(float(np.median(p_out.max(1))), 4)
            outlier_note = f", outliers' median top probability {state['history'][-1]['outlier_top_p']:.3f}"
        log(f"{cfg.name}/{self.mode} step {state['step']}/{state['total_steps']} (epoch {epoch:.2f}): "
            f"loss {np.mean(losses) if losses else float('nan'):.4f} val acc {acc:.4f}{outlier_note}")
        if acc > state["best_acc"]:
            state["best_acc"], state["bad_rounds"] = acc, 0
            save_state_dict(self.net, self.ckdir / "best.safetensors")
        else:
            state["bad_rounds"] += 1
        torch.save({"model": self.net.state_dict(), "opt": self.opt.state_dict(), "state": json.dumps(state),
                    "fingerprint": self.run_fingerprint}, self.ckdir / "last.pt")

    def finish(self, use_best: bool):
        """(net on the CPU, history, temperature, validation metrics), from the best round's weights."""
        best = self.ckdir / "best.safetensors"
        if best.exists() and use_best:
            from safetensors.torch import load_file

            self.net.load_state_dict(load_file(str(best), device="cpu"))
            self.net.to(self.device)
        x, y, val_idx = self.arrays["x"], self.arrays["y"], self.val_idx
        logits_v = _logits_numpy(self.net, x[val_idx], self.device)
        temp = fit_temperature(logits_v, y[val_idx])
        val_acc = float((logits_v.argmax(1) == y[val_idx]).mean()) if len(val_idx) else float("nan")
        return self.net.cpu().eval(), self.state["history"], temp, {
            "val_accuracy": val_acc, "n_train": int(len(self.tr_idx)), "n_val": int(len(val_idx)),
            "val_thickness_nm": bin_centres(self.arrays["thickness"], val_idx)}


def _split(arrays: dict, val_every: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training mask, training indices, validation indices): validation thickness bins, or with too few
    thicknesses a random seventh of the groups."""
    keep = (arrays["y"] >= 0) & arrays["informative"]
    val = thickness_split(arrays["thickness"], val_every) & keep
    tr = keep & ~val
    if not val.any():  # too few thicknesses: hold out a random 15 % of groups instead
        groups = np.unique(arrays["group"])
        vg = rng.choice(groups, size=max(1, len(groups) // 7), replace=False)
        val = np.isin(arrays["group"], vg) & keep
        tr = keep & ~val
    return tr, np.nonzero(tr)[0], np.nonzero(val)[0]


def _outlier_split(outliers: dict, val_every: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices of the outlier inputs: the same thickness split as the in-scope data."""
    keep = outliers["informative"]
    val = thickness_split(outliers["thickness"], val_every) & keep
    tr = np.nonzero(keep & ~val)[0]
    if len(tr) == 0:
        raise PolarstemError("outliers: no informative outlier patterns to train on")
    return tr, np.nonzero(val)[0]


def uniform_cross_entropy(logits):
    """Cross-entropy of softmax(``logits``) to the uniform distribution, averaged over the batch: the
    outlier-exposure term (minimal when every class gets 1/N)."""
    import torch.nn.functional as F

    return -F.log_softmax(logits, dim=1).mean()


def _step_pool(cfg: TrainConfig, arrays: dict, tr: np.ndarray, tr_idx: np.ndarray):
    """(what an epoch permutes, how many of them one step takes, partners or None). With ``consistency``
    a step takes half a batch of ideal views whose corrupted partners are in the training split too."""
    if cfg.consistency <= 0:
        return tr_idx, cfg.batch_size, None
    if not cfg.prototype:
        raise PolarstemError("consistency > 0 is part of the prototype regime: set prototype: {per_class: 4, scale: 16}")
    partner = copy_partners(arrays["copy"])
    pool = tr_idx[partner[tr_idx] >= 0]
    pool = pool[tr[partner[pool]]]  # both views usable and in the training split
    if len(pool) == 0:
        raise PolarstemError("consistency > 0 needs copies: 2 (an ideal and a corrupted view of each pattern)")
    return pool, max(1, cfg.batch_size // 2), partner


def _base(net):
    """The plain network inside a prototype network (or the network itself)."""
    return net.base if hasattr(net, "base") else net


def _d4_batch(xb, yb, rng, generators, probe=None):
    """One random symmetry element per batch (a batch-wide op is as good and much cheaper).

    With ``probe`` (N, 2) positions (x, y) in the cell, also returns them moved by the same element:
    the A column at the cell origin is a centre of the projected lattice's square symmetry.
    """
    e = ELEMENTS[int(rng.integers(0, len(ELEMENTS)))]
    perm = class_permutation(e, generators)
    if probe is None:
        return transform(xb, e), perm[yb]
    return transform(xb, e), perm[yb], transform_positions(probe, e)


def transform_positions(probe: np.ndarray, element) -> np.ndarray:
    """Positions (x = column, y = row) under the D4 element that ``symmetry.transform`` applies to
    patterns: a quarter turn of np.rot90 maps (x, y) -> (y, -x), the transpose (x, y) -> (y, x)."""
    r, t = element
    x, y = probe[:, 0], probe[:, 1]
    for _ in range(r):
        x, y = y, -x
    if t:
        x, y = y, x
    return np.stack([x, y], 1) % 1.0


def aux_targets(probe: np.ndarray, thickness: np.ndarray) -> np.ndarray:
    """The :data:`AUX_TARGETS` of inputs at ``probe`` (N, 2) positions and ``thickness`` (nm)."""
    ang = 2 * np.pi * probe
    return np.stack([np.cos(ang[:, 0]), np.sin(ang[:, 0]), np.cos(ang[:, 1]), np.sin(ang[:, 1]),
                     (np.asarray(thickness, np.float32) - 25.0) / 12.0], 1).astype(np.float32)


def _run_fingerprint(cfg: TrainConfig, mode: str, arrays: dict, outliers: dict | None = None) -> str:
    """What a checkpoint must match to be resumed: the config, the mode and the arrays (and outliers)."""
    parts = [cfg.to_dict(), mode, int(len(arrays["y"])), float(np.asarray(arrays["x"][:8], np.float32).sum())]
    if outliers is not None:  # a run without outliers keeps the fingerprint it always had
        parts.append(int(len(outliers["x"])))
    return fingerprint(*parts)


def save_state_dict(net, path: Path) -> None:
    """A network's weights as safetensors, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))


def _warm_start(net, name: str, mode: str, log) -> bool:
    """Start from a shipped network's weights (a prototype net takes the plain net's backbone).

    Returns True when the weights brought trained prototypes along (a prototype net continued), so
    that they are not re-initialised from class means."""
    from safetensors.torch import load_file

    if str(name).endswith(".safetensors"):  # a candidate's weights file (e.g. .cache/candidates/...)
        path = Path(name)
        if not path.exists():
            raise PolarstemError(f"warm start: {path} does not exist")
    else:
        try:
            path = verified_weights_path(name, mode)
        except PolarstemError as exc:
            log(f"no warm start ({exc})")
            return False
    state = load_file(str(path), device="cpu")
    has_prototypes = False
    if hasattr(net, "base") and any(k.startswith("base.") for k in state):  # a prototype net, prototypes too
        missing, _ = net.load_state_dict(state, strict=False)
        has_prototypes = not any(k.startswith("head.") for k in missing)
    elif hasattr(net, "base"):  # prototype net: the plain net's backbone and neck, not its linear head
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, _ = net.base.load_state_dict(state, strict=False)
    else:  # fine-tuning a plain net (e.g. on more data; a regression net takes all but the class head)
        head = net.head.state_dict().keys()
        state = {k: v for k, v in state.items() if not (k.startswith("head.") and k[5:] not in head)}
        missing, _ = net.load_state_dict(state, strict=False)
    log(f"warm start from {name}/{mode} ({len(state)} tensors, missing {len(missing)})")
    return has_prototypes


def _batched_numpy(fn, x, device, batch: int, width: int) -> np.ndarray:
    """``fn`` (a torch forward) over ``x`` in batches, as one float32 numpy array."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.asarray(x[i:i + batch], np.float32))[:, None].to(device)
            out.append(fn(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def _logits_numpy(net, x, device, batch=512) -> np.ndarray:
    net.eval()
    return _batched_numpy(net, x, device, batch, N_CLASSES)


def _embed_numpy(net, x, device, batch=512) -> np.ndarray:
    net.eval()
    return _batched_numpy(_base(net).embed, x, device, batch, 0)
