"""The process's random-number-generator states as JSON (python, numpy, torch CPU, CUDA).

dgan draws its latents from generators seeded by (seed, rank, step, phase) and the data
order from seeded generators too, so exact resume does not depend on these; they are
saved so that user code (augmentations, custom losses) drawing from the global generators
also continues where it was.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def _bytes(t: torch.Tensor) -> list[int]:
    return t.to(torch.uint8).tolist()


def capture() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    out: dict[str, Any] = {
        "python": {"version": version, "state": list(state), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": _bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return out


def restore(state: dict[str, Any]) -> None:
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])
