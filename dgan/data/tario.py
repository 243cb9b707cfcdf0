"""Reading WebDataset tar shards fast: a minimal streaming tar reader.

`tarfile` spends ~80 us per member in Python on header objects we do not need; at 64^2
that was a quarter of a worker's time. This reader parses only what samples need (name,
size, type; ustar prefix, GNU long names and pax `path` records), checks each header's
checksum, and reads the stream in 256 KiB pieces into one buffer that headers and data
are copied from (no per-member `read` calls). Compressed shards (.tar.gz, .tgz, .tar.bz2,
.tar.xz, in the URL) go through `tarfile`, which knows the codecs.

A header's size field is never trusted with memory: a member may claim at most what is
left of a local file, or `max_member` bytes in a stream (a `pipe:` command, a compressed
shard), so a damaged or hostile header costs an error, not a terabyte allocation.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

BLOCK = 512
CHUNK = 1 << 18  # bytes per read: syscalls stop mattering, the buffer stays in cache
COMPRESSED = re.compile(r"\.(tar\.gz|tgz|tar\.bz2|tbz2?|tar\.xz|txz)\b")
MAX_MEMBER = 256 << 20  # default cap on one member of a streamed shard (data.max_member_mb)


class TarError(ValueError):
    """The shard is not a readable tar stream (bad header checksum, cut short)."""


def _refill(stream: IO[bytes], buf: bytearray, have: int, pos: int,
            need: int) -> tuple[bytearray, int]:
    """Move buf[pos:have] to the front and read on until `need` bytes are buffered (fewer
    only at the end of the stream); returns the buffer, grown if `need` exceeds it, and
    how many bytes it holds. Files are read straight into the buffer (`readinto`); other
    streams (`pipe:` commands, whose `read` reports a failed command) through `read`."""
    rest = max(0, have - pos)
    if need > len(buf):
        grown = bytearray(need)
        grown[:rest] = buf[pos:pos + rest]
        buf = grown
    else:
        buf[:rest] = buf[pos:pos + rest]
    view, have = memoryview(buf), rest
    readinto = getattr(stream, "readinto", None)
    with view:
        while have < need:
            if readinto is not None:
                n = readinto(view[have:]) or 0
            else:
                more = stream.read(len(buf) - have)
                n = len(more)
                view[have:have + n] = more
            if not n:
                break
            have += n
    return buf, have


def _checksum(header: bytes) -> int:
    """The tar header checksum: the byte sum with the chksum field counted as 8 spaces.

    zlib.adler32 keeps 1 + the byte sum modulo 65521; a 256-byte half sums to at most
    65280, so each half's sum comes out exact, about 4x faster than sum() over 512 ints.
    """
    halves = (zlib.adler32(header[:256]) & 0xFFFF) + (zlib.adler32(header[256:]) & 0xFFFF)
    return halves - 2 - sum(header[148:156]) + 256


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    path = None
    while data:
        length = int(data.split(b" ", 1)[0])
        key, _, value = data[:length].split(b" ", 1)[1].partition(b"=")
        if key == b"path":
            path = value[:-1].decode("utf-8", "surrogateescape")
        data = data[length:]
    return path


def _file_size(stream: IO[bytes]) -> int | None:
    """The size of the regular file behind `stream` (read from its start), else None."""
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor: a pipe wrapper, BytesIO
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def tar_members(stream: IO[bytes], max_member: int = MAX_MEMBER) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular file in an uncompressed tar stream, in order.

    Reads the stream in CHUNK-sized pieces into one reused buffer and copies each member's
    data out of it once; no per-member `read` calls and no per-chunk allocations. A member
    larger than the rest of the file (a regular file) or than `max_member` (any other
    stream) is a TarError before any memory is allocated for it.
    """
    file_size = _file_size(stream)
    long_name: str | None = None
    buf, have, pos = bytearray(CHUNK), 0, 0
    base = 0  # stream offset of buf[0]
    while True:
        if have - pos < BLOCK:
            buf, have = _refill(stream, buf, have, pos, BLOCK)
            base, pos = base + pos, 0
        header = bytes(buf[pos:min(pos + BLOCK, have)])  # the buffer is stale past `have`
        if not header and base + pos == 0:
            raise TarError("empty (0 bytes), not a tar")
        if not header or header.count(0) == BLOCK:
            return  # end of archive (zero blocks), or a stream ending without them
        if len(header) < BLOCK:
            raise TarError("tar stream cut short")
        try:
            stored, size = _number(header[148:156]), _number(header[124:136])
        except ValueError:  # digits that are not octal
            stored, size = -1, 0
        if stored != _checksum(header):
            raise TarError("bad tar header checksum (corrupt or not a tar)")
        kind = header[156:157]
        start = pos + BLOCK
        left = max_member if file_size is None else file_size - (base + start)
        if size > left:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            raise TarError(f"member {name!r} claims {size} bytes, more than " + (
                f"the {left} left in the file" if file_size is not None else
                f"the {max_member >> 20} MiB allowed for one member of a streamed shard "
                "(data.max_member_mb)"))
        end = start + size
        padded = end + -size % BLOCK
        if padded > have:  # buffer the data and its padding (a missing last pad is fine)
            buf, have = _refill(stream, buf, have, start, max(CHUNK, padded - start))
            base, start, end, padded = base + start, 0, size, padded - start
            if end > have:
                raise TarError("tar stream cut short")
        data = bytes(buf[start:end])
        pos = padded
        if kind in (b"0", b"\0", b"7"):
            name = long_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if header[257:263] == b"ustar\0" and header[345]:  # POSIX ustar prefix
                    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    name = f"{prefix}/{name}"
            long_name = None
            yield name, data
        elif kind == b"L":  # GNU long name of the next member
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == b"x":  # pax header of the next member
            long_name = _pax_path(data) or long_name
        # directories, links, global pax headers: nothing a sample needs


def _tarfile_members(stream: IO[bytes],
                     max_member: int = MAX_MEMBER) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                if member.size > max_member:  # a decompression bomb, or a damaged header
                    raise TarError(f"member {member.name!r} claims {member.size} bytes, more "
                                   f"than the {max_member >> 20} MiB allowed for one member "
                                   "of a streamed shard (data.max_member_mb)")
                yield member.name, tar.extractfile(member).read()  # type: ignore[union-attr]


def sample_key(name: str) -> tuple[str, str] | None:
    """Member name -> (sample key, lower-case extension); None for names without one."""
    dot = name.find(".", name.rfind("/") + 1)
    return None if dot < 0 else (name[:dot], name[dot + 1:].lower())


def iter_tar(url: str, max_member: int = MAX_MEMBER) -> Iterator[dict[str, Any]]:
    """WebDataset samples ({ext: bytes, "__key__": key, "__url__": url}) of one shard.

    A sample is the run of consecutive members sharing a key (the name up to the first
    dot of its last path component); extensions are lower-cased. `max_member` caps one
    member of a stream (see `tar_members`).
    """
    import webdataset as wds

    members = _tarfile_members if COMPRESSED.search(url) else tar_members
    with wds.gopen(url, "rb") as stream:
        current: dict[str, Any] = {}
        key = None
        for name, data in members(stream, max_member):
            dot = name.find(".", name.rfind("/") + 1)  # sample_key, inlined: per member
            if dot < 0:
                continue
            if name[:dot] != key:
                if current:
                    yield current
                key = name[:dot]
                current = {"__key__": key, "__url__": url}
            current[name[dot + 1:].lower()] = data
        if current:
            yield current


def shard_problem(path: str) -> str | None:
    """Why the local shard `path` cannot give a single sample, from its size and first
    header alone (cheap enough to ask of every shard before training), or None."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty (0 bytes), not a tar"
    if COMPRESSED.search(path):
        return None  # a compressed header says nothing until decompressed
    with open(path, "rb") as f:
        header = f.read(BLOCK)
    if len(header) < BLOCK:
        return f"not a tar ({size} bytes, less than one header)"
    if header.count(0) == BLOCK:
        return None  # an empty archive: valid, no samples
    try:
        stored, claim = _number(header[148:156]), _number(header[124:136])
    except ValueError:
        stored, claim = -1, 0
    if stored != _checksum(header):
        return "not a tar (bad header checksum)"
    if claim > size - BLOCK:
        return f"its first member claims {claim} bytes, more than the file's {size}"
    return None
