"""The card's two ceilings, measured: dense bf16 matmul TFLOP/s and device copy TB/s.

    python benchmarks/ceilings.py

Random data (zeros run faster on some cards), ten timed repetitions after three warm-ups,
median. The fraction of peak in train_throughput.py can use the matmul number
(``--peak-tflops``) instead of the datasheet.
"""

from __future__ import annotations

import statistics

import torch


def _median_ms(fn, reps: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    if not torch.cuda.is_available():
        print("ceilings: no CUDA device")
        return
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = _median_ms(lambda: a @ b)
    tflops = 2 * n**3 / ms / 1e9
    x = torch.randn(2**30, device="cuda", dtype=torch.float32)  # 4 GiB
    y = torch.empty_like(x)
    ms_copy = _median_ms(lambda: y.copy_(x))
    tbs = 2 * x.numel() * 4 / ms_copy / 1e9
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"bf16 matmul {n}^3: {tflops:.0f} TFLOP/s   device copy: {tbs:.2f} TB/s (read + write)")


if __name__ == "__main__":
    main()
