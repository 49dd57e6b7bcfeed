"""Which ONNX Runtime CPU settings make one graph fastest? Times a few session configurations side by side.

::

    python benchmarks/ort_cpu_options.py EXPORT_DIR --component decoder --resolution 512 --repeats 10
    python benchmarks/ort_cpu_options.py EXPORT_DIR --component decoder --profile   # + the slowest op types

Configurations (all with intra-op threads = --threads, inter-op 1, sequential execution):

* ``ort-defaults``: ONNX Runtime's defaults + thread count;
* ``all``: ORT_ENABLE_ALL (incl. the NCHWc layout transformer), CPU arena, memory patterns, spinning,
  denormals as zero -- ``dcae_deploy.runtime``'s ``OrtSettings`` defaults;
* ``extended`` / ``basic``: lower graph optimisation levels (no NCHWc layout / only constant folding);
* ``all-no-spin``: ``all`` with ``session.intra_op.allow_spinning=0`` (kinder to a busy machine);
* ``all-no-arena``: ``all`` without the CPU memory arena (lower peak memory, more allocator calls);
* ``all+resize``: ``all`` on a copy of the graph where the ``Unsqueeze -> Expand -> Reshape`` chains
  (nearest 2x upsampling and channel repeat_interleave, written so for TensorRT) became one ``Resize``;
* ``all+rewrites``: what the runtime's CPU runner does: ``all`` on the graph with every rewrite of
  ``dcae_deploy.runtime.ort_graph.CPU_REWRITES`` (the Resize one, RMSNorm and GLU as blocked convolutions,
  blocked shortcuts);
* ``offline-all``: the graph optimised once at ORT_ENABLE_ALL and saved (``optimized_model_filepath``),
  then loaded with optimisations off: same kernels, faster session start. The saved graph is tied to this
  CPU's instruction set (NCHWc block size), so ship the plain graph and optimise on the target.

Inputs are seeded (N(0,1) / 0.41 for latents), the same for every configuration; the output of each is
compared with ``ort-defaults``'s.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# configs run on a rewritten copy of the graph -> which of ort_graph.CPU_REWRITES (they apply in order) it gets
REWRITTEN_CONFIGS = {"all+resize": slice(0, 1), "all+rewrites": slice(None)}


def session(graph: Path, config: str, threads: int, workdir: Path, profile: bool = False):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.intra_op_num_threads = threads
    if config != "ort-defaults":
        o.inter_op_num_threads = 1
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        o.add_session_config_entry("session.set_denormal_as_zero", "1")
        o.add_session_config_entry("session.intra_op.allow_spinning", "0" if config == "all-no-spin" else "1")
        level = {"extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC"}.get(config, "ORT_ENABLE_ALL")
        o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        o.enable_cpu_mem_arena = config != "all-no-arena"
        if config == "offline-all":
            optimized = workdir / f"{graph.stem}.optimized.onnx"
            if not optimized.is_file():
                o.optimized_model_filepath = str(optimized)
                ort.InferenceSession(str(graph), o, providers=["CPUExecutionProvider"])
                o = session_options_off(threads)
            else:
                o = session_options_off(threads)
            graph = optimized
    if config in REWRITTEN_CONFIGS:
        from dcae_deploy.runtime.ort_graph import CPU_REWRITES, load_rewritten

        rewritten = workdir / f"{graph.stem}.{config}.onnx"
        if not rewritten.is_file():
            data, counts = load_rewritten(graph, CPU_REWRITES[REWRITTEN_CONFIGS[config]]) or (graph.read_bytes(), {})
            print(f"  (rewrites: {', '.join(f'{v} {k}' for k, v in counts.items())})")
            rewritten.write_bytes(data)
        graph = rewritten
    if profile:
        o.enable_profiling = True
        o.profile_file_prefix = str(workdir / f"profile-{config}")
    t0 = time.perf_counter()
    s = ort.InferenceSession(str(graph), o, providers=["CPUExecutionProvider"])
    return s, time.perf_counter() - t0


def session_options_off(threads: int):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    o.add_session_config_entry("session.set_denormal_as_zero", "1")
    return o


def top_ops(profile_file: str, n: int = 8) -> list[tuple[str, float]]:
    events = json.loads(Path(profile_file).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e.get("args", {}).get("op_name", "?")] += e.get("dur", 0) / 1e3
    return per_op.most_common(n)


sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/ort_cpu_options.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", help="export folder (manifest.json) written by python -m dcae_deploy.export")
    p.add_argument("--component", default="decoder")
    p.add_argument("--resolution", type=int, default=None, help="image side in px (default: the profile's optimum)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--configs",
                   default="ort-defaults,all,extended,basic,all-no-spin,all-no-arena,offline-all,all+resize,all+rewrites")
    p.add_argument("--profile", action="store_true", help="also print the op types taking most time (--profile-config)")
    p.add_argument("--profile-config", default="all+rewrites")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    from bench_worker import physical_cores

    from dcae_deploy.manifest import read_manifest

    folder = Path(args.export)
    manifest = read_manifest(folder, verify=False)
    comp = manifest.component(args.component)
    threads = args.threads or physical_cores()
    ratio = manifest.spatial_compression_ratio or (
        manifest.pipeline.autoencoder.spatial_compression_ratio if manifest.pipeline else 32)
    side = args.resolution or manifest.resolution.get("opt_res", 512)
    rng = np.random.default_rng(0)
    feeds = {}
    for t in comp.inputs:
        shape = []
        for d in t.shape:
            if isinstance(d, int):
                shape.append(d)
            elif d == "batch":
                shape.append(2 if args.component in ("denoiser", "text_encoder") else 1)
            elif d.startswith("latent"):
                shape.append(side // ratio)
            elif d in ("height", "width"):
                shape.append(side)
            else:
                shape.append(comp.profiles[t.name].max[t.shape.index(d)])
        if t.dtype == "int64":
            feeds[t.name] = np.ones(shape, np.int64)
        else:
            feeds[t.name] = (rng.standard_normal(shape) / 0.41).astype(t.dtype)
    workdir = Path(tempfile.mkdtemp(prefix="ort-options-"))
    results, reference = [], None
    print(f"{args.component} @ {side}px, {threads} threads, {args.repeats} runs; graph {folder / comp.file}")
    for config in args.configs.split(","):
        s, load = session(folder / comp.file, config, threads, workdir)
        for _ in range(args.warmup):
            out = s.run(None, feeds)[0]
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = s.run(None, feeds)[0]
            times.append((time.perf_counter() - t0) * 1e3)
        if reference is None:
            reference = out
        err = float(np.linalg.norm(out - reference) / max(np.linalg.norm(reference), 1e-30))
        row = {"config": config, "median_ms": statistics.median(times), "min_ms": min(times), "load_s": load,
               "rel_l2_vs_runtime_default": err}
        results.append(row)
        print(f"  {config:16s} median {row['median_ms']:9.2f} ms  min {row['min_ms']:9.2f} ms  "
              f"session {load:5.2f} s  rel L2 {err:.1e}", flush=True)
        del s
    if args.profile:
        s, _ = session(folder / comp.file, args.profile_config, threads, workdir, profile=True)
        for _ in range(3):
            s.run(None, feeds)
        prof = s.end_profiling()
        print(f"slowest op types (ms over 3 runs, config {args.profile_config!r}):")
        for op, ms in top_ops(prof):
            print(f"  {op:28s} {ms:9.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"component": args.component, "resolution": side, "threads": threads,
                                              "cpu_count": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
