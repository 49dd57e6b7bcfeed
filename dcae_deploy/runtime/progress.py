"""A dependency-free progress bar on stderr and per-stage wall-clock timers."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import IO


class ProgressBar:
    """``[denoise]  7/20 |#######.............| 0.41 s/it``, redrawn in place on a terminal. Otherwise (a log file)
    the last line, and a line at each tenth of the work once ``LOG_INTERVAL_S`` passed since the one before.
    ``total=None``: a count of unknown length (:meth:`finish` ends its line)."""

    LOG_INTERVAL_S = 5.0

    def __init__(self, total: int | None, label: str, enabled: bool = True, stream: IO[str] | None = None,
                 width: int = 24):
        self.total, self.label, self.enabled, self.width = total, label, enabled, width
        self.stream = stream or sys.stderr
        self.done = 0
        self._start = self._logged = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.total is None:  # unknown length (an adaptive sampler): a count, and a log line per 5 s
            rate = (time.perf_counter() - self._start) / max(self.done, 1)
            line = f"[{self.label}] {self.done} |{rate:.2f} s/it"
            if self.stream.isatty():
                self.stream.write("\r" + line)
            elif time.perf_counter() - self._logged >= self.LOG_INTERVAL_S:
                self.stream.write(line + "\n")
                self._logged = time.perf_counter()
            self.stream.flush()
            return
        filled = self.width * self.done // max(self.total, 1)
        rate = (time.perf_counter() - self._start) / max(self.done, 1)
        line = f"[{self.label}] {self.done:>{len(str(self.total))}}/{self.total} |{'#' * filled}{'.' * (self.width - filled)}| {rate:.2f} s/it"
        end = "\n" if self.done >= self.total else ""
        if self.stream.isatty():
            self.stream.write("\r" + line + end)
        elif self.done >= self.total or (self._tenths(self.done) > self._tenths(self.done - n)
                                         and time.perf_counter() - self._logged >= self.LOG_INTERVAL_S):
            self.stream.write(line + "\n")
            self._logged = time.perf_counter()
        self.stream.flush()

    def finish(self) -> None:
        """End the line of a bar of unknown length (no-op for a bar with a total, which ends itself)."""
        if self.enabled and self.total is None:
            self.stream.write(f"\r[{self.label}] {self.done} done\n" if self.stream.isatty() else
                              f"[{self.label}] {self.done} done\n")
            self.stream.flush()

    def _tenths(self, done: int) -> int:
        return 10 * done // max(self.total, 1)


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
