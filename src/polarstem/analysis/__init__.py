"""Benchmark and error analysis of the shipped models (``polarstem benchmark``, docs/benchmark.md).

- :mod:`.testsets`: labeled test folders cut from simulated sets (subsampled, corrupted, cell-averaged),
  written in the conventions' format so ``polarstem evaluate`` reads the very same data;
- :mod:`.benchmark`: the runner (accuracy tables, speed, error vs probe position and thickness, defects);
- :mod:`.domain_gap`: PCA of model embeddings, training patterns against a user's dataset;
- :mod:`.report`: Markdown, CSV/JSON and matplotlib figures.

Core code: no napari, no Qt; torch only through the models.
"""

from .benchmark import BenchmarkConfig, run_benchmark
from .domain_gap import embedding_map

__all__ = ["BenchmarkConfig", "run_benchmark", "embedding_map"]
