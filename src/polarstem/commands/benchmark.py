"""``polarstem benchmark CONFIG.yaml -o REPORT_DIR``: accuracy, robustness, speed, defects, domain gap."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="benchmark the pretrained models on held-out simulations (Markdown report)")
    p.add_argument("config", help="benchmark config (configs/benchmark/*.yaml)")
    p.add_argument("-o", "--out", required=True, help="report folder (report.md, results.json, CSVs, PNGs)")
    p.add_argument("--models", help="comma-separated model names (overrides the config)")
    p.add_argument("--test", action="append", help="held-out simulated folder (repeatable; overrides the config)")
    p.add_argument("--train", help="training simulated folder (overrides the config)")
    p.add_argument("--scan", action="append", help="labeled scan with defects.npy (repeatable; overrides the config)")
    p.add_argument("--domain-gap", action="append", metavar="FILE",
                   help="dataset to place against the training data (repeatable; overrides the config)")
    p.add_argument("--weights", help="weights folder (default: the package's)")
    p.add_argument("--threads", type=int, help="torch CPU threads (overrides the config)")
    p.add_argument("--keep-datasets", action="store_true", help="keep the labeled test folders in OUT/datasets")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_benchmark)


def _benchmark(args) -> int:
    from ..analysis.benchmark import BenchmarkConfig, run_benchmark

    cfg = BenchmarkConfig.from_yaml(args.config)
    if args.models:
        cfg.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for key in ("test", "train", "weights", "threads"):  # --test is a list
        if getattr(args, key, None) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.scan:
        cfg.scans = list(args.scan)
    if args.domain_gap:
        cfg.domain_gap = dict(cfg.domain_gap or {}, datasets=list(args.domain_gap))
    if args.keep_datasets:
        cfg.keep_datasets = True
    cfg.check("command line")
    run_benchmark(cfg, args.out, log=(lambda *a, **k: None) if args.quiet else print)
    return 0
