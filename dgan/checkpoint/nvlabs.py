"""NVlabs StyleGAN2 snapshots (`network-snapshot-*.pkl` of stylegan2-ada-pytorch and
stylegan3, config F) read without running them, and renamed to dgan's StyleGAN2.

Such a file is a plain pickle of {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}.
Each network is a "persistent class" object: pickled as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` holds the source
code of the networks' module (which NVlabs' loader executes), the class name and the
module's `__dict__` (`_parameters`, `_buffers`, `_modules`, plain attributes). Tensors are
`torch._utils._rebuild_tensor_v2(storage, ...)`, each storage a `torch.storage.
_load_from_bytes(bytes)` call whose bytes are a legacy `torch.save` stream (pickles, then
the raw data). Plain attributes bring numpy scalars and `dnnlib.util.EasyDict`.

Here every one of those globals is replaced by an inert stand-in (GLOBALS): the persistent
object becomes a `Persistent` (class name and state; the source is never executed), the
tensor functions rebuild tensors from the raw bytes, EasyDict is a dict. Any other global
is refused with one line naming it, before anything is called, as are the opcodes that
would call a class without going through REDUCE's check (`UnsafePickle`).
"""

from __future__ import annotations

import collections
import io
import json
import math
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgan.checkpoint.layout import InvalidCheckpoint
from dgan.checkpoint.safe_pickle import UnsafePickle

MAX_BYTES = 8 << 30  # FFHQ-1024 snapshots are ~380 MB
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save's legacy format, then protocol 1001
NETWORKS = {"G": "Generator", "D": "Discriminator", "G_ema": "Generator"}
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
    "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool}
REFUSED_OPCODES = {pickle.INST[0], pickle.OBJ[0], pickle.EXT1[0], pickle.EXT2[0],
                   pickle.EXT4[0], pickle.NEWOBJ_EX[0], pickle.NEXT_BUFFER[0],
                   pickle.READONLY_BUFFER[0], pickle.PERSID[0]}


class NVlabsError(InvalidCheckpoint):
    """The file is not an NVlabs StyleGAN2 snapshot dgan can import; one line says why."""


class Persistent:
    """An NVlabs persistent-class object, inert: its class name and its `__dict__`."""

    def __init__(self, class_name: str, state: dict[str, Any]) -> None:
        self.class_name, self.state = class_name, state


class EasyDict(dict):
    """dnnlib.util.EasyDict read as a plain dict (its attribute access is not needed)."""


class _NumpyDtype:
    """`numpy.dtype(name, align, copy)` before its BUILD sets the byte order."""

    def __init__(self, name: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(name, str) or np.dtype(name).kind not in "biuf":
            raise UnsafePickle(f"numpy dtype {name!r}: refused (numbers only)")
        self.name, self.order = name, "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]


def _numpy_scalar(dtype: Any, data: Any) -> float | int:
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
        raise UnsafePickle("numpy scalar of an unexpected form: refused")
    return np.frombuffer(data, dtype=np.dtype(dtype.order + dtype.name), count=1)[0].item()


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any
                    ) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise UnsafePickle("a tensor without a storage: refused")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickle("a parameter without a tensor: refused")
    return data


def _reconstruct_persistent(meta: Any) -> Persistent:
    if (not isinstance(meta, dict) or meta.get("type") != "class"
            or not isinstance(meta.get("class_name"), str)
            or not isinstance(meta.get("state"), dict)):
        raise UnsafePickle("a persistent object of an unexpected form: refused")
    return Persistent(meta["class_name"], meta["state"])  # meta["module_src"]: never run


class _StorageRef:
    def __init__(self, dtype: torch.dtype, key: str, numel: int) -> None:
        self.dtype, self.key, self.numel = dtype, key, numel


def _storage_from_bytes(data: Any) -> torch.Tensor:
    """The 1-D tensor of a storage that `torch.save(storage, _use_new_zipfile_serialization=
    False)` wrote: four pickles (magic, protocol, system info, the storage as a persistent
    id), the list of storage keys, then per storage its element count and raw bytes."""
    if not isinstance(data, bytes):
        raise UnsafePickle("a storage without bytes: refused")
    f = io.BytesIO(data)
    head = [_Unpickler(f, STORAGE_GLOBALS, inner=True).load() for _ in range(3)]
    if (head[0] != LEGACY_MAGIC or head[1] != 1001 or not isinstance(head[2], dict)
            or head[2].get("little_endian") is not True):
        raise UnsafePickle("a storage in an unknown format: refused")
    ref = _Unpickler(f, STORAGE_GLOBALS, inner=True).load()
    keys = _Unpickler(f, STORAGE_GLOBALS, inner=True).load()
    if not isinstance(ref, _StorageRef) or keys != [ref.key]:
        raise UnsafePickle("a storage of an unexpected form: refused")
    (count,) = struct.unpack("<q", f.read(8))
    nbytes = count * torch.empty((), dtype=ref.dtype).element_size()
    raw = f.read(nbytes)
    if count != ref.numel or len(raw) != nbytes:
        raise UnsafePickle("a storage whose size does not match its data: refused")
    return torch.frombuffer(bytearray(raw), dtype=ref.dtype) if count else torch.empty(
        0, dtype=ref.dtype)


def _storage_type(name: str) -> Any:
    return lambda: STORAGE_DTYPES[name]  # a marker: only persistent_load below reads it


REDUCERS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
}
CLASSES: dict[tuple[str, str], type] = {("dnnlib.util", "EasyDict"): EasyDict}
GLOBALS = {**REDUCERS, **CLASSES}
STORAGE_GLOBALS = {("torch", name): _storage_type(name) for name in STORAGE_DTYPES}


class _Unpickler(pickle._Unpickler):  # the Python implementation: its opcodes can be wrapped
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f: io.BytesIO, allowed: dict[tuple[str, str], Any],
                 inner: bool = False) -> None:
        super().__init__(f)
        self.allowed, self.inner = allowed, inner

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise UnsafePickle(f"refers to {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        # Only inside a storage's bytes: ('storage', type, key, location, numel, view)
        if (not self.inner or not isinstance(pid, tuple) or len(pid) < 5
                or pid[0] != "storage" or pid[1] not in STORAGE_GLOBALS.values()
                or not isinstance(pid[4], int) or pid[4] < 0):
            raise UnsafePickle("has a persistent id")
        return _StorageRef(pid[1](), str(pid[2]), pid[4])

    def load_reduce(self) -> None:
        func, args = self.stack[-2], self.stack[-1]
        if self.inner or not any(func is f for f in REDUCERS.values()) or type(args) is not tuple:
            raise UnsafePickle(f"calls {getattr(func, '__name__', type(func).__name__)}")
        super().load_reduce()

    def load_newobj(self) -> None:
        cls, args = self.stack[-2], self.stack[-1]
        if cls is not EasyDict or args != ():
            raise UnsafePickle(f"creates {getattr(cls, '__name__', type(cls).__name__)}")
        super().load_newobj()

    def load_build(self) -> None:
        if type(self.stack[-2]) is not _NumpyDtype:
            raise UnsafePickle(f"sets the state of {type(self.stack[-2]).__name__}")
        super().load_build()

    def load_refused(self) -> None:
        raise UnsafePickle("uses a refused pickle opcode")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.BUILD[0]] = load_build
    for _op in REFUSED_OPCODES:
        dispatch[_op] = load_refused


def read(path: str | Path) -> dict[str, Any]:
    """The snapshot's top-level dict, every network a `Persistent`, every tensor a CPU tensor.

    Raises NVlabsError (UnsafePickle for a refused global or opcode) naming the file."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise NVlabsError(f"{path}: {size} bytes, more than a StyleGAN2 snapshot: refused")
    data = path.read_bytes()
    if not data.startswith(b"\x80"):  # NVlabs writes protocol 2 or later, which start so
        raise NVlabsError(f"{path}: not a pickle, so not an NVlabs network snapshot")
    try:
        obj = _Unpickler(io.BytesIO(data), GLOBALS).load()
    except UnsafePickle as e:
        raise UnsafePickle(f"{path}: {e}: refused (not an NVlabs StyleGAN2 snapshot dgan "
                           "can read without running it)") from None
    except Exception as e:  # malformed but harmless data: one line naming the file
        raise NVlabsError(f"{path}: not a readable NVlabs snapshot: {type(e).__name__}: "
                          f"{e}") from None
    if not isinstance(obj, dict):
        raise NVlabsError(f"{path}: holds a {type(obj).__name__}, not an NVlabs snapshot dict")
    return obj


def module_state(obj: Persistent, prefix: str = "") -> dict[str, torch.Tensor]:
    """A persistent module's `state_dict()`: parameters and persistent buffers, recursively."""
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or set()
    out = {prefix + k: v for k, v in (state.get("_parameters") or {}).items() if v is not None}
    out.update({prefix + k: v for k, v in (state.get("_buffers") or {}).items()
                if v is not None and k not in skip})
    for name, sub in (state.get("_modules") or {}).items():
        if isinstance(sub, Persistent):
            out.update(module_state(sub, f"{prefix}{name}."))
        elif sub is not None:
            raise NVlabsError(f"{prefix}{name}: a {type(sub).__name__}, not a network layer")
    return out


# NVlabs name -> dgan name, by network. `{R}` is the resolution of a block.
_MAPPING = [(re.compile(r"mapping\.fc(\d+)\.(weight|bias)"), "mapping.layers.{0}.{1}"),
            (re.compile(r"mapping\.(embed\.weight|embed\.bias|w_avg)"), "mapping.{0}")]
_G = [(re.compile(r"synthesis\.b(\d+)\.(const|(?:conv0|conv1|torgb)\.(?:affine\.)?"
                  r"(?:weight|bias)|(?:conv0|conv1)\.(?:noise_strength|noise_const))"),
       "synthesis.blocks.{R}.{1}")]
_D = [(re.compile(r"b(\d+)\.((?:fromrgb|conv0|conv1|skip)\.(?:weight|bias))"), "blocks.{R}.{1}"),
      (re.compile(r"b4\.((?:conv|fc|out)\.(?:weight|bias))"), "epilogue.{0}")]
FIR = torch.tensor([1.0, 3.0, 3.0, 1.0])


def _check_filter(name: str, t: torch.Tensor) -> None:
    """NVlabs keeps each layer's resampling filter as a buffer; dgan's is fixed [1, 3, 3, 1]."""
    f = FIR.outer(FIR)
    if t.shape != f.shape or not torch.allclose(t.float(), f / f.sum()):
        raise NVlabsError(f"{name}: a resampling filter other than [1, 3, 3, 1] (config F)")


def to_dgan(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Network `name` ("G", "G_ema" or "D") of NVlabs' StyleGAN2 under dgan's names."""
    rules = _MAPPING + (_D if name == "D" else _G)
    res = [int(m.group(1)) for k in state if (m := re.match(r"(?:synthesis\.)?b(\d+)\.", k))]
    if not res:
        raise NVlabsError(f"{name}: no StyleGAN2 blocks (b4, b8, ...) in the snapshot's "
                          f"{NETWORKS[name]} (a StyleGAN3 network?); only StyleGAN2 imports")
    top = max(res)
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith("resample_filter"):
            _check_filter(f"{name}.{key}", t)
            continue
        for pattern, target in rules:
            m = pattern.fullmatch(key)
            if m is None or (name == "D" and pattern is _D[0][0] and m.group(1) == "4"):
                continue
            idx = 0
            if "{R}" in target:  # block index: from the top resolution in D, from 4 in G
                r = int(m.group(1))
                idx = int(math.log2(top) - math.log2(r)) if name == "D" else int(math.log2(r)) - 2
            out[target.format(*m.groups(), R=idx)] = (
                t.reshape(1) if key.endswith("noise_strength") else t).clone()
            break
        else:
            raise NVlabsError(f"{name}.{key}: a tensor dgan's StyleGAN2 does not have "
                              "(only config F: skip G, resnet D, imports)")
    return out


def networks(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"G", "D", "G_ema"}: each network of the snapshot `path` as a dgan state dict."""
    snapshot = read(path)
    out = {}
    for name, cls in NETWORKS.items():
        net = snapshot.get(name)
        if net is None:
            continue
        if not isinstance(net, Persistent) or net.class_name != cls:
            raise NVlabsError(f"{path}: {name} is not an NVlabs {cls}")
        try:
            out[name] = to_dgan(name, module_state(net))
        except NVlabsError as e:
            raise NVlabsError(f"{path}: {e}") from None
    if "G_ema" not in out:
        raise NVlabsError(f"{path}: no G_ema: not an NVlabs network snapshot")
    return out


def generator_overrides(g: dict[str, torch.Tensor]) -> list[str]:
    """dgan config overrides (key=value) that build a StyleGAN2 G with the shapes of `g`
    (a dgan state dict); channels per resolution must be min(channel_base // r, channel_max)."""
    layers = [k for k in g if re.fullmatch(r"mapping\.layers\.\d+\.weight", k)]
    w_dim, first_in = g["mapping.layers.0.weight"].shape
    z_dim = first_in - (w_dim if "mapping.embed.weight" in g else 0)
    blocks = sorted(int(k.split(".")[2]) for k in g if k.endswith("conv1.weight"))
    ch = {4 * 2**i: g[f"synthesis.blocks.{i}.conv1.weight"].shape[0] for i in blocks}
    top, cmax = max(ch), max(ch.values())
    base = ch[top] * top
    if any(min(base // r, cmax) != c for r, c in ch.items()):
        raise NVlabsError(f"channels per resolution {ch} are not min(channel_base // r, "
                          "channel_max) for any channel_base")
    return ["model.name=stylegan2", f"model.z_dim={z_dim}", f"model.w_dim={w_dim}",
            f"model.mapping_layers={len(layers)}", f"model.channel_base={base}",
            f"model.channel_max={cmax}", f"data.resolution={top}",
            f"data.channels={g[f'synthesis.blocks.{blocks[-1]}.torgb.weight'].shape[0]}"]


def export(path: str | Path, out: str | Path, fmt: str = "safetensors") -> str:
    """Write the snapshot's G_ema as a `dgan ckpt export` folder (weights in format `fmt`,
    config.yaml, classes.json) that `dgan sample` and `dgan.load_generator` read; a summary."""
    from omegaconf import OmegaConf

    from dgan.config import load_config
    from dgan.export import write_export

    g = networks(path)["G_ema"]
    overrides = generator_overrides(g)
    c_dim = int(g["mapping.embed.weight"].shape[1]) if "mapping.embed.weight" in g else 0
    cfg = load_config(None, overrides)
    state = {"G_ema": g, "step": 0, "images_seen": 0, "c_dim": c_dim,
             "config": OmegaConf.to_container(cfg, resolve=True)}
    write_export(state, Path(path), Path(out), fmt)
    return f"G_ema of {path} ({' '.join(overrides)}, {c_dim} classes)"
