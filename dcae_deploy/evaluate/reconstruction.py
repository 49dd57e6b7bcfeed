"""``python -m dcae_deploy.evaluate reconstruction``: the DC-AE release's reconstruction metrics on your images,
PyTorch fp32 against an export on any backend.

    python -m dcae_deploy.evaluate reconstruction --images FOLDER --artifacts EXPORT --backend onnxruntime \\
        --resolution 512 --metrics psnr,ssim,lpips,fid --lpips-weights alexnet-owt-7be5be79.pth \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth --json results.json
    torchrun --nproc_per_node 8 -m dcae_deploy.evaluate reconstruction --images FOLDER --checkpoint CKPT ...

Every image under FOLDER (sub-folders too) is centre-cropped to the resolution as the release does, encoded and
decoded by the PyTorch fp32 model (the reference: ``--checkpoint``, or the export's own weights) and by each
``--backend`` of the export, and scored as the release's evaluator scores (:mod:`dcae_deploy.metrics.reconstruction`).
The table gives each backend's metrics, their change against PyTorch, and how far its reconstructions are from
PyTorch's. LPIPS and FID need local weight files (``--lpips-weights``, ``--inception-weights``); without them those
metrics are skipped with a line saying so. Nothing is downloaded.

Bad images: the folder is checked before any model loads; an unreadable image, or one smaller than the resolution,
refuses the run with every such file named (metrics over another set of images than the folder holds would not be
comparable with anything); ``--skip-bad-images`` evaluates the others instead, listing what it skipped.

Under ``torchrun`` each process takes every N-th image and the metric states are gathered (FID uses all features).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcae_deploy.cli import check_output_file
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.evaluate.ranks import add_run_options, check_device, run_on_ranks, start_body

DEFAULT_METRICS = "psnr,ssim,lpips,fid"
REFERENCE = "torch"
#: first 8 hex digits of the SHA-256 of the files whose metric values match published ones (torch hub names them so)
KNOWN_WEIGHTS = {
    "fid": ("6726825d", "pt_inception-2015-12-05-6726825d.pth"),
    "lpips-alex": ("7be5be79", "alexnet-owt-7be5be79.pth"),
    "lpips-vgg": ("397923af", "vgg16-397923af.pth"),
}
CONVENTIONS = {
    "preprocessing": "centre crop as the release's DMCrop (box halving, bicubic resize of the short side, crop), "
                     "[-1, 1]; inputs and outputs rounded to 0-255 levels before scoring",
    "psnr": "mean over images of per-image PSNR on 0-255 levels (the release's PSNRStats; torchmetrics "
            "PeakSignalNoiseRatio(data_range=255, dim=(1, 2, 3)))",
    "ssim": "torchmetrics StructuralSimilarityIndexMeasure(data_range=(0, 255)): the whole map, borders from "
            "reflection padding (scikit-image crops them), mean over images",
    "lpips": "mean over images, inputs in [0, 1] (torchmetrics normalize=True)",
    "fid": "Fréchet distance between the FID-Inception pool features of the reconstructions and of the inputs",
    "vs_reference": "PSNR over the whole set of a backend's unrounded reconstructions against the reference's, "
                    "and their largest difference in 0-255 levels",
}


def build_parser() -> argparse.ArgumentParser:
    from dcae_deploy.runtime.backends import BACKENDS
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.evaluate reconstruction", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="a folder of images (sub-folders included)")
    p.add_argument("--checkpoint", help="DC-AE weights for PyTorch (any layout load_autoencoder reads, or a pipeline "
                   "folder: its vae/); with --artifacts: the reference's weights instead of the manifest's checkpoint. "
                   "Default: the shipped demo model's DC-AE")
    p.add_argument("--model", "--variant", dest="model",
                   help="with --checkpoint: the variant the weights must fit, a registered name or a JSON config file "
                   "(efficientvit files of the in and mix variants share an architecture)")
    p.add_argument("--override", default=None, metavar="'KEY=VALUE ...'",
                   help="with --model: a custom architecture in the reference's syntax on top of it")
    p.add_argument("--artifacts", help="an export with encoder and decoder graphs (--components encoder,decoder)")
    p.add_argument("--backend", default=None, help=f"with --artifacts: comma-separated backends of {', '.join(BACKENDS)} "
                   "(default: onnxruntime); PyTorch fp32 always runs first as the reference")
    p.add_argument("--resolution", type=int, default=512, help="image side after the centre crop (default %(default)s)")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help="comma-separated, of psnr, ssim, lpips, fid "
                   "(default %(default)s)")
    p.add_argument("--lpips-weights", nargs="+", metavar="FILE", help="torchvision's ImageNet backbone weights "
                   "(alexnet-owt-7be5be79.pth; vgg16-397923af.pth with --lpips-net vgg), optionally with the lpips "
                   "package's linear layers (default: the ones inside torchmetrics)")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex",
                   help="LPIPS backbone (default alex, as the release: torchmetrics' default)")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="the FID Inception weights, pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-images", type=int, help="evaluate only the first N images (sorted by path)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="evaluate the readable images of the right size and list the others, instead of refusing the run")
    p.add_argument("--json", help="also write the results here")
    add_run_options(p, "CPU threads of PyTorch and ONNX Runtime")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    return run_on_ranks(args, evaluate)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad requests before any image or model is read."""
    from dcae_deploy.metrics.reconstruction import METRICS
    from dcae_deploy.runtime.backends import BACKENDS

    args.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in args.metrics if m not in METRICS]
    if unknown or not args.metrics:
        raise DcaeDeployError(f"--metrics {','.join(unknown) or '(empty)'}: choose among {', '.join(METRICS)}")
    if args.backend is not None and not args.artifacts:
        raise DcaeDeployError(f"--backend {args.backend} says how an export runs: add --artifacts EXPORT_DIR, or drop "
                              "--backend to evaluate the PyTorch weights (--checkpoint)")
    backends = [b.strip() for b in (args.backend or "onnxruntime").split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise DcaeDeployError(f"unknown backend {', '.join(unknown)}; choose among {', '.join(BACKENDS)}")
    args.backends = [REFERENCE] + [b for b in dict.fromkeys(backends) if b != REFERENCE] if args.artifacts else [REFERENCE]
    if args.override and not args.model:
        raise DcaeDeployError("--override applies to a --model (--variant): add the registered variant it changes")
    if args.model and (not args.checkpoint or args.artifacts):
        raise DcaeDeployError("--model names the variant of --checkpoint's weights when no export is given (an export's "
                              "manifest names its variant): use --checkpoint CKPT --model VARIANT without --artifacts")
    for flag, value in (("--resolution", args.resolution), ("--batch-size", args.batch_size),
                        ("--max-images", args.max_images), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise DcaeDeployError(f"{flag} must be at least 1, got {value}")
    for path in [*(args.lpips_weights or []), *([args.inception_weights] if args.inception_weights else [])]:
        if not Path(path).is_file():
            flag = "--inception-weights" if path == args.inception_weights else "--lpips-weights"
            raise DcaeDeployError(f"{flag} {path}: no such file (weights are never downloaded; name a local file, or "
                                  f"drop the flag to skip {'fid' if flag == '--inception-weights' else 'lpips'})")
    if args.json:
        check_output_file(args.json, "--json")
    check_device(args.device)


# --- sources of reconstructions ---------------------------------------------------------------------------------


@dataclass
class Source:
    """What is evaluated: a description for the report, its compression ratio, and a reconstruct function per backend."""

    description: dict
    ratio: int
    reconstructors: dict = field(default_factory=dict)  # backend -> fn(np (B,3,H,W) float32 [-1, 1]) -> np float32
    precision: dict = field(default_factory=dict)       # backend -> precision it computes in
    max_batch: int | None = None
    size_range: tuple[int, int] | None = None
    closers: list = field(default_factory=list)


def open_source(args, device: str, check) -> Source:
    """The reconstructors of ``args``' source; ``check(source)`` runs once its geometry is known, before the runners load."""
    if args.artifacts:
        return _export_source(args, device, check)
    return _checkpoint_source(args, device, check)


def _checkpoint_source(args, device: str, check) -> Source:
    import torch

    from dcae_deploy.models.pipeline import PIPELINE_FILE, load_pipeline
    from dcae_deploy.shipped_demo import demo_folder

    path = Path(args.checkpoint) if args.checkpoint else demo_folder()
    if not path.exists():
        raise DcaeDeployError(f"--checkpoint {path} does not exist")
    if (path / PIPELINE_FILE).is_file():
        ae = load_pipeline(path, parts=["autoencoder"]).autoencoder
    else:
        from dcae_deploy import load_autoencoder

        from dcae_deploy.models.autoencoder_overrides import resolve_autoencoder_config

        ae = load_autoencoder(path, resolve_autoencoder_config(args.model, args.override) if args.model else None)
    ae = ae.float().eval().to(device)

    def reconstruct(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = ae.decode(ae.encode(torch.from_numpy(x).to(device)))
        return y.float().cpu().numpy()

    what = "the shipped demo model's DC-AE" if not args.checkpoint else str(path)
    source = Source({"kind": "checkpoint", "weights": what, "variant": ae.config.name},
                    ae.spatial_compression_ratio, {REFERENCE: reconstruct}, {REFERENCE: "fp32"})
    check(source)
    return source


def _export_source(args, device: str, check) -> Source:
    from dcae_deploy.runtime.artifacts import open_export
    from dcae_deploy.runtime.backends import BackendOptions, open_backend

    artifacts = open_export(args.artifacts)
    manifest = artifacts.manifest
    missing = [c for c in ("encoder", "decoder") if c not in manifest.components]
    if missing:
        raise DcaeDeployError(f"{artifacts.folder} has no {' or '.join(missing)} graph: reconstruction runs both; "
                              "re-export with --components encoder,decoder (and the rest you need)")
    ratio = manifest.spatial_compression_ratio or (manifest.pipeline.autoencoder.spatial_compression_ratio
                                                   if manifest.pipeline and manifest.pipeline.autoencoder else None)
    encoder = artifacts.component("encoder")
    profile = encoder.profiles.get(encoder.inputs[0].name)
    options = BackendOptions(device=device, engine_dir=args.engine_dir, checkpoint=args.checkpoint, threads=args.threads)
    weights = args.checkpoint or manifest.checkpoint or "random weights (rebuilt with the exporter's seed 0)"
    source = Source({"kind": "export", "artifacts": str(artifacts.folder), "variant": manifest.variant,
                     "precision": manifest.precision, "weights": str(weights)}, int(ratio or 1),
                    max_batch=profile.max[0] if profile else None,
                    size_range=(max(profile.min[2:]), min(profile.max[2:])) if profile else None)
    check(source)
    for name in args.backends:
        backend = _reference_backend(artifacts, options, args.checkpoint) if name == REFERENCE else \
            open_backend(name, artifacts, options)
        enc, dec = backend.runner("encoder").load(), backend.runner("decoder")
        source.closers += [enc.close, dec.close]
        dec.load()
        source.reconstructors[name] = _runner_pair(enc, dec)
        source.precision[name] = "fp32" if name == REFERENCE else manifest.precision
    return source


def _reference_backend(artifacts, options, checkpoint):
    """The torch backend over the autoencoder alone (a pipeline export's torch backend would load every part, a
    2B-parameter text encoder included): the weights the export came from, or its random weights rebuilt
    (each part has its own seed, so the autoencoder alone gets the exporter's weights)."""
    from dcae_deploy.family import roles_for
    from dcae_deploy.models.pipeline import build_parts, load_parts
    from dcae_deploy.registry import get_variant
    from dcae_deploy.runtime.backends import TorchBackend

    config = get_variant(artifacts.variant)
    roles = roles_for(config, ["encoder", "decoder"])
    checkpoint = checkpoint or artifacts.manifest.checkpoint
    if checkpoint is None:
        print(f"[evaluate] the export of {artifacts.variant} was made from random weights: the PyTorch reference "
              "rebuilds them with the exporter's seed", file=sys.stderr)
        models = build_parts(config, seed=0, roles=roles)
    elif not Path(checkpoint).exists():
        raise DcaeDeployError(f"the PyTorch reference needs the weights the export came from, {checkpoint}, which do not "
                              "exist here: pass --checkpoint WEIGHTS (the export's checkpoint on this machine)")
    else:
        models = load_parts(config, checkpoint, roles=roles)
    return TorchBackend(artifacts, options, models=models)


def _runner_pair(encoder, decoder):
    image_in, latent_out = encoder.component.inputs[0].name, encoder.component.outputs[0].name
    latent_in, image_out = decoder.component.inputs[0].name, decoder.component.outputs[0].name

    def reconstruct(x: np.ndarray) -> np.ndarray:
        latent = encoder.infer({image_in: x})[latent_out]
        return np.asarray(decoder.infer({latent_in: latent})[image_out], dtype=np.float32)

    return reconstruct


# --- metric networks ----------------------------------------------------------------------------------------------


def metric_networks(args, say) -> tuple[list[str], dict[str, str], object, object]:
    """``(metrics, skipped, lpips, inception)``: the metrics that will run, why the others will not, their networks."""
    from dcae_deploy.metrics.inception import FID_WEIGHTS_FILE, FIDInceptionV3
    from dcae_deploy.metrics.lpips import NETS, LPIPS

    metrics, skipped, lpips, inception = list(args.metrics), {}, None, None
    if "lpips" in metrics:
        if not args.lpips_weights:
            skipped["lpips"] = (f"no --lpips-weights: LPIPS needs torchvision's ImageNet {args.lpips_net} weights "
                                f"({NETS[args.lpips_net][3]}) as a local file; nothing is downloaded")
        else:
            lpips = LPIPS.from_files(args.lpips_weights, net=args.lpips_net)
            _note_unknown_weights(args.lpips_weights[0], f"lpips-{args.lpips_net}", say)
    if "fid" in metrics:
        if not args.inception_weights:
            skipped["fid"] = (f"no --inception-weights: FID needs the FID Inception ({FID_WEIGHTS_FILE}, pytorch-fid's) "
                              "as a local file; nothing is downloaded")
        else:
            inception = FIDInceptionV3.from_file(args.inception_weights)
            _note_unknown_weights(args.inception_weights, "fid", say)
    metrics = [m for m in metrics if m not in skipped]
    for name, why in skipped.items():
        say(f"{name} skipped: {why}")
    if not metrics:
        raise DcaeDeployError(f"nothing to evaluate: every requested metric was skipped ({', '.join(skipped)}); "
                              "add psnr or ssim to --metrics, or give the weights files")
    return metrics, skipped, lpips, inception


def _note_unknown_weights(path: str, kind: str, say) -> None:
    prefix, name = KNOWN_WEIGHTS[kind]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(prefix):
        say(f"note: {path} is not {name} (SHA-256 {digest.hexdigest()[:8]}..., expected {prefix}...): its "
            f"{kind.split('-')[0].upper()} values are comparable between rows of this run only, not with published ones")


# --- the run ------------------------------------------------------------------------------------------------------


def select_images(args, say) -> tuple[list[Path], list[dict], int]:
    """``(images, skipped, others)``: the images to evaluate, the bad ones skipped, the count of non-image files."""
    from dcae_deploy.metrics.images import check_image, list_images

    images, others = list_images(args.images)
    if others:
        suffixes = sorted({p.suffix or p.name for p in others})
        say(f"ignoring {len(others)} file(s) without an image suffix ({', '.join(suffixes[:8])})")
    if args.max_images is not None:
        images = images[:args.max_images]
    if not images:
        raise DcaeDeployError(f"--images {args.images} holds no image files (png, jpg, ...)")
    bad = [b for b in (check_image(p, args.resolution) for p in images) if b is not None]
    root = Path(args.images).expanduser()
    if bad and not args.skip_bad_images:
        listing = "; ".join(b.describe(root) for b in bad[:20]) + (f"; and {len(bad) - 20} more" if len(bad) > 20 else "")
        why_small = (" (the release's centre crop would upscale the small ones, which hides what the autoencoder "
                     "loses)") if any(b.small for b in bad) else ""
        raise DcaeDeployError(
            f"{len(bad)} of {len(images)} images in {args.images} cannot be evaluated at {args.resolution} px: "
            f"{listing}{why_small}. Nothing was evaluated: metrics over a subset would not describe the folder. Fix "
            "or remove them, lower --resolution, or pass --skip-bad-images to evaluate the others"
        )
    for b in bad:
        say(f"skipping {b.describe(root)}")
    bad_paths = {b.path for b in bad}
    good = [p for p in images if p not in bad_paths]
    if not good:
        raise DcaeDeployError(f"none of the {len(images)} images in {args.images} can be evaluated at {args.resolution} px")
    return good, [{"file": str(b.path), "reason": b.reason} for b in bad], len(others)


def evaluate(args, info) -> dict:
    from dcae_deploy.metrics.images import ImageError, load_image, to_model_input
    from dcae_deploy.metrics.reconstruction import ReconstructionEvaluator
    from dcae_deploy.runtime.progress import ProgressBar
    from dcae_deploy.train.distributed import sum_over_ranks

    say = start_body(args, info, "evaluate")
    images, skipped_images, others = select_images(args, say)
    if info.world_size > len(images):
        raise DcaeDeployError(f"{len(images)} image(s) over {info.world_size} processes: run at most {len(images)}")
    metrics, skipped_metrics, lpips, inception = metric_networks(args, say)
    device = "cuda" if info.device.type == "cuda" else "cpu"
    source = open_source(args, device, lambda src: check_geometry(args, src, say))
    try:
        evaluator = ReconstructionEvaluator(args.backends, metrics, info.device, lpips=lpips, inception=inception)
        shard = images[info.rank::info.world_size]
        batch_size = min(args.batch_size, source.max_batch or args.batch_size)
        seconds = dict.fromkeys(args.backends, 0.0)
        evaluated = 0
        bar = ProgressBar(len(shard), "reconstruct", enabled=info.is_main and not args.no_progress)
        for start in range(0, len(shard), batch_size):
            arrays = []
            for path in shard[start:start + batch_size]:
                try:
                    arrays.append(load_image(path, args.resolution))
                except ImageError as exc:
                    if not args.skip_bad_images:
                        raise
                    print(f"[evaluate] rank {info.rank}: skipping {path}: {exc}", file=sys.stderr, flush=True)
                    skipped_images.append({"file": str(path), "reason": str(exc)})
            if arrays:
                x = to_model_input(np.stack(arrays))
                outputs = {}
                for name in args.backends:
                    t0 = time.perf_counter()
                    outputs[name] = source.reconstructors[name](x)
                    seconds[name] += time.perf_counter() - t0
                    if not np.isfinite(outputs[name]).all():
                        raise DcaeDeployError(f"{name} reconstructed NaN/Inf from {shard[start]} (batch of {len(arrays)}): "
                                              "broken weights, or a reduced-precision overflow (try an fp32 export)")
                evaluator.add(x, outputs)
                evaluated += len(arrays)
            bar.update(len(shard[start:start + batch_size]))
        results = evaluator.results()  # a collective: every rank
        count = sum_over_ranks(info, evaluated)
    finally:
        for close in source.closers:
            close()
    report = {
        "images": {"folder": str(args.images), "evaluated": count, "skipped": skipped_images,
                   "other_files_ignored": others},
        "resolution": args.resolution, "source": source.description, "processes": info.world_size,
        "metrics": metrics, "skipped_metrics": skipped_metrics, "reference": REFERENCE,
        "backends": _with_deltas(results, source, seconds, evaluated), "conventions": CONVENTIONS,
    }
    if info.is_main:
        print(format_table(report))
        if "fid" in metrics and count < 2048:
            print(f"note: rFID on {count} images (fewer than the 2048 feature dimensions) has a rank-deficient "
                  "covariance: compare it between rows of this table, not with published rFIDs (50,000 images)")
        if args.json:
            from dcae_deploy.checkpoints import write_json

            write_json(args.json, _finite(report))
            say(f"wrote {args.json}")
    return report


def check_geometry(args, source: Source, say) -> None:
    r = args.resolution
    if r % source.ratio:
        raise DcaeDeployError(f"--resolution {r} is not a multiple of the autoencoder's spatial compression "
                              f"{source.ratio}: use {max(source.ratio, r // source.ratio * source.ratio)} or "
                              f"{(r // source.ratio + 1) * source.ratio}")
    if source.size_range and not source.size_range[0] <= r <= source.size_range[1]:
        lo, hi = source.size_range
        if "tensorrt" in args.backends:
            raise DcaeDeployError(f"--resolution {r} is outside the export's profile ({lo} to {hi} px), which TensorRT "
                                  "engines enforce: re-export with --min-res/--max-res covering it")
        say(f"note: --resolution {r} is outside the export's profile ({lo} to {hi} px): the graphs take it (dynamic "
            "axes), but the export's parity gate checked only shapes inside the profile")
    if source.max_batch and args.batch_size > source.max_batch:
        say(f"batches of {source.max_batch} (the export's largest batch) instead of --batch-size {args.batch_size}")


def _with_deltas(results: dict, source: Source, seconds: dict, count: int) -> dict:
    """Each backend's row: its metrics, their change against the reference, seconds per image (this process's)."""
    ref = results[REFERENCE]
    out = {}
    for name, values in results.items():
        row = {"precision": source.precision.get(name, "?"), **values,
               "seconds_per_image": seconds[name] / max(count, 1)}
        if name != REFERENCE:
            row["delta"] = {k: values[k] - ref[k] for k in ("psnr", "ssim", "lpips", "fid") if k in values}
        out[name] = row
    return out


def _finite(data):
    """JSON-safe: non-finite floats (an infinite PSNR of identical images) become strings."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    return data


def format_table(report: dict) -> str:
    """The per-backend table: metrics, their change against the reference, distance to the reference's outputs."""
    cols = [("psnr", "PSNR dB", "{:+.3f}", "{:.3f}"), ("ssim", "SSIM", "{:+.4f}", "{:.4f}"),
            ("lpips", "LPIPS", "{:+.4f}", "{:.4f}"), ("fid", "rFID", "{:+.3f}", "{:.3f}")]
    cols = [c for c in cols if c[0] in report["metrics"]]
    src = report["source"]
    where = src.get("artifacts") or src["weights"]
    lines = [f"reconstruction of {report['images']['evaluated']} images ({report['images']['folder']}) at "
             f"{report['resolution']} px: {src['variant']}, {where}"
             + (f", weights: {src['weights']}" if src["kind"] == "export" else "")]
    header = f"{'backend':<13} {'precision':<9} " + " ".join(f"{c[1]:>10}" for c in cols)
    header += f" {'vs torch: PSNR dB':>18} {'max levels':>10} {'s/image':>8}"
    lines += [header, "-" * len(header)]
    ref = report["reference"]
    for name in [ref, *(b for b in report["backends"] if b != ref)]:  # the reference first (a JSON reload sorts keys)
        row = report["backends"][name]
        vs = row.get("vs_reference")
        cells = " ".join(f"{c[3].format(row[c[0]]):>10}" for c in cols)
        vs_cells = (f" {vs['psnr']:>18.1f} {vs['max_level_diff']:>10d}" if vs else f" {'(reference)':>18} {'-':>10}")
        lines.append(f"{name:<13} {row['precision']:<9} {cells}{vs_cells} {row['seconds_per_image']:>8.2f}")
        if "delta" in row:
            lines.append(f"{'  change':<13} {'':<9} " + " ".join(f"{_delta(row['delta'][c[0]], c[2]):>10}" for c in cols))
    return "\n".join(lines)


def _delta(value: float, fixed: str) -> str:
    """A change: fixed decimals when it shows in them, else scientific (an fp32 backend's 1e-6 is not a zero)."""
    if value == 0:
        return "0"
    text = fixed.format(value)
    return text if any(ch in "123456789" for ch in text) else f"{value:+.1e}"
