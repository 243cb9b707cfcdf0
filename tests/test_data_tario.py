"""The fast tar reader agrees with tarfile; damaged shards are errors, not garbage."""

import io
import tarfile

import pytest

from dgan.data.tario import TarError, iter_tar, shard_problem, tar_members


def _tar(fmt: int, names: list[str], compress: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}", format=fmt) as tar:
        directory = tarfile.TarInfo("somedir")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)  # a non-file member: skipped
        for i, name in enumerate(names):
            data = bytes([i]) * (i * 300 + 1)
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5  # float mtime: a pax record in PAX format
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


NAMES = ["a/000.jpg", "a/000.cls", "a.b/001.PNG", "x" * 120 + "/002.jpg", "é/003.webp",
         "p" * 150 + "/" + "q" * 90 + ".jpg"]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_members_match_tarfile(fmt):
    names = NAMES if fmt != tarfile.USTAR_FORMAT else NAMES[:3] + NAMES[4:5]
    raw = _tar(fmt, names)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    assert list(tar_members(io.BytesIO(raw))) == expected
    assert [n for n, _ in expected] == names


def test_samples_group_members_by_key_and_compressed_shards_work(tmp_path):
    for suffix, compress in ((".tar", ""), (".tar.gz", "gz")):
        path = tmp_path / f"s{suffix}"
        path.write_bytes(_tar(tarfile.PAX_FORMAT, NAMES[:3], compress))
        samples = list(iter_tar(str(path)))
        assert [s["__key__"] for s in samples] == ["a/000", "a.b/001"]
        assert set(samples[0]) == {"__key__", "__url__", "jpg", "cls"} and "png" in samples[1]


def test_damaged_tar_raises():
    raw = bytearray(_tar(tarfile.GNU_FORMAT, NAMES[:3]))
    with pytest.raises(TarError, match="cut short"):
        list(tar_members(io.BytesIO(bytes(raw[:1536 + 100]))))
    raw[512 + 10] ^= 0xFF  # a byte of the second header
    with pytest.raises(TarError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(raw))))


class _Trickle:
    """A stream with only `read`, returning at most `most` bytes a call (like a pipe)."""

    def __init__(self, data: bytes, most: int) -> None:
        self.data, self.pos, self.most = data, 0, most

    def read(self, n: int = -1) -> bytes:
        n = self.most if n < 0 else min(n, self.most)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("chunk", [512, 1024, 3000, 1 << 18])
def test_members_across_buffer_refills_and_short_reads(monkeypatch, chunk):
    # members smaller and larger than the read buffer, straddling its refills
    monkeypatch.setattr("dgan.data.tario.CHUNK", chunk)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i, size in enumerate([0, 1, 511, 512, 513, 700, 2500, 5000, 3, 1024, 9000, 2]):
            info = tarfile.TarInfo(("n" * 110 if i % 4 == 0 else "") + f"{i:03d}.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes((i * 7 + j) % 256 for j in range(size))))
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = [m for m in tar if m.isfile()]
        expected = [(m.name, tar.extractfile(m).read()) for m in members]
    assert list(tar_members(io.BytesIO(raw))) == expected
    for most in (1, 100, 777):
        assert list(tar_members(_Trickle(raw, most))) == expected
    cut = members[10].offset_data + 4000  # inside the 9000-byte member
    got = []
    with pytest.raises(TarError, match="cut short"):
        for member in tar_members(_Trickle(raw[:cut], 300)):
            got.append(member)
    assert got == expected[:10]


def claim(raw: bytes, header_at: int, size: int) -> bytes:
    """`raw` with the tar header at `header_at` claiming `size` bytes (GNU base-256 field,
    checksum fixed): a damaged or hostile header, without the bytes behind it."""
    header = bytearray(raw[header_at:header_at + 512])
    header[124:136] = b"\x80" + size.to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return raw[:header_at] + bytes(header) + raw[header_at + 512:]


TIB = 1 << 40


def test_a_huge_size_claim_is_an_error_not_an_allocation(tmp_path):
    raw = _tar(tarfile.GNU_FORMAT, ["a/000.jpg", "a/001.jpg", "a/002.jpg"])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        second = [m for m in tar if m.isfile()][1].offset
    bad = claim(raw, second, TIB)
    # a stream (pipe:, BytesIO): capped by max_member
    members = tar_members(io.BytesIO(bad))
    assert next(members)[0] == "a/000.jpg"
    with pytest.raises(TarError, match=r"claims 1099511627776 bytes.*data.max_member_mb"):
        next(members)
    # a local file: capped by what is left of it
    path = tmp_path / "s.tar"
    path.write_bytes(bad)
    with pytest.raises(TarError, match="more than the .* left in the file"):
        list(iter_tar(str(path)))
    assert shard_problem(str(path)) is None  # the first member is fine
    path.write_bytes(claim(raw, 512, TIB))  # the first header after the directory's
    with pytest.raises(TarError, match="left in the file"):
        list(iter_tar(str(path)))


def test_the_stream_cap_is_configurable():
    raw = _tar(tarfile.GNU_FORMAT, NAMES[:3])  # members of 1, 301 and 601 bytes
    assert len(list(tar_members(io.BytesIO(raw), max_member=601))) == 3
    with pytest.raises(TarError, match="claims 601 bytes"):
        list(tar_members(io.BytesIO(raw), max_member=600))


def test_shard_problems_are_found_from_the_first_header(tmp_path):
    empty, text, short, good = (tmp_path / n for n in ("e.tar", "t.tar", "s.tar", "g.tar"))
    empty.write_bytes(b"")
    text.write_bytes(b"hello, not a tar\n" * 100)
    short.write_bytes(b"x" * 100)
    good.write_bytes(_tar(tarfile.GNU_FORMAT, NAMES[:2]))
    assert shard_problem(str(empty)) == "empty (0 bytes), not a tar"
    assert "bad header checksum" in shard_problem(str(text))
    assert "less than one header" in shard_problem(str(short))
    assert shard_problem(str(good)) is None
    with pytest.raises(TarError, match="empty"):
        list(iter_tar(str(empty)))
