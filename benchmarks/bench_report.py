"""Reports of a ``bench_stages.py`` run: ``results.json``, ``results.md`` and ``results.png`` (PIL bar chart)."""

from __future__ import annotations

import json
import math
from pathlib import Path

COLORS = {"torch": (110, 110, 110), "torch-cudagraph": (150, 120, 200), "torch-compile": (90, 60, 170),
          "onnxruntime": (40, 120, 200), "onnxruntime-cpu": (90, 170, 230), "tensorrt": (118, 185, 0)}


def peak_memory_mb(row: dict) -> tuple[float | None, str]:
    """(peak MB, what it is): GPU memory on a GPU run, else the process's resident peak over its start."""
    m = row.get("memory") or {}
    if "gpu_max_allocated_mb" in m:
        return m["gpu_max_allocated_mb"], "gpu alloc"
    if "gpu_used_delta_mb" in m and m["gpu_used_delta_mb"] is not None and (row.get("config") or {}).get("providers", ["?"])[0] != "CPUExecutionProvider":
        return m["gpu_used_delta_mb"], "gpu used"
    return m.get("peak_over_start_mb"), "rss"


def _fmt(x, spec=".2f", none="-") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def markdown(report: dict) -> str:
    lines = [
        f"# Stage benchmark: {report['model']} ({report['precision']}, batch {report['batch']}, {report['device']})",
        "",
        f"- command: `{report['command']}`",
        f"- weights: {report['weights']}",
        f"- {report['repeats']} timed runs after {report['warmup']} warm-up runs; median reported; "
        f"threads {report['threads']}",
        f"- machine: {report['environment'].get('cpu')} ({report['environment'].get('physical_cores')} physical cores)"
        + (f", GPU {report['environment']['gpu']}" if report["environment"].get("gpu") else ", no GPU"),
        f"- created {report['created']}",
        "",
        "| stage | px | batch | backend | median ms | min..max ms | x vs torch eager | peak MB | act. MB | "
        "load s | 1st call s | rel L2 vs eager | notes |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["rows"]:
        head = f"| {r['stage']} | {r['resolution']} | {r['batch']} | {r['backend']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r.get('reason', '')} | | | | | | | | |".replace("\n", " "))
            continue
        peak, kind = peak_memory_mb(r)
        act = (r.get("memory") or {}).get("peak_over_loaded_mb")
        notes = []
        if r.get("tiled"):
            notes.append(f"tiled {r['tiled']}px")
        if kind != "rss":
            notes.append(kind)
        if r.get("with_host_io_ms"):
            notes.append(f"with host I/O {r['with_host_io_ms']:.2f} ms")
        providers = (r.get("config") or {}).get("providers")
        if providers:
            notes.append(providers[0].replace("ExecutionProvider", " EP"))
        if not r.get("finite", True):
            notes.append("NON-FINITE output")
        if r.get("psnr_vs_torch") is not None:
            notes.append(f"PSNR {r['psnr_vs_torch']:.1f} dB")
        lines.append(
            f"{head} {_fmt(r['median_ms'])} | {_fmt(r['min_ms'])}..{_fmt(r['max_ms'])} | "
            f"{_fmt(r.get('speedup_vs_torch'), '.2f')}x | {_fmt(peak, '.0f')} | {_fmt(act, '.0f')} | "
            f"{_fmt(r.get('load_s'), '.1f')} | {_fmt(r.get('first_call_s'), '.2f')} | "
            f"{_fmt(r.get('rel_l2_vs_torch'), '.1e')} | {', '.join(notes)} |"
        )
    for goal in (report.get("goal"), report.get("peer_goal")):
        if not goal or not goal["rows"]:
            continue
        lines += ["", f"Goal ({goal['description']}):", ""]
        for g in goal["rows"]:
            via = f" ({g['backend']})" if g.get("backend") else ""
            lines.append(f"- {g['stage']} @ {g['resolution']}px{via}: {g['speedup']:.2f}x -> "
                         f"{'MET' if g['met'] else 'NOT met'}")
    lines += ["", "Columns: see benchmarks/README.md. Configurations of each backend are in results.json (rows[].config).", ""]
    return "\n".join(lines)


def chart(report: dict, path: Path) -> Path:
    """Grouped horizontal bars, one group per (stage, resolution): time (left) and peak memory (right)."""
    from PIL import Image, ImageDraw, ImageFont

    groups: dict[tuple, list[dict]] = {}
    for r in report["rows"]:
        groups.setdefault((r["stage"], r["resolution"]), []).append(r)
    font = ImageFont.load_default()
    bar_h, gap, left, panel, margin = 16, 28, 150, 360, 20
    n_rows = sum(len(v) for v in groups.values())
    width = left + 2 * panel + 3 * margin + 120
    height = 60 + n_rows * (bar_h + 4) + len(groups) * gap + 20
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((margin, 10), f"{report['model']} ({report['precision']}, {report['device']}, weights: "
           f"{'random' if report['weights'].startswith('random') else 'checkpoint'}) - median of {report['repeats']} runs",
           fill="black", font=font)
    x_time, x_mem = left + margin, left + panel + 2 * margin + 60
    d.text((x_time, 30), "time (ms, bar relative to the group's slowest)", fill="black", font=font)
    d.text((x_mem, 30), "peak memory (MB)", fill="black", font=font)
    y = 55
    for (stage, side), rows in groups.items():
        d.text((margin, y), f"{stage} @ {side}px", fill="black", font=font)
        y += 16
        ok = [r for r in rows if r["status"] == "ok"]
        t_max = max([r["median_ms"] for r in ok] or [1.0])
        m_max = max([peak_memory_mb(r)[0] or 0.0 for r in ok] or [1.0]) or 1.0
        for r in rows:
            color = COLORS.get(r["backend"], (80, 80, 80))
            d.text((margin + 10, y + 2), r["backend"], fill="black", font=font)
            if r["status"] != "ok":
                d.text((x_time, y + 2), f"{r['status']}: {r.get('reason', '')}"[:90], fill=(160, 0, 0), font=font)
            else:
                w = max(1, int(panel * r["median_ms"] / t_max))
                d.rectangle([x_time, y, x_time + w, y + bar_h], fill=color)
                label = f"{r['median_ms']:.1f} ms" + (f"  {r['speedup_vs_torch']:.2f}x" if r.get("speedup_vs_torch") else "")
                d.text((x_time + w + 4, y + 2), label, fill="black", font=font)
                mem = peak_memory_mb(r)[0]
                if mem is not None:
                    w = max(1, int((panel - 60) * max(mem, 0.0) / m_max))
                    d.rectangle([x_mem, y, x_mem + w, y + bar_h], fill=color)
                    d.text((x_mem + w + 4, y + 2), f"{mem:.0f}", fill="black", font=font)
            y += bar_h + 4
        y += gap - 16
    img.save(path)
    return path


def write_reports(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(report, indent=1, default=str))
    paths[1].write_text(markdown(report))
    try:
        paths.append(chart(report, out / "results.png"))
    except ImportError:
        pass  # no Pillow: JSON and markdown only
    return paths
