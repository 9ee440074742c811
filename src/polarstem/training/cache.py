"""What training keeps to reuse: the preprocessed arrays (shared by every model of the same mode and
data) and each run's checkpoints, under ``$POLARSTEM_CACHE/train`` (default ``.cache/train`` in the
working directory), named by fingerprints of what made them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE = Path(os.environ.get("POLARSTEM_CACHE", ".cache"))


def arrays_file(mode: str, key: str) -> Path:
    """The cached training arrays of one mode with fingerprint ``key``."""
    return CACHE / "train" / f"arrays-{mode}-{key}.npz"


def checkpoint_dir(name: str, mode: str) -> Path:
    """Where a run keeps ``last.pt`` (resumable state) and ``best.safetensors`` (the best round's weights)."""
    return CACHE / "train" / f"{name}-{mode}"


def fingerprint(*parts) -> str:
    """16 hex digits of the sha256 of ``parts`` as sorted JSON."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def folder_stamp(folder: Path) -> dict:
    """Modification times of a folder's files: a changed simulated set gets new arrays."""
    return {str(p.name): p.stat().st_mtime for p in sorted(folder.iterdir()) if p.is_file()}
