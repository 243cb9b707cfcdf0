"""Test helper: write dgan StyleGAN2 networks as an NVlabs `network-snapshot-*.pkl`.

The file is built from the architecture, as stylegan2-ada-pytorch / stylegan3 lay it out:
each network a persistent-class object, pickled as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with `meta` = {type, version,
module_src, class_name, state}, `state` the module's `__dict__` (`_parameters`, `_buffers`,
`_modules`, `_non_persistent_buffers_set`, plain attributes with numpy scalars and
`dnnlib.util.EasyDict`s); tensors pickled by torch itself (storages as legacy `torch.save`
bytes). The NVlabs names (`mapping.fc0`, `synthesis.b8.conv0`, `b32.skip`, `b4.fc`, ...) are
written here by walking dgan's modules, not through dgan's own name mapping. `module_src`
is code that would create `marker` if anything ran it.
"""

from __future__ import annotations

import collections
import math
import pickle
import sys
import types

import numpy as np
import torch

FIR = torch.tensor([1.0, 3.0, 3.0, 1.0])


def _reconstruct_persistent_obj(meta):  # only its name is pickled; never called
    raise AssertionError("the NVlabs reconstruct function must not be called")


class EasyDict(dict):
    pass


def install_fake_modules(monkeypatch) -> None:
    """`torch_utils.persistence` and `dnnlib.util` as pickle finds them by name."""
    for name, attrs in (("torch_utils", {}), ("dnnlib", {}),
                        ("torch_utils.persistence",
                         {"_reconstruct_persistent_obj": _reconstruct_persistent_obj}),
                        ("dnnlib.util", {"EasyDict": EasyDict})):
        module = types.ModuleType(name)
        for k, v in attrs.items():
            v.__module__, v.__qualname__ = name, k
            setattr(module, k, v)
        monkeypatch.setitem(sys.modules, name, module)


class Persistent:
    """Pickles as NVlabs' persistence decorator pickles a network object."""

    def __init__(self, class_name, params=None, buffers=None, modules=None, src="", **attrs):
        od = collections.OrderedDict
        state = {"training": False, "_parameters": od(params or {}), "_buffers": od(buffers or {}),
                 "_non_persistent_buffers_set": set(), "_forward_hooks": od(),
                 "_modules": od(modules or {}), "_init_args": (), **attrs}
        self.meta = {"type": "class", "version": 4, "module_src": src, "class_name": class_name,
                     "state": state}

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))


def _p(t):  # NVlabs snapshots hold requires_grad_(False) parameters
    return torch.nn.Parameter(t.detach().clone(), requires_grad=False)


def _filt():
    return (FIR.outer(FIR) / FIR.outer(FIR).sum()).clone()


def _fc(layer, src, activation="linear"):
    return Persistent("FullyConnectedLayer", {"weight": _p(layer.weight), "bias": _p(layer.bias)},
                      src=src, activation=activation, weight_gain=np.float64(layer.weight_gain),
                      bias_gain=float(layer.bias_gain))


def _mapping(m, src, w_avg=True):
    mods = {}
    if m.embed is not None:
        mods["embed"] = _fc(m.embed, src)
    for i, layer in enumerate(m.layers):
        mods[f"fc{i}"] = _fc(layer, src, "lrelu")
    bufs = {"w_avg": m.w_avg.clone()} if w_avg else {}
    return Persistent("MappingNetwork", buffers=bufs, modules=mods, src=src, z_dim=m.z_dim,
                      num_layers=len(m.layers), w_avg_beta=0.995 if w_avg else None)


def _synthesis_layer(layer, src):
    return Persistent(
        "SynthesisLayer",
        {"weight": _p(layer.weight), "bias": _p(layer.bias),
         "noise_strength": _p(layer.noise_strength.reshape(()))},
        {"resample_filter": _filt(), "noise_const": layer.noise_const.clone()},
        {"affine": _fc(layer.affine, src)}, src=src, up=layer.up,
        act_gain=np.float64(math.sqrt(2)), padding=1, conv_clamp=256)


def generator(g, src) -> Persistent:
    blocks = {}
    for block in g.synthesis.blocks:
        res = block.conv1.resolution
        params = {"const": _p(block.const)} if block.in_channels == 0 else {}
        mods = {} if block.in_channels == 0 else {"conv0": _synthesis_layer(block.conv0, src)}
        mods["conv1"] = _synthesis_layer(block.conv1, src)
        mods["torgb"] = Persistent("ToRGBLayer", {"weight": _p(block.torgb.weight),
                                                  "bias": _p(block.torgb.bias)},
                                   modules={"affine": _fc(block.torgb.affine, src)}, src=src,
                                   weight_gain=np.float64(block.torgb.weight_gain))
        blocks[f"b{res}"] = Persistent("SynthesisBlock", params, {"resample_filter": _filt()},
                                       mods, src=src, resolution=res, architecture="skip")
    synthesis = Persistent("SynthesisNetwork", modules=blocks, src=src,
                           block_resolutions=[int(k[1:]) for k in blocks])
    kwargs = EasyDict(z_dim=g.z_dim, c_dim=g.c_dim, w_dim=g.w_dim,
                      mapping_kwargs=EasyDict(num_layers=len(g.mapping.layers)),
                      synthesis_kwargs=EasyDict(channel_base=256, num_fp16_res=4))
    return Persistent("Generator", modules={"synthesis": synthesis,
                                            "mapping": _mapping(g.mapping, src)},
                      src=src, z_dim=g.z_dim, c_dim=g.c_dim, _init_kwargs=kwargs)


def _conv(layer, src, activation):
    bias = _p(layer.bias) if layer.bias is not None else None
    return Persistent("Conv2dLayer", {"weight": _p(layer.weight), "bias": bias},
                      {"resample_filter": _filt()}, src=src, activation=activation,
                      weight_gain=np.float64(layer.weight_gain))


def discriminator(d, src) -> Persistent:
    mods = {}
    res = d.img_resolution
    for block in d.blocks:
        parts = {"fromrgb": _conv(block.fromrgb, src, "lrelu")} if block.in_channels == 0 else {}
        parts.update(conv0=_conv(block.conv0, src, "lrelu"), conv1=_conv(block.conv1, src, "lrelu"),
                     skip=_conv(block.skip, src, "linear"))
        mods[f"b{res}"] = Persistent("DiscriminatorBlock", modules=parts, src=src,
                                     resolution=res, architecture="resnet")
        res //= 2
    if d.mapping is not None:
        mods["mapping"] = _mapping(d.mapping, src, w_avg=False)
    e = d.epilogue
    mods["b4"] = Persistent("DiscriminatorEpilogue", modules={
        "mbstd": Persistent("MinibatchStdLayer", src=src, group_size=4, num_channels=1),
        "conv": _conv(e.conv, src, "lrelu"), "fc": _fc(e.fc, src, "lrelu"), "out": _fc(e.out, src)},
        src=src, cmap_dim=e.cmap_dim, resolution=4)
    return Persistent("Discriminator", modules=mods, src=src, c_dim=d.c_dim,
                      block_resolutions=[int(k[1:]) for k in mods if k[1:].isdigit()])


def write_snapshot(path, g, d, g_ema, marker) -> None:
    """An NVlabs snapshot of dgan modules g, d, g_ema; running its module_src makes `marker`."""
    src = f"open({str(marker)!r}, 'w').close()\n"
    data = {"G": generator(g, src), "D": discriminator(d, src), "G_ema": generator(g_ema, src),
            "augment_pipe": Persistent("AugmentPipe", buffers={"p": torch.zeros([])}, src=src,
                                       xflip=np.float64(1.0)),
            "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset",
                                    "path": "ffhq.zip", "resolution": g.img_resolution}}
    with open(path, "wb") as f:
        pickle.dump(data, f)  # the default protocol, as NVlabs' training loop writes it
