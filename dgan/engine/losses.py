"""GAN objectives on D's logits (and the least-squares ones, LSGAN, at the end).

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


def lsgan_d_loss(out_real: torch.Tensor, out_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares D loss (Mao et al. 2017, CycleGAN's objective): 0.5 * (mean (D(x) - 1)^2
    + mean D(G(z))^2), halved as in CycleGAN so that D learns at half G's pace."""
    return 0.5 * ((out_real.float() - 1).square().mean() + out_fake.float().square().mean())


def lsgan_g_loss(out_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares G loss: mean (D(G(z)) - 1)^2."""
    return (out_fake.float() - 1).square().mean()
