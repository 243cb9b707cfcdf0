"""Paired data: `dgan data make --paired / --side-by-side`, the multi-image stream, inspect."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgan.cli import main
from dgan.data.shards import encode_image, write_shards
from dgan.data.sources import DataPathError, resolve_source
from dgan.data.stream import DataStream, ShardStream
from dgan.data.tario import iter_tar


def _pattern(i: int, size: tuple[int, int] = (16, 16)) -> np.ndarray:
    """An RGB picture with no symmetry: a flip or a shifted window changes it."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pairs(out: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for tar in sorted(out.glob("*.tar")):
        for sample in iter_tar(str(tar)):
            assert sorted(k for k in sample if not k.startswith("__")) == ["a.png", "b.png"]
            pairs.append(tuple(np.asarray(Image.open(io.BytesIO(sample[k])))
                               for k in ("a.png", "b.png")))
    return pairs


def test_make_paired_pairs_by_relative_path_and_lists_what_it_skips(tmp_path, capsys):
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    for i in range(5):  # B's files have another extension: pairs ignore it
        _save(_pattern(i), a / "x" / f"{i}.png")
        _save(255 - _pattern(i), b / "x" / f"{i}.bmp")
    _save(_pattern(9), a / "only_a.png")
    _save(_pattern(10), b / "y" / "only_b.png")
    _save(_pattern(11), a / "mis.png")
    _save(_pattern(11, (16, 12)), b / "mis.png")
    _save(_pattern(12), a / "bad.png")
    (b / "bad.png").write_bytes(b"not a png")
    (b / "notes.txt").write_text("ignored")
    assert main(["data", "make", "--paired", str(a), str(b), str(out), "--resolution", "16",
                 "--format", "png", "--workers", "0"]) == 0
    summary = capsys.readouterr().out
    assert "wrote 5 pairs (a, b; 16x16, 3 channels, png)" in summary
    assert "skipped 4 (2 unpaired, 1 mismatched, 1 unusable;" in summary
    assert "ignored 1 non-image files" in summary
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert skipped.keys() == {"only_a.png", "y/only_b.png", "mis.png", "bad.png"}
    assert skipped["only_a.png"].startswith("only in A")
    assert skipped["y/only_b.png"].startswith("only in B")
    assert skipped["mis.png"] == "mismatched sizes: A 16x16, B 16x12"
    assert skipped["bad.png"].startswith("B: cannot decode: UnidentifiedImageError")
    index = json.loads((out / "index.json").read_text())
    assert index["images"] == ["a", "b"] and index["total"] == 5
    assert index["source"]["skipped_by"] == {"unpaired": 2, "mismatched": 1, "unusable": 1}
    pairs = _pairs(out)
    assert len(pairs) == 5
    originals = {_pattern(i).tobytes() for i in range(5)}
    for pa, pb in pairs:  # each b is the inverse of its own a: paired, not mixed up
        assert pa.tobytes() in originals and np.array_equal(pb, 255 - pa)

    capsys.readouterr()
    assert main(["data", "inspect", str(out)]) == 0
    assert "images      a, b: 5" in capsys.readouterr().out


def test_side_by_side_splits_at_half_the_width(tmp_path, capsys):
    src, out = tmp_path / "ab", tmp_path / "out"
    for i in range(3):
        _save(np.concatenate([_pattern(i), 255 - _pattern(i)], axis=1), src / f"{i}.png")
    _save(_pattern(7, (33, 16)), src / "odd.png")
    _save(_pattern(8, (40, 16)), src / "wide.png")
    assert main(["data", "make", "--side-by-side", str(src), str(out), "--resolution", "16",
                 "--format", "png", "--workers", "0"]) == 0
    assert "wrote 3 pairs" in capsys.readouterr().out
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert skipped["odd.png"].startswith("odd width 33")
    assert "not two square halves" in skipped["wide.png"]
    pairs = _pairs(out)
    assert len(pairs) == 3 and all(np.array_equal(pb, 255 - pa) for pa, pb in pairs)


def test_paired_cli_usage_errors(tmp_path, capsys):
    assert main(["data", "make", "--paired", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "--paired DIR_A DIR_B OUT" in capsys.readouterr().err


# -- the stream -----------------------------------------------------------------------
STORED = 12  # stored size; the stream crops 8x8 windows from it (data.crop = 12)


def write_paired(out: Path, sizes: list[int], corrupt: frozenset = frozenset(),
                 store: int = STORED) -> Path:
    """Paired shards: a = pattern(label), b = 255 - a (PNG), label = sample number; shards
    of sizes[0] samples (the last may be smaller)."""
    def samples():
        for i in range(sum(sizes)):
            pa = _pattern(i, (store, store))
            pb = encode_image(255 - pa)
            yield {"a": encode_image(pa), "b": b"garbage" if i in corrupt else pb}, "png", i

    write_shards(samples(), out, "p", resolution=store, channels=3, per_shard=sizes[0],
                 extra=lambda: {"images": ["a", "b"]})
    return out


def _paired_stream(data: Path, **kw) -> DataStream:
    args = {"batch_size": 4, "resolution": 8, "channels": 3, "seed": 3, "rank": 0,
            "world_size": 1, "workers": 0, "shuffle_buffer": 6, "xflip": True,
            "keys": ("a", "b"), "crop": STORED, **kw}
    return DataStream(resolve_source(str(data)), **args)


def _window(label: int, x: torch.Tensor) -> tuple[int, int, bool]:
    """Where in the stored `a` of `label` the float image x [C, 8, 8] was cut from."""
    stored = torch.from_numpy(_pattern(label, (STORED, STORED))).permute(2, 0, 1).float()
    stored = stored / 127.5 - 1
    for flip in (False, True):
        for y0 in range(STORED - 8 + 1):
            for x0 in range(STORED - 8 + 1):
                w = stored[:, y0:y0 + 8, x0:x0 + 8]
                if torch.allclose(w.flip(-1) if flip else w, x, atol=1e-6):
                    return x0, y0, flip
    raise AssertionError(f"sample {label}: not a window of its stored image")


def test_pairs_get_the_same_flip_and_crop(tmp_path):
    data = write_paired(tmp_path / "p", [24])
    windows = set()
    for batch in _paired_stream(data, resampled=False):
        assert set(batch) == {"a", "b", "label"}
        a, b, labels = batch["a"], batch["b"], batch["label"]
        assert a.shape == b.shape == (4, 3, 8, 8) and a.dtype == torch.float32
        assert a.min() >= -1 and a.max() <= 1
        # b = 255 - a holds after augmentation: both images got the same window and flip
        assert torch.allclose(b, -a, atol=1e-6)
        windows |= {_window(int(y), x) for x, y in zip(a, labels)}
    assert len({w[:2] for w in windows}) > 3 and {w[2] for w in windows} == {False, True}


def test_without_crop_pairs_are_resized_and_flipped_alike(tmp_path):
    data = write_paired(tmp_path / "p", [10])
    batch = next(_paired_stream(data, crop=0, resampled=False))
    assert batch["a"].shape == (4, 3, 8, 8)
    # Lanczos is linear: the inverse resized is the resized inverse, up to rounding
    assert (batch["b"] + batch["a"]).abs().max() <= 1.5 / 127.5


def test_paired_resume_continues_exactly(tmp_path):
    # uneven shards, 2 workers, flips, crops and a corrupt pair (b undecodable)
    data = write_paired(tmp_path / "p", [7, 7, 7, 4], corrupt=frozenset({5}))
    kw = {"workers": 2}
    n, m = 5, 9
    whole_stream = _paired_stream(data, **kw)
    whole = [next(whole_stream) for _ in range(n + m)]
    whole_stream.close()
    first = _paired_stream(data, **kw)
    head = [next(first) for _ in range(n)]
    state = json.loads(json.dumps(first.state_dict()))
    first.close()
    resumed = _paired_stream(data, **kw)
    resumed.load_state_dict(state)
    rest = [next(resumed) for _ in range(m)]
    resumed.close()
    for x, y in zip(whole, head + rest):
        assert all(torch.equal(x[k], y[k]) for k in ("a", "b", "label"))
    labels = torch.cat([x["label"] for x in whole]).tolist()
    assert 5 not in labels


def test_a_loader_worker_delivers_the_in_process_pairs(tmp_path):
    data = write_paired(tmp_path / "p", [9, 9])
    kw = {"batch_size": 4, "resolution": 8, "channels": 3, "seed": 5, "rank": 0,
          "world_size": 1, "workers": 1, "shuffle_buffer": 6, "xflip": True,
          "keys": ("a", "b"), "crop": STORED}
    direct = iter(ShardStream(resolve_source(str(data)), **kw))
    s = DataStream(resolve_source(str(data)), **kw)
    for _ in range(6):
        images, labels, _ = next(direct)
        assert images.shape == (2, 4, 8, 8, 3)
        batch = next(s)
        assert torch.equal(batch["label"], labels)
        for j, key in enumerate(("a", "b")):
            assert torch.equal(batch[key], images[j].permute(0, 3, 1, 2).float().div(127.5).sub(1))
    s.close()


def test_single_image_shards_for_a_paired_stream_fail_in_one_line(tmp_path):
    def single():
        for i in range(4):
            yield encode_image(_pattern(i, (8, 8))), "png", None

    write_shards(single(), tmp_path / "s", "s", resolution=8, channels=3, per_shard=4)
    tar = str(tmp_path / "s" / "s-000000.tar")
    for path in (str(tmp_path / "s"), tar):  # from the shard's first sample (no index)
        with pytest.raises(DataPathError) as e:
            _paired_stream(Path(path))
        message = str(e.value)
        assert "\n" not in message and tar in message
        assert "['image']" in message and "['a', 'b']" in message
    # and the other way round: paired shards (index.json "images") for a single-image stream
    paired = write_paired(tmp_path / "p", [4])
    with pytest.raises(DataPathError, match=r"hold the images \['a', 'b'\].*expects \['image'\]"):
        _paired_stream(paired, keys=("image",), crop=0)


def test_crop_smaller_than_the_resolution_is_refused(tmp_path):
    data = write_paired(tmp_path / "p", [4])
    with pytest.raises(ValueError, match="crop 6 is smaller than the resolution 8"):
        next(_paired_stream(data, crop=6))


def test_paired_labels_are_the_subdirectories_of_a(tmp_path, capsys):
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    for k, cls in enumerate(("cat", "dog")):
        _save(_pattern(k), a / cls / "1.png")
        _save(255 - _pattern(k), b / cls / "1.png")
    _save(_pattern(5), a / "top.png")  # outside a class: refused on either side
    _save(_pattern(5), b / "top.png")
    assert main(["data", "make", "--paired", str(a), str(b), str(out), "--resolution", "16",
                 "--format", "png", "--workers", "0", "--labels", "subdirs"]) == 0
    assert "skipped 2 (0 unpaired, 0 mismatched, 2 unusable;" in capsys.readouterr().out
    assert json.loads((out / "index.json").read_text())["labels"] == ["cat", "dog"]
    samples = [s for tar in sorted(out.glob("*.tar")) for s in iter_tar(str(tar))]
    for sample in samples:
        pa = np.asarray(Image.open(io.BytesIO(sample["a.png"])))
        assert int(sample["cls"]) == [_pattern(k).tobytes() for k in (0, 1)].index(pa.tobytes())
