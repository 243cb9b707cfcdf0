"""The training stream: WebDataset shards, split by rank and worker, shuffled, resumable.

Sources (`data.path`): a directory with index.json, a brace pattern
(`/data/ffhq-{000000..000199}.tar`), a list of shard URLs, or `pipe:` commands for object
stores (`pipe:aws s3 cp s3://bucket/ffhq-000000.tar -`). Anything `webdataset.gopen` opens.

Determinism. There are S = world_size x workers *slots*; slot s = rank * workers + worker.
A slot reads a deterministic sequence of shards: in resampled mode (training default)
epoch e is a permutation of all shards drawn from (seed, s, e), so uneven shard counts never
starve a rank; in single-pass mode slot s reads shards s, s+S, s+2S, ... once. Samples are
shuffled in blocks of `shuffle_buffer` with a permutation drawn from (seed, s, block), and
x-flips from (seed, s, sample number). Each worker batches its own samples (uint8, so the
inter-process copy is 4x smaller than float); `DataStream` converts to float in [-1, 1] on
the training device.

Resume. The position is the number of batches the rank has consumed, n. DataLoader hands
out worker batches round-robin, so worker w of the restarted loader plays the role of
worker (w + n) mod W of the old one and skips the batches that role had already delivered;
whole shards are skipped by their counts (from index.json, or by reading tar headers), so
a resume reads at most one shard's bytes without decoding them. The result is exactly the
sequence the uninterrupted run would have produced. When world size, worker count or
batch size change, the position cannot be mapped: the stream starts fresh slot sequences
from a seed mixed with the images already seen (documented approximation: a new random
order, no exact continuation of the epoch).
"""

from __future__ import annotations

import io
import logging
import tarfile
from typing import Any, Iterator, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dgan.data.sources import ShardSource

log = logging.getLogger(__name__)
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def iter_tar(url: str) -> Iterator[dict[str, bytes]]:
    """Yield WebDataset samples ({ext: bytes, "__key__": key}) of one tar, in order."""
    import webdataset as wds

    with wds.gopen(url, "rb") as stream:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            current: dict[str, Any] = {}
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                key = member.name[: len(member.name) - len(base)] + key
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                current["__key__"] = key
                current[ext.lower()] = data
            if current:
                yield current


def decode(sample: dict[str, bytes], channels: int, resolution: int) -> tuple[np.ndarray, int]:
    """Encoded sample -> (uint8 CHW array, label or -1). Raises on a corrupt image."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise ValueError(f"sample {sample.get('__key__')} has no image member")
    with Image.open(io.BytesIO(sample[ext])) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
        array = np.asarray(img, dtype=np.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    label = int(sample["cls"]) if "cls" in sample else -1
    return array, label


class ShardStream(IterableDataset):
    """Batches of (uint8 images [B, C, R, R], int64 labels [B]) for one rank.

    `start_batches` is the number of batches this rank had consumed before (resume).
    """

    def __init__(self, source: ShardSource, *, batch_size: int, resolution: int, channels: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                 resampled: bool = True, shuffle_buffer: int = 1000, xflip: bool = False,
                 start_batches: int = 0, drop_last: bool = True) -> None:
        self.source = source
        self.batch_size = batch_size
        self.resolution = resolution
        self.channels = channels
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.workers = workers
        self.resampled = resampled
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.xflip = xflip
        self.start_batches = start_batches
        self.drop_last = drop_last
        slots = world_size * max(1, workers)
        if not resampled and len(source.urls) < slots:
            raise ValueError(
                f"{len(source.urls)} shards for {world_size} ranks x {max(1, workers)} workers: "
                "a single pass needs at least one shard per slot; use resampled mode, fewer "
                "workers, or re-shard the data with more, smaller shards (--per-shard)")

    # -- the slot's raw sample sequence ------------------------------------------------
    def _shard_sequence(self, slot: int, slots: int) -> Iterator[int]:
        n = len(self.source.urls)
        if not self.resampled:
            yield from range(slot, n, slots)
            return
        epoch = 0
        while True:
            yield from np.random.default_rng([self.seed, slot, epoch]).permutation(n).tolist()
            epoch += 1

    def _raw_samples(self, slot: int, slots: int, skip: int) -> Iterator[dict[str, bytes]]:
        """The slot's samples in shard order, after skipping `skip` of them cheaply."""
        for shard in self._shard_sequence(slot, slots):
            if skip:
                count = self.source.count(shard)
                if skip >= count:
                    skip -= count
                    continue
            for sample in iter_tar(self.source.urls[shard]):
                if skip:
                    skip -= 1
                    continue
                yield sample

    def _shuffled(self, slot: int, slots: int, skip: int) -> Iterator[tuple[int, dict]]:
        """(sample number, sample) in block-shuffled order, starting at sample `skip`."""
        block_size = self.shuffle_buffer
        block_no, offset = divmod(skip, block_size)
        raw = self._raw_samples(slot, slots, block_no * block_size)
        while True:
            block = [s for _, s in zip(range(block_size), raw)]
            if not block:
                return
            order = np.random.default_rng([self.seed, slot, 1 + block_no]).permutation(len(block))
            for i in order[offset:]:
                yield block_no * block_size + int(i), block[i]
            offset = 0
            block_no += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        workers = max(1, self.workers)
        worker = info.id if info is not None else 0
        # Worker w of a restarted loader continues the role of worker (w + n) mod W.
        role = (worker + self.start_batches) % workers
        done = -(-(self.start_batches - role) // workers)  # batches that role delivered
        slot = self.rank * workers + role
        slots = self.world_size * workers
        images, labels = [], []
        bad = 0
        for number, sample in self._shuffled(slot, slots, done * self.batch_size):
            try:
                image, label = decode(sample, self.channels, self.resolution)
            except Exception as e:  # a corrupt sample must not end the run
                bad += 1
                log.warning("skipping corrupt sample %s: %s", sample.get("__key__"), e)
                continue
            if self.xflip and np.random.default_rng([self.seed, slot, number, 7]).random() < 0.5:
                image = image[:, :, ::-1]
            images.append(image)
            labels.append(label)
            if len(images) == self.batch_size:
                yield _collate(images, labels)
                images, labels = [], []
        if images and not self.drop_last:
            yield _collate(images, labels)


def _collate(images: list[np.ndarray], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


class DataStream:
    """The rank's infinite iterator of float batches in [-1, 1] on `device`, with a position.

    `state_dict()` / `load_state_dict()` carry the position; loading rebuilds the loader.
    """

    def __init__(self, source: ShardSource, *, batch_size: int, resolution: int, channels: int,
                 seed: int, rank: int, world_size: int, workers: int, shuffle_buffer: int,
                 xflip: bool, device: torch.device | str = "cpu") -> None:
        self.source = source
        self.kw = dict(batch_size=batch_size, resolution=resolution, channels=channels, seed=seed,
                       rank=rank, world_size=world_size, workers=workers,
                       shuffle_buffer=shuffle_buffer, xflip=xflip)
        self.device = torch.device(device)
        self.batches = 0  # consumed by this rank since the stream's current seed started
        self.seed_offset = 0
        self._iter: Optional[Iterator] = None

    def _layout(self) -> dict[str, int]:
        return {k: self.kw[k] for k in ("seed", "world_size", "workers", "batch_size")}

    def _loader(self) -> Iterator:
        kw = dict(self.kw, seed=self.kw["seed"] + self.seed_offset)
        dataset = ShardStream(self.source, start_batches=self.batches, **kw)
        workers = self.kw["workers"]
        loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=False, prefetch_factor=4 if workers else None)
        return iter(loader)

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iter is None:
            self._iter = self._loader()
        images, labels = next(self._iter)
        self.batches += 1
        images = images.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        return images, labels.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches, "seed_offset": self.seed_offset, **self._layout()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = {k: int(state[k]) for k in self._layout()}
        if saved == self._layout():
            self.batches = int(state["batches"])
            self.seed_offset = int(state.get("seed_offset", 0))
        else:
            # A different layout cannot continue the same order: start a new random order
            # keyed by how many images the whole job had seen, so it is not a replay.
            seen = int(state["batches"]) * saved["batch_size"] * saved["world_size"]
            log.warning("data layout changed from %s to %s: the stream starts a new shuffled "
                        "order (seed offset %d) instead of continuing exactly",
                        saved, self._layout(), seen)
            self.batches = 0
            self.seed_offset = seen
        self._iter = None

    def close(self) -> None:
        self._iter = None
