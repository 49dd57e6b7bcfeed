"""Whole text-to-image generations, end to end, from export folders on several backends, side by side in one run.

::

    python benchmarks/bench_pipeline.py --artifacts fp32=EXPORT_FP32 --artifacts int8=EXPORT_INT8 \\
        --runs onnxruntime@fp32,openvino@fp32,openvino-defaults@fp32,onnxruntime@int8,openvino@int8 \\
        --prompt "a photograph of a red fox in the snow" --steps 20 --resolution 512 --threads 2 --out benchmarks/results/pipeline-cpu

Each run (``BACKEND@EXPORT``) is a fresh process: it opens the export on the backend (``openvino-defaults`` is
OpenVINO with its own inference precision, the peer's way; ``openvino`` computes f32), generates once untimed at 2
steps (graph compilation, first-run allocations), then times ``--repeats`` generations of ``--steps`` steps at
``--resolution`` (default: the pipeline's size): text encoding, every denoiser step, decoding, the scheduler and the conversion to uint8, what
``python -m dcae_deploy.generate`` does after loading. The first run is the reference: the table gives each run's
median seconds, its speed relative to the reference, and the PSNR of its image against the reference's (same seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKENDS = {"onnxruntime": ("onnxruntime", {}), "openvino": ("openvino", {}),
            "openvino-defaults": ("openvino", {"ov_precision": "default"}), "torch": ("torch", {})}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python benchmarks/bench_pipeline.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", action="append", default=[], metavar="NAME=FOLDER",
                   help="a pipeline export folder and the name runs use for it (repeatable)")
    p.add_argument("--runs", default="", metavar="BACKEND@NAME,...",
                   help=f"the runs, the first one the reference; backends: {', '.join(BACKENDS)}")
    p.add_argument("--prompt", default="a photograph of a red fox in the snow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resolution", type=int, default=None,
                   help="image side in pixels (default: the pipeline's own size, which the export's profile must hold)")
    p.add_argument("--repeats", type=int, default=1, help="timed generations per run (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    p.add_argument("--out", default=None, help="folder for results.json, results.md and each run's image")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(job: dict) -> dict:
    """One run in this process: load, warm up, time; the image goes to ``job['image']`` (.npy)."""
    from dcae_deploy.runtime import TextToImage
    from dcae_deploy.runtime.backends import BackendOptions
    from dcae_deploy.runtime.generation import GenerationConfig

    backend, extra = BACKENDS[job["backend"]]
    options = BackendOptions(device="cpu", threads=job["threads"], **extra)
    start = time.perf_counter()
    with TextToImage.open(job["folder"], backend=backend, options=options, progress=False) as pipe:
        request = dict(prompts=(job["prompt"],), seed=job["seed"], height=job["resolution"], width=job["resolution"])
        pipe.generate(GenerationConfig(**request, steps=2))  # untimed: compilation and first-run allocations
        warm = time.perf_counter() - start
        seconds, result = [], None
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            result = pipe.generate(GenerationConfig(**request, steps=job["steps"]))
            seconds.append(time.perf_counter() - t0)
    np.save(job["image"], result.images[0])
    return {"seconds": seconds, "load_and_warmup_s": warm, "image": job["image"],
            "precision": pipe.artifacts.manifest.describe_precision(),
            "height": int(result.images.shape[1]), "width": int(result.images.shape[2])}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images: the gate's :func:`~dcae_deploy.export.gate.psnr_db` on them mapped to [-1, 1]."""
    from dcae_deploy.export.gate import psnr_db

    return psnr_db(a / 127.5 - 1, b / 127.5 - 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if not args.artifacts or not args.runs:
        raise SystemExit("give --artifacts NAME=FOLDER (one or more) and --runs BACKEND@NAME,...")
    folders = {}
    for item in args.artifacts:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder, "manifest.json").is_file():
            raise SystemExit(f"--artifacts {item!r}: expected NAME=FOLDER with an export's manifest.json in FOLDER")
        folders[name] = folder
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for run in runs:
        backend, _, name = run.partition("@")
        if backend not in BACKENDS or name not in folders:
            raise SystemExit(f"--runs {run!r}: expected BACKEND@NAME with BACKEND one of {', '.join(BACKENDS)} "
                             f"and NAME one of {', '.join(folders)}")
    out = Path(args.out) if args.out else Path(ROOT, "benchmarks", "results", "pipeline")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in runs:
        backend, _, name = run.partition("@")
        job = {"backend": backend, "folder": folders[name], "prompt": args.prompt, "seed": args.seed,
               "steps": args.steps, "repeats": args.repeats, "threads": args.threads, "resolution": args.resolution,
               "image": str(out / f"{backend}-{name}.npy")}
        print(f"[bench_pipeline] {run}: {args.steps} steps x {args.repeats} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                              timeout=args.timeout)
        if proc.returncode != 0:
            rows.append({"run": run, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"})
            print(f"[bench_pipeline] {run} failed: {rows[-1]['error']}", file=sys.stderr)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"run": run, **result, "median_s": statistics.median(result["seconds"])})
    reference = next((r for r in rows if "error" not in r), None)
    if reference is not None:
        ref_image = np.load(reference["image"])
        for r in rows:
            if "error" not in r:
                r["x_vs_reference"] = reference["median_s"] / r["median_s"]
                r["psnr_vs_reference_db"] = psnr(np.load(r["image"]), ref_image)
    text = render(args, rows)
    print(text)
    (out / "results.json").write_text(json.dumps({"prompt": args.prompt, "seed": args.seed, "steps": args.steps,
                                                  "threads": args.threads, "folders": folders, "rows": rows}, indent=1))
    (out / "results.md").write_text(text + "\n")
    return 0


def render(args, rows) -> str:
    lines = [f"{args.steps} steps, seed {args.seed}, {args.threads} threads, prompt {args.prompt!r}; reference: "
             f"{rows[0]['run']}", "",
             "| run | precision | image | median s | x vs reference | PSNR vs reference | load + warm-up s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['run']} | | | failed: {r['error']} | | | |")
            continue
        quality = "-" if r is rows[0] else f"{r['psnr_vs_reference_db']:.1f} dB"
        lines.append(f"| {r['run']} | {r['precision']} | {r['height']}x{r['width']} | {r['median_s']:.2f} | "
                     f"{r['x_vs_reference']:.2f}x | {quality} | {r['load_and_warmup_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
