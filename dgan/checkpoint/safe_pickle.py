"""The one pickle dgan reads itself: DCP's `.metadata` index, through an exact allow-list.

A pickle is a program: GLOBAL / STACK_GLOBAL fetch any attribute of any module (dotted
names walk attribute chains: `torch` + "os.system"), REDUCE calls what was fetched,
NEWOBJ calls `cls.__new__`, BUILD calls `__setstate__` or `setattr`. So reading one is
safe only when every object it can reach is harmless. Here:

  - the opcode stream is checked first (`pickletools.genops`, which reads each length
    field against the bytes really there, so a BINUNICODE8 claiming a TiB allocates
    nothing): INST, OBJ, NEWOBJ_EX, persistent ids, the extension registry and
    out-of-band buffers are refused (DCP's pickles use none of them);
  - a global must be one of GLOBALS, an exact (module, name) pair resolved once below by
    reference (never by import or getattr at load time): DCP's metadata classes, torch.Size,
    dtypes, the layout/memory-format helpers and paths that DCP's real `.metadata` holds
    (checked against checkpoints written by one process, 2 ranks, DeepSpeed, StyleGAN2);
  - REDUCE may call only REDUCERS, NEWOBJ create only an instance of CLASSES, BUILD set
    state only on such an instance (not on a class, not on anything else).

The file size is capped before it is read (MAX_BYTES).
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import pickletools
from pathlib import Path
from typing import Any

import torch
import torch.serialization
from torch.distributed.checkpoint import filesystem as dcp_fs
from torch.distributed.checkpoint import metadata as dcp_meta

from dgan.checkpoint.layout import InvalidCheckpoint

MAX_BYTES = 1 << 30  # a DCP index is KiBs to MiBs; anything bigger is not one of ours

# Instances the pickle may create with NEWOBJ and fill with BUILD.
CLASSES: dict[tuple[str, str], type] = {
    ("torch.distributed.checkpoint.metadata", c.__name__): c
    for c in (dcp_meta.Metadata, dcp_meta.MetadataIndex, dcp_meta.StorageMeta,
              dcp_meta.TensorStorageMetadata, dcp_meta.TensorProperties,
              dcp_meta.ChunkStorageMetadata, dcp_meta.BytesStorageMetadata)}
CLASSES[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = dcp_fs._StorageInfo
# Callables REDUCE may call: each builds a plain value from plain arguments.
REDUCERS: dict[tuple[str, str], Any] = {
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"):
        dcp_meta._MEM_FORMAT_ENCODING,
    ("pathlib", "PosixPath"): pathlib.PosixPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
# Plain values: torch dtypes by their exact names in `torch` (torch.float32, ...).
DTYPES: dict[tuple[str, str], torch.dtype] = {
    ("torch", name): value for name, value in vars(torch).items()
    if isinstance(value, torch.dtype)}
GLOBALS: dict[tuple[str, str], Any] = {**CLASSES, **REDUCERS, **DTYPES}

# INST and OBJ call the class they name without REDUCE's check; nothing DCP writes needs
# these, persistent ids, the copyreg extension registry or out-of-band buffers.
REFUSED_OPCODES = {"INST", "OBJ", "PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4",
                   "NEWOBJ_EX", "BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}


class UnsafePickle(InvalidCheckpoint, pickle.UnpicklingError):
    """The file is not a pickle dgan may read; the message names the file and why."""


class _Unpickler(pickle._Unpickler):  # the Python implementation: its opcodes can be wrapped
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(io.BytesIO(data))
        self.name = name

    def refuse(self, why: str) -> UnsafePickle:
        return UnsafePickle(f"{self.name}: {why}: refused (not a DCP index dgan wrote)")

    def find_class(self, module: str, name: str) -> Any:
        found = GLOBALS.get((module, name))
        if found is None:
            raise self.refuse(f"refers to {module!r} {name!r}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise self.refuse("has a persistent id")

    def load_reduce(self) -> None:
        func, args = self.stack[-2], self.stack[-1]
        if not any(func is f for f in REDUCERS.values()) or type(args) is not tuple:
            raise self.refuse(f"calls {func!r}")
        super().load_reduce()

    def load_newobj(self) -> None:
        cls, args = self.stack[-2], self.stack[-1]
        if not any(cls is c for c in CLASSES.values()) or type(args) is not tuple:
            raise self.refuse(f"creates {cls!r}")
        super().load_newobj()

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if type(inst) not in CLASSES.values():
            raise self.refuse(f"sets the state of {type(inst).__name__}")
        if not isinstance(state, (dict, tuple)):
            raise self.refuse(f"sets {type(inst).__name__}'s state to a {type(state).__name__}")
        super().load_build()

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.BUILD[0]] = load_build


def check_opcodes(data: bytes, name: str) -> None:
    """Refuse opcodes DCP's index never uses, and length fields the bytes do not back."""
    try:
        for op, _, _ in pickletools.genops(data):
            if op.name in REFUSED_OPCODES:
                raise UnsafePickle(f"{name}: uses pickle opcode {op.name}: refused "
                                   "(not a DCP index dgan wrote)")
    except UnsafePickle:
        raise
    except Exception as e:  # genops: truncated data, bad length field, unknown opcode
        raise UnsafePickle(f"{name}: not a valid pickle: {e}") from None


def load(path: str | Path, expected: type) -> Any:
    """The object pickled in `path`, which must be an instance of `expected` (one of CLASSES)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise UnsafePickle(f"{path}: {size} bytes, more than a DCP index can be "
                           f"({MAX_BYTES}): refused")
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    check_opcodes(data, str(path))
    try:
        obj = _Unpickler(data, str(path)).load()
    except UnsafePickle:
        raise
    except Exception as e:  # malformed but harmless data: one line naming the file
        raise UnsafePickle(f"{path}: unreadable DCP index: {type(e).__name__}: {e}") from None
    if type(obj) is not expected:
        raise UnsafePickle(f"{path}: holds a {type(obj).__name__}, not a DCP index")
    return obj
