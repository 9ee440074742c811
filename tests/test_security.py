"""No code execution from data: no pickle-based loading anywhere in src/."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
UNSAFE = [
    r"\bpickle\.loads?\(", r"\bcPickle\b", r"\bjoblib\.load\(", r"allow_pickle\s*=\s*True",
    r"\bdill\.loads?\(", r"\bcloudpickle\.loads?\(", r"\bmarshal\.loads?\(", r"\bshelve\.open\(",
    r"torch\.load\((?![^)]*weights_only\s*=\s*True)",
]


def test_no_unsafe_deserialisation_in_src():
    hits = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern in UNSAFE:
            for m in re.finditer(pattern, text):
                line = text[: m.start()].count("\n") + 1
                hits.append(f"{path.relative_to(SRC)}:{line}: {m.group(0)}")
    assert not hits, "unsafe deserialisation:\n" + "\n".join(hits)


def test_the_check_itself_catches_pickle(tmp_path):
    bad = "import pickle\nx = pickle.load(open('m.pkl', 'rb'))\ny = torch.load('w.pt')\n"
    found = [p for p in UNSAFE if re.search(p, bad)]
    assert len(found) == 2
    assert not re.search(UNSAFE[-1], "torch.load(path, weights_only=True)")


def test_npy_loader_refuses_object_arrays(tmp_path):
    import numpy as np
    import pytest

    from polarstem.errors import PolarstemError
    from polarstem.io import load

    arr = np.empty((2, 2, 2, 2), dtype=object)
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)  # the file a malicious sender would make
    with pytest.raises(PolarstemError, match="not a plain numeric"):
        load(tmp_path / "evil.npy")
