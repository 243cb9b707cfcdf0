"""GAN objectives on D's logits.

D maximises log D(x) + log(1 - D(G(z))) = -softplus(-l_real) - softplus(l_fake);
G minimises the non-saturating -log D(G(z)) = softplus(-l_fake). softplus on logits is the
numerically stable form of these logs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating D loss, averaged over the batch. Logits: [N] any float dtype."""
    return F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean()


def g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: -log sigmoid(D(G(z))), averaged over the batch."""
    return F.softplus(-logits_fake.float()).mean()


def r1_penalty(logits_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||dD(x)/dx||^2; `real` must require grad. Differentiable."""
    (grad,) = torch.autograd.grad(logits_real.float().sum(), real, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()
