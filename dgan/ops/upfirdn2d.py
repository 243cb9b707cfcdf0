"""Upsample, pad, FIR-filter and downsample a batch of 2D images in one op.

``upfirdn2d(x, f, up, down, padding, flip_filter, gain)`` with ``x: [N, C, H, W]``:

1. upsample by inserting ``up - 1`` zeros after every pixel (``[N, C, H*up, W*up]``),
2. pad with zeros by ``padding = (x0, x1, y0, y1)`` (negative values crop),
3. convolve every channel with ``f`` (true convolution; ``flip_filter=True`` gives
   correlation), scaled so that the total gain is ``gain``,
4. keep every ``down``-th pixel.

Output size: ``OH = (H*up_y + y0 + y1 - FH) // down_y + 1`` (same for width).

``f`` is ``[FH, FW]`` (non-separable), ``[FW]`` (separable: applied along both axes) or
``None`` (identity). Filters are constants: no gradient flows into ``f``.

The gradient of upfirdn2d is upfirdn2d with the flipped filter, ``up`` and ``down``
swapped and transposed padding, so both paths differentiate to any order. The fused
path is one Triton kernel per call (forward and every backward), float32/bf16/fp16 with
fp32 accumulation, NCHW or channels_last (channels_last has its own 2D-tiled kernel with
vectorised channel loads; see :mod:`dgan.ops._upfirdn2d_triton`).

Eager calls go through an autograd Function (``_UpFirDn2dFused``). Inside a torch.compile
region the fused path is the ``torch.library`` custom op ``dgan::upfirdn2d`` instead (with a
fake implementation for tracing and an autograd formula that calls the op again), so the
compiler keeps the Triton kernel as one node rather than breaking the graph or lowering to
the depthwise-convolution reference (see :mod:`dgan.ops._dispatch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dgan.ops._dispatch import use_fused


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return int(v[0]), int(v[1])


def _padding(p: int | tuple[int, ...] | list[int]) -> tuple[int, int, int, int]:
    if isinstance(p, int):
        return p, p, p, p
    if len(p) == 2:
        return int(p[0]), int(p[0]), int(p[1]), int(p[1])
    if len(p) == 4:
        return tuple(int(v) for v in p)  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (x, y) or (x0, x1, y0, y1); got {p!r}")


def setup_filter(
    f: list[float] | torch.Tensor, device: torch.device | str = "cpu", normalize: bool = True,
    flip_filter: bool = False, gain: float = 1.0, separable: bool | None = None,
) -> torch.Tensor:
    """Build a float32 FIR filter. ``[1, 3, 3, 1]`` gives the separable StyleGAN filter ``[4]``.

    A 1D filter stays separable (``[FW]``) unless ``separable=False``, which makes it the
    outer product ``[FW, FW]``. ``normalize`` scales the filter to sum 1 (a normalised 1D
    filter implies a 2D filter that sums to 1 too), ``gain`` then scales the 2D response (``gain**0.5`` per axis for separable filters).
    """
    f = torch.as_tensor(f, dtype=torch.float32, device=device)
    if f.ndim not in (1, 2):
        raise ValueError("filter must be 1D or 2D")
    if f.ndim == 1 and separable is False:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f * (gain ** (f.ndim / 2))


def _out_size(n: int, up: int, down: int, p0: int, p1: int, k: int) -> int:
    return (n * up + p0 + p1 - k) // down + 1


def upfirdn2d_reference(
    x: torch.Tensor, f: torch.Tensor | None, up: int | tuple[int, int] = 1,
    down: int | tuple[int, int] = 1, padding: int | tuple[int, ...] = 0,
    flip_filter: bool = False, gain: float = 1.0,
) -> torch.Tensor:
    """Plain PyTorch: zero-insert reshape, ``F.pad`` / crop, depthwise ``conv2d``, slicing."""
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding(padding)
    n, c, h, w = x.shape
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None].repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::downy, ::downx]


class _UpFirDn2dFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f2d, up, down, pad):
        from dgan.ops import _upfirdn2d_triton as k

        upx, upy = up
        downx, downy = down
        px0, px1, py0, py1 = pad
        y = k.launch(x, f2d, upx, upy, downx, downy, px0, px1, py0, py1)
        # The filter is a constant (no grad): kept as is, not as a saved tensor, whose
        # unpacking makes a new tensor object and would lose the flipped taps cached on it.
        ctx.f2d = f2d
        ctx.cfg = (x.shape, up, down, pad, y.shape)
        return y

    @staticmethod
    def backward(ctx, dy):
        f2d = ctx.f2d
        xshape, (upx, upy), (downx, downy), (px0, _, py0, _), yshape = ctx.cfg
        fh, fw = f2d.shape
        h, w = xshape[2], xshape[3]
        oh, ow = yshape[2], yshape[3]
        pad = _transposed_padding(fh, fw, h, w, oh, ow, upx, upy, downx, downy, px0, py0)
        dx = _UpFirDn2dFused.apply(dy, _flipped(f2d), (downx, downy), (upx, upy), pad)
        return dx, None, None, None, None


def _transposed_padding(fh: int, fw: int, h: int, w: int, oh: int, ow: int, upx: int, upy: int,
                        downx: int, downy: int, px0: int, py0: int) -> tuple[int, int, int, int]:
    """Padding of the gradient op (flipped filter, ``up``/``down`` swapped) of a forward that
    mapped ``[H, W]`` to ``[OH, OW]``: it maps ``[OH, OW]`` back to ``[H, W]``."""
    return (fw - px0 - 1, w * upx - ow * downx + px0 - upx + 1,
            fh - py0 - 1, h * upy - oh * downy + py0 - upy + 1)


def _is_channels_last(x: torch.Tensor) -> bool:
    """The layout rule of :func:`dgan.ops._upfirdn2d_triton.launch`: its output is
    channels_last exactly when this is true for its input, contiguous otherwise."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# The fused kernel as a ``torch.library`` custom op, used only inside torch.compile regions:
# Dynamo keeps it as one node (no graph break) and Inductor calls it as an opaque kernel
# between the code it generates. ``f`` is the fp32 ``[FH, FW]`` correlation kernel with flip
# and gain applied (as ``launch`` wants). ``channels_last`` is the layout the caller traced
# (``_is_channels_last(x)``) and fixes the output layout, so the fake implementation and the
# real one agree even if a compiled graph hands the op an input with other strides than at
# tracing time (the input is then converted first). The eager path keeps
# ``_UpFirDn2dFused``, whose derivatives of every order R1 and path length use.
_SCHEMA = ("(Tensor x, Tensor f, int upx, int upy, int downx, int downy, int padx0, int padx1, "
           "int pady0, int pady1, bool channels_last) -> Tensor")


@torch.library.custom_op("dgan::upfirdn2d", mutates_args=(), schema=_SCHEMA)
def _upfirdn2d_op(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, channels_last):
    from dgan.ops import _upfirdn2d_triton as k

    if _is_channels_last(x) != channels_last:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
    return k.launch(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1)


@_upfirdn2d_op.register_fake
def _upfirdn2d_fake(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, channels_last):
    n, c, h, w = x.shape
    fh, fw = f.shape
    oh = _out_size(h, upy, downy, pady0, pady1, fh)
    ow = _out_size(w, upx, downx, padx0, padx1, fw)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((n, c, max(oh, 0), max(ow, 0)), dtype=x.dtype, device=x.device,
                       memory_format=fmt)


def _upfirdn2d_setup(ctx, inputs, output):
    x, f, upx, upy, downx, downy, padx0, _, pady0, _, _ = inputs
    ctx.save_for_backward(f)
    ctx.cfg = (x.shape[2], x.shape[3], output.shape[2], output.shape[3], upx, upy, downx, downy,
               padx0, pady0)


def _upfirdn2d_backward(ctx, dy):
    (f,) = ctx.saved_tensors
    h, w, oh, ow, upx, upy, downx, downy, px0, py0 = ctx.cfg
    pad = _transposed_padding(f.shape[0], f.shape[1], h, w, oh, ow, upx, upy, downx, downy,
                              px0, py0)
    dx = torch.ops.dgan.upfirdn2d(dy, f.flip([0, 1]), downx, downy, upx, upy, *pad,
                                  _is_channels_last(dy))
    return (dx,) + (None,) * 10


_upfirdn2d_op.register_autograd(_upfirdn2d_backward, setup_context=_upfirdn2d_setup)


def upfirdn2d(
    x: torch.Tensor, f: torch.Tensor | None, up: int | tuple[int, int] = 1,
    down: int | tuple[int, int] = 1, padding: int | tuple[int, ...] = 0,
    flip_filter: bool = False, gain: float = 1.0, impl: str | None = None,
) -> torch.Tensor:
    """Upsample, pad, filter, downsample ``x: [N, C, H, W]`` -> ``[N, C, OH, OW]``.

    See the module docstring for the exact semantics. ``impl`` overrides the global
    reference/fused switch for this call.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects [N, C, H, W], got shape {tuple(x.shape)}")
    if not use_fused("upfirdn2d", x, impl):
        return upfirdn2d_reference(x, f, up, down, padding, flip_filter, gain)
    f2d = _fused_filter(f, flip_filter, gain, x.device)
    up, down, pad = _pair(up), _pair(down), _padding(padding)
    if torch.compiler.is_compiling():
        # One opaque node for Dynamo/Inductor (no graph break); its backward is the same op.
        return torch.ops.dgan.upfirdn2d(x, f2d, *up, *down, *pad, _is_channels_last(x))
    return _UpFirDn2dFused.apply(x, f2d, up, down, pad)


def upfirdn2d_input_grad(
    dy: torch.Tensor, f: torch.Tensor | None, x_hw: tuple[int, int],
    up: int | tuple[int, int] = 1, down: int | tuple[int, int] = 1,
    padding: int | tuple[int, ...] = 0, flip_filter: bool = False, gain: float = 1.0,
    impl: str | None = None,
) -> torch.Tensor:
    """The gradient of :func:`upfirdn2d` with respect to its input of spatial size ``x_hw``,
    given the output gradient ``dy``: the adjoint op, which is again one ``upfirdn2d`` (the
    flipped filter, ``up`` and ``down`` swapped, the padding transposed). For code that
    writes a gradient out as a forward computation (``Generator`` path length, compiled).
    """
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, _, py0, _ = _padding(padding)
    fw, fh = _fsize(f)
    pad = _transposed_padding(fh, fw, x_hw[0], x_hw[1], dy.shape[2], dy.shape[3], upx, upy,
                              downx, downy, px0, py0)
    return upfirdn2d(dy, f, up=(downx, downy), down=(upx, upy), padding=pad,
                     flip_filter=not flip_filter, gain=gain, impl=impl)


def _fused_filter(f: torch.Tensor | None, flip_filter: bool, gain: float,
                  device: torch.device) -> torch.Tensor:
    """The kernels' filter: fp32 ``[FH, FW]`` correlation taps with ``gain`` applied.

    Filters are constant buffers: rebuilding the taps (outer product, gain, flip) at every
    call would launch the same small kernels again in a step that is bound by launches. So
    they are kept on the filter tensor itself (an attribute: it lives and dies with the
    buffer), keyed on its in-place version, so that a changed buffer is rebuilt; not while
    Dynamo traces, nor for a filter that requires grad.
    """
    if f is None or torch.compiler.is_compiling() or f.requires_grad:
        return _make_fused_filter(f, flip_filter, gain, device)
    key = (f._version, flip_filter, float(gain), str(device))
    per_filter = f.__dict__.setdefault("_dgan_fused_filters", {})
    f2d = per_filter.get(key)
    if f2d is None:
        for stale in [k for k in per_filter if k[0] != f._version]:  # changed in place since
            del per_filter[stale]
        f2d = per_filter[key] = _make_fused_filter(f, flip_filter, gain, device)
    return f2d


def _make_fused_filter(f: torch.Tensor | None, flip_filter: bool, gain: float,
                       device: torch.device) -> torch.Tensor:
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=device)
    f = f.to(device=device, dtype=torch.float32)
    f2d = torch.outer(f, f) if f.ndim == 1 else f
    f2d = f2d * gain
    if not flip_filter:
        f2d = f2d.flip([0, 1])
    return f2d.contiguous()


def _flipped(f2d: torch.Tensor) -> torch.Tensor:
    """``f2d.flip([0, 1])``, made once per filter tensor (the backward's taps)."""
    out = f2d.__dict__.get("_dgan_flipped")
    if out is None or out[0] != f2d._version:
        out = f2d.__dict__["_dgan_flipped"] = (f2d._version, f2d.flip([0, 1]))
    return out[1]


def _fsize(f: torch.Tensor | None) -> tuple[int, int]:
    if f is None:
        return 1, 1
    return (f.shape[-1], f.shape[0]) if f.ndim == 2 else (f.shape[0], f.shape[0])


def filter2d(
    x: torch.Tensor, f: torch.Tensor | None, padding: int | tuple[int, ...] = 0,
    flip_filter: bool = False, gain: float = 1.0, impl: str | None = None,
) -> torch.Tensor:
    """Filter ``x`` with ``f``; extra ``padding`` on top of the 'same'-size padding."""
    px0, px1, py0, py1 = _padding(padding)
    fw, fh = _fsize(f)
    p = (px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2)
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(
    x: torch.Tensor, f: torch.Tensor | None, up: int = 2, padding: int | tuple[int, ...] = 0,
    flip_filter: bool = False, gain: float = 1.0, impl: str | None = None,
) -> torch.Tensor:
    """Upsample ``[N, C, H, W] -> [N, C, H*up, W*up]`` with FIR ``f``; DC gain stays ``gain``."""
    px0, px1, py0, py1 = _padding(padding)
    fw, fh = _fsize(f)
    p = (px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2,
         py1 + (fh - up) // 2)
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * up * up,
                     impl=impl)


def upsample2d_input_grad(
    dy: torch.Tensor, f: torch.Tensor | None, x_hw: tuple[int, int], up: int = 2,
    padding: int | tuple[int, ...] = 0, flip_filter: bool = False, gain: float = 1.0,
    impl: str | None = None,
) -> torch.Tensor:
    """The gradient of :func:`upsample2d` (same arguments) with respect to its input."""
    px0, px1, py0, py1 = _padding(padding)
    fw, fh = _fsize(f)
    p = (px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2,
         py1 + (fh - up) // 2)
    return upfirdn2d_input_grad(dy, f, x_hw, up=up, padding=p, flip_filter=flip_filter,
                                gain=gain * up * up, impl=impl)


def downsample2d(
    x: torch.Tensor, f: torch.Tensor | None, down: int = 2, padding: int | tuple[int, ...] = 0,
    flip_filter: bool = False, gain: float = 1.0, impl: str | None = None,
) -> torch.Tensor:
    """Downsample ``[N, C, H, W] -> [N, C, H//down, W//down]`` after FIR low-pass ``f``."""
    px0, px1, py0, py1 = _padding(padding)
    fw, fh = _fsize(f)
    p = (px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2, py0 + (fh - down + 1) // 2,
         py1 + (fh - down) // 2)
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
