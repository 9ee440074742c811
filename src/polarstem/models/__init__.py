"""Pretrained polarization classifiers: list them, load one, preprocess and predict.

``list_models()`` and ``load_model(name, mode)`` are the whole public surface; torch is imported only
when a network is loaded (``base``/``nets``), never by importing this package.
"""

from .registry import MODES, clear_cache, list_models, load_model, model_names, read_card, weights_dir

__all__ = ["MODES", "clear_cache", "list_models", "load_model", "model_names", "read_card", "weights_dir",
           "create_model"]


def create_model(arch: str, **kwargs):
    """Build a network by architecture name (``resnet18``, ``vgg11``, ``vgg16``, ``cnn``); imports torch."""
    from .nets import create_model as _create

    return _create(arch, **kwargs)
