"""The one place that chooses where models run: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

from .errors import PolarstemError

DEVICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Devices this machine can run torch models on, best first (cpu always last)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def choose_device(requested: str = "auto") -> str:
    """Resolve ``auto`` to the best device present; check an explicit choice and say why it fails."""
    requested = (requested or "auto").lower()
    if requested.split(":")[0] not in DEVICES:
        raise PolarstemError(f"unknown device '{requested}' (use one of {', '.join(DEVICES)})")
    found = available_devices()
    if requested == "auto":
        return found[0]
    if requested.split(":")[0] not in found:
        raise PolarstemError(f"device '{requested}' is not available here (available: {', '.join(found)})")
    return requested


def default_batch_size(device: str, input_pixels: int = 64 * 64) -> int:
    """Patterns per forward pass: large on a GPU, modest on a CPU where latency matters for cancel."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        # ~40 floats of activations per input pixel per sample for the shipped nets, with headroom
        return int(max(64, min(4096, free * 0.25 // (input_pixels * 4 * 40))))
    if device == "mps":
        return 512
    return 256
