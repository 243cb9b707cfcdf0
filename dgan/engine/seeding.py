"""Randomness without saved state: every draw of a step comes from (seed, rank, step, phase).

A resumed run draws exactly what the uninterrupted run would, whatever RNG state the
checkpoint holds (docs/design.md, "Randomness without state"). `phase` is a small integer
that a task picks per kind of draw (DCGAN: 0 D's latents, 1 G's latents, 2 fake labels;
StyleGAN2: 17 for the global torch RNG of the whole step); tasks keep their numbers so
that runs stay reproducible across versions.

Draws that must not depend on the process a sample lands in (pix2pix's dropout masks, the
sr task's crops and degradations) use `sample_seed` / `sample_generator`: (seed, step, phase, the sample's index in the step's global batch), the same
on every rank and for any split of the global batch over ranks and micro-batches.
"""

from __future__ import annotations

import numpy as np
import torch


def step_seed(seed: int, rank: int, step: int, phase: int) -> int:
    """A 32-bit seed that depends on all four keys (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed, rank, step, phase]).generate_state(1)[0])


def sample_seed(seed: int, step: int, phase: int, index: int) -> int:
    """A 32-bit seed of one sample of a step's global batch (index 0 .. global batch - 1,
    rank-major: rank r's micro-batch m holds indices r x B x A + m x B + [0, B) for
    train.batch_size B and train.grad_accum A). Five keys (the last a constant 1), so that
    it is never one of `step_seed`'s four-key seeds."""
    return int(np.random.SeedSequence([seed, step, phase, index, 1]).generate_state(1)[0])


def step_generator(seed: int, rank: int, step: int, phase: int) -> torch.Generator:
    """A CPU generator seeded by `step_seed`; draw on the CPU and move, so that the bytes do
    not depend on the device."""
    return torch.Generator().manual_seed(step_seed(seed, rank, step, phase))


def sample_generator(seed: int, step: int, phase: int, index: int) -> torch.Generator:
    """A CPU generator seeded by `sample_seed`: one sample's own draws (draw on the CPU)."""
    return torch.Generator().manual_seed(sample_seed(seed, step, phase, index))


def seed_global(seed: int, rank: int, step: int, phase: int) -> None:
    """Seed torch's global RNG (for code that draws from it: noise inputs, augmentation)."""
    torch.manual_seed(step_seed(seed, rank, step, phase))
