"""Reproduce the shipped demo model (dcae_deploy/demo/) from scratch with the project's own trainer.

    python scripts/train_demo.py --work runs/demo            # the full recipe (2-core CPU: about 2.4 h)
    python scripts/train_demo.py --work runs/smoke --scale 0.01 --no-install   # a quick smoke run

Steps (each one is a plain ``python -m dcae_deploy.train`` call, printed before it runs):
 1. DC-AE ``demo-f32c32``, the three phases of the DC-AE recipe on procedural shapes:
    low_res_full at 128 px (2000 steps at a constant learning rate, then 3000 with cosine decay),
    high_res_latent_adaptation at 256 px (middle layers only),
    low_res_local_refinement at 128 px (decoder head only, PatchGAN loss).
 2. The latent scaling factor: 1 / RMS of the latents of 1024 training images, written into the config.
 3. Latent caches of training images, then joint flow-matching training of ``demo-denoiser`` and the
    ``demo-text`` text encoder (caption dropout 10% for classifier-free guidance), four runs (DENOISER_RUNS):
    1800 steps at a constant learning rate and 6000 with cosine decay at shift 3 on 6000 images; 3000 at
    shift 1; 20000 at shift 1, batch 64, on 24000 further images.
 4. A pipeline folder (``pipeline.json``, vae/, transformer/, text_encoder/, tokenizer/) with fp16 weights,
    evaluated (reconstruction PSNR, prompt adherence) and, unless ``--no-install``, copied to dcae_deploy/demo/.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import torch

from dcae_deploy.train.__main__ import main as train

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "dcae_deploy" / "demo"

AE_RUNS = (  # (run folder, phase, resolution, steps, batch, lr, extra args); each run starts from the previous one
    ("low_res_full", "low_res_full", 128, 2000, 8, 6e-4,
     ["--weight-decay", "0", "--warmup-steps", "100", "--num-images", "20000"]),
    ("low_res_full_decay", "low_res_full", 128, 3000, 8, 6e-4,  # phase 1 continued, cosine decay to 0
     ["--weight-decay", "0", "--warmup-steps", "50", "--lr-schedule", "cosine", "--num-images", "20000", "--seed", "1"]),
    # phases 2 and 3 at a low learning rate: at 1e-4 / 5e-5 they cost 0.15 dB of 128 px PSNR (28.10 -> 27.92 dB)
    ("high_res_latent_adaptation", "high_res_latent_adaptation", 256, 40, 2, 2e-5,
     ["--weight-decay", "0", "--num-images", "2000"]),
    ("low_res_local_refinement", "low_res_local_refinement", 128, 40, 8, 2e-5, ["--num-images", "4000"]),
)


@dataclasses.dataclass(frozen=True)
class DenoiserRun:
    """One flow-matching run of the denoiser + text encoder; each starts from the previous run's EMA weights."""

    folder: str
    steps: int
    lr: float
    shift: float  # resolution shift of the logit-normal training sigmas
    schedule: str = "constant"
    warmup: int = 100
    batch: int = 32
    images: int = 6000  # size of the latent cache, encoded from shapes images drawn with ``seed``
    seed: int = 0
    latents_of: str | None = None  # train on this earlier run's latent cache instead of caching one


DENOISER_RUNS = (
    DenoiserRun("denoiser", 1800, 5e-4, shift=3.0, warmup=200),
    DenoiserRun("denoiser_decay", 6000, 5e-4, shift=3.0, schedule="cosine", seed=1, latents_of="denoiser"),
    # shift 1 puts more training on the middle and low noise levels, where a 4x4 latent's shape is decided
    DenoiserRun("denoiser_shift1", 3000, 2e-4, shift=1.0, schedule="cosine", seed=2, latents_of="denoiser"),
    DenoiserRun("denoiser_long", 20000, 3e-4, shift=1.0, schedule="cosine", warmup=200, batch=64, images=24000,
                seed=3),
)


def run(argv: list[str]) -> None:
    print("+ python -m dcae_deploy.train " + " ".join(argv), flush=True)
    start = time.perf_counter()
    train(argv)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def scaled(steps: int, scale: float) -> int:
    return max(2, int(round(steps * scale)))


def train_autoencoder(work: Path, scale: float) -> Path:
    init: list[str] = []
    for folder, phase, res, steps, batch, lr, extra in AE_RUNS:
        out = work / "ae" / folder
        if not (out / "final" / "ema").is_dir():
            resume = ["--resume", str(out)] if (out / "checkpoints").is_dir() else []
            run(["autoencoder", *resume, "--phase", phase, "--variant", "demo-f32c32", "--data", "shapes", "--out", str(out),
                 "--resolution", str(res), "--steps", str(scaled(steps, scale)), "--batch-size", str(batch),
                 "--lr", str(lr), "--log-every", "25", "--checkpoint-every", "500", *extra, *init])
        init = ["--init", str(out / "final" / "ema")]
    return work / "ae" / AE_RUNS[-1][0] / "final" / "ema"


def calibrate_scaling(ae_folder: Path, out: Path, images: int = 1024) -> float:
    """Set the config's scaling factor to 1 / RMS of the raw latents and save the autoencoder to ``out``."""
    from dcae_deploy.models.autoencoder_io import load_autoencoder, save_autoencoder
    from dcae_deploy.train.data import ShapesImages

    model = load_autoencoder(ae_folder, "demo-f32c32")
    data = ShapesImages(images, 128, seed=7)
    with torch.no_grad():
        sq = [model.encode(torch.stack([data[i]["image"] for i in range(s, min(s + 64, images))])).pow(2).mean()
              for s in range(0, images, 64)]
    factor = float(1.0 / torch.stack(sq).mean().sqrt())
    model.config = dataclasses.replace(model.config, scaling_factor=round(factor, 5))
    save_autoencoder(model, out)
    print(f"latent scaling factor: {model.config.scaling_factor} (1 / RMS over {images} images)", flush=True)
    return factor


def train_denoiser(work: Path, ae: Path, scale: float) -> Path:
    init: list[str] = []
    for r in DENOISER_RUNS:
        out = work / r.folder
        if not (out / "final" / "ema").is_dir():
            resume = ["--resume", str(out)] if (out / "checkpoints").is_dir() else []
            latents = work / (r.latents_of or r.folder) / "latents"
            cached = ["--latents", str(latents)] if latents.is_dir() else []
            run(["denoiser", *resume, *cached, "--variant", "demo-denoiser", "--text-encoder", "demo-text",
                 "--autoencoder", str(ae), "--data", "shapes",
                 "--num-images", str(max(64, int(r.images * min(1.0, scale * 10)))),
                 "--resolution", "128", "--out", str(out), "--steps", str(scaled(r.steps, scale)),
                 "--batch-size", str(r.batch), "--lr", str(r.lr), "--weight-decay", "0", "--shift", str(r.shift),
                 "--warmup-steps", str(scaled(r.warmup, scale)), "--lr-schedule", r.schedule, "--seed", str(r.seed),
                 "--log-every", "50", "--checkpoint-every", "1000", *init])
        init = ["--init", str(out / "final" / "ema")]
    return work / DENOISER_RUNS[-1].folder / "final" / "ema"


def assemble(ae: Path, denoiser: Path, out: Path) -> Path:
    """A pipeline folder with fp16 weights (the shipped size), loaded back as a check."""
    from dcae_deploy.models.autoencoder_io import load_autoencoder
    from dcae_deploy.models.denoiser import load_denoiser
    from dcae_deploy.models.pipeline import PipelineModels, load_pipeline, save_pipeline
    from dcae_deploy.models.text_encoder import load_text_encoder
    from dcae_deploy.tokenizer import WordTokenizer
    from dcae_deploy.variants import get_variant

    models = PipelineModels(
        config=get_variant("demo", kind="pipeline"),
        autoencoder=load_autoencoder(ae, "demo-f32c32").half(),
        denoiser=load_denoiser(denoiser / "transformer", "demo-denoiser").half(),
        text_encoder=load_text_encoder(denoiser / "text_encoder", "demo-text").half(),
        tokenizer=WordTokenizer.load(denoiser / "tokenizer"),
    )
    if out.exists():
        shutil.rmtree(out)
    save_pipeline(models, out)
    load_pipeline(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(f"pipeline folder {out}: {size:.1f} MB", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, type=Path, help="run folder (steps already finished there are skipped)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step count (smoke runs: 0.01)")
    p.add_argument("--no-install", action="store_true", help="do not copy the result to dcae_deploy/demo/")
    p.add_argument("--eval-prompts", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ae_trained = train_autoencoder(args.work, args.scale)
    ae = args.work / "ae" / "calibrated"
    calibrate_scaling(ae_trained, ae)
    denoiser = train_denoiser(args.work, ae, args.scale)
    pipeline = assemble(ae, denoiser, args.work / "pipeline")
    from dcae_deploy.evaluate import main as evaluate

    evaluate(["--checkpoint", str(pipeline), "--num-prompts", str(args.eval_prompts),
              "--json", str(args.work / "evaluation.json")])
    if not args.no_install:
        if DEMO.exists():
            shutil.rmtree(DEMO)
        shutil.copytree(pipeline, DEMO)
        print(f"installed {DEMO}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
