"""`dgan ckpt export`: G_ema of one checkpoint, for inference outside training.

Every export folder holds config.yaml and classes.json (the class names, [] when
unconditional) beside the weights in one of three formats:

- safetensors (the default): `G_ema.safetensors`, G_ema's state dict; `dgan.load_generator`
  and `dgan sample` read it.
- torchscript: `G_ema.torchscript.pt`, G traced with `torch.jit.trace`; `torch.jit.load` (or
  libtorch's `torch::jit::load`) runs it without dgan.
- onnx: `G_ema.onnx` (torch.onnx's exporter, which goes through `torch.export`); needs the
  `onnx` extra (`pip install 'dgan[onnx]'`).

A translation run exports its G instead (no EMA): `G.safetensors` (CycleGAN: both
directions in one file), or one graph per direction (`G` / `G_AB`, `G_BA` .torchscript.pt
or .onnx) taking `image` [N, C, H, W] in [-1, 1], H and W multiples of metadata
`dgan.multiple`. A super-resolution run (task.name sr) exports its G_ema: the same three
formats, the graphs taking `image` [N, C, h, w] of any size and giving it `dgan.scale` times
larger.

The graph formats take the inputs `z` [N, z_dim], `c` [N, c_dim] (one-hot, class-
conditional G only) and, for StyleGAN2, `truncation_psi` (a 0-d float tensor; 1 is none) and
return images [N, C, H, W] in [-1, 1]; N is free. StyleGAN2's noise inputs are in "const"
mode, so an image is a function of its inputs. Graphs are taken with dgan's reference ops
(plain PyTorch, the same function as the fused Triton kernels): an opaque Triton launch is
not something TorchScript or ONNX can hold.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

FORMATS = ("safetensors", "torchscript", "onnx")
DEFAULT_FORMAT = "safetensors"
EXPORT_WEIGHTS = "G_ema.safetensors"
# a translation task's G (no EMA): pix2pix's U-Net, or CycleGAN's container of both
# directions (keys AB.*, BA.*)
TRANSLATOR_WEIGHTS = "G.safetensors"
EXPORT_CLASSES = "classes.json"
FILES = {"safetensors": EXPORT_WEIGHTS, "torchscript": "G_ema.torchscript.pt",
         "onnx": "G_ema.onnx"}
# An op name as torch and its exporters write them: aten::foo, aten.foo.default, dgan::bar
_OP = re.compile(r"\b[a-z_][a-z0-9_]*::[A-Za-z_]\w*(?:\.\w+)?|\baten\.\w+(?:\.\w+)?")
_PY_CALL = re.compile(r"Python function call '([^']+)'")  # TorchScript
_OVERLOAD = re.compile(r"OpOverload\(op='([^']+)', overload='([^']+)'\)")  # torch.onnx
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ExportError(ValueError):
    """G_ema cannot be written in the asked format; the message names what is in the way."""


class InferenceGraph(nn.Module):
    """G as the graph formats take it: forward(z[, c][, truncation_psi]) -> images.

    Truncation is written out here as `w_avg + psi * (w - w_avg)` on every w (the mapping
    network's own truncation is a Python branch on psi, which a graph cannot take as input).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.conditional = int(getattr(net, "c_dim", 0)) > 0
        self.stylegan = hasattr(net, "mapping")

    def input_names(self) -> list[str]:
        return ["z"] + ["c"] * self.conditional + ["truncation_psi"] * self.stylegan

    def example_inputs(self, n: int) -> tuple[torch.Tensor, ...]:
        """Inputs for n images (deterministic: export must not touch the caller's RNG)."""
        gen = torch.Generator().manual_seed(n)
        inputs = [torch.randn(n, int(self.net.z_dim), generator=gen)]
        if self.conditional:
            inputs.append(nn.functional.one_hot(torch.arange(n) % self.net.c_dim,
                                                self.net.c_dim).float())
        if self.stylegan:
            inputs.append(torch.tensor(0.7))
        return tuple(inputs)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        z = inputs[0]
        c = inputs[1] if self.conditional else None
        if not self.stylegan:
            return self.net(z, c)
        mapping = self.net.mapping
        ws = mapping(z, c)
        ws = mapping.w_avg + inputs[-1] * (ws - mapping.w_avg)
        return self.net.synthesis(ws, noise_mode="const")


def write_export(state: dict[str, Any], source: Path, out: Path,
                 fmt: str = DEFAULT_FORMAT) -> list[Path]:
    """Write G_ema of checkpoint state `state` (read from `source`) into folder `out` in
    format `fmt`, with config.yaml and classes.json; returns the weights files (one; a
    translation run's graphs: one per direction, see `_write_translator`).

    Files are written with ordinary writes, so they get the umask's permissions. Raises
    ExportError when the graph cannot be taken (naming the ops) or `fmt` needs a package
    that is not installed.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    from dgan.tasks import task_name
    from dgan.translate import TRANSLATION_TASKS

    from dgan.enhance import ENHANCEMENT_TASKS

    if task_name(OmegaConf.create(state["config"])) in TRANSLATION_TASKS:
        return _write_translator(state, source, out, fmt)
    if task_name(OmegaConf.create(state["config"])) in ENHANCEMENT_TASKS:
        return _write_enhancer(state, source, out, fmt)
    c_dim = int(state.get("c_dim", 0))
    meta = {"step": str(state["step"]), "images_seen": str(state["images_seen"]),
            "c_dim": str(c_dim), "source": str(source)}
    if fmt == "safetensors":
        from safetensors.torch import save

        tensors = {k: v.contiguous() for k, v in state["G_ema"].items()}
        # save() and an ordinary write, not save_file(), which creates the file 0600
        data = save(tensors, metadata=meta)
    else:
        data = _graph_bytes(_generator(state), fmt, meta)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / FILES[fmt]
    weights.write_bytes(data)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(state["config"])))
    names = state.get("class_names") or [str(i) for i in range(c_dim)]
    (out / EXPORT_CLASSES).write_text(json.dumps(names) + "\n")
    return [weights]


def _write_translator(state: dict[str, Any], source: Path, out: Path,
                      fmt: str) -> list[Path]:
    """A translation run's G with config.yaml. safetensors: G.safetensors (what dgan
    translate reads; a CycleGAN's holds G_AB and G_BA, keys AB.* and BA.*). torchscript and
    onnx: one graph per direction (`G` for pix2pix, `G_AB` and `G_BA` for CycleGAN), image
    [N, C, H, W] in [-1, 1] -> image, N free and H, W any multiples of the network's
    `multiple` (metadata `dgan.multiple`; dgan translate pads other sizes by reflection).
    Returns the weights files written."""
    meta = {"step": str(state["step"]), "images_seen": str(state["images_seen"]),
            "source": str(source)}
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save

        files = [out / TRANSLATOR_WEIGHTS]
        files[0].write_bytes(save({k: v.contiguous() for k, v in state["G"].items()},
                                  metadata=meta))
    else:
        from dgan.config import config_from_yaml_text
        from dgan.tasks import build_task, task_name
        from dgan.translate import BOTH_WAYS

        cfg = config_from_yaml_text(OmegaConf.to_yaml(OmegaConf.create(state["config"])))
        net = build_task(cfg).build_networks()["G"]
        net.load_state_dict(state["G"])
        net.eval().requires_grad_(False)
        parts = ({"G_AB": net.AB, "G_BA": net.BA} if task_name(cfg) in BOTH_WAYS
                 else {"G": net})
        files = []
        for name, part in parts.items():
            multiple = int(part.multiple)
            # at least two multiples: torch.export fixes a dimension traced at size 1
            side = max(2, -(-int(cfg.data.resolution) // multiple)) * multiple
            graph = ImageGraph(part, int(cfg.data.channels), side, multiple)
            data = _graph_bytes_of(graph, fmt, {**meta, "multiple": str(multiple)})
            files.append(out / f"{name}.{GRAPH_SUFFIX[fmt]}")
            files[-1].write_bytes(data)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(state["config"])))
    return files


def _write_enhancer(state: dict[str, Any], source: Path, out: Path, fmt: str) -> list[Path]:
    """A super-resolution run's G_ema with config.yaml: `G_ema.safetensors` (what dgan
    enhance and dgan.load_enhancer read), or a graph `G_ema.torchscript.pt` / `.onnx` taking
    `image` [N, C, h, w] in [-1, 1] (any N, h, w) and giving [N, C, h x sr.scale, w x
    sr.scale] (dgan enhance adds the tiling)."""
    meta = {"step": str(state["step"]), "images_seen": str(state["images_seen"]),
            "source": str(source)}
    cfg_yaml = OmegaConf.to_yaml(OmegaConf.create(state["config"]))
    out.mkdir(parents=True, exist_ok=True)
    weights = out / FILES[fmt]
    if fmt == "safetensors":
        from safetensors.torch import save

        weights.write_bytes(save({k: v.contiguous() for k, v in state["G_ema"].items()},
                                 metadata=meta))
    else:
        from dgan.config import config_from_yaml_text
        from dgan.tasks import build_task

        cfg = config_from_yaml_text(cfg_yaml)
        net = build_task(cfg).build_networks()["G"]
        net.load_state_dict(state["G_ema"])
        net.eval().requires_grad_(False)
        side = max(2, int(cfg.sr.patch) // int(cfg.sr.scale))
        meta["scale"] = str(cfg.sr.scale)
        graph = ImageGraph(net, int(cfg.data.channels), side, 1)
        weights.write_bytes(_graph_bytes_of(graph, fmt, {**meta, "multiple": "1"}))
    (out / "config.yaml").write_text(cfg_yaml)
    return [weights]


GRAPH_SUFFIX = {"torchscript": "torchscript.pt", "onnx": "onnx"}


class ImageGraph(nn.Module):
    """An image-to-image network as the graph formats take it: forward(image) -> image,
    [N, C, H, W], H and W multiples of `multiple`; example inputs at `side` x `side`."""

    def __init__(self, net: nn.Module, channels: int, side: int, multiple: int) -> None:
        super().__init__()
        self.net, self.channels, self.side, self.multiple = net, channels, side, multiple

    def input_names(self) -> list[str]:
        return ["image"]

    def example_inputs(self, n: int) -> tuple[torch.Tensor, ...]:
        """n images; n = 3 also changes the height and width (the check of a trace)."""
        gen = torch.Generator().manual_seed(n)
        h = self.side + (self.multiple if n == 3 else 0)
        return (torch.rand(n, self.channels, h, self.side, generator=gen) * 2 - 1,)

    def dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        batch = torch.export.Dim("batch", min=1)
        if self.multiple == 1:
            return ({0: batch, 2: torch.export.Dim("height", min=1),
                     3: torch.export.Dim("width", min=1)},)
        return ({0: batch, 2: self.multiple * torch.export.Dim("height_blocks", min=1),
                 3: self.multiple * torch.export.Dim("width_blocks", min=1)},)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def _generator(state: dict[str, Any]) -> nn.Module:
    from dgan.config import config_from_yaml_text
    from dgan.models import build_models

    cfg = config_from_yaml_text(OmegaConf.to_yaml(OmegaConf.create(state["config"])))
    cfg.model.channels_last = False  # a graph for any device, not NHWC-specialised
    g, _ = build_models(cfg, int(state.get("c_dim", 0)))
    g.load_state_dict(state["G_ema"])
    return g.eval().requires_grad_(False)


@contextlib.contextmanager
def _reference_ops() -> Iterator[None]:
    from dgan.ops import _dispatch

    before = _dispatch._impl
    _dispatch.set_impl("reference")
    try:
        yield
    finally:
        _dispatch._impl = before


def _graph_bytes(net: nn.Module, fmt: str, meta: dict[str, str]) -> bytes:
    return _graph_bytes_of(InferenceGraph(net).eval(), fmt, meta)


def _graph_bytes_of(graph: nn.Module, fmt: str, meta: dict[str, str]) -> bytes:
    """`graph` (InferenceGraph or ImageGraph) in format `fmt`, traced at 2 examples."""
    example = graph.example_inputs(2)
    try:
        with _reference_ops(), torch.no_grad(), warnings.catch_warnings():
            # torch.jit's deprecation notice and the tracer's notes on Python values it
            # fixes: the check below compares the result at another batch size instead
            warnings.simplefilter("ignore")
            if fmt == "torchscript":
                return _torchscript(graph, example, meta)
            return _onnx(graph, example, meta)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - exporters raise many types; one line names the ops
        raise ExportError(_explain(e, fmt)) from None


def _torchscript(graph: Any, example: tuple[torch.Tensor, ...],
                 meta: dict[str, str]) -> bytes:
    traced = torch.jit.trace(graph, example, check_trace=False)
    # a trace may have fixed the batch size (and an image's size): check other sizes
    other = graph.example_inputs(3)
    err = (traced(*other) - graph(*other)).abs().max().item()
    if not err <= 1e-4:
        raise ExportError(f"the traced generator differs from G by {err:.3g} at batch size 3 "
                          "(traced at 2): G has shape-dependent Python code torchscript "
                          "cannot follow; use --format onnx or safetensors")
    buf = io.BytesIO()
    extra = {"dgan.json": json.dumps({**meta, "inputs": graph.input_names()})}
    torch.jit.save(traced, buf, _extra_files=extra)
    return buf.getvalue()


def _onnx(graph: Any, example: tuple[torch.Tensor, ...],
          meta: dict[str, str]) -> bytes:
    try:
        import onnx  # noqa: F401 - torch.onnx needs it (and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(f"--format onnx needs the onnx extra: pip install 'dgan[onnx]' "
                          f"({e})") from None
    import logging

    if isinstance(graph, ImageGraph):  # forward(image): the spec of its one argument
        dims = graph.dynamic_shapes()[0]
    else:  # forward(*inputs): one spec per input
        batch = torch.export.Dim("batch", min=1)
        dims = ({0: batch},) + ({0: batch},) * graph.conditional + (None,) * graph.stylegan
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # per-op registration notes (torchvision ops) on stderr
    try:
        program = torch.onnx.export(graph, example, input_names=graph.input_names(),
                                    output_names=["images"], dynamic_shapes=(dims,),
                                    dynamo=True, verbose=False)
    finally:
        quiet.setLevel(level)
    model = program.model_proto
    for key, value in {**meta, "inputs": ",".join(graph.input_names())}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"dgan.{key}", value
    return model.SerializeToString()


def _explain(e: BaseException, fmt: str) -> str:
    """One line: the ops (or Python calls) the exporter could not take, else its first line.

    torch.onnx stops at the first op it has no translation for, so that one is named."""
    text = _ANSI.sub("", str(e))
    ops = sorted(set(_PY_CALL.findall(text)) | set(_OP.findall(text))
                 | {f"{op}.{overload}" for op, overload in _OVERLOAD.findall(text)})
    first = next((line.strip() for line in text.splitlines() if line.strip()),
                 type(e).__name__)
    if ops:
        return f"--format {fmt}: G_ema uses ops {fmt} export cannot take: {', '.join(ops)}"
    return f"--format {fmt}: G_ema cannot be exported: {type(e).__name__}: {first[:300]}"
