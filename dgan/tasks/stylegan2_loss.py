"""The StyleGAN2 losses as phases (no backend, no optimizer); dgan.tasks.stylegan2 runs them.

Per step the task asks :meth:`StyleGAN2Loss.phases` which phases run, and for each one
calls the matching method, then backpropagates the returned loss and steps that network's
optimizer. Zero a network's gradients before each of its phases: G phases also leave
gradients on D's parameters (and Dreg none on G's), which must not leak into D's step::

    "Gmain": loss, stats = loss_fn.g_main(batch, c)   -> backward, G optimizer step
    "Greg":  loss, stats = loss_fn.g_reg(batch, c)    -> backward, G optimizer step
    "Dmain": loss, stats = loss_fn.d_main(real, c)    -> backward, D optimizer step
    "Dreg":  loss, stats = loss_fn.d_reg(real, c)     -> backward, D optimizer step
    then G_ema <- EMA of G (dgan.engine.ema.halflife_beta)

Lazy regularisation: R1 runs every ``r1_interval`` steps and path length every
``pl_interval`` steps, each multiplied by its interval so the expected gradient matches
running it every step; build the optimizers with :func:`lazy_adam_hparams` to match.

Losses (logits are raw D outputs, float32):
    Gmain: softplus(-D(G(z)))                    non-saturating
    Dmain: softplus(D(G(z))) + softplus(-D(x))    logistic
    Dreg:  gamma/2 * ||dD(x)/dx||^2 * r1_interval
    Greg:  pl_weight * (||J_w^T y|| - a)^2 * pl_interval, y ~ N(0, I) / sqrt(H W),
           a the running mean of the path length (buffer ``pl_mean``, decay ``pl_decay``).
"""

from __future__ import annotations

import torch
from torch import nn

from dgan.engine import losses
from dgan.ops import double_backward, no_weight_gradients


def lazy_adam_hparams(lr: float, betas: tuple[float, float], interval: int
                      ) -> tuple[float, tuple[float, float]]:
    """Adam ``lr``/``betas`` for a network regularised every ``interval`` steps.

    A regulariser phase every ``interval`` steps makes ``interval + 1`` optimizer steps per
    ``interval`` steps; scaling ``lr`` and ``beta ** ratio`` keeps the effective schedule.
    """
    if interval <= 0:
        return lr, betas
    ratio = interval / (interval + 1)
    return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)


def _grad_of(output: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``autograd.grad(output, inputs, create_graph=True)`` with autocast off.

    The regularisers take this gradient inside the phase's autocast region. A backward pass
    run under autocast casts again: the fp32 layers' (mapping, style affines, D's head)
    backward matmuls go to bf16 and their results back, a kernel each. With autocast off,
    as PyTorch's AMP notes advise for backward passes, each backward op runs in the dtypes
    its forward saved: bf16 where the forward was bf16, fp32 where it was fp32.
    """
    with torch.autocast(output.device.type, enabled=False):
        return torch.autograd.grad(output, inputs, create_graph=True)


class StyleGAN2Loss(nn.Module):
    """StyleGAN2 losses; its only state is the ``pl_mean`` buffer (checkpoint it).

    Every phase method returns ``(loss, stats)``: a scalar float32 loss to backpropagate
    and a dict of detached 0-dim tensors (call ``float()`` when logging; keeping tensors
    avoids a host sync per phase).

    Args:
        G, D: generator and discriminator (may be DDP-wrapped: only their ``forward`` is
            called). ``G`` must accept the keywords of :class:`dgan.models.stylegan2.Generator`.
        augment: module applied to every image entering D (e.g. ``AdaptiveAugment``) or None.
        r1_gamma: R1 weight; 0 disables Dreg.  r1_interval: lazy R1 interval.
        pl_weight: path-length weight; 0 disables Greg.  pl_interval: lazy interval.
        pl_batch_shrink: Greg runs on ``batch // pl_batch_shrink`` samples.
        pl_decay: decay of the path-length running mean.
        style_mixing_prob: probability of style mixing in G phases and D's fake images.
        merge_d_calls: Dmain runs D once on [fakes; reals] (see d_main); False: one call
            each (an ablation: benchmarks/train_throughput.py measures the difference).
        z_dim: latent size (defaults to ``G.z_dim``).
    """

    def __init__(self, G: nn.Module, D: nn.Module, augment: nn.Module | None = None,
                 r1_gamma: float = 10.0, r1_interval: int = 16, pl_weight: float = 2.0,
                 pl_interval: int = 4, pl_batch_shrink: int = 2, pl_decay: float = 0.01,
                 style_mixing_prob: float = 0.9, z_dim: int | None = None,
                 merge_d_calls: bool = True) -> None:
        super().__init__()
        # Plain attributes, not submodules: the loss's state_dict must hold only its own state.
        object.__setattr__(self, "G", G)
        object.__setattr__(self, "D", D)
        object.__setattr__(self, "augment", augment)
        self.r1_gamma, self.r1_interval = r1_gamma, r1_interval
        self.pl_weight, self.pl_interval = pl_weight, pl_interval
        self.pl_batch_shrink, self.pl_decay = pl_batch_shrink, pl_decay
        self.style_mixing_prob = style_mixing_prob
        self.merge_d_calls = merge_d_calls
        self.z_dim = z_dim if z_dim is not None else getattr(G, "module", G).z_dim
        self.register_buffer("pl_mean", torch.zeros([]))

    def phases(self, step: int) -> list[str]:
        """Phases to run at 0-based ``step``, in order (``Gmain``, ``Greg``, ``Dmain``, ``Dreg``)."""
        out = ["Gmain"]
        if self.pl_weight > 0 and self.pl_interval > 0 and step % self.pl_interval == 0:
            out.append("Greg")
        out.append("Dmain")
        if self.r1_gamma > 0 and self.r1_interval > 0 and step % self.r1_interval == 0:
            out.append("Dreg")
        return out

    def _device(self) -> torch.device:
        return self.pl_mean.device

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.z_dim, device=self._device())

    def _run_d(self, img: torch.Tensor, c: torch.Tensor | None, splits: int = 1
               ) -> torch.Tensor:
        if self.augment is not None:
            img = self.augment(img)
        return self.D(img, c) if splits == 1 else self.D(img, c, splits=splits)

    def g_main(self, batch_size: int, c: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Non-saturating G loss on ``batch_size`` fakes (``c: [batch, c_dim]`` or None)."""
        img = self.G(self._z(batch_size), c, style_mixing_prob=self.style_mixing_prob)
        logits = self._run_d(img, c)
        loss = losses.g_loss(logits)
        return loss, {"G/loss": loss.detach(), "G/fake_score": logits.detach().mean()}

    def g_reg(self, batch_size: int, c: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Path-length penalty on ``batch_size // pl_batch_shrink`` fakes; updates ``pl_mean``."""
        # The loss is a gradient: its convolutions take the fast double-backward path.
        with double_backward():
            return self._g_reg(batch_size, c)

    def _g_reg(self, batch_size: int, c: torch.Tensor | None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = max(batch_size // self.pl_batch_shrink, 1)
        c = c[:n] if c is not None else None
        # G returns the image and d sum(img * y) / d ws for fresh noise y, the gradient still
        # differentiable (Generator._path_length_grad: autograd.grad when eager; written out
        # as forward ops when G is compiled, which makes this whole phase one graph).
        img, grad = self.G(self._z(n), c, style_mixing_prob=self.style_mixing_prob,
                           path_length=True)
        lengths = grad.float().square().sum(dim=2).mean(dim=1).sqrt()
        pl_mean = self.pl_mean.lerp(lengths.mean().detach(), self.pl_decay)
        self.pl_mean.copy_(pl_mean)
        penalty = (lengths - pl_mean).square().mean()
        # img[:, 0, 0, 0] * 0 keeps every G parameter in the graph, which DDP requires.
        loss = penalty * (self.pl_weight * self.pl_interval) + img[:, 0, 0, 0].mean() * 0
        return loss, {"G/pl_penalty": penalty.detach(), "G/pl_mean": pl_mean.detach()}

    def d_main(self, real: torch.Tensor, c: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logistic D loss on ``real: [N, C, H, W]`` and as many fakes (G gets no gradient)."""
        with torch.no_grad():
            fake = self.G(self._z(real.shape[0]), c, style_mixing_prob=self.style_mixing_prob,
                          update_emas=True)
        # Fakes and reals through D in one call (one forward and one backward of twice the
        # batch instead of two: half the kernel launches and fuller ones); the
        # minibatch-stddev groups stay within each half, so the logits are those of two calls.
        if self.merge_d_calls:
            n = fake.shape[0]
            both = torch.cat([fake, real])  # one dtype (promoted) and, both NHWC, NHWC
            logits = self._run_d(both, torch.cat([c, c]) if c is not None else None, splits=2)
            logits_fake, logits_real = logits[:n], logits[n:]
        else:
            logits_fake, logits_real = self._run_d(fake, c), self._run_d(real, c)
        if self.augment is not None and hasattr(self.augment, "observe"):
            self.augment.observe(logits_real)
        loss = losses.d_loss(logits_real, logits_fake)
        return loss, {"D/loss": loss.detach(), "D/real_score": logits_real.detach().mean(),
                      "D/fake_score": logits_fake.detach().mean()}

    def d_reg(self, real: torch.Tensor, c: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Lazy R1 penalty ``gamma/2 E||dD(x)/dx||^2``, times ``r1_interval``."""
        with double_backward():
            return self._d_reg(real, c)

    def _d_reg(self, real: torch.Tensor, c: torch.Tensor | None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        real = real.detach().requires_grad_(True)
        if self.augment is None:
            # D returns the logits and d logits.sum() / d real, still differentiable
            # (Discriminator._input_grad: autograd.grad when eager; written out as forward
            # ops when D is compiled, which makes this whole phase one graph).
            logits, grad = self.D(real, c, input_grad=True)
        else:
            # Through the augmentation too: eager autograd (the recipe does not compile
            # Dreg with augmentation). D's convolution weight gradients are not wanted.
            logits = self._run_d(real, c)
            with no_weight_gradients():
                (grad,) = _grad_of(logits.sum(), real)
        penalty = grad.float().square().sum(dim=[1, 2, 3]).mean()
        loss = penalty * (self.r1_gamma / 2 * self.r1_interval) + logits.mean() * 0
        return loss, {"D/r1_penalty": penalty.detach()}
