"""`dgan data make` on NVlabs dataset_tool folders and zips: dataset.json labels become the
shards' `cls`, bad entries are one line; `--format png` is lossless and inspect says so."""

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from dgan.cli import main
from dgan.data.shards import read_index
from dgan.data.tario import iter_tar

N = 9


def picture(i: int) -> bytes:
    """16x16 RGB whose pixels encode i, so a sample's picture says which file it came from."""
    rng = np.random.default_rng(i)
    array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    array[0, 0] = (i, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def name(i: int) -> str:
    return f"{i // 5:05d}/img{i:08d}.png"  # dataset_tool's layout: 00000/img00000000.png


def labels_doc(n: int = N) -> dict:
    return {"labels": [[name(i), i % 3] for i in range(n)]}


def write_source(root, kind, doc, n=N):
    """A dataset_tool-style folder or zip of n pictures with `doc` as dataset.json (None:
    no dataset.json; a str: written as it is)."""
    files = {name(i): picture(i) for i in range(n)}
    if doc is not None:
        files["dataset.json"] = doc if isinstance(doc, str) else json.dumps(doc)
    if kind == "zip":
        src = root / "ds.zip"
        with zipfile.ZipFile(src, "w") as z:
            for k, v in files.items():
                z.writestr(k, v)
        return src
    src = root / "ds"
    for k, v in files.items():
        (src / k).parent.mkdir(parents=True, exist_ok=True)
        (src / k).write_bytes(v) if isinstance(v, bytes) else (src / k).write_text(v)
    return src


def make(src, out, *args):
    return main(["data", "make", str(src), str(out), "--resolution", "16", "--workers", "0",
                 *args])


def samples(out):
    """{picture number: (class or None, member extension)} of every sample in the shards."""
    found = {}
    for shard in read_index(out)["shards"]:
        for s in iter_tar(str(out / shard["name"])):
            ext = next(e for e in ("png", "jpg", "webp") if e in s)
            pixel = np.asarray(Image.open(io.BytesIO(s[ext])).convert("RGB"))[0, 0, 0]
            cls = int(s["cls"]) if "cls" in s else None
            found[int(pixel)] = (cls, ext, s[ext])
    return found


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_dataset_json_labels_go_into_the_shards(tmp_path, kind, capsys):
    src = write_source(tmp_path, kind, labels_doc())
    assert make(src, tmp_path / "out", "--format", "png") == 0
    got = samples(tmp_path / "out")
    assert sorted(got) == list(range(N))  # lossless: pixel (0, 0) still names its file
    assert {i: c for i, (c, _, _) in got.items()} == {i: i % 3 for i in range(N)}
    assert read_index(tmp_path / "out")["labels"] == ["0", "1", "2"]
    for i, (_, ext, data) in got.items():  # png in, same size, png out: the same pixels
        assert ext == "png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))),
                              np.asarray(Image.open(io.BytesIO(picture(i)))))
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "out"), "--grid",
                 str(tmp_path / "g.png")]) == 0
    report = capsys.readouterr().out
    assert f"format      png: {N} (lossless)" in report
    assert "labels      0: 3  1: 3  2: 3" in report


def test_default_format_and_labels_options(tmp_path, capsys):
    src = write_source(tmp_path, "zip", labels_doc())
    assert make(src, tmp_path / "jpg") == 0  # 3 channels: jpg by default, as documented
    assert {ext for _, ext, _ in samples(tmp_path / "jpg").values()} == {"jpg"}
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "jpg"), "--grid",
                 str(tmp_path / "g.png")]) == 0
    assert f"format      jpg: {N} (lossy, quality 95)" in capsys.readouterr().out
    # --labels none ignores dataset.json; --labels dataset.json requires one
    assert make(src, tmp_path / "none", "--labels", "none") == 0
    assert {c for c, _, _ in samples(tmp_path / "none").values()} == {None}
    assert read_index(tmp_path / "none")["labels"] is None
    bare = write_source(tmp_path / "bare", "folder", None)
    assert make(bare, tmp_path / "x", "--labels", "dataset.json") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset.json does not exist" in err
    null = write_source(tmp_path / "null", "folder", {"labels": None})
    assert make(null, tmp_path / "null_out") == 0  # dataset_tool's unlabelled datasets
    assert {c for c, _, _ in samples(tmp_path / "null_out").values()} == {None}


def bad(change):
    doc = labels_doc()
    change(doc["labels"])
    return doc


BAD = {
    "missing": (bad(lambda e: e.pop(4)), f"no entry in labels for {name(4)}"),
    "extra": (bad(lambda e: e.append(["00001/img00000099.png", 1])),
              "labels[9] names 00001/img00000099.png, which is not a picture"),
    "float class": (bad(lambda e: e[2].__setitem__(1, 1.5)), "labels[2]"),
    "string class": (bad(lambda e: e[3].__setitem__(1, "cat")),
                     'labels[3] ["00000/img00000003.png", "cat"]'),
    "bool class": (bad(lambda e: e[0].__setitem__(1, True)), "labels[0]"),
    "negative": (bad(lambda e: e[1].__setitem__(1, -1)), "labels[1]"),
    "vector": (bad(lambda e: e[5].__setitem__(1, [0.1, 0.2])), "labels[5]"),
    "not a pair": (bad(lambda e: e.__setitem__(6, name(6))), "labels[6]"),
    "twice": (bad(lambda e: e.__setitem__(7, [name(0), 1])), f"labels[7] names {name(0)} again"),
    "no list": ({"labels": {"a": 1}}, 'expected {"labels"'),
    "not json": ("{labels: [", "not valid JSON"),
}


@pytest.mark.parametrize("kind", ["zip", "folder"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_dataset_json_is_one_line_naming_file_and_entry(tmp_path, kind, case, capsys):
    doc, expected = BAD[case]
    src = write_source(tmp_path, kind, doc)
    assert make(src, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("dgan: error: ") and err.count("\n") == 1, err
    assert "dataset.json" in err and str(src) in err and expected in err, err
    assert not (tmp_path / "out").exists()  # refused before anything is written
