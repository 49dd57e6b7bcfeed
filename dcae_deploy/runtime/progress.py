"""A dependency-free progress bar on stderr and per-stage wall-clock timers."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import IO


class ProgressBar:
    """``[denoise]  7/20 |#######.............| 0.41 s/it``, redrawn in place on a terminal; written as a new
    line at every tenth of the work otherwise (a log file)."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream: IO[str] | None = None, width: int = 24):
        self.total, self.label, self.enabled, self.width = total, label, enabled, width
        self.stream = stream or sys.stderr
        self.done = 0
        self._start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        filled = self.width * self.done // max(self.total, 1)
        rate = (time.perf_counter() - self._start) / max(self.done, 1)
        line = f"[{self.label}] {self.done:>{len(str(self.total))}}/{self.total} |{'#' * filled}{'.' * (self.width - filled)}| {rate:.2f} s/it"
        end = "\n" if self.done >= self.total else ""
        if self.stream.isatty():
            self.stream.write("\r" + line + end)
        elif self.done >= self.total or 10 * self.done // max(self.total, 1) > 10 * (self.done - n) // max(self.total, 1):
            self.stream.write(line + "\n")
        self.stream.flush()


class Timings:
    """Seconds spent per stage, summed over calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def report(self) -> str:
        total = sum(self.seconds.values())
        rows = [f"  {name:<14} {sec:8.3f} s" for name, sec in self.seconds.items()]
        return "\n".join(["per-stage timings:", *rows, f"  {'total':<14} {total:8.3f} s"])
