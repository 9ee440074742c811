"""The prototype-representation regime: classify by distance to learned class prototypes.

Definition used here (precisely):

* An embedding network f (any backbone of ``nets.py`` up to its embedding layer) maps a preprocessed
  pattern x to z = f(x) / ||f(x)|| on the unit sphere in R^D.
* Each class k has M prototypes p_k1..p_kM (unit vectors, learned). M > 1 because one polarization
  direction gives very different patterns at different probe positions and thicknesses (physics.md):
  a single mean would sit between the modes.
* Class score s_k(x) = log sum_m exp(α cos(z, p_km)) with a fixed scale α (16): a soft maximum over the
  class's prototypes. p(k | x) = softmax_k(s_k / T), T the temperature fitted on validation data.
* Loss = cross-entropy on s + λ_pull · mean(1 - max_m cos(z, p_ym)) (pull each embedding to its
  nearest own-class prototype: compact classes) + λ_sep · mean over pairs of different-class
  prototypes of max(0, cos(p_km, p_jn) - 0.5)^2 (keep classes apart).
* Optional paired-view term (``consistency: λ_c`` in a training config, with ``copies: 2``): each
  batch holds n ideal views and the n corrupted views of the same raw patterns (same symmetry
  element); with a_m(x) = softmax over all 8·M prototypes of α cos(z, p), the loss adds
  λ_c · KL(a(x_ideal) ‖ a(x_corrupted)), the ideal view's assignment held fixed (no gradient). The
  corrupted view must land not only in the right class but at the same sub-prototype (the same
  probe-position / thickness mode) as its clean version: the prototypes become the anchors that
  tie detector artefacts to the physics.
* Prototypes are initialised from the class-mean embeddings of the plain-trained network, perturbed,
  when a warm start is given; otherwise at random.
* The prototype distance d(x) = 1 - max_m cos(z, p_ŷm) of the predicted class ŷ is the embedding-space
  anomaly cue: far from every prototype = unlike anything in training (domain gap, defect).

Why: a linear softmax head can put features anywhere that separates the training set; tying classes
to compact regions around prototypes makes decisions rely on features shared by many training
patterns, which is what the study found narrows the simulation-to-experiment gap.
"""

from __future__ import annotations

import numpy as np

PULL_WEIGHT = 0.1
SEPARATION_WEIGHT = 0.1


def prototype_loss(net, logits, z, y):
    """The regime's loss (see module docstring) for a ``nets.PrototypeNet``."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, y)
    head = net.head
    sims = head.similarities(z)  # (N, K, M)
    own = sims[torch.arange(len(y)), y].max(dim=1).values
    pull = (1.0 - own).mean()
    pn = F.normalize(head.prototypes, dim=1)
    cos = pn @ pn.t()
    cls = torch.arange(head.n_classes, device=cos.device).repeat_interleave(head.per_class)
    other = cls[:, None] != cls[None, :]
    sep = (torch.clamp(cos[other] - 0.5, min=0.0) ** 2).mean()
    return ce + PULL_WEIGHT * pull + SEPARATION_WEIGHT * sep


def assignment_consistency(net, z, n_ideal: int):
    """KL(a(ideal) || a(corrupted)) of soft prototype assignments; ``z[:n]`` ideal views, ``z[n:]`` their
    corrupted versions in the same order (see the module docstring)."""
    import torch.nn.functional as F

    head = net.head
    s = head.scale * head.similarities(z).flatten(1)
    target = F.log_softmax(s[:n_ideal].detach(), dim=1)
    return F.kl_div(F.log_softmax(s[n_ideal:2 * n_ideal], dim=1), target, log_target=True, reduction="batchmean")


def init_prototypes(net, embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
    """Set the prototypes to class-mean embeddings plus small random perturbations (one per sub-prototype)."""
    import torch

    rng = np.random.default_rng(seed)
    head = net.head
    z = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    protos = []
    for k in range(head.n_classes):
        zk = z[labels == k]
        for _ in range(head.per_class):
            if len(zk) >= head.per_class:
                c = zk[rng.choice(len(zk), size=max(1, len(zk) // head.per_class), replace=False)].mean(0)
            else:
                c = rng.normal(size=z.shape[1])
            protos.append(c / max(np.linalg.norm(c), 1e-12))
    with torch.no_grad():
        head.prototypes.copy_(torch.as_tensor(np.stack(protos), dtype=head.prototypes.dtype))
