"""Files written whole or not at all, content hashes, and JSON of numpy values.

Every file polarstem writes goes through :func:`atomic_path`: the content goes to a private temporary
file in the same folder, which is renamed over the final name only when writing succeeded, so a crash
or a full disk never leaves a half-written file under the final name, and two processes writing the
same file never interleave. The renamed file gets the permissions of any file the user writes
(``0666`` less the umask), not the private ones of a temporary file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask: from /proc where it says, else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix + ".partial", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_npy(path: str | os.PathLike, array) -> Path:
    """``np.save`` atomically, without pickles."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)
    return Path(path)


def json_default(o):
    """``json.dumps(default=...)`` for what numpy and pathlib hand over: scalars, arrays, paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def finite_json(obj):
    """``obj`` with NaN as None and ±inf as "inf"/"-inf", which strict JSON readers accept."""
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def to_json(obj, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON text of ``obj``; numpy scalars and arrays become numbers and lists, anything else its ``str``."""
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default)


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (see :func:`to_json`) to ``path`` atomically, ending with a newline."""
    return write_text(path, to_json(obj, indent=indent) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (their hashes in name order): what provenance records."""
    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)
    h = hashlib.sha256()
    for q in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(sha256_file(q).encode())
    return h.hexdigest()
