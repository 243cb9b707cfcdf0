"""Tensors through torch.distributed.checkpoint (DCP), everything else as JSON.

A training state is a nested dict of tensors and plain values. `split` turns it into a
flat dict of tensors (keys are "/"-joined paths, written by DCP: every rank writes the
share DCP's planner assigns it, replicated tensors once) and a JSON skeleton in which each
tensor is replaced by {"__tensor__": key}. `join` is the inverse.

Why not put the plain values into DCP too: DCP stores non-tensor values as pickles and
loads them with `torch.load(weights_only=False)`, which runs arbitrary code. Here nothing
is unpickled except DCP's own index (`.metadata`), and that through `safe_pickle`: an
exact allow-list of DCP's metadata classes, torch dtypes and sizes.
"""

from __future__ import annotations

import pathlib
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, TensorProperties, TensorStorageMetadata

from dgan.checkpoint import safe_pickle

TENSOR, TUPLE = "__tensor__", "__tuple__"
# DCP warns on every single-process save/load; single-process use is intended here.
NO_DIST_WARNING = ".*assuming the intent is to"
DATA_FILE = re.compile(r"^__\d+_\d+\.distcp$")  # the names DCP's FileSystemWriter gives


def split(tree: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able skeleton, {path: tensor}) of nested dicts/lists/tuples of tensors and scalars."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node
            return {TENSOR: path}
        if isinstance(node, dict):
            for k in node:
                if not isinstance(k, str):
                    raise TypeError(f"checkpoint state key {k!r} at {path or '/'} is not a string")
            return {k: walk(v, f"{path}/{k}" if path else k) for k, v in node.items()}
        if isinstance(node, tuple):
            return {TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"checkpoint state at {path}: {type(node).__name__} is not saveable "
                        "(tensors, dicts, lists, tuples and JSON scalars only)")

    return walk(tree, prefix), tensors


def join(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild the nested state from a skeleton and loaded tensors (KeyError if one is missing)."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {TENSOR}:
            return tensors[skeleton[TENSOR]]
        if set(skeleton) == {TUPLE}:
            return tuple(join(v, tensors) for v in skeleton[TUPLE])
        return {k: join(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [join(v, tensors) for v in skeleton]
    return skeleton


class SafeReader(dcp.FileSystemReader):
    """FileSystemReader whose index is read by dgan's allow-list unpickler (safe_pickle)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = pathlib.Path(self.path) / ".metadata"
        metadata = safe_pickle.load(path, Metadata)
        check_index(path, metadata)
        if getattr(metadata, "storage_meta", None) is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata


def check_index(path: pathlib.Path, metadata: Metadata) -> None:
    """Every entry a tensor with a shape and dtype, stored within a data file of this directory."""
    for key, item in metadata.state_dict_metadata.items():
        if not isinstance(item, TensorStorageMetadata):
            raise safe_pickle.UnsafePickle(
                f"{path}: entry {key!r} is not a tensor; dgan checkpoints hold tensors only "
                "in DCP, refusing to unpickle it")
        if not (isinstance(item.size, torch.Size) and isinstance(item.properties, TensorProperties)
                and isinstance(item.properties.dtype, torch.dtype)):
            raise safe_pickle.UnsafePickle(f"{path}: entry {key!r} has no valid shape and dtype")
    for index, info in (metadata.storage_data or {}).items():
        name = getattr(info, "relative_path", None)
        data = path.parent / str(name)
        if (not isinstance(info, _StorageInfo) or not isinstance(name, str)
                or not DATA_FILE.match(name) or not data.is_file()
                or type(info.offset) is not int or type(info.length) is not int
                or not 0 <= info.offset <= info.offset + info.length <= data.stat().st_size):
            raise safe_pickle.UnsafePickle(
                f"{path}: entry {getattr(index, 'fqn', index)!r} points outside the "
                f"checkpoint's data files ({info!r})")


def write_tensors(directory: Path, tensors: dict[str, torch.Tensor],
                  group: Optional[dist.ProcessGroup]) -> None:
    """Every rank of `group` calls this with the same keys; returns when all have written.

    DCP's coordinator writes `.metadata` only after gathering every rank's write results,
    so when this returns on rank 0 the whole tensor part is on disk (fsynced).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_DIST_WARNING)
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(directory), sync_files=True),
                 process_group=group, no_dist=group is None)


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint on the CPU, without a process group and without pickles.

    Each rank reads everything: under DDP every rank needs the full replicated state, and
    a full read is what lets a checkpoint from N ranks load on M.
    """
    metadata = SafeReader(str(directory)).read_metadata()
    data_bytes = sum(p.stat().st_size for p in directory.glob("*.distcp"))
    template: dict[str, torch.Tensor] = {}
    for key, item in metadata.state_dict_metadata.items():
        size = torch.Size(item.size)
        if size.numel() * item.properties.dtype.itemsize > data_bytes:
            # before allocating: the index cannot claim more than the data files hold
            raise safe_pickle.UnsafePickle(f"{directory / '.metadata'}: entry {key!r} of shape "
                                           f"{list(size)} is larger than the data files")
        template[key] = torch.empty(size, dtype=item.properties.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_DIST_WARNING)
        dcp.load(template, storage_reader=SafeReader(str(directory)), no_dist=True)
    return template


def stage_to_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Private CPU copies, so training may change the originals while a thread writes these."""
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
