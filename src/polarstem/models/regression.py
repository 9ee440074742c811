"""The regression regime: predict the in-plane polarization direction as a vector, not a class.

Definition used here (precisely):

* The network's head (:class:`polarstem.models.nets.VectorHead`) maps the embedding to a 2-vector
  v = kappa (cos theta, sin theta): theta the projected polarization direction (x = column, y = row,
  as ``classes.CLASS_DIRECTIONS``), kappa >= 0 how sure the network is.
* Loss: the von Mises negative log-likelihood of the true direction theta_y,
  -kappa cos(theta - theta_y) + log I0(kappa), a circular loss (theta and theta + 2 pi are the same
  direction, and a 170 degree miss costs more than a 10 degree one, which cross-entropy on 8 classes
  does not know) whose kappa is learned, not fixed.
* Classes are taken from the angle: the class k whose direction d_k is nearest theta. For the tools the
  head gives logits v . d_k = kappa cos(theta - theta_k), the von Mises log-density at each class
  direction up to a constant, so a softmax over them is the distribution sampled at the 8 directions;
  the temperature, the symmetry images and the cell votes act on them as on any classifier's.

Why: the study trains this regime beside classification and prototypes. Directions that sit next to
each other on the circle are physically close (a domain wall rotates P through its neighbours); a
circular loss uses that order, where a classifier sees 8 unrelated labels.
"""

from __future__ import annotations

import numpy as np

from ..classes import CLASS_DIRECTIONS


def von_mises_nll(vector, labels):
    """Mean von Mises negative log-likelihood of the class directions ``labels`` under predicted
    vectors (N, 2) (see the module docstring); log I0 through the scaled Bessel function, stable for
    any kappa."""
    import torch

    directions = torch.as_tensor(CLASS_DIRECTIONS, dtype=vector.dtype, device=vector.device)[labels]
    kappa = vector.norm(dim=1)
    log_i0 = torch.log(torch.special.i0e(kappa)) + kappa
    return (-(vector * directions).sum(dim=1) + log_i0).mean()


def class_of_angle(theta: np.ndarray) -> np.ndarray:
    """The class whose direction is nearest the angle ``theta`` (radians, from +x towards +y)."""
    return (np.round(np.asarray(theta) / (np.pi / 4)).astype(int) % 8).astype(np.int8)
