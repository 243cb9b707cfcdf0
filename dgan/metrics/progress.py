"""What an evaluation shows while it runs: a tqdm bar per phase on a terminal; off a
terminal (SLURM logs) a line when it starts, a line every `every_s` seconds of a long
phase, and on both a last line with the elapsed time of each phase. So an end-of-run
evaluation of 50,000 samples is never a silent multi-minute wait."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import IO, Callable, Iterator, Optional


class EvalProgress:
    """Progress of one `evaluate` call; does nothing when `enabled` is False (other ranks,
    or a caller that did not ask for it). `stream`: default sys.stderr at construction."""

    def __init__(self, enabled: bool, stream: Optional[IO[str]] = None,
                 every_s: float = 60.0) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self.start = time.perf_counter()
        self.phases: list[tuple[str, float]] = []

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)  # above any bar, the training one included
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    @contextmanager
    def phase(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        """Yields update(count) for `total` items of this rank; records the phase's time."""
        t0 = time.perf_counter()
        if not self.enabled:
            yield lambda count: None
            return
        if self.tty:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"eval: {name}", unit="img", leave=False,
                       dynamic_ncols=True, file=self.stream)
            try:
                yield bar.update
            finally:
                bar.close()
        else:
            done, last = 0, t0

            def update(count: int) -> None:
                nonlocal done, last
                done += count
                now = time.perf_counter()
                if now - last >= self.every_s:
                    last = now
                    self.line(f"dgan: eval: {name} {done}/{total} ({now - t0:.0f} s)")

            yield update
        self.phases.append((name, time.perf_counter() - t0))

    def finish(self, what: str) -> float:
        """Write the last line, '<what> in T s (phase t s, ...)'; returns T."""
        elapsed = time.perf_counter() - self.start
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phases)
        self.line(f"dgan: eval: {what} in {elapsed:.1f} s" + (f" ({parts})" if parts else ""))
        return elapsed
