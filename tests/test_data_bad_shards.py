"""Bad shards: a huge size claim, an empty index, 0-byte and non-tar files (docs/data.md).

One bad shard among good ones is left out (or abandoned where the damage starts) with a
warning naming it; when no shard is usable the command stops with one line naming one.
"""

import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from dgan.data.sources import DataPathError, NoSamplesError, ShardSource, resolve_source
from dgan.data.stream import DataStream, ShardStream
from dgan.data.tario import iter_tar

from test_data_stream import _stream, write_numbered
from test_data_tario import TIB, claim

ROOT = Path(__file__).resolve().parents[1]


def dgan(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dgan", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess, *names: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [x for x in out.stderr.splitlines() if x.startswith("dgan: error: ")]
    assert len(errors) == 1, out.stderr
    for name in names:
        assert name in errors[0], (name, out.stderr)


def huge_claim(shard: Path, member: int) -> None:
    """Make the shard's `member`-th header claim 1 TiB."""
    with tarfile.open(shard) as tar:  # the member's own header, after any pax header
        at = tar.getmembers()[member].offset_data - 512
    shard.write_bytes(claim(shard.read_bytes(), at, TIB))


def test_a_1_tib_header_costs_the_rest_of_its_shard_with_a_warning(tmp_path, caplog):
    data = write_numbered(tmp_path / "d", [6, 6])  # members: cls, png per sample
    shard = data / "num-000000.tar"
    huge_claim(shard, 5)  # sample 2's png (after its .cls): samples 0 and 1 survive
    with caplog.at_level(logging.WARNING):
        labels = torch.cat([lb for _, lb in _stream(data, workers=0, resampled=False)])
    assert sorted(labels.tolist()) == [0, 1, 6, 7, 8, 9, 10, 11]
    assert f"skipping the rest of shard {shard}" in caplog.text and "claims" in caplog.text
    # counting it for a resume gives what reading it gives, no error
    source = ShardSource([str(shard)], [None])
    assert source.count(0) == 2 == sum(1 for _ in _samples_until_error(str(shard)))
    # and in the first header the whole shard is left out before training
    shard.unlink()
    write_numbered(tmp_path / "d2", [6])
    (tmp_path / "d2" / "num-000000.tar").rename(shard)
    shard.write_bytes(claim(shard.read_bytes(), 0, TIB))  # its first header (a pax record)
    with caplog.at_level(logging.WARNING):
        source = resolve_source(str(data))
    assert str(shard) in source.problems and "claims" in source.problems[str(shard)]
    assert f"leaving out shard {shard}" in caplog.text


def _samples_until_error(url: str):
    try:
        yield from iter_tar(url)
    except ValueError:
        return


def test_an_index_without_shards_is_an_error_not_a_spin(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "index.json").write_text(json.dumps({"shards": [], "resolution": 28,
                                                 "channels": 1}))
    with pytest.raises(DataPathError, match=f"{data}/index.json: lists no shards"):
        resolve_source(str(data))
    with pytest.raises(NoSamplesError):
        ShardStream(ShardSource([], []), batch_size=4, resolution=8, channels=1)
    out = dgan("train", f"data.path={data}", f"run.dir={tmp_path}/r", "train.steps=1",
               timeout=60)
    one_line_error(out, f"{data}/index.json")


def _mixed(tmp_path: Path) -> Path:
    """Two good shards (12 samples) plus an empty and a non-tar one, no index."""
    data = write_numbered(tmp_path / "d", [6, 6])
    (data / "index.json").unlink()
    (data / "num-000002.tar").write_bytes(b"")
    (data / "num-000003.tar").write_text("<html>not found</html>\n" * 40)
    return data


def test_bad_shards_among_good_ones_are_left_out_and_named(tmp_path, caplog):
    data = _mixed(tmp_path)
    with caplog.at_level(logging.WARNING):
        labels = torch.cat([lb for _, lb in _stream(data, workers=0, resampled=False)])
    assert sorted(labels.tolist()) == list(range(12))
    assert "num-000002.tar: empty (0 bytes)" in caplog.text
    assert "num-000003.tar: not a tar (bad header checksum)" in caplog.text
    out = dgan("data", "inspect", str(data), "--grid", str(tmp_path / "g.png"))
    assert out.returncode == 1 and "samples     12" in out.stdout, out.stdout + out.stderr
    assert f"{data}/num-000002.tar: unreadable after 0 samples: empty" in out.stdout
    assert f"{data}/num-000003.tar: unreadable after 0 samples: not a tar" in out.stdout


def test_no_usable_shard_is_one_line_naming_a_file(tmp_path):
    data = _mixed(tmp_path)
    for good in ("num-000000.tar", "num-000001.tar"):
        (data / good).unlink()
    out = dgan("train", f"data.path={data}", f"run.dir={tmp_path}/r", "train.steps=1")
    one_line_error(out, f"{data}/num-000002.tar", "empty (0 bytes)")
    assert not (tmp_path / "r").exists()
    out = dgan("data", "inspect", str(data), "--grid", str(tmp_path / "g.png"))
    one_line_error(out, f"{data}/num-000002.tar")
    single = data / "num-000003.tar"
    out = dgan("data", "inspect", str(single), "--grid", str(tmp_path / "g.png"))
    one_line_error(out, str(single), "not a tar")


def test_streamed_shards_that_all_fail_stop_with_one_line(tmp_path):
    # found only when read, in a loader worker: the error reaches the user as one line
    source = resolve_source(f"pipe:cat {tmp_path}/missing-{{0,1}}.tar")
    stream = DataStream(source, batch_size=4, resolution=8, channels=1, seed=0, rank=0,
                        world_size=1, workers=1, shuffle_buffer=4, xflip=False)
    with pytest.raises(NoSamplesError, match="none of the 2 shards gave a sample") as e:
        next(stream)
    assert "\n" not in str(e.value) and "missing-0.tar" in str(e.value)
    out = dgan("train", f"data.path=pipe:cat {tmp_path}/missing-{{0,1}}.tar",
               f"run.dir={tmp_path}/r", "train.steps=1", "data.workers=1")
    one_line_error(out, "none of the 2 shards gave a sample")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["alive", "traceback"])
def test_a_process_with_live_workers_still_exits(tmp_path, how):
    # Workers ignore SIGTERM, so multiprocessing's exit-time terminate-then-join would wait
    # forever for a loader still referenced at exit (a global, or a traceback kept by a
    # caller); dgan stops them itself first.
    data = write_numbered(tmp_path / "d", [40, 40])
    keep = ("next(s); KEEP.append(s)" if how == "alive" else
            "try:\n    next(s); raise RuntimeError('x')\nexcept RuntimeError as e:\n    KEEP.append(e)")
    script = ("import sys; sys.path.insert(0, %r)\nfrom test_data_stream import _stream\n"
              "from pathlib import Path\nKEEP = []\ns = _stream(Path(%r), workers=2)\n%s\n"
              "print('done', flush=True)\n" % (str(Path(__file__).parent), str(tmp_path / "d"), keep))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr
