"""Rank-0 training logs: a CSV of loss terms per step, a progress line, and a loss-curve PNG drawn with PIL."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from PIL import Image, ImageDraw

from dcae_deploy.checkpoints import atomic_write

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
_FIXED = ("step", "lr", "time")
_NOT_PLOTTED = ("grad_norm", "sigma")  # diagnostics kept in the CSV but not drawn


class LossLog:
    """Append-only CSV ``step, <terms...>, lr, time`` (seconds of training); on resume, rows at or after
    the resume step are dropped and time continues from the last kept row.

    Nothing is written before the first :meth:`append` (the first completed step): a run that fails
    to start leaves no empty log behind, and a resume that fails to start leaves the old log as it was.
    """

    def __init__(self, path: Path, start_step: int = 0) -> None:
        self.path = path
        self.columns: list[str] | None = None
        self.rows: list[dict[str, float]] = []
        if start_step > 0 and path.is_file():
            with path.open(newline="") as f:
                self.rows = [
                    {k: int(float(v)) if k == "step" else float(v) for k, v in row.items() if v not in ("", None)}
                    for row in csv.DictReader(f)
                    if int(float(row["step"])) < start_step
                ]
            if self.rows:
                self.columns = list(self.rows[0].keys())
        self.time_offset = self.rows[-1].get("time", 0.0) if self.rows else 0.0  # wall time continues on resume
        self._written = False  # the file on disk is still the previous run's (or absent)

    def append(self, step: int, terms: dict[str, float], lr: float, elapsed: float) -> None:
        row: dict[str, float] = {"step": step, **terms, "lr": lr, "time": self.time_offset + elapsed}
        self.rows.append(row)
        if not self._written or self.columns is None or set(row) - set(self.columns):
            self.columns = list(dict.fromkeys([*(self.columns or []), *row]))
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)

    def _rewrite(self) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns or [])
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.path, write)  # an interrupted rewrite keeps the old file
        self._written = True


class Progress:
    """One line every ``every`` steps: step, loss terms, lr, speed and time left."""

    def __init__(self, total: int, start: int, every: int) -> None:
        self.total, self.start, self.every = total, start, max(1, every)
        self.t0 = time.perf_counter()

    def update(self, step: int, terms: dict[str, float], lr: float) -> None:
        done = step + 1
        if done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.start) / max(elapsed, 1e-9)
        left = (self.total - done) / max(rate, 1e-9)
        losses = " ".join(f"{k} {v:.4g}" for k, v in terms.items())
        print(f"step {done}/{self.total} | {losses} | lr {lr:.3g} | {rate:.2f} it/s | eta {left:.0f}s", flush=True)


def plot_losses(rows: list[dict[str, float]], path: Path, size: tuple[int, int] = (900, 500)) -> None:
    """Loss curves of the loss terms in ``rows`` (log10 y axis when all values are positive), as PNG."""
    terms = [k for k in (rows[0] if rows else {}) if k not in _FIXED and not k.startswith(_NOT_PLOTTED)]
    width, height = size
    left, right, top, bottom = 70, 20, 20, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    series = {t: [(r["step"], r[t]) for r in rows if t in r and math.isfinite(r[t])] for t in terms}
    values = [v for pts in series.values() for _, v in pts]
    if not values:
        draw.text((left, top), "no loss values logged", fill="black")
        img.save(path)
        return
    log_y = min(values) > 0
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    steps = [s for pts in series.values() for s, _ in pts]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(f(v) for v in values), max(f(v) for v in values)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def xy(s: float, v: float) -> tuple[float, float]:
        px = left + (s - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (f(v) - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(5):  # y ticks
        yv = y0 + (y1 - y0) * i / 4
        py = height - bottom - i / 4 * (height - top - bottom)
        label = f"{10 ** yv:.3g}" if log_y else f"{yv:.3g}"
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((4, py - 6), label, fill="black")
    for i in range(5):  # x ticks
        sv = x0 + (x1 - x0) * i / 4
        px = left + i / 4 * (width - left - right)
        draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
        draw.text((px - 10, height - bottom + 8), f"{sv:.0f}", fill="black")
    draw.text((width // 2 - 15, height - 20), "step", fill="black")
    for i, (term, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        if len(pts) > 1:
            draw.line([xy(s, v) for s, v in pts], fill=colour, width=2)
        elif pts:
            px, py = xy(*pts[0])
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.text((width - right - 160, top + 6 + 14 * i), term, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
