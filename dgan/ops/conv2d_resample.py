"""2D convolution combined with FIR up- or down-sampling (the StyleGAN resampling convention).

``conv2d_resample(x, w, f, up, down, padding, groups)`` with ``x: [N, Cin, H, W]`` and
``w: [Cout, Cin/groups, k, k]`` returns ``[N, Cout, H*up/down, W*up/down]`` when
``padding = (k - 1) // 2``:

* ``up = down = 1``: ``conv2d`` (cuDNN).
* ``down > 1``: low-pass with ``f`` (one :func:`upfirdn2d` call), then a strided conv.
  For 1x1 kernels the subsampling is folded into the filter pass (4x less filtering).
* ``up > 1``: transposed strided conv (cuDNN), then low-pass with ``f`` and gain ``up**2``.

Only one of ``up`` / ``down`` may exceed 1. The convolution itself always runs in cuDNN
(or the CPU backend), on the fused path through :mod:`dgan.ops.conv2d_gradfix` so that
its second derivative uses the fast kernels too; the FIR part goes through
:mod:`dgan.ops.upfirdn2d`.
"""

from __future__ import annotations

import torch

from dgan.ops.conv2d_gradfix import conv2d, conv_transpose2d
from dgan.ops.upfirdn2d import upfirdn2d, upfirdn2d_input_grad


def _split(total: int) -> tuple[int, int]:
    return (total + 1) // 2, total // 2


def conv2d_resample(
    x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1,
    down: int = 1, padding: int = 0, groups: int = 1, impl: str | None = None,
) -> torch.Tensor:
    """Convolve ``x: [N, Cin, H, W]`` with ``w: [Cout, Cin/groups, k, k]`` and resample."""
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample supports up-sampling or down-sampling, not both")
    k = w.shape[-1]
    fw = 1 if f is None else f.shape[-1]
    if down > 1:
        p0, p1 = _split(fw - down + 2 * padding)
        if k == 1:
            x = upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1), impl=impl)
            return conv2d(x, w, groups=groups, impl=impl)
        x = upfirdn2d(x, f, padding=(p0, p1, p0, p1), impl=impl)
        return conv2d(x, w, stride=down, groups=groups, impl=impl)
    if up > 1:
        cout, cin_g = w.shape[0], w.shape[1]
        # conv_transpose2d wants [Cin, Cout/groups, k, k]; flipping the taps makes the result
        # equal to a plain convolution of the zero-upsampled input.
        wt = w.reshape(groups, cout // groups, cin_g, k, k).transpose(1, 2)
        wt = wt.reshape(groups * cin_g, cout // groups, k, k).flip([2, 3])
        x = conv_transpose2d(x, wt, stride=up, groups=groups, impl=impl)
        p0, p1 = _split(up + fw - 2 * k + 2 * padding)
        return upfirdn2d(x, f, padding=(p0, p1, p0, p1), gain=up * up, impl=impl)
    return conv2d(x, w, padding=padding, groups=groups, impl=impl)


def conv2d_resample_input_grad(
    dy: torch.Tensor, w: torch.Tensor, x_hw: tuple[int, int], f: torch.Tensor | None = None,
    up: int = 1, down: int = 1, padding: int = 0, groups: int = 1, impl: str | None = None,
) -> torch.Tensor:
    """The gradient of :func:`conv2d_resample` with respect to ``x`` (spatial size ``x_hw``)
    given the output gradient ``dy``, written with the same kinds of ops: transposed and
    plain convolutions and :func:`upfirdn2d_input_grad`. Code that spells a gradient out as a
    forward computation (so that a compiled graph differentiates it only once) uses it.
    """
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample supports up-sampling or down-sampling, not both")
    k = w.shape[-1]
    fw = 1 if f is None else f.shape[-1]
    h, wd = x_hw
    if down > 1:
        p0, p1 = _split(fw - down + 2 * padding)
        pad = (p0, p1, p0, p1)
        if k == 1:
            g = conv_transpose2d(dy, w, groups=groups, impl=impl)
            return upfirdn2d_input_grad(g, f, x_hw, down=down, padding=pad, impl=impl)
        hf, wf = h + p0 + p1 - fw + 1, wd + p0 + p1 - fw + 1  # the filtered input's size
        op = (hf - ((dy.shape[2] - 1) * down + k), wf - ((dy.shape[3] - 1) * down + k))
        g = conv_transpose2d(dy, w, stride=down, output_padding=op, groups=groups, impl=impl)
        return upfirdn2d_input_grad(g, f, x_hw, padding=pad, impl=impl)
    if up > 1:
        cout, cin_g = w.shape[0], w.shape[1]
        wt = w.reshape(groups, cout // groups, cin_g, k, k).transpose(1, 2)
        wt = wt.reshape(groups * cin_g, cout // groups, k, k).flip([2, 3])
        p0, p1 = _split(up + fw - 2 * k + 2 * padding)
        ht, wt_ = (h - 1) * up + k, (wd - 1) * up + k  # the transposed convolution's output
        g = upfirdn2d_input_grad(dy, f, (ht, wt_), padding=(p0, p1, p0, p1), gain=up * up,
                                 impl=impl)
        return conv2d(g, wt, stride=up, groups=groups, impl=impl)
    return conv_transpose2d(dy, w, padding=padding, groups=groups, impl=impl)
