"""Where the bundled sample dataset lives, in a source checkout and in an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PolarstemError


def sample_dataset_path() -> Path:
    """The sample dataset folder (simulated KNN scan with four domains and a defect).

    Looked up in ``$POLARSTEM_SAMPLE``, then ``sample_data/`` of a source checkout, then the copy
    installed inside the package.
    """
    candidates = []
    if os.environ.get("POLARSTEM_SAMPLE"):
        candidates.append(Path(os.environ["POLARSTEM_SAMPLE"]))
    here = Path(__file__).resolve().parent
    candidates += [here.parents[1] / "sample_data", here / "sample_data"]
    for root in candidates:
        if not root.exists():
            continue
        if (root / "manifest.json").exists():
            return root
        inner = sorted(p.parent for p in root.glob("*/manifest.json"))
        if inner:
            return inner[0]
    raise PolarstemError("the sample dataset is not installed (no sample_data/ with a manifest.json)")
