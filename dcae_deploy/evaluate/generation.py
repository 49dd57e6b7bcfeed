"""``python -m dcae_deploy.evaluate generation``: the FID of a class-conditional DC-AE-Diffusion model (UViT, USiT,
DiT) against reference statistics, as the release's ``eval_dc_ae_diffusion_model.py`` computes it, on any backend;
``python -m dcae_deploy.evaluate fid-stats``: such reference statistics from a folder of real images.

    python -m dcae_deploy.evaluate generation --artifacts export/uvit-h --backend onnxruntime --num-samples 50000 \\
        --guidance 1.5 --fid-reference imagenet_512_fid_stats.npz \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth --json fid.json
    torchrun --nproc_per_node 8 -m dcae_deploy.evaluate generation --checkpoint HUB_FOLDER --model VARIANT ...
    python -m dcae_deploy.evaluate fid-stats --images imagenet/val --resolution 512 \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth --out imagenet_512_fid_stats.npz

As the release's evaluator (``efficientvit/diffusioncore/evaluator.py``):

- labels: its ``SampleClassDataset``, ``torch.randint(0, num_classes, (N,), generator=manual_seed(0))`` (50,000 samples
  by default), reproduced without torch: torch's CPU generator is MT19937 seeded as numpy's legacy ``RandomState``, and
  for fewer than 2**32 classes it takes ``raw32 % num_classes``; ``tests/evaluate/test_evaluate_generation.py``
  checks the numbers against torch's. Sample ``i`` has label ``labels[i]`` (the first N of the release's draw of N);
- images: the decoder's float output to ``clamp(127.5 x + 128, 0, 255)`` truncated to uint8, then ``/ 255`` into the
  FID Inception (:mod:`dcae_deploy.metrics.inception`, 299 px bilinear), its pool features' mean and covariance
  (:class:`dcae_deploy.metrics.fid.FeatureStatistics`) and the Fréchet distance to the reference's ``mu`` / ``sigma``.

Where it differs: the noise. The release draws it from one CUDA generator per process (seed + rank), so its samples
depend on the GPU count; here sample ``i`` starts from ``default_rng(seed + i)`` (the runtime's rule) and the N samples
are cut into batches of ``--batch-size`` (batch ``k`` = samples ``kB`` to ``kB + B - 1``, generated with seed
``seed + kB``), which the processes of a ``torchrun`` take in turn (rank ``r``: batches ``r``, ``r + W``, ...): the
set is the same for any number of processes. ADM (DiT) draws its per-step noise per batch (``default_rng([seed +
kB, 1])``), so for DiT the set also depends on ``--batch-size``; the other samplers are deterministic given the noise.

No Inception Score: the release's comes from torch-fidelity's own Inception-v3 logits (its own weights and resize),
not from the FID network's pool features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcae_deploy.cli import check_output_file, check_seed
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.evaluate.ranks import add_run_options, check_device, run_on_ranks, start_body

#: the release's evaluation: 50,000 samples, labels from a CPU torch generator seeded 0
RELEASE_NUM_SAMPLES = 50_000
RELEASE_LABEL_SEED = 0
RANK_DEFICIENT_BELOW = 2048  # the FID Inception's feature count: fewer samples give a singular covariance

CONVENTIONS = {
    "labels": "the release's SampleClassDataset: torch.randint(0, num_classes, (N,), generator seeded label_seed), "
              "reproduced with numpy (MT19937, raw 32-bit output % num_classes); sample i has label labels[i]",
    "noise": "sample i starts from numpy default_rng(seed + i); batch k (samples k*B .. k*B + B - 1) is generated "
             "with seed + k*B (ADM's per-step noise: default_rng([seed + k*B, 1])); under torchrun rank r takes "
             "batches r, r + W, ...",
    "images": "decoder output x -> clamp(127.5 x + 128, 0, 255) truncated to uint8 (the release's evaluator)",
    "fid": "FID-Inception pool features of the uint8 images / 255 (299 px bilinear); mean and unbiased covariance "
           "(sums over all processes); Fréchet distance to the reference's mu / sigma (torchmetrics' formula)",
    "inception_score": "not computed: the release's comes from torch-fidelity's own Inception logits, not the FID "
                       "network",
}


# --- labels and images as the release's evaluator ---------------------------------------------------------------


def release_class_labels(count: int, num_classes: int, seed: int = RELEASE_LABEL_SEED) -> np.ndarray:
    """(count,) int64: ``torch.randint(0, num_classes, (count,), generator=torch.Generator().manual_seed(seed))``
    without torch.

    torch's CPU generator is MT19937 initialised like numpy's legacy ``RandomState(seed)`` (``init_genrand``), and
    ``randint`` over a range below 2**32 maps each raw 32-bit output ``r`` to ``r % range + low``, in order.
    """
    if not 0 < num_classes < 2**32:
        raise DcaeDeployError(f"labels need 1 to 2**32 - 1 classes, got {num_classes}")
    if not 0 <= seed < 2**32:
        raise DcaeDeployError(f"--label-seed must be between 0 and 2**32 - 1 (a 32-bit seed), got {seed}")
    legacy = np.random.RandomState(seed).get_state(legacy=False)
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937", "state": legacy["state"]}
    return (bits.random_raw(count) % np.uint64(num_classes)).astype(np.int64)


def to_levels(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) decoder output in about [-1, 1] -> uint8 levels, as the release's evaluator:
    ``torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)`` (float32, truncation)."""
    x = np.asarray(images, dtype=np.float32)
    return np.clip(np.float32(127.5) * x + np.float32(128.0), 0, 255).astype(np.uint8)


def batches(count: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of the batches of ``count`` samples that process ``rank`` of ``world_size`` generates."""
    every = [(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]
    return every[rank::world_size]


# --- command line ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from dcae_deploy.runtime.backends import BACKENDS
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.evaluate generation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--artifacts", help="an export of a class-conditional pipeline (denoiser + decoder), run through "
                     "--backend")
    src.add_argument("--checkpoint", help="a pipeline folder (PyTorch, no export): a dcae_deploy pipeline folder, or "
                     "a DC-AE-Diffusion hub folder with --model")
    p.add_argument("--model", "--variant", dest="model", help="with --checkpoint: the pipeline variant (needed for a "
                   "hub folder, which has no pipeline.json)")
    p.add_argument("--backend", default=None, choices=list(BACKENDS),
                   help="with --artifacts: the backend (default: onnxruntime)")
    p.add_argument("--num-samples", type=int, default=RELEASE_NUM_SAMPLES,
                   help="samples to generate (default %(default)s, the release's)")
    p.add_argument("--fid-reference", metavar="NPZ", help="reference statistics: an .npz with 'mu' and 'sigma' (the "
                   "release's format; `fid-stats` builds one from images)")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="the FID Inception weights, pytorch-fid's pt_inception-2015-12-05-6726825d.pth (required)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the export's; the "
                   "release's eval script defaults to 1.0, no guidance: its published FIDs come without and with)")
    p.add_argument("--sampler", help="default: the model's reference sampler")
    p.add_argument("--steps", type=int, help="default: the sampler's (none for an adaptive one)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="samples per batch (default %(default)s; at most what one denoiser call takes)")
    p.add_argument("--seed", type=int, default=0, help="sample i starts from default_rng(seed + i) (default 0)")
    p.add_argument("--label-seed", type=int, default=RELEASE_LABEL_SEED,
                   help="seed of the release's label draw (default %(default)s, the release's)")
    p.add_argument("--save-statistics", metavar="NPZ",
                   help="also write the generated set's mu / sigma here, in the reference's format")
    p.add_argument("--save-images", metavar="DIR", help="also write every sample as DIR/<index>_<label>.png")
    p.add_argument("--json", help="also write the results here")
    add_run_options(p, "CPU threads of PyTorch and ONNX Runtime")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    return run_on_ranks(args, evaluate)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad requests before any model is read (the reference file is read and checked here)."""
    from dcae_deploy.runtime.schedulers import guidance_note

    if args.backend is not None and not args.artifacts:
        raise DcaeDeployError(f"--backend {args.backend} says how an export runs: add --artifacts EXPORT_DIR, or drop "
                              "--backend to evaluate the PyTorch weights of --checkpoint")
    args.backend = args.backend or "onnxruntime"
    if args.model and not args.checkpoint:
        raise DcaeDeployError("--model names the variant of --checkpoint's weights (an export's manifest names its "
                              "own): use it with --checkpoint")
    if args.engine_dir and args.backend != "tensorrt":
        raise DcaeDeployError("--engine-dir holds TensorRT plans: add --backend tensorrt, or drop --engine-dir")
    if args.num_samples < 2:
        raise DcaeDeployError(f"--num-samples {args.num_samples}: FID needs at least 2 samples (a covariance); the "
                              f"release uses {RELEASE_NUM_SAMPLES}")
    for flag, value in (("--batch-size", args.batch_size), ("--steps", args.steps), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise DcaeDeployError(f"{flag} must be at least 1, got {value}")
    check_seed(args.seed)
    if not 0 <= args.label_seed < 2**32:
        raise DcaeDeployError(f"--label-seed must be between 0 and 2**32 - 1, got {args.label_seed}")
    guidance_note(args.guidance)  # refuses nan, inf and negative scales
    check_inception_weights(args.inception_weights)
    if not args.fid_reference and not args.save_statistics:
        raise DcaeDeployError("nothing to compute: give --fid-reference REF.npz (the FID against it) and/or "
                              "--save-statistics OUT.npz (the generated set's statistics)")
    args.reference = read_reference(args.fid_reference) if args.fid_reference else None
    if args.save_statistics:
        check_output_file(args.save_statistics, "--save-statistics", (".npz",))
    if args.json:
        check_output_file(args.json, "--json")
    if args.save_images:
        check_output_folder(args.save_images, "--save-images")
    check_device(args.device)


def check_inception_weights(path: str | None) -> None:
    from dcae_deploy.metrics.inception import FID_WEIGHTS_FILE

    if not path:
        raise DcaeDeployError(f"--inception-weights FILE is required: FID is computed on the FID Inception's features "
                              f"and there is nothing else to compute. Pass pytorch-fid's {FID_WEIGHTS_FILE} as a local "
                              "file (nothing is downloaded)")
    if not Path(path).expanduser().is_file():
        raise DcaeDeployError(f"--inception-weights {path}: no such file (weights are never downloaded; name a local "
                              f"copy of {FID_WEIGHTS_FILE})")


def note_unknown_inception(path: str, say) -> None:
    """Say when ``path`` is not pytorch-fid's FID Inception file (by its SHA-256): another network's features."""
    import hashlib

    from dcae_deploy.evaluate.reconstruction import KNOWN_WEIGHTS

    prefix, name = KNOWN_WEIGHTS["fid"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(prefix):
        say(f"note: {path} is not {name} (SHA-256 {digest.hexdigest()[:8]}..., expected {prefix}...): its features are "
            "another network's, so its FIDs compare only with statistics computed with this same file (`fid-stats`), "
            "not with the release's reference files or published FIDs")


def read_reference(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of ``--fid-reference``, checked: readable, shapes that fit, the FID Inception's 2048 features."""
    from dcae_deploy.metrics.fid import read_fid_statistics
    from dcae_deploy.metrics.inception import FEATURES

    mu, sigma = read_fid_statistics(path)
    if mu.shape[0] != FEATURES:
        raise DcaeDeployError(f"--fid-reference {path} holds statistics of {mu.shape[0]} features; the FID Inception "
                              f"gives {FEATURES} (pool features): use a reference computed with it (`fid-stats`)")
    return mu, sigma


def check_output_folder(path: str, flag: str) -> Path:
    """A folder to write into: refuse a file, or a folder that cannot be created or written, before any work."""
    import tempfile

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise DcaeDeployError(f"{flag} {path} is a file: name a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise DcaeDeployError(f"{flag} {path}: cannot write there ({exc.strerror or exc}); choose another folder") from exc
    return folder


# --- the generator ------------------------------------------------------------------------------------------------


@dataclass
class Generator:
    """A class-conditional pipeline (``TextToImage`` over any backend) and what the report says about it."""

    pipe: object
    description: dict = field(default_factory=dict)

    def close(self) -> None:
        self.pipe.close()


def _not_class_conditional(what: str, variant: str) -> DcaeDeployError:
    return DcaeDeployError(
        f"{what} is {variant!r}, a text-to-image pipeline: generation FID draws ImageNet class labels, so it needs a "
        "class-conditional DC-AE-Diffusion model (UViT, USiT, DiT; e.g. an export of dc-ae-f64c128-in-1.0-uvit-h-in-512px"
        "). For a text-to-image model use `python -m dcae_deploy.evaluate --artifacts DIR` (prompt adherence)")


def open_generator(args, device: str, batch_size: int) -> Generator:
    """The pipeline of ``--artifacts`` on ``--backend``, or the PyTorch weights of ``--checkpoint``; a text-to-image
    pipeline is refused before its weights load."""
    from dcae_deploy.runtime.generation import TextToImage

    if args.artifacts:
        from dcae_deploy.runtime.artifacts import load_artifacts, open_export
        from dcae_deploy.runtime.backends import BackendOptions, open_backend

        found = open_export(args.artifacts, verify=False)
        if found.pipeline is None:
            raise DcaeDeployError(f"--artifacts {args.artifacts} holds a {found.manifest.kind!r} export of "
                                  f"{found.variant!r}, not a pipeline: generation FID needs an export of a "
                                  "class-conditional DC-AE-Diffusion pipeline (--components denoiser,decoder)")
        if found.pipeline.conditioning != "class":
            raise _not_class_conditional(f"--artifacts {args.artifacts}", found.variant)
        artifacts = load_artifacts(args.artifacts)
        options = BackendOptions(device=device, engine_dir=args.engine_dir, threads=args.threads)
        pipe = TextToImage(artifacts, open_backend(args.backend, artifacts, options), progress=False)
        weights = artifacts.manifest.checkpoint or "random weights (rebuilt with the exporter's seed 0)"
        return Generator(pipe, {"kind": "export", "artifacts": str(artifacts.folder), "variant": artifacts.variant,
                                "backend": args.backend, "precision": artifacts.manifest.describe_precision(), "weights": str(weights)})
    from dcae_deploy.runtime.eager import open_pytorch

    variant = _checkpoint_variant(args)
    pipe = open_pytorch(args.checkpoint, variant=args.model, device=device, max_batch=batch_size, progress=False)
    return Generator(pipe, {"kind": "checkpoint", "checkpoint": str(args.checkpoint), "variant": variant,
                            "backend": "torch (eager)", "precision": "fp32", "weights": str(args.checkpoint)})


def _checkpoint_variant(args) -> str:
    """The variant of ``--checkpoint`` (its ``pipeline.json`` or ``--model``), refused unless class-conditional."""
    from dcae_deploy.models.pipeline import PIPELINE_FILE
    from dcae_deploy.registry import get_variant

    folder = Path(args.checkpoint).expanduser()
    if not folder.is_dir():
        raise DcaeDeployError(f"--checkpoint {args.checkpoint}: no such folder (a pipeline folder, or a DC-AE-Diffusion "
                              "hub folder with --model)")
    name = args.model
    if name is None:
        if not (folder / PIPELINE_FILE).is_file():
            raise DcaeDeployError(f"--checkpoint {args.checkpoint} has no {PIPELINE_FILE}: name its variant with --model "
                                  "(a hub folder: e.g. --model dc-ae-f64c128-in-1.0-uvit-h-in-512px)")
        try:
            name = json.loads((folder / PIPELINE_FILE).read_text())["variant"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DcaeDeployError(f"cannot read {folder / PIPELINE_FILE}: {exc}") from exc
    config = get_variant(name, kind="pipeline")
    if getattr(config, "conditioning", None) != "class":
        raise _not_class_conditional(f"--checkpoint {args.checkpoint}", config.name)
    return config.name


# --- the run ------------------------------------------------------------------------------------------------------


def evaluate(args, info) -> dict:
    import torch

    from dcae_deploy.train.distributed import sum_over_ranks
    from dcae_deploy.metrics.fid import FeatureStatistics, frechet_distance, write_fid_statistics
    from dcae_deploy.metrics.inception import FEATURES, FIDInceptionV3
    from dcae_deploy.runtime.generation import GenerationConfig
    from dcae_deploy.runtime.progress import ProgressBar

    say = start_body(args, info, "evaluate")
    device = "cuda" if info.device.type == "cuda" else "cpu"
    start_time = time.perf_counter()
    generator = open_generator(args, device, args.batch_size)
    if info.distributed and device == "cuda" and args.artifacts and args.backend == "onnxruntime":
        say("note: ONNX Runtime's CUDA provider runs on GPU 0 in every process (the runner's fixed device_id), not "
            "on each process's LOCAL_RANK GPU")
    try:
        pipe = generator.pipe
        request = dict(seed=args.seed, steps=args.steps, guidance_scale=args.guidance, sampler=args.sampler)
        resolved = pipe.resolve(GenerationConfig(class_labels=(0,), **request))  # refuses a bad sampler or steps
        per_call = max(1, pipe.artifacts.max_batch("denoiser") // (2 if pipe.conditioning.guided(resolved) else 1))
        batch_size = min(args.batch_size, per_call)
        if batch_size < args.batch_size:
            say(f"batches of {batch_size} (what one denoiser call of the export takes) instead of --batch-size "
                f"{args.batch_size}")
        count = -(-args.num_samples // batch_size)
        if info.world_size > count:
            raise DcaeDeployError(f"{args.num_samples} samples make {count} batch(es) of {batch_size}, fewer than the "
                                  f"{info.world_size} processes: run at most {count}, or lower --batch-size")
        num_classes = pipe.artifacts.pipeline.denoiser.num_classes
        labels = release_class_labels(args.num_samples, num_classes, args.label_seed)
        inception = FIDInceptionV3.from_file(args.inception_weights).to(info.device)
        if info.is_main:
            note_unknown_inception(args.inception_weights, say)
        statistics = FeatureStatistics(FEATURES).to(info.device)
        mine = batches(args.num_samples, batch_size, info.rank, info.world_size)
        label = "generate" + (f", rank 0 of {info.world_size}" if info.distributed else "")
        bar = ProgressBar(sum(b - a for a, b in mine), label, enabled=info.is_main and not args.no_progress)
        digits = max(5, len(str(args.num_samples - 1)))
        for first, stop in mine:
            result = pipe.generate(GenerationConfig(class_labels=tuple(int(y) for y in labels[first:stop]),
                                                    **dict(request, seed=args.seed + first)))
            levels = to_levels(result.stages["image"])
            if args.save_images:
                from dcae_deploy.runtime.image import save_png

                for i, image in enumerate(levels.transpose(0, 2, 3, 1)):
                    save_png(image, Path(args.save_images) / f"{first + i:0{digits}d}_{labels[first + i]}.png")
            with torch.inference_mode():
                statistics.update(inception(torch.from_numpy(levels).to(info.device).float() / 255))
            bar.update(stop - first)
    finally:
        generator.close()
    mu, sigma = statistics.compute()  # a collective under torchrun: the sums of every process
    samples = sum_over_ranks(info, int(statistics.num_samples))  # compute() leaves the local states in place
    report = {
        "fid": None, "reference": args.fid_reference, "samples": samples,
        "processes": info.world_size, "source": generator.description,
        "sampling": {"sampler": resolved.sampler, "steps": resolved.steps, "guidance_scale": resolved.guidance_scale,
                     "height": resolved.height, "width": resolved.width, "seed": args.seed, "batch_size": batch_size},
        "labels": {"num_classes": num_classes, "label_seed": args.label_seed,
                   "distinct": int(len(np.unique(labels)))},
        "inception_weights": str(args.inception_weights), "statistics": args.save_statistics,
        "images": args.save_images, "seconds": None, "conventions": CONVENTIONS,
    }
    if info.is_main:
        if args.reference is not None:
            report["fid"] = frechet_distance(mu, sigma, *args.reference)
        report["seconds"] = time.perf_counter() - start_time
        if args.save_statistics:
            write_fid_statistics(args.save_statistics, mu, sigma)
            say(f"wrote {args.save_statistics}")
        print(format_report(report))
        if args.json:
            from dcae_deploy.checkpoints import write_json

            write_json(args.json, report)
            say(f"wrote {args.json}")
    return report


def format_report(report: dict) -> str:
    src, s = report["source"], report["sampling"]
    where = src.get("artifacts") or src.get("checkpoint")
    steps = f"{s['steps']} steps" if s["steps"] is not None else "adaptive steps"
    head = (f"FID {report['fid']:.4f} against {report['reference']}" if report["fid"] is not None
            else "statistics only (no --fid-reference)")
    lines = [f"{head}: {report['samples']} samples of {src['variant']} ({where}, {src['backend']}, {src['precision']})",
             f"  {s['sampler']}, {steps}, guidance {s['guidance_scale']:g}, {s['height']}x{s['width']}, seed "
             f"{s['seed']}, batches of {s['batch_size']}; labels: the release's draw (label seed "
             f"{report['labels']['label_seed']}, {report['labels']['num_classes']} classes)"]
    if report["samples"] < RANK_DEFICIENT_BELOW:
        lines.append(f"note: {report['samples']} samples (fewer than the {RANK_DEFICIENT_BELOW} feature dimensions) give a "
                     "rank-deficient covariance: compare this FID with runs of the same size, not with published FIDs "
                     f"({RELEASE_NUM_SAMPLES} samples)")
    elif report["samples"] != RELEASE_NUM_SAMPLES:
        lines.append(f"note: FID depends on the sample count; published FIDs use {RELEASE_NUM_SAMPLES} samples")
    return "\n".join(lines)


# --- reference statistics of real images --------------------------------------------------------------------------


def build_fid_stats_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dcae_deploy.evaluate fid-stats",
        description="FID reference statistics (an .npz with mu and sigma, the release's format) of a folder of images "
                    "(sub-folders included), centre-cropped to --resolution as the release's DMCrop; under torchrun "
                    "each process takes every N-th image.")
    p.add_argument("--images", required=True, help="a folder of images (sub-folders included)")
    p.add_argument("--resolution", type=int, default=512, help="image side after the centre crop (default %(default)s)")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="the FID Inception weights, pytorch-fid's pt_inception-2015-12-05-6726825d.pth (required)")
    p.add_argument("--out", required=True, metavar="NPZ", help="where to write mu and sigma")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-images", type=int, help="only the first N images (sorted by path)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="use the readable images of the right size and list the others, instead of refusing the run")
    add_run_options(p, "CPU threads of PyTorch", engine_dir=False)
    return p


def fid_stats_main(argv: list[str] | None = None) -> int:
    args = build_fid_stats_parser().parse_args(argv)
    for flag, value in (("--resolution", args.resolution), ("--batch-size", args.batch_size),
                        ("--max-images", args.max_images), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise DcaeDeployError(f"{flag} must be at least 1, got {value}")
    check_inception_weights(args.inception_weights)
    check_output_file(args.out, "--out", (".npz",))
    check_device(args.device)
    return run_on_ranks(args, fid_stats)


def fid_stats(args, info) -> dict:
    import torch

    from dcae_deploy.evaluate.reconstruction import select_images
    from dcae_deploy.train.distributed import sum_over_ranks
    from dcae_deploy.metrics.fid import FeatureStatistics, write_fid_statistics
    from dcae_deploy.metrics.images import ImageError, load_image
    from dcae_deploy.metrics.inception import FEATURES, FIDInceptionV3
    from dcae_deploy.runtime.progress import ProgressBar

    say = start_body(args, info, "fid-stats")
    images, skipped, _ = select_images(args, say)
    if len(images) < 2:
        raise DcaeDeployError(f"--images {args.images}: {len(images)} usable image(s); statistics need at least 2")
    if info.world_size > len(images):
        raise DcaeDeployError(f"{len(images)} images over {info.world_size} processes: run at most {len(images)}")
    inception = FIDInceptionV3.from_file(args.inception_weights).to(info.device)
    if info.is_main:
        note_unknown_inception(args.inception_weights, say)
    statistics = FeatureStatistics(FEATURES).to(info.device)
    shard = images[info.rank::info.world_size]
    bar = ProgressBar(len(shard), "fid-stats", enabled=info.is_main and not args.no_progress)
    for start in range(0, len(shard), args.batch_size):
        arrays = []
        for path in shard[start:start + args.batch_size]:
            try:
                arrays.append(load_image(path, args.resolution))
            except ImageError as exc:
                if not args.skip_bad_images:
                    raise
                print(f"[fid-stats] rank {info.rank}: skipping {path}: {exc}", file=sys.stderr, flush=True)
        if arrays:
            x = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy()).to(info.device).float() / 255
            with torch.inference_mode():
                statistics.update(inception(x))
        bar.update(len(shard[start:start + args.batch_size]))
    mu, sigma = statistics.compute()  # a collective under torchrun
    report = {"images": sum_over_ranks(info, int(statistics.num_samples)), "folder": str(args.images),
              "resolution": args.resolution, "skipped": skipped, "out": str(args.out)}
    if info.is_main:
        write_fid_statistics(args.out, mu, sigma)
        if report["images"] < RANK_DEFICIENT_BELOW:
            say(f"note: {report['images']} images (fewer than the {RANK_DEFICIENT_BELOW} feature dimensions) give a "
                "rank-deficient covariance: FIDs against it compare only with each other")
        print(f"wrote {args.out}: FID statistics (mu {mu.shape}, sigma {sigma.shape}) of {report['images']} images of "
              f"{args.images} at {args.resolution} px")
    return report
