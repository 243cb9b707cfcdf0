"""`dgan data make` on messy folders, zips and npz; `dgan data inspect`."""

import io
import json
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgan.cli import main
from dgan.data.shards import read_index
from dgan.data.stream import decode
from dgan.data.tario import iter_tar

ROOT = Path(__file__).resolve().parents[1]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def make_messy_folder(root: Path) -> tuple[list[str], list[str]]:
    """Write odd-but-good and broken pictures; return (good names, broken names)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    good = {
        "a/plain.jpg": lambda p: _save(rgb, p, "JPEG"),
        "a/deep/UPPER.JPG": lambda p: _save(rgb, p, "JPEG"),
        "a/pic.PNG": lambda p: _save(rgb, p, "PNG"),
        "a/pic.webp": lambda p: _save(rgb, p, "WEBP"),
        "b/cmyk.jpg": lambda p: _save(rgb.convert("CMYK"), p, "JPEG"),
        "b/palette.png": lambda p: _save(rgb.convert("P"), p, "PNG", transparency=0),
        "b/la.png": lambda p: _save(rgb.convert("LA"), p, "PNG"),
        "b/rgba.png": lambda p: _save(Image.new("RGBA", (40, 40), (255, 0, 0, 0)), p, "PNG"),
        "b/gray16.png": lambda p: _save(Image.fromarray(
            rng.integers(0, 65536, (40, 40), dtype=np.uint16)), p, "PNG"),
        "b/int32.tif": lambda p: _save(Image.fromarray(
            rng.integers(0, 65536, (40, 40)).astype(np.int32), "I"), p, "TIFF"),
        "b/gray.png": lambda p: _save(rgb.convert("L"), p, "PNG"),
        "b/tiny.png": lambda p: _save(rgb.resize((8, 6)), p, "PNG"),
        "b/exif.jpg": lambda p: _exif_rotated(p),
    }
    for name, write in good.items():
        write(root / name)
    jpeg = io.BytesIO()
    rgb.save(jpeg, "JPEG")
    png = io.BytesIO()
    rgb.save(png, "PNG")
    broken = {
        "c/truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "c/empty.png": b"",
        "c/garbage.png": bytes(rng.integers(0, 256, 500, dtype=np.uint8)),
        # IHDR with a wrong CRC: a corrupt chunk
        "c/badcrc.png": png.getvalue()[:29] + b"\0\0\0\0" + png.getvalue()[33:],
        # a valid header claiming 100000 x 100000 pixels
        "c/bomb.png": b"\x89PNG\r\n\x1a\n" + _png_chunk(
            b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) +
        _png_chunk(b"IEND", b""),
    }
    for name, data in broken.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("not a picture")
    (root / "a" / ".DS_Store").write_bytes(b"\0\1")
    return sorted(good), sorted(broken)


def _exif_rotated(path: Path) -> None:
    """Stored 64x32, top red / bottom blue, EXIF orientation 6 (display rotated 90 CW)."""
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 64, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(img, path, "JPEG", exif=exif.tobytes(), quality=95)


def _samples(out: Path) -> list[dict]:
    return [s for t in sorted(out.glob("*.tar")) for s in iter_tar(str(t))]


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    good, broken = make_messy_folder(root)
    return root, good, broken


@pytest.mark.slow
def test_messy_folder_good_pictures_become_samples_broken_are_listed(messy, tmp_path):
    root, good, broken = messy
    out = tmp_path / "out"
    # a real process: exit status, summary line and the worker pool as the user meets them
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "dgan", "data", "make", str(root), str(out),
                          "--resolution", "32", "--workers", "2", "--per-shard", "5",
                          "--labels", "subdirs"], capture_output=True, text=True, env=env, check=False,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"wrote {len(good)} samples" in run.stdout and "skipped 5" in run.stdout
    assert "ignored 2 non-image files" in run.stdout
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert sorted(skipped) == broken
    assert "decompression bomb" in skipped["c/bomb.png"]
    assert skipped["c/empty.png"] == "empty file"
    index = read_index(out)
    assert index["total"] == len(good) and index["labels"] == ["a", "b", "c"]
    assert [s["count"] for s in index["shards"]] == [5, 5, 3]
    assert index["source"]["kind"] == "folder" and index["source"]["skipped"] == 5
    samples = _samples(out)
    assert len(samples) == len(good)
    for sample in samples:
        assert set(sample) >= {"jpg", "cls"}
        with Image.open(io.BytesIO(sample["jpg"])) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    assert sorted(int(s["cls"]) for s in samples) == [0] * 4 + [1] * 9


def test_conversions_exif_alpha_small(messy, tmp_path):
    root, good, _ = messy
    out = tmp_path / "out"
    assert main(["data", "make", str(root / "b"), str(out), "--resolution", "32",
                 "--format", "png", "--workers", "0", "--crop", "stretch"]) == 0
    by_name = {}
    order = np.random.default_rng(0).permutation(len([g for g in good if g.startswith("b/")]))
    names = sorted(g[2:] for g in good if g.startswith("b/"))
    for i, sample in zip(order, _samples(out)):
        by_name[names[i]] = decode(sample, 3, 32)[0]
    exif = by_name["exif.jpg"].astype(int)  # displayed: left blue, right red
    assert exif[:, 24:, 0].mean() > 200 and exif[:, :8, 2].mean() > 200
    assert (by_name["rgba.png"] == 255).all()  # fully transparent red on white
    assert by_name["gray16.png"].std() > 30  # 16-bit scaled, not clipped to white
    assert by_name["tiny.png"].shape == (32, 32, 3)


def test_small_skip_and_pad(messy, tmp_path):
    root, _, _ = messy
    out = tmp_path / "out"
    assert main(["data", "make", str(root / "b"), str(out), "--resolution", "44",
                 "--small", "skip", "--workers", "0", "--crop", "pad"]) == 0
    skipped = (out / "skipped.txt").read_text()
    assert "tiny.png\tsmaller than 44x44" in skipped and "rgba.png" in skipped  # 40x40
    assert "plain" not in skipped


def test_workers_do_not_change_the_bytes(messy, tmp_path):
    root, _, _ = messy
    for w in (0, 2):
        assert main(["data", "make", str(root / "a"), str(tmp_path / f"w{w}"), "--resolution",
                     "16", "--workers", str(w)]) == 0
    sha = [[s["sha256"] for s in read_index(tmp_path / f"w{w}")["shards"]] for w in (0, 2)]
    assert sha[0] == sha[1]


def test_zip_and_npz_sources(messy, tmp_path):
    root, good, broken = messy
    with zipfile.ZipFile(tmp_path / "pics.zip", "w") as z:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(root).as_posix())
    assert main(["data", "make", str(tmp_path / "pics.zip"), str(tmp_path / "z"),
                 "--resolution", "16", "--workers", "0"]) == 0
    assert read_index(tmp_path / "z")["total"] == len(good)
    assert len((tmp_path / "z" / "skipped.txt").read_text().splitlines()) == len(broken)

    images = np.random.default_rng(1).integers(0, 256, (30, 20, 20), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(30) % 3)
    assert main(["data", "make", str(tmp_path / "d.npz"), str(tmp_path / "n"),
                 "--workers", "0"]) == 0
    index = read_index(tmp_path / "n")
    assert (index["resolution"], index["channels"], index["labels"]) == (20, 1, ["0", "1", "2"])
    order = np.random.default_rng(0).permutation(30)
    for i, sample in zip(order, _samples(tmp_path / "n")):  # png: lossless, same pixels
        assert np.array_equal(decode(sample, 1, 20)[0], images[i])
        assert int(sample["cls"]) == i % 3


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.png").write_bytes(b"nope")
    assert main(["data", "make", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "index.json").exists()


def test_inspect_reports_and_detects_tampering(tmp_path, capsys):
    out = tmp_path / "mnist"
    assert main(["data", "make", "--builtin", "mnist", str(out), "--per-shard", "2000"]) == 0
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "samples     5000" in text and "index.json  ok" in text and "0: 500  1: 500" in text
    with Image.open(out / "inspect.png") as grid:
        assert grid.size == (8 * 30 - 2, 8 * 30 - 2)
    # drop one sample from the last shard: count and sha256 no longer match the index
    last = max(out.glob("*.tar"))
    with tarfile.open(last) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(last, "w") as tar:
        for m, data in members[2:]:
            tar.addfile(m, io.BytesIO(data))
    assert main(["data", "inspect", str(out), "--grid", str(tmp_path / "g.png")]) == 1
    text = capsys.readouterr().out
    assert "MISMATCH" in text and "999 samples, index says 1000" in text
    assert "sha256 differs" in text
    json.loads((out / "index.json").read_text())
