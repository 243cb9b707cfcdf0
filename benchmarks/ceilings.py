"""The card's two ceilings, measured: dense bf16 matmul TFLOP/s and device copy TB/s.

    python benchmarks/ceilings.py

Random data (zeros run faster on some cards), median of ten CUDA-event timings after a
warm-up call (``ops_parity._time``). The fraction of peak in train_throughput.py can use
the matmul number (``--peak-tflops``) instead of the datasheet.
"""

from __future__ import annotations

import torch
from ops_parity import _time


def main() -> None:
    if not torch.cuda.is_available():
        print("ceilings: no CUDA device")
        return
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = _time(lambda: a @ b, torch.device("cuda"), reps=10)
    tflops = 2 * n**3 / ms / 1e9
    x = torch.randn(2**30, device="cuda", dtype=torch.float32)  # 4 GiB
    y = torch.empty_like(x)
    ms_copy = _time(lambda: y.copy_(x), torch.device("cuda"), reps=10)
    tbs = 2 * x.numel() * 4 / ms_copy / 1e9
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"bf16 matmul {n}^3: {tflops:.0f} TFLOP/s   device copy: {tbs:.2f} TB/s (read + write)")


if __name__ == "__main__":
    main()
