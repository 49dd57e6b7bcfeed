"""Where OpenVINO's CPU time goes in one component of an export: its per-node profile, grouped by operation.

::

    python benchmarks/profile_openvino.py --artifacts EXPORT_FP32 --artifacts EXPORT_INT8 --component decoder \\
        --threads 2 --out benchmarks/results/f32c32-sana-cpu-int8/profile

Each export's graph is compiled as the runtime compiles it (``dcae_deploy.runtime.runners.openvino``: LATENCY hint,
f32 inference precision, the thread count), plus ``PERF_COUNT``; it runs once untimed on seeded random inputs at the
shapes the export is optimised for (its profile's ``opt``), then ``--repeats`` times profiled. OpenVINO reports every
executed node with its kernel (``exec_type``: ``brgconv_avx512_I8`` is an int8 convolution, ``jit_avx512_f32`` an
f32 elementwise kernel); the table sums the median run's node times per (operation, kernel precision) and prints
each group's share, next to the wall time of the same runs. Nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dcae_deploy.manifest import read_manifest  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python benchmarks/profile_openvino.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", action="append", required=True, help="an export folder (repeatable: side by side)")
    p.add_argument("--component", required=True, help="the component to profile (decoder, denoiser, ...)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="profiled runs; the median run's profile is reported")
    p.add_argument("--top", type=int, default=12, help="groups shown per export (the rest summed)")
    p.add_argument("--out", default=None, help="folder for profile.json and profile.md")
    return p.parse_args(argv)


def seeded_inputs(component) -> dict[str, np.ndarray]:
    """Inputs at the profile's opt shapes: standard normal floats, ones for integer inputs (masks, ids)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for tensor in component.inputs:
        shape = component.profiles[tensor.name].opt if tensor.name in component.profiles else tuple(
            d if isinstance(d, int) else 1 for d in tensor.shape)
        dtype = np.dtype("float32" if tensor.dtype == "bfloat16" else tensor.dtype)  # numpy has no bfloat16
        feeds[tensor.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                              else np.ones(shape, dtype))
    return feeds


def kernel_precision(exec_type: str) -> str:
    """``brgconv_avx512_I8`` -> ``I8``; ``jit_avx512_f32`` -> ``F32``; ``undef`` -> ``-``."""
    match = re.search(r"_(i8|u8|f32|bf16|f16|i32|i64)$", exec_type, re.IGNORECASE)
    return match.group(1).upper() if match else "-"


def profile(folder: Path, component_name: str, threads: int, repeats: int) -> dict:
    import openvino as ov

    manifest = read_manifest(folder, verify=False)
    component = manifest.component(component_name)
    core = ov.Core()
    props = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
             "PERF_COUNT": True}
    compiled = core.compile_model(str(folder / component.file), "CPU", props)
    request = compiled.create_infer_request()
    feeds = seeded_inputs(component)
    request.infer(feeds)  # untimed: first-run allocations
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer(feeds)
        wall = time.perf_counter() - start
        groups: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            key = (info.node_type, kernel_precision(info.exec_type))
            groups[key][0] += info.real_time.total_seconds()
            groups[key][1] += 1
        runs.append((wall, groups))
    wall, groups = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    total = sum(seconds for seconds, _ in groups.values())
    rows = sorted(({"operation": op, "kernel": kernel, "nodes": n, "ms": seconds * 1e3,
                    "share": seconds / total if total else 0.0} for (op, kernel), (seconds, n) in groups.items()),
                  key=lambda r: -r["ms"])
    return {"export": str(folder), "precision": manifest.describe_precision(), "component": component_name,
            "inputs": {k: list(v.shape) for k, v in feeds.items()}, "openvino": ov.__version__, "threads": threads,
            "wall_ms_median": statistics.median(r[0] for r in runs) * 1e3, "profiled_ms": total * 1e3,
            "rows": rows}


def render(results: list[dict], top: int) -> str:
    lines = []
    for r in results:
        lines += [f"### {r['component']} of {Path(r['export']).name} ({r['precision']}), OpenVINO {r['openvino']}, "
                  f"{r['threads']} threads, inputs {r['inputs']}", "",
                  f"wall {r['wall_ms_median']:.0f} ms (median), node times sum to {r['profiled_ms']:.0f} ms", "",
                  "| operation | kernel | nodes | ms | share |", "| --- | --- | ---: | ---: | ---: |"]
        shown, rest = r["rows"][:top], r["rows"][top:]
        for row in shown:
            lines.append(f"| {row['operation']} | {row['kernel']} | {row['nodes']} | {row['ms']:.0f} | "
                         f"{100 * row['share']:.1f}% |")
        if rest:
            lines.append(f"| ({len(rest)} more groups) | | {sum(x['nodes'] for x in rest)} | "
                         f"{sum(x['ms'] for x in rest):.0f} | {100 * sum(x['share'] for x in rest):.1f}% |")
        by_kernel: dict[str, float] = defaultdict(float)
        for row in r["rows"]:
            by_kernel[row["kernel"]] += row["share"]
        lines += ["", "by kernel precision: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in
                                                          sorted(by_kernel.items(), key=lambda kv: -kv[1])), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = []
    for folder in args.artifacts:
        print(f"profiling {args.component} of {folder} ...", file=sys.stderr, flush=True)
        results.append(profile(Path(folder), args.component, args.threads, args.repeats))
    text = render(results, args.top)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(results, indent=1))
        (out / "profile.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
