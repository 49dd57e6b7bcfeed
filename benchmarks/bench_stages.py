"""Time every pipeline stage on every backend of this machine, side by side, on the same inputs.

::

    python benchmarks/bench_stages.py --model demo --resolution 128 --backends torch,onnxruntime --repeats 10
    python benchmarks/bench_stages.py --model f32c32-sana --stages decoder --resolution 512 \\
        --backends torch,onnxruntime --repeats 10                      # the CPU goal: ORT >= 1.5x eager
    python benchmarks/bench_stages.py --model sana-600m-t2i --resolutions 512,1024,2048 --tile-above 1024 \\
        --precision fp16 --backends torch,torch-cudagraph,torch-compile,onnxruntime,tensorrt   # on a GPU

Stages: ``text_encoder`` (the prompt and the negative prompt: batch 2 x --batch, longest token count),
``denoiser`` (ONE step with classifier-free guidance: batch 2 x --batch), ``encoder`` (image -> latent),
``decoder`` (latent -> image; tiled through ``dcae_deploy.runtime.decode_tiled`` above --tile-above).

Backends: ``torch`` (eager, ``torch.inference_mode``), ``torch-cudagraph`` and ``torch-compile`` (GPU only:
``n/a: no GPU`` otherwise), ``onnxruntime`` (CUDA EP with IO binding on a GPU, else the CPU EP with explicit
best settings), ``onnxruntime-cpu`` (the CPU EP even on a GPU machine), ``tensorrt`` (TensorRT or
TensorRT-RTX engines; ``n/a`` with the reason where they cannot run), ``openvino`` (the runtime's OpenVINO runner on
the CPU, f32: its default), ``openvino-bf16`` (the same, ``INFERENCE_PRECISION_HINT=bf16``) and ``openvino-defaults``
(no precision hint: OpenVINO's own choice, bf16 on CPUs with bf16); every OpenVINO pair compiles without a cache.

Without ``--artifacts`` the needed ONNX graphs are exported first (random weights unless --checkpoint;
random weights time the same as trained ones, and the output says so) into a cache folder and reused.
Every (stage, resolution, backend) is measured in a fresh subprocess (``bench_worker.py``) so that its
peak memory is its own. Results go to ``--out``: ``results.json``, ``results.md`` (table, speedup against
PyTorch eager) and ``results.png`` (bar chart).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_report import write_reports  # noqa: E402
from bench_worker import physical_cores  # noqa: E402

ALL_BACKENDS = ("torch", "torch-bf16", "torch-cudagraph", "torch-compile", "onnxruntime", "onnxruntime-cpu", "tensorrt",
                "openvino", "openvino-bf16", "openvino-defaults", "onnxruntime-int8", "openvino-int8")
#: backends that run a quantized export of the same stage (exported and calibrated by this script, like the others)
QUANTIZED_BACKENDS = {"onnxruntime-int8": "int8", "openvino-int8": "int8"}
DEFAULT_BACKENDS = "torch,torch-cudagraph,torch-compile,onnxruntime,tensorrt"
STAGE_ORDER = ("text_encoder", "denoiser", "encoder", "decoder")
GRAPH_BACKENDS = ("onnxruntime", "onnxruntime-cpu", "tensorrt", "openvino", "openvino-bf16", "openvino-defaults",
                  *QUANTIZED_BACKENDS)
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dcae_deploy" / "benchmarks"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_stages.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="variant: a pipeline (demo, tiny-t2i, sana-600m-t2i) or an "
                   "autoencoder (f32c32-sana, tiny-f32c32-sana)")
    p.add_argument("--checkpoint", default=None, help="weights (pipeline folder / autoencoder checkpoint); "
                   "default: random weights (fine for timing)")
    p.add_argument("--artifacts", default=None, help="an existing export folder to time (default: export into --cache-dir)")
    p.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGE_ORDER)} "
                   "(default: all the model has)")
    p.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: the pipeline's, or 512)")
    p.add_argument("--resolutions", default=None, help="sweep: comma-separated sides, e.g. 512,1024,2048")
    p.add_argument("--tile-above", type=int, default=None,
                   help="decoder/encoder export profile ends here; larger decodes are tiled with tiles of this side "
                   "(default: no tiling, the profile reaches the largest resolution)")
    p.add_argument("--batch", type=int, default=1, help="images per call (denoiser and text encoder run 2x this: CFG)")
    p.add_argument("--backends", default=DEFAULT_BACKENDS, help=f"comma-separated subset of {','.join(ALL_BACKENDS)}")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="export precision, and the dtype torch computes in")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=10, help="timed runs per pair (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (the first one is reported separately)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: physical cores)")
    p.add_argument("--channels-last", action="store_true", help="torch: channels_last memory format for encoder/decoder")
    p.add_argument("--ort-option", action="append", default=[], metavar="KEY=VALUE",
                   help="ONNX Runtime session setting, e.g. graph_optimization_level=ORT_ENABLE_EXTENDED, "
                   "allow_spinning=0, enable_cpu_mem_arena=0 (see README)")
    p.add_argument("--engine-dir", default=None, help="TensorRT plans folder (default: find or build under the export)")
    p.add_argument("--trt-flavour", default=None, choices=("tensorrt", "tensorrt-rtx"))
    p.add_argument("--no-build-engines", action="store_true", help="do not build missing TensorRT engines")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help=f"where exports are kept (default {DEFAULT_CACHE})")
    p.add_argument("--no-cache", action="store_true", help="re-export even when the cache has the export")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per (stage, backend) subprocess")
    p.add_argument("--goal-speedup", type=float, default=1.5,
                   help="CPU goal to check: ONNX Runtime at least this many times faster than PyTorch eager")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<model>-<device>)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1:
        p.error("--repeats and --warmup must be >= 1")
    return args


# --------------------------------------------------------------------------------------------------
# model facts, exports, engines
# --------------------------------------------------------------------------------------------------


class ModelInfo:
    """What the benchmark needs to know of a variant without building it (from its model families)."""

    def __init__(self, variant: str) -> None:
        from dcae_deploy.family import component_defs, image_ratio, parts_of
        from dcae_deploy.registry import get_variant

        self.config = config = get_variant(variant)
        parts = parts_of(config)
        if "autoencoder" not in parts:
            raise SystemExit(f"--model {variant}: a {config.kind}; benchmark a pipeline or an autoencoder variant")
        self.ae, self.den, self.te = parts["autoencoder"], parts.get("denoiser"), parts.get("text_encoder")
        self.stages = tuple(s for s in STAGE_ORDER if s in component_defs(config))
        self.default_side = getattr(config, "image_size", None) or 512
        self.ratio = image_ratio(config)

    def input_tokens(self, manifest) -> tuple[int, int]:
        if manifest is not None and manifest.pipeline and manifest.pipeline.text_encoder:
            tokens = manifest.pipeline.text_encoder.input_tokens
            if tokens:
                return int(tokens[0]), int(tokens[1])
        try:
            from dcae_deploy.models.text_encoder import default_tokenizer

            return tuple(default_tokenizer(self.te).input_lengths)
        except Exception:  # no tokenizer files (e.g. Gemma without its folder): the plain caption length
            return self.te.max_length, self.te.max_length

    def vocab_size(self) -> int:
        return int(self.te.vocab_size or self.te.arch.get("vocab_size", 16))


def stage_spec(info: ModelInfo, stage: str, manifest):
    """The stage's export spec (its family's), for the tensor layouts of its inputs."""
    from types import SimpleNamespace

    from dcae_deploy.specs import Resolution, component_spec

    res = Resolution(info.ratio, info.ratio, info.ratio, 1)  # only the tensor layouts are used
    tokenizer = None
    if info.te is not None and stage == "text_encoder":
        tokenizer = SimpleNamespace(input_lengths=info.input_tokens(manifest), vocab_size=info.vocab_size())
    return component_spec(info.config, stage, None, res, tokenizer)


def photo_latent(info: ModelInfo, side: int, like, checkpoint: str | None):
    """The latent of a photograph (scikit-image's astronaut) by the benchmark's own PyTorch encoder (its weights: the
    checkpoint, or the exporter's random seed-0 weights), ``like``'s batch: quantized decoders are calibrated on such
    latents, and their quality is only meaningful on them. Random latents where scikit-image is missing."""
    import torch

    from dcae_deploy.export.calibration import load_images
    from dcae_deploy.models.pipeline import build_parts, load_parts

    try:
        image = load_images("photos", side, 1)[0]
    except Exception as exc:  # no scikit-image
        log(f"decoder inputs: random latents ({exc})")
        return like
    parts = (load_parts(info.config, checkpoint, roles=["autoencoder"]) if checkpoint
             else build_parts(info.config, seed=0, roles=["autoencoder"]))
    with torch.no_grad():
        latent = parts.autoencoder.encode(torch.from_numpy(image))
    return latent.repeat(like.shape[0], 1, 1, 1).to(like.dtype)


def write_inputs(info: ModelInfo, stage: str, side: int, batch: int, manifest, folder: Path,
                 checkpoint: str | None = None) -> Path:
    """The stage's inputs at ``side`` px, seeded (the same file feeds every backend)."""
    import torch

    spec = stage_spec(info, stage, manifest)
    b = batch * 2 if stage in ("denoiser", "text_encoder") else batch
    tokens = info.input_tokens(manifest)[1] if stage == "text_encoder" else None
    point = {"batch": b, "height": side, "width": side, "latent_height": side // info.ratio,
             "latent_width": side // info.ratio, "tokens": tokens}
    gen = torch.Generator().manual_seed(0)
    arrays, roles = {}, {}
    for t in spec.inputs:
        x = t.make(point, gen)
        if stage == "decoder" and t.name == "latent":
            x = photo_latent(info, side, x, checkpoint)
        if t.sample == "mask":  # full rows: the worst case, and the same work on every backend
            x = torch.ones_like(x)
        arrays[t.name] = x.numpy()
        roles[t.name] = t.dtype
    path = folder / f"inputs-{stage}-{side}.npz"
    np.savez(path, **arrays)
    path.with_suffix(".json").write_text(json.dumps(roles))
    return path


def export_groups(info: ModelInfo, stages: list[str], sides: list[int], tile_above: int | None) -> list[dict]:
    """Exports needed: denoiser + text encoder over all sides; encoder + decoder up to --tile-above."""
    lo, hi = min(sides), max(sides)
    groups = []
    caption = [s for s in stages if s in ("text_encoder", "denoiser")]
    image = [s for s in stages if s in ("encoder", "decoder")]
    if caption:
        groups.append({"components": caption, "min": lo, "max": hi})
    if image:
        top = min(hi, tile_above) if tile_above else hi
        groups.append({"components": image, "min": min(lo, top), "max": top})
    for g in groups:
        g["opt"] = min(max(sides[0], g["min"]), g["max"])
    return groups


def ensure_export(args, info: ModelInfo, group: dict, precision: str | None = None) -> Path:
    from dcae_deploy.export import export_model

    precision = precision or args.precision
    key = f"{args.model}|{precision}|{','.join(group['components'])}|{group['min']}|{group['opt']}|" \
          f"{group['max']}|{args.batch}|{args.checkpoint and str(Path(args.checkpoint).resolve())}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    name = f"{args.model}-{precision}-{'+'.join(group['components'])}-{group['min']}-{group['max']}-b{args.batch}-{digest}"
    folder = Path(args.cache_dir) / name
    if (folder / "manifest.json").is_file() and not args.no_cache:
        log(f"reusing the export in {folder}")
        return folder
    log(f"exporting {','.join(group['components'])} of {args.model} ({precision}, {group['min']}..{group['max']} px, "
        f"{'random weights' if not args.checkpoint else args.checkpoint}) into {folder}")
    t0 = time.perf_counter()
    export_model(args.model, folder, checkpoint=args.checkpoint, components=group["components"],
                 precision=precision, min_res=group["min"], opt_res=group["opt"], max_res=group["max"],
                 max_batch=args.batch)
    log(f"export took {time.perf_counter() - t0:.1f} s")
    return folder


def find_engines(args, folder: Path, precision: str, cuda: bool) -> tuple[str | None, str | None]:
    """(engine folder, None) or (None, why TensorRT cannot run here)."""
    try:
        from dcae_deploy.runtime.runners.tensorrt import import_tensorrt

        flavour, _ = import_tensorrt(args.trt_flavour)
    except Exception as exc:
        return None, f"no TensorRT: {str(exc).split('. ')[0]}"
    if not cuda:
        return None, "no GPU (TensorRT needs one to deserialize and run a plan)"
    if args.engine_dir:
        return args.engine_dir, None
    from dcae_deploy.engines import list_engine_dirs

    dirs = [d for d in list_engine_dirs(folder / "engines") if d.name.endswith(f"-{precision}")]
    if dirs:
        return str(dirs[-1]), None
    if args.no_build_engines:
        return None, f"no engines under {folder / 'engines'} (--no-build-engines)"
    try:
        from dcae_deploy.engines import build_engines

        log(f"building {flavour} engines for {folder}")
        infos = build_engines(folder, backend=flavour)
        return str(next(iter(infos.values())).plan_path.parent), None
    except Exception as exc:
        return None, f"engine build failed: {str(exc).splitlines()[0][:200]}"


def detect_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def environment(args, cuda: bool, threads: int) -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu": platform.processor() or "?",
           "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(), "threads": threads, "gpu": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    env["torch"] = torch.__version__
    if cuda:
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    return env


# --------------------------------------------------------------------------------------------------
# running the pairs
# --------------------------------------------------------------------------------------------------


def run_pair(job: dict, work: Path, timeout: float, threads: int) -> dict:
    tag = f"{job['stage']}-{job['resolution']}-{job['backend']}"
    job_path, result_path = work / f"job-{tag}.json", work / f"result-{tag}.json"
    job_path.write_text(json.dumps(job, indent=1))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(HERE / "bench_worker.py"), str(job_path), str(result_path)],
                              env=env, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout:.0f} s"}
    if not result_path.is_file():
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"status": "error", "reason": f"worker exited {proc.returncode}: {' | '.join(tail)[:300]}"}
    result = json.loads(result_path.read_text())
    if result["status"] == "error" and proc.stderr:
        (work / f"stderr-{tag}.txt").write_text(proc.stderr)
    result["wall_s"] = time.perf_counter() - t0
    return result


def relative_l2(a_path: str, b_path: str) -> float | None:
    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    if a.shape != b.shape:
        return None
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


PEER = "openvino-defaults"  # what a CPU user gets from the peers: OpenVINO's own defaults on the plain graph
PEER_TARGET = 2.0
QUALITY = {"decoder": ("psnr_vs_torch", 40.0)}  # stage -> (row field, floor); other stages: relative L2 ceiling
MAX_REL_L2 = 2e-2


def meets_quality(row: dict) -> bool:
    field, floor = QUALITY.get(row["stage"], (None, None))
    if field is not None:
        return (row.get(field) or 0.0) >= floor
    return row.get("rel_l2_vs_torch") is not None and row["rel_l2_vs_torch"] <= MAX_REL_L2


def peer_goal_rows(rows: list[dict]) -> dict | None:
    """Per (stage, side) with a ``openvino-defaults`` row: our fastest backend that meets the quality floor (decoder
    PSNR >= 40 dB, else relative L2 <= 2e-2 against PyTorch fp32), and its speedup over the peer's way."""
    goal_rows = []
    for peer in (r for r in rows if r["backend"] == PEER and r["status"] == "ok"):
        ours = [r for r in rows if r["stage"] == peer["stage"] and r["resolution"] == peer["resolution"]
                and r["status"] == "ok" and r["backend"] not in ("torch", "torch-bf16", PEER) and meets_quality(r)]
        if ours:
            best = min(ours, key=lambda r: r["median_ms"])
            speedup = peer["median_ms"] / best["median_ms"]
            goal_rows.append({"stage": peer["stage"], "resolution": peer["resolution"], "backend": best["backend"],
                              "speedup": speedup, "met": speedup >= PEER_TARGET})
    if not goal_rows:
        return None
    return {"description": f"CPU: our fastest path meeting the quality floor (decoder PSNR >= 40 dB, else rel L2 <= "
                           f"{MAX_REL_L2:g}) at least {PEER_TARGET:g}x faster than {PEER} on the plain graph, same run",
            "target": PEER_TARGET, "rows": goal_rows}


def image_psnr(a_path: str, b_path: str) -> float | None:
    """PSNR (dB) of decoded images in [-1, 1], as the export gate computes it."""
    from dcae_deploy.export.gate import psnr_db

    a, b = np.load(a_path), np.load(b_path)
    return psnr_db(a, b) if a.shape == b.shape else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = ModelInfo(args.model)
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else list(info.stages)
    bad = [s for s in stages if s not in info.stages]
    if bad:
        raise SystemExit(f"--stages: {args.model} has no {', '.join(bad)} (it has {', '.join(info.stages)})")
    stages = [s for s in STAGE_ORDER if s in stages]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in ALL_BACKENDS]
    if bad:
        raise SystemExit(f"--backends: unknown {', '.join(bad)}; choose from {', '.join(ALL_BACKENDS)}")
    if "torch" not in backends:
        backends.insert(0, "torch")  # the reference every ratio is taken against
    sides = [int(s) for s in args.resolutions.split(",")] if args.resolutions else [args.resolution or info.default_side]
    for s in sides:
        if s <= 0 or s % info.ratio:
            raise SystemExit(f"resolution {s} must be a positive multiple of {info.ratio}")
    if args.tile_above is not None and args.tile_above % info.ratio:
        raise SystemExit(f"--tile-above {args.tile_above} must be a multiple of {info.ratio}")
    cuda = detect_cuda(args.device)
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: torch sees no CUDA GPU here")
    threads = args.threads or physical_cores()
    device_name = "cuda" if cuda else "cpu"
    out = Path(args.out or HERE / "results" / f"{args.model}-{device_name}")
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    ort_options = {}
    for item in args.ort_option:
        key, _, value = item.partition("=")
        ort_options[key] = {"0": False, "1": True, "false": False, "true": True}.get(value.lower(), value)

    # exports (and engines) for the graph backends
    exports: dict[str, dict] = {}  # stage -> {"folder", "manifest", "max", "engine_dir", "engine_reason"}
    quantized: dict[str, dict[str, dict]] = {}  # precision -> the same, of the quantized exports
    if any(b in GRAPH_BACKENDS for b in backends):
        from dcae_deploy.manifest import read_manifest

        wanted = [None] if any(b in GRAPH_BACKENDS and b not in QUANTIZED_BACKENDS for b in backends) else []
        wanted += sorted({QUANTIZED_BACKENDS[b] for b in backends if b in QUANTIZED_BACKENDS})
        folders = []
        for precision in wanted:
            if args.artifacts and precision is None:
                folders.append((Path(args.artifacts), read_manifest(args.artifacts, verify=False), exports))
                continue
            for group in export_groups(info, stages, sides, args.tile_above):
                folder = ensure_export(args, info, group, precision)
                folders.append((folder, read_manifest(folder, verify=False),
                                exports if precision is None else quantized.setdefault(precision, {})))
        for folder, manifest, table in folders:
            engine_dir, engine_reason = (None, None)
            if "tensorrt" in backends:
                engine_dir, engine_reason = find_engines(args, folder, manifest.precision, cuda)
            for name in manifest.components:
                if name in stages:
                    res = manifest.resolution
                    table[name] = {"folder": str(folder), "manifest": manifest, "min": res.get("min_res"),
                                     "max": res.get("max_res"), "engine_dir": engine_dir, "engine_reason": engine_reason,
                                     "weights": "random" if manifest.checkpoint is None else manifest.checkpoint}

    rows = []
    done_text = False
    for side in sides:
        for stage in stages:
            if stage == "text_encoder":
                if done_text:
                    continue  # resolution-independent
                done_text = True
            export = exports.get(stage)
            manifest = export["manifest"] if export else None
            inputs = write_inputs(info, stage, side, args.batch, manifest, work, args.checkpoint)
            tile = None
            profile_max = export["max"] if export else args.tile_above
            if stage == "decoder" and profile_max and side > profile_max:
                tile = profile_max
            reference = None
            for backend in backends:
                job = {"model": args.model, "checkpoint": args.checkpoint, "stage": stage, "backend": backend,
                       "resolution": side, "batch": args.batch, "precision": args.precision, "device": args.device,
                       "cuda": cuda, "threads": threads, "repeats": args.repeats, "warmup": args.warmup,
                       "inputs": str(inputs), "tile": tile, "ratio": info.ratio, "channels_last": args.channels_last,
                       "ort": ort_options, "trt_flavour": args.trt_flavour,
                       "output": str(work / f"output-{stage}-{side}-{backend}.npy")}
                if backend in GRAPH_BACKENDS:
                    export = quantized.get(QUANTIZED_BACKENDS[backend], {}).get(stage) if backend in QUANTIZED_BACKENDS \
                        else exports.get(stage)
                    if export is None:
                        job["artifacts_reason"] = f"the artifacts have no {stage} graph"
                    elif stage != "decoder" and not (export["min"] <= side <= export["max"]):
                        job["artifacts_reason"] = f"{side}px is outside the export profile {export['min']}..{export['max']}"
                    else:
                        job["artifacts"] = export["folder"]
                    if backend == "tensorrt":
                        job["engine_dir"] = export and export["engine_dir"]
                        job["engine_reason"] = export["engine_reason"] if export else job.get("artifacts_reason")
                        if job.get("artifacts_reason"):
                            job["engine_dir"] = None
                            job["engine_reason"] = job["artifacts_reason"]
                log(f"{stage} @ {side}px on {backend}{f' (tiled {tile}px)' if tile else ''} ...")
                result = run_pair(job, work, args.timeout, threads)
                row = {"stage": stage, "resolution": side, "batch": job["batch"] * (2 if stage in ("denoiser", "text_encoder") else 1),
                       "backend": backend, "tiled": tile, **result}
                if result["status"] == "ok":
                    log(f"  median {result['median_ms']:.2f} ms over {args.repeats} runs")
                    if backend == "torch":
                        reference = row
                    if reference is not None:
                        row["speedup_vs_torch"] = reference["median_ms"] / result["median_ms"]
                        if backend != "torch":
                            row["rel_l2_vs_torch"] = relative_l2(result["output"], reference["output"])
                            if stage == "decoder":
                                row["psnr_vs_torch"] = image_psnr(result["output"], reference["output"])
                else:
                    log(f"  {result['status']}: {result.get('reason')}")
                rows.append(row)

    peer_goal = None if cuda else peer_goal_rows(rows)
    weights = "random (timing only: the numbers do not depend on the weights' values)" if not args.checkpoint else args.checkpoint
    goal = None
    if not cuda:
        pairs = [r for r in rows if r["backend"] == "onnxruntime" and r.get("speedup_vs_torch")]
        goal = {"description": f"CPU: ONNX Runtime at least {args.goal_speedup}x faster than PyTorch eager, same run",
                "target": args.goal_speedup,
                "rows": [{"stage": r["stage"], "resolution": r["resolution"], "speedup": r["speedup_vs_torch"],
                          "met": r["speedup_vs_torch"] >= args.goal_speedup} for r in pairs]}
    report = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "model": args.model, "weights": weights, "precision": args.precision, "batch": args.batch,
        "device": device_name, "resolutions": sides, "stages": stages, "backends": backends,
        "repeats": args.repeats, "warmup": args.warmup, "threads": threads,
        "exports": {s: {k: v for k, v in e.items() if k != "manifest"} for s, e in exports.items()},
        "quantized_exports": {p: {s: {k: v for k, v in e.items() if k != "manifest"} for s, e in table.items()}
                              for p, table in quantized.items()},
        "environment": environment(args, cuda, threads),
        "goal": goal,
        "peer_goal": peer_goal,
        "rows": rows,
    }
    paths = write_reports(report, out)
    for p in paths:
        log(f"wrote {p}")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
