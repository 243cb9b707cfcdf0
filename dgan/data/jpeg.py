"""Baseline JPEG compression and decompression in torch, on the images' own device.

The degradation pipeline (dgan.data.degrade) compresses batches that may live on a GPU, so
the codec is written as tensor ops instead of a PIL round trip: YCbCr (JFIF), 4:2:0 chroma
subsampling, 8x8 block DCT as a matmul with the orthonormal DCT-II basis (the DCT of the
JPEG standard), quantization by the IJG tables scaled by quality as libjpeg does, rounding,
dequantization, inverse DCT, chroma upsampling and back to RGB. The intermediate values are
rounded to 8-bit integers where libjpeg stores them as such (colour conversion, chroma
downsampling, decoded samples), so the result is close to PIL's (libjpeg's) at the same
quality. Entropy coding is lossless and left out. Not differentiable (rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The example quantization tables of the JPEG standard (ITU-T T.81, Annex K, tables K.1 and
# K.2), which libjpeg scales by quality: luminance, then chrominance, in row-major order.
_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)


def quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Luminance and chrominance tables [N, 8, 8] (float) for integer qualities [N] in 1..100:
    libjpeg's jpeg_quality_scaling (5000 / q below 50, 200 - 2 q from 50) applied to the
    standard tables, (base x scale + 50) // 100 clamped to 1..255 (baseline, as PIL asks)."""
    q = quality.to(torch.int64).clamp(1, 100)
    scale = torch.where(q < 50, 5000 // q, 200 - 2 * q).view(-1, 1, 1)
    tables = []
    for base in (_LUMA, _CHROMA):
        t = torch.tensor(base, dtype=torch.int64).view(1, 8, 8)
        tables.append(((t * scale + 50) // 100).clamp(1, 255).to(torch.float32))
    return tables[0], tables[1]


def _dct_basis() -> torch.Tensor:
    """[64, 64] matrix of the 2-D 8x8 DCT on row-major flattened blocks: kron(D, D) for the
    orthonormal 8-point DCT-II matrix D, so D @ B @ D.T (the DCT of the JPEG standard) is
    B.flatten() @ kron(D, D).T, one large matmul for all blocks; orthonormal, so its
    transpose is the inverse DCT."""
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * 0.5
    d[0] = math.sqrt(1 / 8)
    return torch.kron(d, d).to(torch.float32)


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Compress and decompress one component [N, H, W] (0..255, H and W multiples of 8) with
    per-sample tables [N, 8, 8]: level shift, block DCT, quantize, dequantize, inverse DCT;
    the decoded samples are rounded and clamped to 0..255 as a decoder writes them."""
    n, h, w = plane.shape
    basis = _dct_basis().to(plane.device)
    blocks = (plane - 128).view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = blocks.reshape(n, -1, 64) @ basis.T
    t = table.to(plane.device).view(n, 1, 64)
    coef = torch.round(coef / t) * t
    out = (coef @ basis).view(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4)
    return torch.round(out.reshape(n, h, w) + 128).clamp(0, 255)


def jpeg(x: torch.Tensor, quality: torch.Tensor | int) -> torch.Tensor:
    """JPEG-compress and decode `x` [N, C, H, W] (C 1 or 3, float in [0, 1]) at `quality`
    (an int or one integer per sample, 1..100) on x's device. RGB is coded as YCbCr 4:2:0,
    grey as Y alone. Any H, W: the image is padded by repeating its last row and column to a
    multiple of 16 (as libjpeg fills partial blocks) and cropped back. Returns float images
    on 8-bit levels, in [0, 1]."""
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"jpeg: expected 1 or 3 channels, got shape {tuple(x.shape)}")
    q = torch.as_tensor(quality, dtype=torch.int64).cpu().expand(n)
    luma, chroma = quant_tables(q)
    ph, pw = -h % 16, -w % 16
    x = torch.round(x.float().clamp(0, 1) * 255)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    if c == 1:
        return (_code_plane(x[:, 0], luma).unsqueeze(1) / 255)[..., :h, :w]
    r, g, b = x.unbind(1)
    # JFIF colour conversion; libjpeg rounds each component to an integer.
    y = torch.round(0.299 * r + 0.587 * g + 0.114 * b)
    cb = torch.round(-0.168736 * r - 0.331264 * g + 0.5 * b + 128).clamp(0, 255)
    cr = torch.round(0.5 * r - 0.418688 * g - 0.081312 * b + 128).clamp(0, 255)
    # 4:2:0: each chroma sample is the rounded mean of a 2x2 block (libjpeg's box filter).
    cbcr = torch.round(F.avg_pool2d(torch.stack([cb, cr], 1), 2))
    hh, hw = cbcr.shape[-2:]
    y = _code_plane(y, luma)
    cbcr = _code_plane(cbcr.view(n * 2, hh, hw), chroma.repeat_interleave(2, 0))
    # libjpeg's "fancy" upsampling is the triangle filter (3/4, 1/4 per axis, edges
    # repeated), which is bilinear interpolation at half-pixel centres.
    cbcr = F.interpolate(cbcr.view(n, 2, hh, hw), scale_factor=2, mode="bilinear",
                         align_corners=False)
    cb, cr = torch.round(cbcr).unbind(1)
    cb, cr = cb - 128, cr - 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return (torch.round(rgb).clamp(0, 255) / 255)[..., :h, :w]
