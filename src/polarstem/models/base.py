"""The interface every loaded model shares: ``card``, ``input_shape``, ``preprocess``, ``predict``, ``to``.

Networks (:class:`NetModel`) and PCA + kNN (``pca_knn.PcaKnnModel``) differ only in ``predict``.
Probabilities are temperature-scaled (the temperature is fitted on the validation split at training
time and stored in the card), so a 0.9 means right about 9 times in 10 on simulations like the
validation set.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelFileError
from ..preprocess import InputGrid, preprocess
from .symmetry import class_permutation, transform, tta_elements


class BaseModel:
    """Common part: the card, the input grid and the shared preprocessing."""

    def __init__(self, card: dict):
        self.card = card
        self.grid = InputGrid.from_dict(card.get("input_grid", {}))
        self.temperature = float(card.get("temperature", 1.0))
        self.name = card.get("name", "")
        self.mode = card.get("mode", "pattern")
        self.device = "cpu"
        self.abstention = None  # polarstem.abstain.Abstention, when the card carries calibrated thresholds
        if card.get("abstention"):
            from ..abstain import Abstention

            self.abstention = Abstention.from_dict(card["abstention"])

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.grid.size, self.grid.size)

    def preprocess(self, frames, calibration=None, center: str = "each", return_info: bool = False):
        """Raw frames (N, ky, kx) -> (float32 (N, H, W), informative mask (N,) bool[, info dict])."""
        return preprocess(frames, calibration, self.grid, center=center, return_info=return_info)

    def to(self, device):
        self.device = str(device)
        return self

    def prototypes(self) -> np.ndarray | None:
        """(8, D) class centres in embedding space (training-set class means), for anomaly distances."""
        p = self.card.get("class_mean_embeddings")
        return None if p is None else np.asarray(p, dtype=np.float32)

    def predict(self, x, batch_size: int = 256, tta: bool = False) -> dict:
        raise NotImplementedError


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class NetModel(BaseModel):
    """A torch network with its card; ``predict`` returns calibrated probabilities and embeddings."""

    def __init__(self, net, card: dict):
        super().__init__(card)
        self.net = net.eval()
        self.generators = card.get("symmetry_generators")

    @classmethod
    def build(cls, card: dict):
        from .nets import create_model

        arch = card["architecture"]
        return create_model(arch["arch"], prototype=arch.get("prototype"), regression=bool(arch.get("regression")),
                            **arch.get("kwargs", {}))

    @classmethod
    def from_file(cls, path, card: dict) -> NetModel:
        """Load safetensors weights on CPU into the architecture the card names (strict shapes)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        net = cls.build(card)
        try:
            state = load_file(str(path), device="cpu")
            net.load_state_dict(state, strict=True)
        except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
            msg = " ".join(str(exc).split())[:200]
            raise ModelFileError(f"{path}: weights do not fit the '{card.get('name')}' architecture ({msg})") from None
        return cls(net, card)

    def to(self, device):
        self.net.to(device)
        self.device = str(device)
        return self

    def logits_and_embedding(self, x, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings, batch by batch. On a GPU the batches travel from pinned host memory
        without blocking and the network runs under mixed precision (bf16 where the card has it, else
        fp16); outputs are float32. On a CPU everything stays float32."""
        import torch

        x = np.asarray(x, dtype=np.float32)
        logits, emb = [], []
        self.net.eval()
        cuda = str(self.device).startswith("cuda")
        amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        with torch.inference_mode(), torch.autocast("cuda", dtype=amp, enabled=cuda):
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))[:, None]
                xb = xb.pin_memory().to(self.device, non_blocking=True) if cuda else xb.to(self.device)
                z = self.net.embed(xb)
                logits.append(self.net.head(z).float().cpu().numpy())
                emb.append(z.float().cpu().numpy())
        if not logits:
            d = getattr(self.net, "embed_dim", 0)
            return np.zeros((0, 8), np.float32), np.zeros((0, d), np.float32)
        return np.concatenate(logits), np.concatenate(emb).astype(np.float32)

    def predict(self, x, batch_size: int = 256, tta: bool = False) -> dict:
        """``proba`` (N, 8) temperature-scaled, ``embedding`` (N, D) float32, ``logits`` (N, 8).

        ``tta`` averages the log-probabilities over symmetry images of each pattern: True or 8 all
        of them (8x the work), 2 the pattern and its 180° rotation, 4 the rotations (``tta_elements``).
        The images of a pattern go through the network in one stacked batch. The embedding is the
        untransformed pattern's.
        """
        x = np.asarray(x, np.float32)
        elements = tta_elements(tta)
        if len(elements) == 1 or not len(x):
            logits, emb = self.logits_and_embedding(x, batch_size)
        else:
            stacked = np.concatenate([x if e == (0, False) else transform(x, e) for e in elements])
            all_logits, all_emb = self.logits_and_embedding(stacked, batch_size)
            n = len(x)
            emb = all_emb[:n]
            acc = np.zeros((n, all_logits.shape[1]), np.float64)
            for i, element in enumerate(elements):
                perm = class_permutation(element, self.generators)
                logp = np.log(_softmax(all_logits[i * n:(i + 1) * n] / self.temperature) + 1e-12)
                acc += logp[:, perm]  # column perm[k] of the transformed image = class k of the original
            logits = acc / len(elements) * self.temperature
        proba = _softmax(logits / self.temperature).astype(np.float32)
        return {"proba": proba, "embedding": emb, "logits": logits.astype(np.float32)}
