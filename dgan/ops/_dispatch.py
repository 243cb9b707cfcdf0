"""Choose between the reference (plain PyTorch) and fused (Triton) op implementations.

The choice is made per call from, in order of precedence:

1. the ``impl=`` argument of an op (tests use it to force a path),
2. :func:`set_impl` (the trainer connects the config key ``model.ops`` to it),
3. the environment variable ``DGAN_OPS`` (``reference`` | ``fused`` | ``auto``),
4. ``auto``: fused on CUDA tensors when Triton imports, reference otherwise.

Inside a ``torch.compile`` region the switch (but not an explicit ``impl=``) selects the
reference for most ops: Inductor fuses those plain elementwise ops with their neighbours
itself, while an opaque Triton launch inside a custom autograd Function would only split the
graph. The exceptions are the ops in :data:`COMPILE_FUSED`, whose fused kernels are exposed
to the compiler as ``torch.library`` custom ops (one opaque node each, no graph break) and
beat what Inductor makes of their reference: ``upfirdn2d``, whose reference is a depthwise
convolution ~10x slower than the Triton kernel on a GPU. Those follow the normal choice
there too. The fused kernels otherwise serve eager mode, which is where the double-backward
phases (R1, path length) run.

``fused`` on a CPU tensor only works under ``TRITON_INTERPRET=1`` (the Triton
interpreter), which is how the kernels are tested without a GPU.
"""

from __future__ import annotations

import logging
import os

import torch

_LOG = logging.getLogger("dgan.ops")
_VALID = ("reference", "fused", "auto")
_impl: str | None = None
_triton_ok: bool | None = None  # triton_available()'s answer once known
_logged: set[tuple[str, str]] = set()
# Ops whose fused path torch.compile keeps (as a custom op) instead of lowering to the reference.
COMPILE_FUSED = frozenset({"upfirdn2d"})


def triton_available() -> bool:
    """True when ``import triton`` works (it may still lack a GPU backend).

    Memoised in a module global rather than ``functools.cache``: inside a compiled region
    Dynamo then reads (and guards on) one global instead of tracing through a cache wrapper.
    """
    global _triton_ok
    if _triton_ok is None:
        try:
            import triton
            import triton.language  # noqa: F401
        except Exception:  # noqa: BLE001 - any import failure means "not usable"
            _triton_ok = False
        else:
            _triton_ok = True
    return _triton_ok


def set_impl(name: str | None) -> None:
    """Select ``'reference'``, ``'fused'`` or ``'auto'`` globally; ``None`` defers to ``DGAN_OPS``."""
    global _impl
    if name is not None and name not in _VALID:
        raise ValueError(f"ops implementation must be one of {_VALID}, got {name!r}")
    if name == "fused" and not triton_available():
        raise RuntimeError("ops implementation 'fused' requested but triton is not importable")
    _impl = name


def get_impl() -> str:
    """The configured implementation name (``reference``, ``fused`` or ``auto``)."""
    if _impl is not None:
        return _impl
    env = os.environ.get("DGAN_OPS", "auto").strip().lower() or "auto"
    if env not in _VALID:
        raise ValueError(f"DGAN_OPS must be one of {_VALID}, got {env!r}")
    return env


def use_fused(op: str, x: torch.Tensor, impl: str | None = None) -> bool:
    """Decide whether ``op`` runs its fused kernel on tensor ``x``; logs the choice once per op."""
    compiling = torch.compiler.is_compiling()
    if impl is None and compiling and op not in COMPILE_FUSED:
        return False
    name = impl if impl is not None else get_impl()
    if name not in _VALID:
        raise ValueError(f"ops implementation must be one of {_VALID}, got {name!r}")
    if name == "reference":
        fused = False
    elif name == "fused":
        if not triton_available():
            raise RuntimeError(f"{op}: fused implementation requested but triton is not importable")
        fused = True
    else:
        fused = x.is_cuda and triton_available()
    path = "fused (triton)" if fused else "reference (pytorch)"
    if not compiling and (op, path) not in _logged:  # no logging calls inside a traced region
        _logged.add((op, path))
        _LOG.info("dgan.ops.%s: using the %s implementation", op, path)
    return fused
