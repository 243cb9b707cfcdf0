"""The training stream: splits, exact resume across processes, layout changes, bad data."""

import io
import json
import logging
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from dgan.data.shards import sha256_file, write_shards
from dgan.data.sources import resolve_source
from dgan.data.stream import DataStream, ShardStream, batch_plan, decode

ROOT = Path(__file__).resolve().parents[1]
JOB = str(Path(__file__).with_name("_stream_job.py"))
SIZES = [3, 7, 1, 12, 5, 9, 2, 6]  # 8 uneven shards, 45 samples


def write_numbered(out: Path, sizes: list[int], corrupt: frozenset = frozenset()) -> Path:
    """Uneven shards of 8x8 gray PNGs filled with (label % 251), label = sample number."""
    out.mkdir(parents=True)
    shards, i = [], 0
    for k, size in enumerate(sizes):
        path = out / f"num-{k:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for _ in range(size):
                buf = io.BytesIO()
                Image.new("L", (8, 8), i % 251).save(buf, "PNG")
                sink.write({"__key__": f"{i:09d}", "png": b"garbage" if i in corrupt
                            else buf.getvalue(), "cls": str(i).encode()})
                i += 1
        shards.append({"name": path.name, "count": size, "sha256": sha256_file(path)})
    (out / "index.json").write_text(json.dumps(
        {"shards": shards, "total": i, "resolution": 8, "channels": 1, "labels": None}))
    return out


def _env(**extra) -> dict:
    return {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OMP_NUM_THREADS": "1", "HOME": os.environ.get("HOME", "/tmp"), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_single_pass_2_ranks_x_2_workers_every_sample_once(tmp_path):
    data = write_numbered(tmp_path / "d", SIZES)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, JOB, "single", str(data), str(tmp_path / "o")],
                              env=_env(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port), stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    per_rank = json.loads((tmp_path / "o").read_text())
    assert sorted(per_rank[0] + per_rank[1]) == list(range(sum(SIZES)))
    # slots (rank 0: shards 0,4 and 1,5; rank 1: 2,6 and 3,7) deliver their own shards only
    starts = np.cumsum([0] + SIZES)
    rank1 = {i for k in (2, 6, 3, 7) for i in range(starts[k], starts[k + 1])}
    assert set(per_rank[1]) == rank1


@pytest.mark.slow
def test_resume_in_a_new_process_continues_exactly(tmp_path):
    # one corrupt sample: it is skipped, and the resumed run still lines up exactly
    data = write_numbered(tmp_path / "d", SIZES, corrupt=frozenset({17}))
    n, m = 9, 6  # the corrupt sample lies inside the first n batches of its worker

    def job(*args):
        run = subprocess.run([sys.executable, JOB, "consume", str(data), *map(str, args)],
                             env=_env(), capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, run.stderr
        return run.stderr

    job(tmp_path / "whole", n + m)
    job(tmp_path / "first", n, "", tmp_path / "state.json")
    job(tmp_path / "rest", m, tmp_path / "state.json")
    whole = torch.load(tmp_path / "whole")
    resumed = torch.load(tmp_path / "first") + torch.load(tmp_path / "rest")
    for (a, la), (b, lb) in zip(whole, resumed):
        assert torch.equal(la, lb) and torch.equal(a, b)
    labels = torch.cat([lb for _, lb in whole]).tolist()
    assert 17 not in labels and len(labels) == (n + m) * 4
    state = json.loads((tmp_path / "state.json").read_text())
    _, done = batch_plan(n, 2)
    assert state["batches"] == n and state["cursors"] != [d * 4 for d in done]


def _stream(data: Path, **kw) -> DataStream:
    args = {"batch_size": 4, "resolution": 8, "channels": 1, "seed": 5, "rank": 0,
            "world_size": 1, "workers": 2, "shuffle_buffer": 6, "xflip": False, **kw}
    return DataStream(resolve_source(str(data)), **args)


def test_single_pass_resume_after_a_worker_ran_out(tmp_path):
    # 2 slots: shards 0,2,4,6 (11 samples) and 1,3,5,7 (34): slot 0 ends after 3 batches
    data = write_numbered(tmp_path / "d", SIZES)
    whole = [lb.tolist() for _, lb in _stream(data, resampled=False)]
    assert sorted(x for b in whole for x in b) == list(range(45))
    first = _stream(data, resampled=False)
    head = [next(first)[1].tolist() for _ in range(8)]
    resumed = _stream(data, resampled=False)
    resumed.load_state_dict(first.state_dict())
    assert head + [lb.tolist() for _, lb in resumed] == whole


@pytest.mark.parametrize("workers", [0, 1])
def test_the_stream_leaves_the_global_torch_rng_alone(tmp_path, workers):
    """A resume restores the global RNG before the stream starts; a draw there (DataLoader's
    workers' base seed at iter()) would leave the resumed run one draw ahead."""
    data = write_numbered(tmp_path / "d", SIZES)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    s = _stream(data, workers=workers)
    next(s)
    s.close()
    assert torch.equal(torch.get_rng_state(), before)


def test_layout_change_starts_a_new_order_keyed_by_images_seen(tmp_path, caplog):
    data = write_numbered(tmp_path / "d", SIZES)
    old = _stream(data, workers=2)
    first = [next(old)[1] for _ in range(3)]
    new = _stream(data, workers=1)
    with caplog.at_level(logging.WARNING):
        new.load_state_dict(old.state_dict())
    assert "data layout changed" in caplog.text
    assert new.state_dict()["seed_offset"] == 12 and new.state_dict()["batches"] == 0
    # the approximation: a fresh order from seed + images seen; not a replay of the start
    reference = _stream(data, workers=1, seed=5 + 12)
    got = [next(new)[1] for _ in range(3)]
    assert all(torch.equal(a, next(reference)[1]) for a in got)
    assert not all(torch.equal(a, b) for a, b in zip(got, first))
    # changing again accumulates: the offset counts every image the job has seen
    again = _stream(data, workers=2)
    again.load_state_dict(new.state_dict())
    assert again.state_dict()["seed_offset"] == 12 + 12


def test_fewer_shards_than_slots_resamples_without_hanging(tmp_path):
    data = write_numbered(tmp_path / "d", [5])
    for rank in range(2):
        s = _stream(data, rank=rank, world_size=2, workers=2)
        labels = torch.cat([next(s)[1] for _ in range(6)])
        assert set(labels.tolist()) <= set(range(5)) and len(labels) == 24


def test_xflip_flips_about_half_and_only_horizontally(tmp_path):
    def ramp_samples():
        for i in range(40):
            buf = io.BytesIO()
            Image.fromarray(np.tile(np.arange(8, dtype=np.uint8) * 30, (8, 1))).save(buf, "PNG")
            yield buf.getvalue(), "png", i

    write_shards(ramp_samples(), tmp_path / "r", "r", resolution=8, channels=1, per_shard=40)
    images = torch.cat([b for b, _ in _stream(tmp_path / "r", xflip=True, workers=0,
                                              resampled=False)])
    flipped = images[:, 0, 0, 0] > images[:, 0, 0, -1]
    assert 10 < int(flipped.sum()) < 30
    assert torch.equal(images[flipped], images[~flipped][:1].flip(-1).expand_as(images[flipped]))


def test_corrupt_samples_are_skipped_with_a_warning(tmp_path, caplog):
    data = write_numbered(tmp_path / "d", [10], corrupt=frozenset({3, 4}))
    with caplog.at_level(logging.WARNING):
        labels = torch.cat([lb for _, lb in _stream(data, workers=0, resampled=False)])
    assert sorted(labels.tolist()) == [0, 1, 2, 5, 6, 7, 8, 9]
    assert caplog.text.count("skipping corrupt sample") == 2 and "num-000000.tar" in caplog.text
    bad = write_numbered(tmp_path / "bad", [10], corrupt=frozenset(range(10)))
    stream = ShardStream(resolve_source(str(bad)), batch_size=4, resolution=8, channels=1,
                         max_bad_in_a_row=25)
    with pytest.raises(RuntimeError, match="25 corrupt samples in a row"):
        next(iter(stream))


def test_damaged_shard_costs_its_rest_not_the_run(tmp_path, caplog):
    data = write_numbered(tmp_path / "d", [6, 6])
    shard = data / "num-000000.tar"
    with tarfile.open(shard) as tar:
        cut = next(m.offset for m in tar if m.name.startswith("000000003")) + 100
    # cut inside sample 3's first header: samples 0, 1 survive; 2 was still being
    # assembled, and whether all its members had arrived is unknown
    shard.write_bytes(shard.read_bytes()[:cut])
    with caplog.at_level(logging.WARNING):
        labels = torch.cat([lb for _, lb in _stream(data, workers=0, resampled=False)])
    assert sorted(labels.tolist()) == [0, 1, 6, 7, 8, 9, 10, 11]
    assert "skipping the rest of shard" in caplog.text and "cut short" in caplog.text


def test_pipe_brace_pattern_reads_like_the_directory(tmp_path):
    data = write_numbered(tmp_path / "d", [5, 7])
    piped = f"pipe:cat {data}/num-{{000000..000001}}.tar"
    assert len(resolve_source(piped).urls) == 2
    kw = {"batch_size": 4, "resolution": 8, "channels": 1, "seed": 1, "rank": 0,
          "world_size": 1, "workers": 0, "shuffle_buffer": 3, "xflip": True}
    a = DataStream(resolve_source(piped), **kw)
    b = DataStream(resolve_source(str(data)), **kw)
    for _ in range(5):
        (xa, la), (xb, lb) = next(a), next(b)
        assert torch.equal(la, lb) and torch.equal(xa, xb)
    # resuming a pipe: source counts shards by streaming them
    state = a.state_dict()
    c = DataStream(resolve_source(piped), **kw)
    c.load_state_dict(state)
    assert torch.equal(next(c)[1], next(a)[1])


def test_batches_hold_exactly_the_decoded_pixels_in_shuffled_order(tmp_path):
    # the batch path (decode_into) must give decode()'s pixels: conversions, resizes, flips
    rng = np.random.default_rng(0)
    path = tmp_path / "mixed-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(23):
            mode, fmt = [("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG")][i % 4]
            side = 10 if i % 3 else 13  # some need a resize
            img = Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).convert(mode)
            buf = io.BytesIO()
            img.save(buf, fmt)
            sample = {"__key__": f"{i:09d}", "jpg" if fmt == "JPEG" else "png": buf.getvalue()}
            if i % 2:
                sample["cls"] = str(i).encode()
            sink.write(sample)
    source = resolve_source(str(path))
    for channels in (1, 3):
        s = ShardStream(source, batch_size=4, resolution=10, channels=channels, seed=2,
                        shuffle_buffer=8, xflip=True, resampled=False, drop_last=False)
        expected = [decode(sample, channels, 10, flip) for sample, flip in s._shuffled(0, 1, 0)]
        got = [(x.numpy(), y.numpy()) for x, y, _ in s]
        images = np.concatenate([x for x, _ in got])
        assert images.shape == (23, 10, 10, channels)
        assert np.array_equal(images, np.stack([a.reshape(10, 10, channels) for a, _ in expected]))
        assert np.concatenate([y for _, y in got]).tolist() == [label for _, label in expected]


def test_a_loader_worker_delivers_what_the_stream_makes_in_process(tmp_path):
    # workers batch into shared memory; the pixels and labels must be the in-process ones
    data = write_numbered(tmp_path / "d", SIZES, corrupt=frozenset({4}))
    source = resolve_source(str(data))
    kw = {"batch_size": 4, "resolution": 8, "channels": 1, "seed": 5, "rank": 0,
          "world_size": 1, "workers": 1, "shuffle_buffer": 6, "xflip": True}
    direct = iter(ShardStream(source, **kw))
    s = DataStream(source, **kw)
    for _ in range(15):  # crosses the resampled epoch (45 samples)
        x, y, _ = next(direct)
        images, labels = s.__next__()
        assert torch.equal(labels, y)
        assert torch.equal(images, x.permute(0, 3, 1, 2).float().div(127.5).sub(1))
    s.close()
