"""Rank bookkeeping for evaluation: split N samples over ranks, gather features back,
and seed each sample by its global index so results do not depend on the world size.

Every function works with `torch.distributed` initialised or not; without it the
process is rank 0 of a world of 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

_MASK64 = (1 << 64) - 1


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum `t` over the ranks in place (nothing outside a process group); returns it."""
    if is_distributed():
        dist.all_reduce(t)
    return t


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def split_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """(start, count) of the contiguous slice of range(n) that `rank` of `world` owns.

    The first n % world ranks take one extra sample, so counts differ by at most one
    and the slices, in rank order, tile range(n) exactly.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of {world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def split_count(n: int, rank: int, world: int) -> int:
    """How many of n samples `rank` of `world` produces (see `split_range`)."""
    return split_range(n, rank, world)[1]


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for global sample `index` of a run seeded with `seed`.

    SplitMix64 finalizer over (seed, index): neighbouring indices get unrelated
    seeds, and the value depends only on (seed, index), never on rank or batch.
    """
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def sample_latents(
    seed: int, start: int, count: int, shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> Tensor:
    """Standard-normal latents (count, *shape), float32, for global indices
    start .. start + count - 1; row i is drawn from its own generator seeded with
    `sample_seed(seed, start + i)`, so any split over ranks or batches gives the same rows.
    """
    rows = []
    for index in range(start, start + count):
        gen = torch.Generator().manual_seed(sample_seed(seed, index))
        rows.append(torch.randn(shape, generator=gen))
    if not rows:
        return torch.empty((0, *shape), device=device)
    return torch.stack(rows).to(device)


def _comm_device(backend: str) -> torch.device:
    # NCCL only moves CUDA tensors; gloo's all_gather wants CPU tensors.
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_features(local: Tensor) -> Tensor:
    """Concatenate every rank's `local` (n_rank, *F) in rank order; the result
    (sum n_rank, *F) is returned on every rank, on `local`'s device and dtype.

    Ranks may hold different row counts (including zero): sizes are exchanged first,
    rows are padded to the largest count for `all_gather`, then trimmed. Trailing
    dims and dtype must match across ranks. Without torch.distributed, returns `local`.
    """
    if not is_distributed():
        return local
    world = dist.get_world_size()
    device = _comm_device(dist.get_backend())
    x = local.detach().to(device).contiguous()
    size = torch.tensor([x.shape[0]], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.cat([part[:count] for part, count in zip(parts, counts)])
    return out.to(local.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (small picklable objects only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every rank's parameters and buffers with those of rank `src`, so all
    ranks embed with bit-identical weights."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        device = _comm_device(dist.get_backend())
        buf = tensor.detach().to(device).clone()
        dist.broadcast(buf, src=src)
        with torch.no_grad():
            tensor.copy_(buf.to(tensor.device))
