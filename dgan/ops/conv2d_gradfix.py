"""2D convolution whose second derivative runs on the fast convolution kernels.

``conv2d(x, w, stride, padding, groups)`` and ``conv_transpose2d(...)`` compute exactly
what ``torch.nn.functional`` computes. They differ in how autograd differentiates them
twice, which R1 and path-length regularisation do:

* PyTorch's own double backward of a convolution computes the weight-gradient terms as a
  convolution whose *kernel* is the incoming gradient, an image-sized kernel (256x256 at
  StyleGAN2-256). cuDNN has no good algorithm for that and falls back to slow generic
  kernels: on an H200 five such calls per 16-step cycle took 20 ms each.
* Here the gradient of a convolution is written with two differentiable autograd
  Functions: the input gradient is the transposed convolution (this same Function), and
  the weight gradient is ``aten.convolution_backward`` with only the weight output, whose
  own derivatives are again a convolution and a transposed convolution. Every derivative
  order therefore runs as an ordinary forward, data-gradient or weight-gradient kernel.

A regulariser that only needs the gradient with respect to the *input* (R1: dD/dx; path
length: dG/dw) should wrap its ``torch.autograd.grad`` call in :func:`no_weight_gradients`:
a Python autograd Function cannot tell which of its inputs a particular ``grad`` call
wants, so without the hint it would compute weight gradients that are thrown away.
Only do so when no convolution weight depends on the variable being differentiated: the
per-sample weights of ``fused_modconv`` are functions of the styles, and skipping their
gradient would silently drop part of dG/dw.

The custom path only pays off where a graph is differentiated twice; for a first-order
backward torch's single C++ ``convolution_backward`` call is at least as fast and has no
Python overhead per layer. So convolutions use it when they are *created* inside
:func:`double_backward` (``StyleGAN2Loss`` wraps its R1 and path-length phases in it) on
the fused path (CUDA by default), or when ``impl='fused'`` is passed explicitly; otherwise
they are plain ``F.conv2d`` / ``F.conv_transpose2d``. Measured on an H200 (StyleGAN2-256,
batch 64, custom path in every phase): 298 img/s against 263 with torch's double backward.
Under autocast the inputs are cast to the autocast dtype first, as autocast would, and the
convolutions run in that dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from dgan.ops._dispatch import use_fused

# Switches read when a convolution is created (double_backward) or differentiated
# (no_weight_gradients); module globals, so the autograd engine's threads see them too.
_flags = {"double_backward": False, "no_weight_gradients": False}


@contextlib.contextmanager
def _switch(flag: str, on: bool) -> Iterator[None]:
    old = _flags[flag]
    _flags[flag] = on or old
    try:
        yield
    finally:
        _flags[flag] = old


def double_backward(enable: bool = True) -> contextlib.AbstractContextManager[None]:
    """Convolutions created inside get the custom double-backward path (on the fused path)."""
    return _switch("double_backward", enable)


def no_weight_gradients(disable: bool = True) -> contextlib.AbstractContextManager[None]:
    """Skip convolution weight gradients inside (use around input-only ``autograd.grad``)."""
    return _switch("no_weight_gradients", disable)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


# cfg = (transposed, stride, padding, output_padding, groups), all hashable.
_Cfg = tuple[bool, tuple[int, int], tuple[int, int], tuple[int, int], int]


def _run(x: torch.Tensor, w: torch.Tensor, cfg: _Cfg) -> torch.Tensor:
    transposed, stride, padding, output_padding, groups = cfg
    if transposed:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding,
                                  output_padding=output_padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _input_grad_cfg(cfg: _Cfg, x_shape: torch.Size, y_shape: torch.Size,
                    w_shape: torch.Size) -> _Cfg:
    """The op that maps a gradient of the output back to the input's shape."""
    transposed, stride, padding, _, groups = cfg
    if transposed:
        return False, stride, padding, (0, 0), groups
    k = w_shape[2:]
    op = tuple(x_shape[i + 2] - ((y_shape[i + 2] - 1) * stride[i] - 2 * padding[i] + k[i])
               for i in range(2))
    return True, stride, padding, op, groups  # type: ignore[return-value]


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, cfg):
        ctx.save_for_backward(x, w)
        ctx.cfg = cfg
        return _run(x, w, cfg)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        cfg = ctx.cfg
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = _Conv.apply(gy, w, _input_grad_cfg(cfg, x.shape, gy.shape, w.shape))
        if ctx.needs_input_grad[1] and not _flags["no_weight_gradients"]:
            gw = _ConvWeightGrad.apply(gy, x, w.detach(), cfg)
        return gx, gw, None


class _ConvWeightGrad(torch.autograd.Function):
    """``gw(gy, x)``: bilinear, so its derivatives are the forward and input-gradient ops."""

    @staticmethod
    def forward(ctx, gy, x, w, cfg):
        transposed, stride, padding, output_padding, groups = cfg
        gw = torch.ops.aten.convolution_backward(
            gy, x, w, None, list(stride), list(padding), [1, 1], transposed,
            list(output_padding), groups, [False, True, False])[1]
        ctx.save_for_backward(gy, x)
        ctx.cfg = cfg
        return gw

    @staticmethod
    def backward(ctx, ggw):
        gy, x = ctx.saved_tensors
        cfg = ctx.cfg
        g_gy = g_x = None
        if ctx.needs_input_grad[0]:
            # <ggw, gw(gy, x)> = <gy, conv(x, ggw)>
            g_gy = _Conv.apply(x, ggw, cfg)
        if ctx.needs_input_grad[1]:
            # = <input_grad(gy, ggw), x>
            g_x = _Conv.apply(gy, ggw, _input_grad_cfg(cfg, x.shape, gy.shape, ggw.shape))
        return g_gy, g_x, None, None


def _custom(op: str, x: torch.Tensor, impl: str | None) -> bool:
    # The custom Functions are plain PyTorch: ``impl='fused'`` needs no Triton here.
    if impl == "fused":
        return True
    return _flags["double_backward"] and use_fused(op, x, impl)


def _apply(x: torch.Tensor, w: torch.Tensor, cfg: _Cfg) -> torch.Tensor:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = (torch.get_autocast_dtype(dev) if hasattr(torch, "get_autocast_dtype")
              else torch.get_autocast_gpu_dtype())
        x, w = x.to(dt), w.to(dt)
        with torch.autocast(dev, enabled=False):
            return _Conv.apply(x, w, cfg)
    return _Conv.apply(x, w, cfg)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0, groups: int = 1,
           impl: str | None = None) -> torch.Tensor:
    """``F.conv2d`` (no bias, no dilation); fast double backward inside :func:`double_backward`."""
    if not _custom("conv2d", x, impl):
        return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    return _apply(x, w, (False, _pair(stride), _pair(padding), (0, 0), groups))


def conv_transpose2d(x: torch.Tensor, w: torch.Tensor, stride: int | tuple[int, int] = 1,
                     padding: int | tuple[int, int] = 0,
                     output_padding: int | tuple[int, int] = 0, groups: int = 1,
                     impl: str | None = None) -> torch.Tensor:
    """``F.conv_transpose2d`` (no bias, no dilation) with a fast double backward."""
    if not _custom("conv_transpose2d", x, impl):
        return F.conv_transpose2d(x, w, stride=stride, padding=padding,
                                  output_padding=output_padding, groups=groups)
    return _apply(x, w, (True, _pair(stride), _pair(padding), _pair(output_padding), groups))
