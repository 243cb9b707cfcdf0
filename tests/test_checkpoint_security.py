"""Hostile checkpoint indexes: every one is refused with one line naming the file, none runs.

Each payload below replaces `.metadata` (DCP's pickled index, the one pickle dgan reads) in
an otherwise valid checkpoint whose meta.json is resealed (sizes and checksums match, as
an attacker who edits a run directory would make them). The payloads try to create a
marker file; the tests assert it never appears. Most of the corpus goes through the
reader in-process; a few payloads go through every CLI entry point.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dgan import checkpoint
from dgan.checkpoint import Checkpointer, deepspeed, layout, safe_pickle, store
from dgan.cli import main

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_MODULES = sorted({m for m, _ in safe_pickle.GLOBALS})
META = {"backend": "ddp", "precision": "fp32", "images_seen": 0, "config_hash": "x"}


# -- pickle builders (opcodes by hand: the point is what a crafted file can say) ---------
def u(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def stack_global(module: str, name: str) -> bytes:
    return u(module) + u(name) + pickle.STACK_GLOBAL


def call(func: bytes, *args: bytes) -> bytes:
    return func + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


def p4(body: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + body + pickle.STOP


def shell(marker: Path) -> str:
    return f"touch {marker}"


def python_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


class Reduce:
    """An object whose pickle calls func(*args) on load, in any protocol."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, bytes]:
    import subprocess as sp

    cmd, code = shell(marker), python_code(marker)
    out: dict[str, bytes] = {}
    # dotted names through every module the allow-list names, and through torch's own
    for module in [*ALLOWED_MODULES, "torch.distributed.checkpoint.metadata"]:
        for name in ("os.system", "Size.__init__.__globals__", "_get_layout.__globals__",
                     "OrderedDict.__init__.__globals__", "Metadata.__init__.__globals__"):
            out[f"dotted {module}+{name}"] = p4(call(stack_global(module, name), u(cmd)))
    # __reduce__ to builtins, os and subprocess, in every protocol (0-3: GLOBAL, 4-5: STACK_GLOBAL)
    for proto in range(6):
        for what, obj in {"eval": Reduce(eval, code), "exec": Reduce(exec, code),
                          "os.system": Reduce(os.system, cmd),
                          "subprocess.call": Reduce(sp.call, ["touch", str(marker)]),
                          "getattr": Reduce(getattr, Reduce(__import__, "os"), "system")
                          }.items():
            out[f"reduce {what} protocol {proto}"] = pickle.dumps(obj, protocol=proto)
    # getattr chain with nested globals: getattr(__import__("os"), "system")(cmd)
    imp = call(stack_global("builtins", "__import__"), u("os"))
    out["getattr chain"] = p4(call(call(stack_global("builtins", "getattr"), imp, u("system")),
                                   u(cmd)))
    # an allowed class's module reached, then a global that is not one of its classes
    out["allowed module, other attribute"] = p4(call(
        stack_global("torch.distributed.checkpoint.filesystem", "os"), u(cmd)))
    out["torch module attribute"] = p4(call(stack_global("torch", "load"), u(str(marker))))
    # protocol 0 opcodes: GLOBAL, INST, OBJ (to allowed names too: they are refused as opcodes)
    out["GLOBAL os.system"] = b"cos\nsystem\n(V" + cmd.encode() + b"\ntR."
    out["GLOBAL allowed torch.Size"] = b"ctorch\nSize\n((I1\nttR."
    out["INST os.system"] = b"(V" + cmd.encode() + b"\nios\nsystem\n."
    out["OBJ os.system"] = b"(cos\nsystem\nV" + cmd.encode() + b"\no."
    # object.__new__ / copyreg tricks, NEWOBJ on a non-allowed class, BUILD on a class
    out["copyreg._reconstructor"] = p4(call(stack_global("copyreg", "_reconstructor"),
                                            stack_global("os", "_wrap_close"),
                                            stack_global("builtins", "object"), b"N"))
    out["NEWOBJ torch.Size"] = p4(stack_global("torch", "Size") + pickle.EMPTY_TUPLE +
                                  pickle.NEWOBJ)
    out["BUILD on an allowed class"] = p4(
        stack_global("torch.distributed.checkpoint.metadata", "Metadata") + b"N" +
        pickle.EMPTY_DICT + u("__init__") + stack_global("torch", "Size") + pickle.SETITEM +
        pickle.TUPLE2 + pickle.BUILD)
    out["REDUCE allowed with a list"] = p4(stack_global("torch", "Size") + pickle.EMPTY_LIST +
                                           pickle.REDUCE)
    out["persistent id"] = p4(u("x") + pickle.BINPERSID)
    out["EXT1"] = pickle.PROTO + b"\x02" + pickle.EXT1 + b"\x01" + pickle.STOP
    # huge length fields: a TiB claimed, a few bytes present
    tib = struct.pack("<Q", 1 << 40)
    out["BINUNICODE8 1 TiB"] = pickle.PROTO + b"\x04" + b"\x8d" + tib + b"abc" + pickle.STOP
    out["BINBYTES8 1 TiB"] = pickle.PROTO + b"\x04" + b"\x8e" + tib + b"abc" + pickle.STOP
    out["BYTEARRAY8 1 TiB"] = pickle.PROTO + b"\x05" + b"\x96" + tib + b"abc" + pickle.STOP
    out["FRAME 1 TiB"] = pickle.PROTO + b"\x04" + pickle.FRAME + tib + b"N." + pickle.STOP
    out["BINUNICODE 4 GiB"] = pickle.PROTO + b"\x02" + b"X\xff\xff\xff\xff" + b"a" + pickle.STOP
    # harmless objects, but not an index
    out["a torch.Size"] = pickle.dumps(torch.Size([1]), protocol=4)
    out["empty"] = b""
    return out


# -- a valid checkpoint to damage ---------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pristine")
    ck = Checkpointer(run, rank=0, world_size=1, keep=2, async_save=False)
    ck.save(4, {"w": torch.arange(6.0), "step": 4}, {"rank": 0}, META)
    ck.close()
    return run


def reseal(path: Path) -> None:
    """What an attacker editing a run directory does: meta.json matching the new files."""
    meta = json.loads((path / layout.META).read_text())
    meta["files"] = layout.file_sizes(path)
    meta[layout.CHECKSUMS] = {n: layout.file_hash(path / n) for n in meta["files"]}
    (path / layout.META).write_text(json.dumps(meta))


def plant(run: Path, ckpt: Path, data: bytes) -> Path:
    """`ckpt` copied with `data` as its index; the copy's path."""
    shutil.rmtree(run, ignore_errors=True)
    dest = layout.checkpoint_dir(run) / ckpt.name
    shutil.copytree(ckpt, dest)
    (dest / ".metadata").write_bytes(data)
    reseal(dest)
    return dest


def one_line_naming(error: BaseException, path: Path) -> None:
    text = str(error)
    assert "\n" not in text and str(path / ".metadata") in text, text


MARKER_IDS = sorted(payloads(Path("/m")))


@pytest.mark.parametrize("name", MARKER_IDS)
def test_hostile_index_is_refused_everywhere_in_process(tmp_path, pristine, name, capsys):
    marker = tmp_path / "PWNED"
    data = payloads(marker)[name]
    src = layout.checkpoint_dir(pristine) / "step-00000004"
    path = plant(tmp_path / "run", src, data)
    with pytest.raises(layout.InvalidCheckpoint) as e:
        store.read_tensors(path)
    one_line_naming(e.value, path)
    with pytest.raises(layout.InvalidCheckpoint) as e:
        checkpoint.load(path)
    one_line_naming(e.value, path)
    with pytest.raises(layout.InvalidCheckpoint) as e:  # sample, eval, export of a run
        checkpoint.load_latest(tmp_path / "run")
    one_line_naming(e.value, path)
    # resume=auto: the only checkpoint is refused; no fresh start next to it
    with pytest.raises(layout.InvalidCheckpoint, match="none of its checkpoints can be loaded"):
        Checkpointer(tmp_path / "run", rank=0, world_size=1, keep=2).load("auto")
    with pytest.raises(layout.InvalidCheckpoint) as e:
        Checkpointer(tmp_path / "other", rank=0, world_size=1, keep=2).load(str(path))
    one_line_naming(e.value, path)
    assert main(["ckpt", "inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"valid        no: {path / '.metadata'}" in out
    assert not marker.exists()


def test_the_old_unpickler_ran_the_dotted_payload(tmp_path, pristine):
    """The corpus is real: the name check dgan used before would have run this one."""
    marker = tmp_path / "PWNED"
    data = payloads(marker)["dotted torch.distributed.checkpoint.metadata+os.system"]

    class Old(pickle.Unpickler):  # the accept-the-whole-module rule, as it was
        def find_class(self, module, name):
            assert module == "torch.distributed.checkpoint.metadata"
            return super().find_class(module, name)

    import io
    Old(io.BytesIO(data)).load()
    assert marker.exists()


def test_index_pointing_outside_or_claiming_more_than_the_data_is_refused(tmp_path, pristine):
    src = layout.checkpoint_dir(pristine) / "step-00000004"
    index = safe_pickle.load(src / ".metadata", store.Metadata)
    info = next(iter(index.storage_data.values()))
    info.relative_path = "../../../etc/passwd"
    path = plant(tmp_path / "a", src, pickle.dumps(index))
    with pytest.raises(layout.InvalidCheckpoint, match="outside the checkpoint's data files"):
        checkpoint.load(path)
    index = safe_pickle.load(src / ".metadata", store.Metadata)
    entry = index.state_dict_metadata["w"]
    entry.size = torch.Size([1 << 20, 1 << 20])  # 4 TiB of float32
    path = plant(tmp_path / "b", src, pickle.dumps(index))
    with pytest.raises(layout.InvalidCheckpoint, match="larger than the data files"):
        checkpoint.load(path)


def test_oversized_index_is_refused_before_reading(tmp_path, pristine, monkeypatch):
    src = layout.checkpoint_dir(pristine) / "step-00000004"
    monkeypatch.setattr(safe_pickle, "MAX_BYTES", 10)
    with pytest.raises(layout.InvalidCheckpoint, match="more than a DCP index can be"):
        checkpoint.load(src)


# -- the CLI entry points -----------------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A real run directory (config.yaml, one checkpoint at step 2) written by `dgan train`."""
    run = tmp_path_factory.mktemp("real") / "run"
    assert main(["train", f"run.dir={run}", *TINY, "train.steps=2"]) == 0
    return run


TINY = ["train.batch_size=4", "log.every=2", "checkpoint.every=2", "log.progress=false",
        "data.workers=0", "log.grid=4", "model.g_width=8", "model.d_width=8"]
CLI_PAYLOADS = ["dotted torch.distributed.checkpoint.metadata+os.system",
                "reduce os.system protocol 2", "BINUNICODE8 1 TiB"]


@pytest.mark.parametrize("name", CLI_PAYLOADS)
def test_every_cli_entry_point_refuses_in_one_line(tmp_path, real_run, name, capsys):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    ckpt = layout.checkpoint_dir(run) / "step-00000002"
    (ckpt / ".metadata").write_bytes(payloads(marker)[name])
    reseal(ckpt)
    index = str(ckpt / ".metadata")
    calls = {"train": ["train", f"run.dir={run}", *TINY, "train.steps=4"],
             "sample": ["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "s")],
             "eval": ["eval", "--run", str(run), "--n", "2"],
             "export": ["ckpt", "export", str(run), str(tmp_path / "x")],
             "export ckpt": ["ckpt", "export", str(ckpt), str(tmp_path / "x")],
             "inspect": ["ckpt", "inspect", str(run)]}
    for what, argv in calls.items():
        status = main(argv)
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert status == (1 if what == "inspect" else 2), (what, text)
        assert index in text and "Traceback" not in text, (what, text)
        errors = [ln for ln in captured.err.splitlines() if ln.startswith("dgan: error:")]
        assert what == "inspect" or len(errors) == 1, (what, captured.err)
    assert sorted(os.listdir(layout.checkpoint_dir(run))) == ["latest", "step-00000002"]
    assert not marker.exists()


def test_dgan_train_resume_refuses_in_a_real_process(tmp_path, real_run):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    ckpt = layout.checkpoint_dir(run) / "step-00000002"
    (ckpt / ".metadata").write_bytes(payloads(marker)[CLI_PAYLOADS[0]])
    reseal(ckpt)
    proc = subprocess.run([sys.executable, "-m", "dgan", "train", f"run.dir={run}", *TINY,
                           "train.steps=4"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("dgan: error: resume=auto: ")
    assert str(ckpt / ".metadata") in proc.stderr
    assert not marker.exists()


# -- DeepSpeed's own files are opt-in -----------------------------------------------------
def test_deepspeed_native_files_need_trust_before_anything_loads():
    me = SimpleNamespace(name="deepspeed", zero_stage=0, world_size=1, trust_files=False)
    meta = {"backend": "deepspeed", "world_size": 1, "state": {"backend": {"zero_stage": 0}},
            "files": {".metadata": 1, "native/G/engine/mp_rank_00_model_states.pt": 5}}
    with pytest.raises(layout.InvalidCheckpoint,
                       match=r"torch.load\(weights_only=False\).*backend.trust_deepspeed_files"):
        deepspeed.check_resume(me, meta)
    deepspeed.check_resume(SimpleNamespace(**dict(vars(me), trust_files=True)), meta)
