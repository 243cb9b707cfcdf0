"""StyleGAN2 on CUDA: fused vs reference ops agree, and the recipe trains in bf16/fp16.

Tolerance for the fp32 image comparison: 1e-3 relative to the image's max magnitude
(the fused kernels accumulate in fp32 like the reference, but cuDNN may pick different
convolution algorithms between the runs).
"""

from __future__ import annotations

import pytest
import torch

from dgan import ops
from dgan.models.stylegan2 import Discriminator, Generator
from dgan.tasks.stylegan2_loss import StyleGAN2Loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("triton")


def _pair(channels_last: bool) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    kw = {"img_resolution": 64, "channel_base": 2048, "channel_max": 64,
          "channels_last": channels_last}
    g = Generator(z_dim=64, w_dim=64, mapping_layers=2, **kw).cuda()
    return g, Discriminator(**kw).cuda()


@pytest.mark.parametrize("fused_modconv", [False, True])
def test_fused_generator_matches_reference(fused_modconv: bool) -> None:
    g, d = _pair(channels_last=True)
    for m in g.modules():
        if hasattr(m, "fused_modconv"):
            m.fused_modconv = fused_modconv
    z = torch.randn(5, 64, device="cuda")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out = {}
        for impl in ("reference", "fused"):
            ops.set_impl(impl)
            img = g(z, noise_mode="const")
            out[impl] = (img, d(img))
    finally:
        ops.set_impl(None)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for a, b in zip(out["fused"], out["reference"]):
        assert (a - b).abs().max().item() <= 1e-3 * max(b.abs().max().item(), 1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_recipe_trains_with_fused_ops_under_autocast(dtype: torch.dtype) -> None:
    g, d = _pair(channels_last=True)
    loss_fn = StyleGAN2Loss(g, d, r1_gamma=1.0, r1_interval=2, pl_interval=2).cuda()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-3, betas=(0.0, 0.99), fused=True)
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.0, 0.99), fused=True)
    real = (torch.rand(8, 3, 64, 64, device="cuda") * 2 - 1).to(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in list(g.parameters()) + list(d.parameters())]
    ops.set_impl("fused")
    try:
        for step in range(4):
            for phase in loss_fn.phases(step):
                opt = opt_g if phase.startswith("G") else opt_d
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=dtype):
                    loss, _ = {"Gmain": lambda: loss_fn.g_main(8),
                               "Greg": lambda: loss_fn.g_reg(8),
                               "Dmain": lambda: loss_fn.d_main(real),
                               "Dreg": lambda: loss_fn.d_reg(real)}[phase]()
                loss.backward()
                assert torch.isfinite(loss), phase
                opt.step()
    finally:
        ops.set_impl(None)
    after = list(g.parameters()) + list(d.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
