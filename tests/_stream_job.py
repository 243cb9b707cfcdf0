"""A stream consumer run as its own process by tests/test_data_stream.py.

    python tests/_stream_job.py single DATA OUT          one pass on this rank (gloo), gather
    python tests/_stream_job.py consume DATA OUT N [STATE_IN] [STATE_OUT]

RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT come from the environment for `single`.
"""

import json
import sys

import torch
import torch.distributed as dist

from dgan.data.sources import resolve_source
from dgan.data.stream import DataStream


def stream(data: str, **kw) -> DataStream:
    args = {"batch_size": 4, "resolution": 8, "channels": 1, "seed": 5, "rank": 0,
            "world_size": 1, "workers": 2, "shuffle_buffer": 6, "xflip": True, **kw}
    return DataStream(resolve_source(data), **args)


def single(data: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    s = stream(data, rank=rank, world_size=world, resampled=False, xflip=False)
    seen = []
    for images, labels in s:
        # every image is filled with its label's value: the pixels belong to the label
        assert torch.equal(images, (labels.view(-1, 1, 1, 1) % 251).float().div(127.5).sub(1)
                           .expand_as(images)), labels
        seen += labels.tolist()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


def consume(data: str, out: str, n: int, state_in: str = "", state_out: str = "") -> None:
    s = stream(data)
    if state_in:
        with open(state_in) as f:
            s.load_state_dict(json.load(f))
    batches = [next(s) for _ in range(n)]
    torch.save([(images, labels) for images, labels in batches], out)
    if state_out:
        with open(state_out, "w") as f:
            json.dump(s.state_dict(), f)


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"single": single, "consume": consume}[sys.argv[1]](
        *[int(a) if a.isdigit() else a for a in sys.argv[2:]])
