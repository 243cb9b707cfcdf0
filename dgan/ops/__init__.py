"""Custom ops with a plain PyTorch reference and a fused Triton implementation.

Every op takes ``impl=None | 'reference' | 'fused' | 'auto'``; ``None`` follows
:func:`set_impl` / ``DGAN_OPS`` (default ``auto``: fused on CUDA when triton imports).
See ``docs/ops.md`` for what each fused kernel covers.
"""

from dgan.ops._dispatch import get_impl, set_impl, triton_available
from dgan.ops.bias_act import ACTIVATIONS, bias_act, bias_act_reference
from dgan.ops.conv2d_gradfix import double_backward, no_weight_gradients
from dgan.ops.conv2d_resample import conv2d_resample
from dgan.ops.modulated_conv2d import (
    modulate_weight,
    modulate_weight_reference,
    modulated_conv2d,
)
from dgan.ops.scale_bias_act import scale_bias_act, scale_bias_act_reference
from dgan.ops.upfirdn2d import (
    downsample2d,
    filter2d,
    setup_filter,
    upfirdn2d,
    upfirdn2d_reference,
    upsample2d,
)

__all__ = [
    "ACTIVATIONS", "bias_act", "bias_act_reference", "conv2d_resample", "double_backward",
    "downsample2d", "filter2d", "get_impl", "modulate_weight", "modulate_weight_reference",
    "modulated_conv2d", "no_weight_gradients", "scale_bias_act", "scale_bias_act_reference",
    "set_impl", "setup_filter", "triton_available",
    "upfirdn2d", "upfirdn2d_reference", "upsample2d",
]
