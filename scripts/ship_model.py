"""Ship a trained candidate: copy its weights and cards into the package's weights folder.

    .venv/bin/python scripts/ship_model.py .cache/candidates/vgg-regression vgg-regression --fp16

A training run with ``out:`` writes a weights folder of its own (weights, JSON cards, index); once
the candidate has been measured against the shipped models it is copied here with this script, which
rebuilds the package's ``index.json`` (sha256 of every file) and the Markdown cards in
docs/model_cards. ``--fp16`` stores a network's weights in float16, half the bytes of the wheel;
the loader copies them into the float32 network, so check the figures on the stored file
(``polarstem evaluate``) before committing it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def half_precision(src: Path, dst: Path) -> None:
    """A safetensors file with every floating-point tensor stored as float16."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(dst))


def ship(candidate: Path, name: str, fp16: bool) -> list[Path]:
    """Copy ``name``'s files from ``candidate`` into the package's weights folder; the files written."""
    from polarstem.models.registry import package_weights_dir, read_index, write_index
    from polarstem.training.cards import write_markdown_cards

    entries = [e for e in read_index(candidate)["files"].values() if e["name"] == name]
    if not entries:
        raise SystemExit(f"{candidate}: no weights of '{name}' in its index.json")
    dest = package_weights_dir()
    written = []
    for e in entries:
        src, dst = candidate / e["file"], dest / e["file"]
        if fp16 and src.suffix == ".safetensors":
            half_precision(src, dst)
        else:
            shutil.copyfile(src, dst)
        shutil.copyfile(candidate / e["card"], dest / e["card"])
        written += [dst, dest / e["card"]]
    write_index(dest)
    write_markdown_cards(dest)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidate", type=Path, help="the weights folder a training run wrote (its out:)")
    ap.add_argument("name", help="registry name of the model to ship")
    ap.add_argument("--fp16", action="store_true", help="store network weights in float16")
    args = ap.parse_args(argv)
    for p in ship(args.candidate, args.name, args.fp16):
        print(f"{p} ({p.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
