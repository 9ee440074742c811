"""``polarstem benchmark CONFIG.yaml -o REPORT_DIR``: every model, both modes, on held-out simulations.

The figures must be the ones a user gets, so every table entry comes from the plugin's own code:
pattern-mode accuracies are :func:`polarstem.evaluate.evaluate` calls on labeled folders written to disk
(``polarstem evaluate FOLDER --model M --mode pattern`` prints the same numbers; ``keep_datasets: true``
keeps the folders); a cell-mode input is one row of the training layout (one structure and thickness
over a probe grid covering one cell): :func:`polarstem.classify.classify_scan` classifies its patterns and
:func:`polarstem.classify.vote.vote_cells` pools them as a scan's cell window does (``cell_method: mean``:
the row's mean pattern with the cell weights); scored by :func:`polarstem.evaluate.scores`. Defect detection is
``evaluate(..., defects_path=...)`` on simulated scans. See docs/benchmark.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, PolarstemError
from .report import best_model, write_report

DEFAULT_CORRUPTIONS = {
    "dose": [1.0e5, 3.0e4, 1.0e4],  # electrons per pattern
    "blur_px": [0.5, 1.0, 2.0],  # Gaussian sigma, simulated detector pixels
    "background": [0.02, 0.05, 0.1],  # fraction of the intensity in a smooth Lorentzian background
    "descan_px": [1.0, 3.0, 5.0],  # pattern centre offset, uniform in +-m px
    "combined": [0.5, 1.0, 1.5],  # all four at once, see testsets.corruption
}


@dataclass
class BenchmarkConfig:
    """One benchmark run; the YAML keys are these field names (configs/benchmark/*.yaml)."""

    models: list | str = "all"  # registry names, or "all" (every model with weights)
    modes: list = field(default_factory=lambda: ["pattern", "cell"])
    weights: str | None = None  # weights folder (default: the package's)
    train: str | None = "auto"  # training set (thickness range, domain-gap reference); auto: from the cards
    test: str | list | None = ".cache/sim/heldout"  # held-out simulations, training layout (one or a list)
    thickness_sets: dict | str = "auto"  # name -> [lo, hi) nm; "auto": below / in_range / above training
    n_patterns: int = 1024  # single patterns per test set (subsampled with ``seed``)
    n_cells: int = 256  # cells (rows: one structure and thickness over a probe grid) per test set
    cell_method: str = "vote"  # cell mode as classify_scan does it: vote the pattern model, or "mean" + cell weights
    tta: int | None = 1  # symmetry images averaged on the test sets (1: none; the tables compare the models themselves)
    scan_tta: int | None = None  # ... on the scans: None = classify's automatic choice (the default-mode check)
    corruption_set: str = "in_range"  # the thickness set the corruptions are applied to
    corruptions: dict = field(default_factory=lambda: dict(DEFAULT_CORRUPTIONS))
    # a finite source (polarstem.simulate.coherence) on a set with a >= 6x6 probe grid:
    # {"test": folder, "sigma_a": [std in Å, ...]}; None = not run
    source_size: dict | None = None
    position_bins: int = 4  # probe-position map: bins per cell edge
    thickness_bin_nm: float = 5.0
    scans: list = field(default_factory=lambda: ["sample_data"])  # labeled scans with defects.npy
    scan_modes: list = field(default_factory=lambda: ["auto", "pattern"])
    domain_gap: dict = field(default_factory=lambda: {"datasets": ["sample_data"], "model": "best", "mode": "pattern",
                                                       "n_train": 1000, "n_user": 1000})
    # trust (polarstem.analysis.trust): experiment-like labeled scans across the acquisition grid, and
    # datasets that are not polar KNN at [001] ("noise", folders, files; "path::R,C" for a navigation shape)
    acquisition_scans: list = field(default_factory=list)
    out_of_scope: list = field(default_factory=list)
    trust_models: list = field(default_factory=lambda: ["default"])  # the trust tables' models; "default": what classify picks per file
    speed_patterns: int = 512
    batch_size: int = 256
    threads: int | None = 1
    device: str = "cpu"
    seed: int = 0
    keep_datasets: bool = False

    @classmethod
    def from_yaml(cls, path) -> BenchmarkConfig:
        import yaml

        p = Path(path)
        if not p.exists():
            raise PolarstemError(f"{p}: no such benchmark config")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PolarstemError(f"{p}: unreadable benchmark config ({' '.join(str(exc).split())[:160]})") from None
        if not isinstance(d, dict):
            raise PolarstemError(f"{p}: a benchmark config is a mapping of keys to values")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise PolarstemError(f"{p}: unknown keys {', '.join(sorted(unknown))}")
        cfg = cls(**d)
        cfg.check(p)
        return cfg

    def check(self, where="config") -> None:
        from .testsets import corruption

        bad = [m for m in self.modes if m not in ("pattern", "cell")]
        if bad:
            raise PolarstemError(f"{where}: modes must be pattern and/or cell, not {', '.join(map(str, bad))}")
        for kind in self.corruptions or {}:
            corruption(kind, 1.0)  # raises on an unknown kind
        if self.source_size is not None:
            ss = self.source_size
            ok = isinstance(ss, dict) and set(ss) <= {"test", "sigma_a"} and ss.get("test") and \
                isinstance(ss.get("sigma_a"), list) and ss["sigma_a"]
            try:
                ok = ok and all(float(v) > 0 for v in ss["sigma_a"])
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise PolarstemError(f"{where}: source_size is {{test: FOLDER, sigma_a: [std in Å > 0, ...]}}")
        if self.n_patterns < 1 or self.n_cells < 1:
            raise PolarstemError(f"{where}: n_patterns and n_cells must be positive")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --------------------------------------------------------------------------------------------------
# helpers


@contextmanager
def _weights_folder(folder):
    """Point the registry at ``folder`` for the run (evaluate() loads models by name)."""
    from ..models import clear_cache

    if not folder:
        yield
        return
    old = os.environ.get("POLARSTEM_WEIGHTS")
    os.environ["POLARSTEM_WEIGHTS"] = str(folder)
    clear_cache()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("POLARSTEM_WEIGHTS", None)
        else:
            os.environ["POLARSTEM_WEIGHTS"] = old
        clear_cache()


def _set_threads(n):
    if not n:
        return
    try:
        import torch

        torch.set_num_threads(int(n))
    except ImportError:  # PCA + kNN only
        pass


def select_models(cfg: BenchmarkConfig) -> list[dict]:
    """Registry entries to benchmark, each with the configured modes it has weights for."""
    from ..models import list_models

    entries = list_models()
    if cfg.models != "all":
        wanted = list(cfg.models)
        known = {e["name"] for e in entries}
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise PolarstemError(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        entries = [e for e in entries if e["name"] in wanted]
    out = []
    for e in entries:
        modes = [m for m in cfg.modes if m in e["modes"]]
        if modes:
            out.append({"name": e["name"], "family": e["family"], "prototype": e.get("prototype", False),
                        "modes": modes, "sha256": {m: e["weights"][m]["sha256"] for m in modes}})
    return out


def _card_training_data(name: str, mode: str) -> str | None:
    from ..models import read_card

    try:
        return (read_card(name, mode).get("training") or {}).get("data")
    except ModelFileError:
        return None


def _training_folders(name: str, mode: str) -> list[str]:
    """The card's training data: one folder, or several joined by commas."""
    data = _card_training_data(name, mode)
    if not data:
        return []
    return [d.strip() for d in (data if isinstance(data, list) else str(data).split(",")) if str(d).strip()]


def _trained_on(name: str, mode: str, folder) -> bool:
    return any(Path(d).resolve() == Path(folder).resolve() for d in _training_folders(name, mode))


def thickness_sets(cfg: BenchmarkConfig, test_src, train_src) -> dict[str, list[float]]:
    """name -> [lo, hi) nm. "auto": the training range (from the training set's config) splits the test set."""
    if isinstance(cfg.thickness_sets, dict):
        return {str(k): [float(v[0]), float(v[1])] for k, v in cfg.thickness_sets.items()}
    rng_ = (train_src or test_src).training_thickness_range()
    if rng_ is None or test_src.thickness is None:
        return {"all": [0.0, float("inf")]}
    lo, hi = rng_
    eps = 1e-3
    return {"below": [0.0, lo - eps], "in_range": [lo - eps, hi + eps], "above": [hi + eps, float("inf")]}


def _score_row(res: dict, **keys) -> dict:
    row = dict(keys)
    for k in ("accuracy", "n", "per_class", "confusion", "unclassified", "informative_fraction",
              "accuracy_informative", "patterns_per_s"):
        if k in res:
            row[k] = res[k]
    return row


def classify_folder(folder, model, mode: str, cfg: BenchmarkConfig):
    """classify_scan on a labeled test folder; returns (result with one position per input, labels).

    Cell mode with ``cell_method: vote`` (the default, as in classify_scan): each row holds the probe
    positions of one cell; the pattern weights classify every pattern and the row's mean
    log-probability decides, exactly what a scan's cell window does. With ``mean``: each row is one
    cell average, classified with the *cell* weights.
    """
    from types import SimpleNamespace

    from ..classify import classify_scan, vote_cells, weights_mode_for
    from ..io import load
    from ..models import load_model

    ds = load(folder)
    labels = np.load(Path(folder) / "labels.npy", allow_pickle=False).reshape(ds.scan_shape)
    weights_mode = weights_mode_for(mode, cfg.cell_method)
    vote = weights_mode != mode
    m = load_model(model, mode=weights_mode, device="cpu")
    res = classify_scan(ds, model=m, mode="pattern", roi=labels >= 0, device=cfg.device,
                        batch_size=cfg.batch_size, anomaly=False, tta=cfg.tta)
    if not vote:
        return res, labels
    n = ds.scan_shape[0]
    proba, informative = vote_cells(np.nan_to_num(res.proba, nan=1.0 / 8), res.informative, res.usable)
    voted = SimpleNamespace(
        classes=np.argmax(proba, axis=1).astype(np.int8)[:, None], confidence=proba.max(axis=1, keepdims=True),
        informative=informative[:, None],
        embedding_distance=np.full((n, 1), np.nan, np.float32), model_sha256=res.model_sha256,
        n_patterns=res.n_patterns, seconds=res.seconds, done=res.done[:, :1])
    return voted, labels[:, :1]


def evaluate_folder(folder, model: str, mode: str, cfg: BenchmarkConfig) -> tuple[dict, object]:
    """Scores of one model/mode on one folder: evaluate() for pattern mode, classify_scan + scores for cell."""
    from ..evaluate import evaluate, scores

    if mode == "pattern":
        return evaluate(folder, model=model, mode="pattern", device=cfg.device, tta=cfg.tta), None
    res, labels = classify_folder(folder, model, mode, cfg)
    out = {"file": str(folder), "model": model, "model_sha256": res.model_sha256, "mode": mode}
    out.update(scores(res.classes, labels))
    roi = labels >= 0
    out["informative_fraction"] = round(float(res.informative[roi].mean()), 4)
    out["accuracy_informative"] = scores(res.classes, labels, res.informative)["accuracy"]
    out["patterns_per_s"] = round(res.n_patterns / res.seconds, 1) if res.seconds else None
    return out, res


def measure_speed(model_name: str, mode: str, frames: np.ndarray, calibration, cfg: BenchmarkConfig) -> dict:
    """Preprocessing and forward-pass patterns/s on ``frames`` (the end-to-end figure comes from evaluate)."""
    from ..models import load_model

    m = load_model(model_name, mode=mode, device="cpu")
    t0 = time.perf_counter()
    x, _ = m.preprocess(frames, calibration)
    t_pre = time.perf_counter() - t0
    m.predict(x[: min(len(x), 16)])  # warm-up
    reps = max(1, int(np.ceil(cfg.speed_patterns / max(len(x), 1))))
    t_fwd = float("inf")
    for _ in range(3):  # best of three: the machine may be busy with other work
        t0 = time.perf_counter()
        for _ in range(reps):
            for i in range(0, len(x), cfg.batch_size):
                m.predict(x[i:i + cfg.batch_size])
        t_fwd = min(t_fwd, time.perf_counter() - t0)
    n_params = None
    net = getattr(m, "net", None)
    if net is not None:
        n_params = int(sum(p.numel() for p in net.parameters()))
    return {"preprocess_per_s": round(len(x) / t_pre, 1) if t_pre else None,
            "forward_per_s": round(reps * len(x) / t_fwd, 1) if t_fwd else None,
            "input": list(m.input_shape), "parameters": n_params, "batch_size": cfg.batch_size}


# --------------------------------------------------------------------------------------------------
# per-pattern analyses (probe position, thickness, tilt)


def _binned_accuracy(values, correct, edges) -> list[dict]:
    out = []
    idx = np.digitize(values, edges) - 1
    for i in range(len(edges) - 1):
        sel = idx == i
        if sel.any():
            out.append({"lo": round(float(edges[i]), 3), "hi": round(float(edges[i + 1]), 3),
                        "n": int(sel.sum()), "accuracy": round(float(correct[sel].mean()), 4)})
    return out


def position_maps(frac: np.ndarray, labels: np.ndarray, res, bins: int) -> dict:
    """Per probe-position bin (x, y fraction of the cell): accuracy, informative share, confidence, distance."""
    frac = np.asarray(frac).reshape(-1, 2)
    y = np.asarray(labels).reshape(-1)
    pred = res.classes.reshape(-1).astype(np.int64)
    inf = res.informative.reshape(-1)
    conf = res.confidence.reshape(-1)
    dist = res.embedding_distance.reshape(-1)
    ix = np.minimum((frac[:, 0] * bins).astype(int), bins - 1)
    iy = np.minimum((frac[:, 1] * bins).astype(int), bins - 1)
    keys = {"accuracy": np.full((bins, bins), np.nan), "informative": np.full((bins, bins), np.nan),
            "accuracy_informative": np.full((bins, bins), np.nan), "confidence": np.full((bins, bins), np.nan),
            "embedding_distance": np.full((bins, bins), np.nan), "n": np.zeros((bins, bins), int)}
    ok = y >= 0
    for by in range(bins):
        for bx in range(bins):
            sel = ok & (iy == by) & (ix == bx)
            if not sel.any():
                continue
            keys["n"][by, bx] = int(sel.sum())
            keys["accuracy"][by, bx] = (pred[sel] == y[sel]).mean()
            keys["informative"][by, bx] = inf[sel].mean()
            si = sel & inf
            if si.any():
                keys["accuracy_informative"][by, bx] = (pred[si] == y[si]).mean()
            keys["confidence"][by, bx] = np.nanmean(conf[sel])
            if np.isfinite(dist[sel]).any():
                keys["embedding_distance"][by, bx] = np.nanmean(dist[sel])
    correct = (pred == y)[ok]
    c = conf[ok]
    # do confidence and the filter single out the wrong patterns? (AUC of "wrong" vs low confidence)
    auc = None
    if 0 < correct.sum() < len(correct):
        from sklearn.metrics import roc_auc_score

        auc = round(float(roc_auc_score(~correct, -np.nan_to_num(c, nan=0.0))), 4)
    return {k: np.round(v, 4).tolist() for k, v in keys.items()} | {
        "bins": bins, "error_auc_low_confidence": auc,
        "accuracy_informative_all": round(float(correct[inf[ok]].mean()), 4) if inf[ok].any() else None,
        "informative_all": round(float(inf[ok].mean()), 4)}


# --------------------------------------------------------------------------------------------------
# scans with defects


def simulated_lattice(folder):
    """The lattice a simulated scan was made with (its manifest), so the analysis does not hang on the finder."""
    from ..lattice import Lattice

    p = Path(folder) / "manifest.json"
    if not p.exists():
        return None
    try:
        sc = (json.loads(p.read_text()).get("config") or {}).get("scan") or {}
        spc = float(sc["steps_per_cell"])
    except (ValueError, KeyError, TypeError):
        return None
    off = sc.get("offset_frac", [0.0, 0.0])  # (x, y) fraction of a cell
    return Lattice(period=(spc, spc), origin=((-off[1] * spc) % spc, (-off[0] * spc) % spc), source="simulation")


def _phase_bins(lattice, shape, max_bins: int = 8) -> np.ndarray:
    """Place-in-cell bin of each position, floored with a tolerance (4/3 % 1 * 3 is 0.99999...)."""
    rr, cc = np.indices(shape, dtype=np.float64)
    ny, nx = (int(np.clip(round(p), 1, max_bins)) for p in lattice.period)
    by = np.floor(((rr - lattice.origin[0]) / lattice.period[0]) % 1.0 * ny + 1e-6).astype(int) % ny
    bx = np.floor(((cc - lattice.origin[1]) / lattice.period[1]) % 1.0 * nx + 1e-6).astype(int) % nx
    return by * nx + bx


def scan_phase_analysis(scan, model: str, cfg: BenchmarkConfig, mode: str = "pattern") -> dict | None:
    """Maps of one scan, and per place in the unit cell: accuracy, filter, confidence, anomaly.

    Pattern mode gets the scan's lattice (the simulation's own when known), so the anomaly score compares
    each position with the others at the same place in the cell; other modes find it as a user's run does.
    """
    from ..classify import classify_scan, scan_lattice
    from ..io import load

    folder = Path(scan)
    ds = load(folder)
    labels = np.load(folder / "labels.npy", allow_pickle=False).reshape(ds.scan_shape)
    defects = np.load(folder / "defects.npy", allow_pickle=False).reshape(ds.scan_shape).astype(bool) \
        if (folder / "defects.npy").exists() else np.zeros(ds.scan_shape, bool)
    known = simulated_lattice(folder)
    lattice = (known or scan_lattice(ds)[0]) if mode == "pattern" else None
    res = classify_scan(ds, model=model, mode=mode, lattice=lattice, device=cfg.device, batch_size=cfg.batch_size,
                        cell_method=cfg.cell_method, tta=cfg.tta)
    lattice = known or res.lattice
    if lattice is None:
        return None
    bins = _phase_bins(lattice, ds.scan_shape)
    ok = (labels >= 0) & ~defects
    out = []
    for b in np.unique(bins):
        sel = ok & (bins == b)
        if not sel.any():
            continue
        out.append({"bin": int(b), "n": int(sel.sum()),
                    "accuracy": round(float((res.classes[sel] == labels[sel]).mean()), 4),
                    "informative": round(float(res.informative[sel].mean()), 4),
                    "confidence": round(float(np.nanmean(res.confidence[sel])), 4),
                    "anomaly": round(float(np.nanmean(res.anomaly[sel])), 4) if res.anomaly is not None else None})
    an = res.anomaly
    return {"scan": str(folder), "model": model, "mode": res.mode, "mode_requested": mode,
            "lattice_period": [round(float(p), 3) for p in lattice.period],
            "phase_bins": out,
            "anomaly_median_away": round(float(np.nanmedian(an[ok])), 4) if an is not None and ok.any() else None,
            "anomaly_median_defects": round(float(np.nanmedian(an[defects])), 4) if an is not None and defects.any() else None,
            "maps": {"classes": res.classes, "anomaly": an, "labels": labels, "defects": defects,
                     "confidence": res.confidence, "mode": res.mode}}


# --------------------------------------------------------------------------------------------------
# the run


def run_benchmark(cfg: BenchmarkConfig, out_dir, log=print) -> dict:
    """Run everything the config asks for, write REPORT_DIR (report.md, results.json, CSVs, PNGs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _set_threads(cfg.threads)
    t_start = time.time()
    results: dict = {"config": cfg.to_dict(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": cfg.threads,
                                 "device": cfg.device},
                     "models": [], "accuracy": [], "speed": [], "positions": [], "thickness": [], "tilt": [],
                     "scans": [], "scan_phases": [], "domain_gap": [], "notes": [], "datasets": {},
                     "acquisitions": [], "out_of_scope": []}
    with _weights_folder(cfg.weights):
        from ..models import weights_dir

        results["weights"] = str(weights_dir())
        models = select_models(cfg)
        results["models"] = models
        cfg.train = resolve_train(cfg, models)
        results["train"] = cfg.train
        if not models:
            results["notes"].append(f"no model with weights in {weights_dir()}: nothing to benchmark")
            log(results["notes"][-1])
        else:
            log(f"benchmark: {', '.join(m['name'] + '[' + ','.join(m['modes']) + ']' for m in models)}")
        figures: dict = {}
        if models:
            _run_testsets(cfg, models, out, results, figures, log)
            _run_scans(cfg, models, results, figures, log)
            _run_domain_gap(cfg, out, results, log)
        _run_trust(cfg, models, results, log)
    results["seconds"] = round(time.time() - t_start, 1)
    write_report(results, figures, out)
    log(f"benchmark: report in {out / 'report.md'} ({results['seconds']:.0f} s)")
    return results


def _test_folders(cfg) -> list[str]:
    t = cfg.test
    return [] if not t else ([str(t)] if isinstance(t, (str, Path)) else [str(x) for x in t])


def resolve_train(cfg, models) -> str | None:
    """``train: auto``: the folder most of the benchmarked models were trained on (from their cards)."""
    if cfg.train != "auto":
        return cfg.train
    from collections import Counter

    data = Counter(d for e in models for m in e["modes"] for d in _training_folders(e["name"], m) if Path(d).exists())
    return data.most_common(1)[0][0] if data else ".cache/sim/canonical"


def _run_testsets(cfg, models, out, results, figures, log) -> None:
    from .testsets import open_source

    folders = _test_folders(cfg)
    present = [f for f in folders if Path(f).exists()]
    for f in folders:
        if f not in present:
            results["notes"].append(f"test set {f} not found: skipped "
                                    "(simulate the held-out set with polarstem simulate configs/simulate/heldout.yaml)")
            log(results["notes"][-1])
    if not present:
        return
    _load_models_once(models, results, log)
    train_src = open_source(cfg.train) if cfg.train and Path(cfg.train).exists() else None
    results["training_data"] = {f"{e['name']}/{m}": _card_training_data(e["name"], m) for e in models for m in e["modes"]}
    results["thickness_sets"] = {}
    results["test_folders"] = present
    data_root = out / "datasets" if cfg.keep_datasets else Path(tempfile.mkdtemp(prefix="polarstem-bench-"))
    per_pattern: dict = {}  # (model, mode) -> list of per-input records for the analyses
    labels_used: set = set()
    try:
        for fi, folder in enumerate(present):
            src = open_source(folder)
            if fi == 0:
                results["training_thickness_nm"] = (train_src or src).training_thickness_range()
                results["detector_mrad_per_px"] = src.calibration.mrad_per_px
            _note_test_folder(cfg, models, folder, src, results)
            label = _unique_label(folder, fi, labels_used)
            for base, window in thickness_sets(cfg, src, train_src).items():
                set_name = f"{label}:{base}" if len(present) > 1 else base
                primary = fi == 0 and base == cfg.corruption_set
                if primary:
                    results["primary_set"] = set_name
                _run_one_set(cfg, models, src, set_name, window, primary, data_root, results,
                             per_pattern if fi == 0 else None, log)
        _run_source_set(cfg, models, data_root, results, log)
        _per_pattern_analyses(cfg, per_pattern, results)
    finally:
        if not cfg.keep_datasets:
            shutil.rmtree(data_root, ignore_errors=True)


def _load_models_once(models, results, log) -> None:
    """Load (and hash-check) every model once, so timings exclude loading; a model file that fails
    (e.g. one being replaced by a training run) leaves that model/mode out, with a note."""
    from ..models import load_model

    for e in models:
        for mode in list(e["modes"]):
            try:
                load_model(e["name"], mode=mode, device="cpu")
            except ModelFileError as exc:
                results["notes"].append(f"{e['name']}/{mode} left out: {exc}")
                log(results["notes"][-1])
                e["modes"].remove(mode)
    models[:] = [e for e in models if e["modes"]]


def _note_test_folder(cfg, models, folder, src, results) -> None:
    """Notes that qualify a test folder's figures: still being simulated, or seen in training."""
    if src.manifest.get("status") not in (None, "complete"):
        results["notes"].append(f"{folder} is still being simulated: {len(src.complete_rows)} of "
                                f"{src.labels.shape[0]} rows finished; the test sets use the finished rows")
    if cfg.train and Path(cfg.train).exists() and Path(cfg.train).resolve() == Path(folder).resolve():
        results["notes"].append(f"test set {folder} is the training set of the config: accuracies are on seen data")
    seen = sorted({f"{e['name']}/{m}" for e in models for m in e["modes"] if _trained_on(e["name"], m, folder)})
    if seen:
        results["notes"].append(f"{', '.join(seen)} were trained on {folder}: their figures there are on seen data")


def _unique_label(folder, fi: int, labels_used: set) -> str:
    """A name for test folder number ``fi`` in the set names, not in ``labels_used`` (added to it)."""
    label = Path(folder).name or f"test{fi}"
    if label in labels_used:  # two folders of the same name: say which parent
        label = f"{Path(folder).resolve().parent.name}-{label}"
    while label in labels_used:
        label += "_"
    labels_used.add(label)
    return label


def _run_source_set(cfg, models, data_root, results, log) -> None:
    """The ``source_size`` test: every model on one set (all thicknesses) with a point source and with
    each finite source size (set ``<folder>:source``, condition ``source``, strength = std in Å)."""
    from .testsets import open_source

    ss = cfg.source_size
    if not ss:
        return
    folder = str(ss["test"])
    if not Path(folder).exists():
        results["notes"].append(f"source_size test set {folder} not found: skipped (polarstem simulate "
                                "configs/simulate/heldout6g.yaml -o .cache/sim/heldout6g)")
        log(results["notes"][-1])
        return
    src = open_source(folder)
    from ..simulate.coherence import MIN_GRID

    g = src.probe_grid
    if not g or g < MIN_GRID:
        results["notes"].append(f"source_size test set {folder} has no >= 6 x 6 probe grid per cell: skipped")
        log(results["notes"][-1])
        return
    set_name = f"{Path(folder).name}:source"
    results["source_set"] = set_name
    conds = [("ideal", 0.0)] + [("source", float(s)) for s in ss["sigma_a"]]
    t = src.thickness[src.labels >= 0] if src.thickness is not None else np.zeros(1)
    window = (float(t.min()), float(t.max()) + 1e-3)  # every thickness
    _run_one_set(cfg, models, src, set_name, window, False, data_root, results, None, log, conds=conds)


@dataclass(frozen=True)
class _OneSet:
    """What every condition and input mode of one thickness set shares (see :func:`_run_one_set`)."""

    cfg: BenchmarkConfig
    models: list
    src: object
    name: str
    window: tuple
    primary: bool
    results: dict
    per_pattern: dict | None
    log: object


def _run_one_set(cfg, models, src, set_name, window, primary, data_root, results, per_pattern, log,
                 conds=None) -> None:
    """One thickness set of one test folder: ideal (and, for the primary set, every corruption), all models.

    ``per_pattern`` (a dict, or None) collects the ideal predictions for the thickness/position/tilt analyses,
    which describe the first test folder only (pooling simulations of different setups would blur them).
    ``conds`` replaces the conditions ((kind, strength) pairs); kind ``source`` reads whole probe-grid
    rows as a finite source of std = strength (Å) records them.
    """
    modes_needed = sorted({m for e in models for m in e["modes"]})
    rng = np.random.default_rng([cfg.seed, zlib.crc32(set_name.encode())])
    if conds is None:
        conds = [("ideal", 0.0)]
        if primary:
            conds += [(k, float(s)) for k, levels in (cfg.corruptions or {}).items() for s in levels]
    keep_rows = any(kind == "source" for kind, _ in conds)
    picks, rows_of = _pick_inputs(cfg, src, window, modes_needed, rng, keep_rows)
    results["thickness_sets"][set_name] = window
    if not picks:
        results["notes"].append(f"test set '{set_name}' ({window[0]:g}-{window[1]:g} nm): no finished patterns")
        return
    one = _OneSet(cfg, models, src, set_name, window, primary, results, per_pattern, log)
    for ci, (kind, strength) in enumerate(conds):
        for input_mode, picked in picks.items():
            _run_condition(one, data_root, ci, kind, strength, input_mode, picked, rows_of)


def _pick_inputs(cfg, src, window, modes_needed, rng, keep_rows: bool) -> tuple[dict, dict]:
    """(picks, rows_of) of one thickness set, per input mode: picks = (frames, labels, per-input
    metadata, patterns per input), the single patterns drawn first (``rng`` order). A finite
    source needs each input's whole probe-grid row: with ``keep_rows``, rows_of = (the raw rows
    read once, the single patterns' (row, column) in them or None for cells)."""
    from ..classify import weights_mode_for
    from .testsets import pick_cells, pick_patterns

    n_pos = src.labels.shape[1]
    picks, rows_of = {}, {}
    if "pattern" in modes_needed:
        rr, cc = pick_patterns(src, window, cfg.n_patterns, rng)
        if len(rr):
            uniq, inv = np.unique(rr, return_inverse=True)
            block = src.read_rows(uniq)
            if keep_rows:
                rows_of["pattern"] = (block, (inv, cc))
            picks["pattern"] = (block[inv, cc], src.labels[rr, cc], {
                "thickness_nm": None if src.thickness is None else src.thickness[rr, cc],
                "probe_frac": None if src.probe_frac is None else src.probe_frac[rr, cc],
                "tilt_mrad": None if src.tilt_mrad is None else src.tilt_mrad[rr, cc]}, 1)
    if "cell" in modes_needed:
        rows = pick_cells(src, window, cfg.n_cells, rng)
        if len(rows):
            cells = src.read_rows(rows)  # (cells, probe positions, ky, kx)
            if keep_rows:
                rows_of["cell"] = (cells, None)
            # a vote keeps every pattern of the cell (each corrupted on its own); "mean" their average
            vote = weights_mode_for("cell", cfg.cell_method) == "pattern"
            picks["cell"] = (cells if vote else cells.mean(axis=1), src.labels[rows, 0], {
                "thickness_nm": None if src.thickness is None else src.thickness[rows, 0],
                "tilt_mrad": None if src.tilt_mrad is None else src.tilt_mrad[rows, 0]}, 1 if vote else n_pos)
    return picks, rows_of


def _run_condition(one: _OneSet, data_root, ci: int, kind: str, strength: float, input_mode: str, picked,
                   rows_of: dict) -> None:
    """One condition (number ``ci``) of one input mode: its test folder written, every model of that
    mode scored on it; the folder is removed afterwards unless the config keeps the datasets."""
    from .testsets import apply_corruption, write_testset

    cfg, src = one.cfg, one.src
    frames, labels, meta, per_input = picked
    cond = kind if kind == "ideal" else f"{kind}={strength:g}"
    folder = data_root.joinpath(*one.name.split(":")) / input_mode / cond.replace("=", "_")
    if kind == "source":
        data = _finite_source_frames(*rows_of[input_mode], strength, src.probe_grid, per_input)
    else:
        flat = frames.reshape((-1,) + frames.shape[-2:])
        data = apply_corruption(flat, kind, strength, [cfg.seed, ci, 7], per_input).reshape(frames.shape)
    write_testset(folder, data, labels, src.calibration, meta,
                  {"source": str(src.folder), "set": one.name, "thickness_window_nm": one.window,
                   "condition": cond, "input": input_mode, "seed": cfg.seed})
    one.results["datasets"][f"{one.name}/{input_mode}/{cond}"] = {
        "folder": str(folder) if cfg.keep_datasets else None, "n": int(len(labels))}
    for e in one.models:
        if input_mode in e["modes"]:
            _score_model(one, e["name"], folder, input_mode, kind, strength, cond, picked)
    if not cfg.keep_datasets:
        shutil.rmtree(folder, ignore_errors=True)


def _score_model(one: _OneSet, name: str, folder, input_mode: str, kind: str, strength: float, cond: str,
                 picked) -> None:
    """Model ``name``'s accuracy on one condition's folder; on the ideal condition also its
    predictions for the per-pattern analyses and, on the primary set, its speed."""
    from ..classify import weights_mode_for

    cfg, results = one.cfg, one.results
    frames, labels, meta, _ = picked
    t0 = time.perf_counter()
    try:
        res, result = evaluate_folder(folder, name, input_mode, cfg)
    except ModelFileError as exc:
        results["notes"].append(f"{name}/{input_mode}: {exc}")
        return
    row = _score_row(res, model=name, mode=input_mode, set=one.name, condition=kind,
                     strength=strength, thickness_window_nm=one.window)
    results["accuracy"].append(row)
    one.log(f"  {one.name:<9} {cond:<16} {name:<13} {input_mode:<7} acc {row['accuracy']} "
            f"(n={row['n']}, {time.perf_counter() - t0:.1f} s)")
    if kind == "ideal" and one.per_pattern is not None:
        r = result if result is not None else classify_folder(folder, name, input_mode, cfg)[0]
        one.per_pattern.setdefault((name, input_mode), []).append((labels, meta, r))
    if kind == "ideal" and one.primary:
        weights_mode = weights_mode_for(input_mode, cfg.cell_method)
        flat = frames.reshape((-1,) + frames.shape[-2:])
        sp = measure_speed(name, weights_mode, flat[: cfg.batch_size], one.src.calibration, cfg)
        sp.update(model=name, mode=input_mode, end_to_end_per_s=res.get("patterns_per_s"))
        results["speed"].append(sp)


def _finite_source_frames(raw_rows, select, sigma_a: float, g: int, per_input: int) -> np.ndarray:
    """The picked inputs again, from their raw probe-grid rows, as a finite source records them:
    single patterns at ``select`` = (row index, column), or the cells (``select`` None)."""
    from ..simulate.coherence import source_blur_grid

    n, _, ky, kx = raw_rows.shape
    rows = source_blur_grid(raw_rows.reshape(n, g, g, ky, kx), sigma_a).reshape(raw_rows.shape)
    if select is not None:
        return rows[select]
    return rows if per_input == 1 else rows.mean(axis=1)


def _per_pattern_analyses(cfg, per_pattern, results) -> None:
    """Accuracy vs thickness and tilt (all ideal sets pooled) and vs probe position (pattern mode)."""
    for (name, mode), parts in per_pattern.items():
        y = np.concatenate([p[0] for p in parts]).astype(np.int64)
        pred = np.concatenate([p[2].classes.reshape(-1) for p in parts]).astype(np.int64)
        correct = (pred == y)[y >= 0]
        keep = y >= 0

        def cat(key, parts=parts, keep=keep):
            vals = [p[1].get(key) for p in parts]
            return None if any(v is None for v in vals) else np.concatenate(vals)[keep]

        th = cat("thickness_nm")
        if th is not None and len(th):
            step = float(cfg.thickness_bin_nm)
            edges = np.arange(np.floor(th.min() / step) * step, th.max() + step + 1e-9, step)
            results["thickness"].append({"model": name, "mode": mode, "bins": _binned_accuracy(th, correct, edges)})
        tilt = cat("tilt_mrad")
        if tilt is not None and len(tilt) and np.isfinite(tilt).all():
            results["tilt"].append({"model": name, "mode": mode,
                                    "bins": _binned_accuracy(tilt, correct, np.array([0.0, 0.5, 1.0, 1.5, 10.0]))})
        if mode == "pattern":
            fr = [p for p in parts if p[1].get("probe_frac") is not None]
            if fr:
                from types import SimpleNamespace

                res = SimpleNamespace(**{k: np.concatenate([p[2].__dict__[k].reshape(-1) for p in fr])
                                         for k in ("classes", "informative", "confidence", "embedding_distance")})
                frac = np.concatenate([p[1]["probe_frac"] for p in fr])
                labels = np.concatenate([p[0] for p in fr])
                pm = position_maps(frac, labels, res, int(cfg.position_bins))
                pm.update(model=name, mode=mode)
                results["positions"].append(pm)


def _run_scans(cfg, models, results, figures, log) -> None:
    from ..evaluate import evaluate

    for scan in cfg.scans or []:
        folder = Path(scan)
        if not (folder / "labels.npy").exists():
            results["notes"].append(f"scan {scan}: not found or unlabeled, defect detection skipped")
            log(results["notes"][-1])
            continue
        defects = folder / "defects.npy"
        for e in models:
            for mode in cfg.scan_modes:
                if mode != "auto" and mode not in e["modes"]:
                    continue
                t0 = time.perf_counter()
                try:
                    res = evaluate(folder, model=e["name"], mode=mode,
                                   defects_path=defects if defects.exists() else None, device=cfg.device,
                                   cell_method=cfg.cell_method, tta=cfg.scan_tta)
                except PolarstemError as exc:  # no weights for the mode auto chose, no lattice for cell
                    results["notes"].append(f"scan {folder.name}, {e['name']} {mode}: {exc}")
                    continue
                row = {"scan": str(folder), "model": e["name"], "mode_requested": mode, "mode": res["mode"]}
                for k in ("accuracy", "accuracy_outside_defects", "accuracy_outside_defects_and_wall_planes",
                          "wall_plane_probes", "accuracy_at_defects", "anomaly_auc", "n",
                          "informative_fraction", "per_class", "confusion", "patterns_per_s", "tta"):
                    row[k] = res.get(k)
                results["scans"].append(row)
                log(f"  scan {folder.name} {e['name']:<13} {mode}->{res['mode']}: acc {row['accuracy']}, "
                    f"away from defects {row['accuracy_outside_defects']}, anomaly AUC {row['anomaly_auc']} "
                    f"({time.perf_counter() - t0:.1f} s)")
                try:
                    ph = scan_phase_analysis(folder, e["name"], cfg, mode)
                except PolarstemError as exc:
                    results["notes"].append(f"scan {folder.name}, {e['name']} {mode}: maps failed ({exc})")
                    ph = None
                if ph is not None:
                    figures.setdefault("scan_maps", []).append(ph.pop("maps"))
                    figures["scan_maps"][-1].update(model=e["name"], scan=folder.name)
                    results["scan_phases"].append(ph)


def _run_trust(cfg, models, results, log) -> None:
    """The acquisition and out-of-scope tables (polarstem.analysis.trust), default classification."""
    from .trust import acquisition_rows, out_of_scope_rows

    names = list(cfg.trust_models)
    if cfg.acquisition_scans:
        results["acquisitions"] = acquisition_rows(names, cfg.acquisition_scans, log)
    if cfg.out_of_scope:
        results["out_of_scope"] = out_of_scope_rows(names, cfg.out_of_scope, log)


def _run_domain_gap(cfg, out, results, log) -> None:
    from .domain_gap import embedding_map, plot_embedding_map

    dg = dict(cfg.domain_gap or {})
    datasets = [d for d in dg.get("datasets", []) if d]
    if not datasets:
        return
    if not cfg.train or not Path(cfg.train).exists():
        results["notes"].append(f"training set {cfg.train} not found: domain-gap view skipped")
        return
    mode = dg.get("mode", "pattern")
    name = dg.get("model", "best")
    if name == "best":
        b = best_model(results, mode)
        if b is None:  # no model has weights for that mode: take the other
            mode = "cell" if mode == "pattern" else "pattern"
            b = best_model(results, mode)
        if b is None:
            results["notes"].append("no model with weights for the domain-gap view")
            return
        name = b[0]
    for i, d in enumerate(datasets):
        if not Path(d).exists():
            results["notes"].append(f"domain gap: {d} not found, skipped")
            continue
        try:
            emap = embedding_map(name, d, cfg.train, mode=mode, n_train=int(dg.get("n_train", 1000)),
                                 n_user=int(dg.get("n_user", 1000)), seed=cfg.seed)
        except PolarstemError as exc:
            results["notes"].append(f"domain gap on {d}: {exc}")
            continue
        stem = f"domain_gap_{i}_{Path(d).name or 'data'}"
        plot_embedding_map(emap, out / f"{stem}.png")
        emap.to_csv(out / f"{stem}.csv")
        results["domain_gap"].append(emap.summary() | {"figure": f"{stem}.png", "csv": f"{stem}.csv"})
        log(f"  domain gap {Path(d).name}: {name}/{mode}, outside training {emap.outside_fraction}")


__all__ = ["BenchmarkConfig", "run_benchmark", "select_models", "evaluate_folder", "best_model"]
