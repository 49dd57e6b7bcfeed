"""``python -m dcae_deploy.train autoencoder|denoiser|cache-latents|class-diffusion|class-pipeline ...``: one
training job, alone or under torchrun.

Examples::

    python -m dcae_deploy.train autoencoder --phase low_res_full --variant tiny-f32c32-sana \\
        --data shapes --steps 200 --batch-size 8 --resolution 64 --out runs/ae-p1
    python -m dcae_deploy.train autoencoder --phase high_res_latent_adaptation --variant tiny-f32c32-sana \\
        --init runs/ae-p1/final --data folder:images/ --out runs/ae-p2
    torchrun --nproc_per_node 2 -m dcae_deploy.train denoiser --variant tiny-sana \\
        --autoencoder runs/ae-p3/final/ema --data shapes --resolution 64 --out runs/dit

    # class-conditional DC-AE-Diffusion (UViT / USiT / DiT), as the release trains them
    torchrun --nproc_per_node 8 -m dcae_deploy.train cache-latents --autoencoder dc-ae-f32c32-in-1.0/ \\
        --data folder:imagenet/train --resolution 512 --out latents/f32c32-in-512
    torchrun --nproc_per_node 8 -m dcae_deploy.train class-diffusion --variant uvit-h-f32c32 \\
        --latents latents/f32c32-in-512 --out runs/uvit-h
    python -m dcae_deploy.train class-pipeline --pipeline dc-ae-f32c32-in-1.0-uvit-h-in-512px \\
        --autoencoder dc-ae-f32c32-in-1.0/ --denoiser runs/uvit-h/final/ema --out pipelines/uvit-h
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcae_deploy.cli import run_cli
from dcae_deploy.errors import DcaeDeployError


def _loop_config(args: argparse.Namespace, steps: int, batch_size: int):
    from dcae_deploy.train.loop import LoopConfig

    return LoopConfig(
        steps=steps, batch_size=batch_size, seed=args.seed, ema_decay=args.ema_decay, grad_clip=args.grad_clip,
        warmup_steps=args.warmup_steps, lr_schedule=args.lr_schedule, amp=args.amp, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        num_workers=args.num_workers, device=args.device,
    )


def _autoencoder(args: argparse.Namespace, info) -> None:
    from dcae_deploy.models.autoencoder import build_autoencoder
    from dcae_deploy.models.autoencoder_io import load_autoencoder
    from dcae_deploy.models.autoencoder_overrides import resolve_autoencoder_config
    from dcae_deploy.train.autoencoder import AutoencoderTask, phase_config
    from dcae_deploy.train.data import image_dataset
    from dcae_deploy.train.loop import run_training, seed_everything
    from dcae_deploy.train.perceptual import LPIPS

    betas = tuple(args.betas) if args.betas else None
    phase = phase_config(
        args.phase, resolution=args.resolution, lr=args.lr, steps=args.steps, batch_size=args.batch_size,
        betas=betas, weight_decay=args.weight_decay,
    )
    config = resolve_autoencoder_config(args.variant, args.override)  # a name or JSON file, plus overrides
    seed_everything(args.seed)
    if args.init:
        model = load_autoencoder(args.init, config)
    else:
        if args.phase != "low_res_full" and not args.resume and info.is_main:
            print(f"warning: phase {args.phase} starts from random weights (no --init)", flush=True)
        model = build_autoencoder(config)
    perceptual = LPIPS.from_files(args.lpips_weights) if args.lpips_weights else None
    task = AutoencoderTask(model, phase, perceptual, ", ".join(args.lpips_weights or []))
    dataset = image_dataset(args.data, phase.resolution, length=args.num_images, seed=args.seed)
    run_training(task, dataset, _loop_config(args, phase.steps, phase.batch_size), args.out,
                 resume=args.resume, info=info, allow_changed_config=args.allow_changed_config)


def _denoiser(args: argparse.Namespace, info) -> None:
    from dcae_deploy.models.autoencoder_io import load_autoencoder
    from dcae_deploy.models.denoiser import build_denoiser, load_denoiser
    from dcae_deploy.train.data import LatentDataset, cache_latents, image_dataset
    from dcae_deploy.train.denoiser import DenoiserTask, FlowMatchingConfig
    from dcae_deploy.train.distributed import barrier
    from dcae_deploy.train.loop import run_training, seed_everything
    from dcae_deploy.train.text import load_caption_encoder
    from dcae_deploy.variants import get_variant, list_variants

    cfg = FlowMatchingConfig(
        steps=args.steps or 10_000, batch_size=args.batch_size or 16, lr=args.lr or 1e-4,
        betas=tuple(args.betas) if args.betas else (0.9, 0.999), weight_decay=args.weight_decay or 0.0,
        shift=args.shift, caption_dropout=args.caption_dropout,
    )
    latents = Path(args.latents) if args.latents else Path(args.out) / "latents"
    if not args.latents:
        if not args.autoencoder:
            raise DcaeDeployError("denoiser training needs --latents DIR or --autoencoder CKPT to cache latents from --data")
        if info.is_main:
            ae = load_autoencoder(args.autoencoder)
            images = image_dataset(args.data, args.resolution or 256, length=args.num_images, seed=args.seed)
            print(f"caching latents of {len(images)} images at {images[0]['image'].shape[-1]}px -> {latents}", flush=True)
            cache_latents(ae, images, device=info.device).save(latents, {"autoencoder": str(args.autoencoder)})
        barrier(info)
    dataset = LatentDataset.load(latents)
    if dataset.captions is None:
        raise DcaeDeployError(f"the latent cache {latents} holds class labels, not captions: train a UViT / USiT / "
                              "DiT on it with the class-diffusion command")
    seed_everything(args.seed)
    joint = args.text_encoder in list_variants("text_encoder")
    init = Path(args.init) / "transformer" if args.init and joint else args.init
    model = load_denoiser(init, args.variant) if init else build_denoiser(args.variant)
    if dataset.latents.shape[1] != model.config.in_channels:
        raise DcaeDeployError(
            f"latents have {dataset.latents.shape[1]} channels; {model.config.name} expects {model.config.in_channels}"
        )
    if joint:  # a registered text encoder: trained together with the denoiser
        from dcae_deploy.models.text_encoder import build_text_encoder, default_tokenizer, load_text_encoder

        text_cfg = get_variant(args.text_encoder, kind="text_encoder")
        if text_cfg.hidden_size != model.config.caption_channels:
            raise DcaeDeployError(
                f"text encoder {text_cfg.name} gives {text_cfg.hidden_size}-dim states; "
                f"{model.config.name} expects caption_channels={model.config.caption_channels}"
            )
        text_encoder = (load_text_encoder(Path(args.init) / "text_encoder", text_cfg) if args.init
                        else build_text_encoder(text_cfg))
        task = DenoiserTask(model, cfg, encoder_name=text_cfg.name, text_encoder=text_encoder,
                            tokenizer=default_tokenizer(text_cfg))
    else:
        encoder = load_caption_encoder(args.text_encoder, model.config.caption_channels)
        task = DenoiserTask(model, cfg, encoder, encoder_name=args.text_encoder)
    run_training(task, dataset, _loop_config(args, cfg.steps, cfg.batch_size), args.out,
                 resume=args.resume, info=info, allow_changed_config=args.allow_changed_config)


def _cache_latents(args: argparse.Namespace, info) -> None:
    from dcae_deploy.train.data import ClassImageFolder, cache_class_latents

    if not args.data.startswith("folder:"):
        raise DcaeDeployError(f"cache-latents reads an image folder: --data folder:DIR, got {args.data!r}")
    images = ClassImageFolder(args.data.removeprefix("folder:"), args.resolution, args.labels)
    ae = _cache_autoencoder(args.autoencoder, args.seed, info)
    if info.is_main:
        if images.skipped:
            print(f"warning: {len(images.skipped)} image(s) directly in {images.root} belong to no class folder and "
                  "are skipped (as the release's ImageFolder does)", flush=True)
        source = f"{len(images.classes)} class folders" if images.classes is not None else f"labels file {args.labels}"
        print(f"caching latents of {len(images)} images ({source}) at {args.resolution}px with {ae.config.name} "
              f"(scaling factor {ae.config.scaling_factor:g}) on {info.world_size} process(es) -> {args.out}",
              flush=True)
    cache_class_latents(ae, images, args.out, info=info, batch_size=args.batch_size, num_workers=args.num_workers,
                        metadata={"autoencoder": str(args.autoencoder)})


def _cache_autoencoder(spec: str, seed: int, info):
    """A DC-AE checkpoint (any layout load_autoencoder reads), else a registered variant with random weights."""
    from dcae_deploy.models.autoencoder import build_autoencoder
    from dcae_deploy.models.autoencoder_io import load_autoencoder
    from dcae_deploy.train.loop import seed_everything
    from dcae_deploy.variants import list_variants

    if Path(spec).exists():
        return load_autoencoder(spec)
    if spec in list_variants("autoencoder"):
        if info.is_main:
            print(f"warning: --autoencoder {spec} is a variant name: random weights (seed {seed}), for tests only",
                  flush=True)
        seed_everything(seed)
        return build_autoencoder(spec)
    raise DcaeDeployError(f"--autoencoder {spec!r} is neither a checkpoint (file or folder) nor a registered "
                          f"autoencoder variant ({', '.join(list_variants('autoencoder'))})")


def _class_diffusion(args: argparse.Namespace, info) -> None:
    from dcae_deploy.family import family_of
    from dcae_deploy.train.class_diffusion import (
        ClassDiffusionConfig,
        ClassDiffusionTask,
        build_for_training,
        check_latents,
        denoiser_config,
        objective_for,
    )
    from dcae_deploy.train.data import LatentDataset
    from dcae_deploy.train.loop import run_training, seed_everything

    config = denoiser_config(args.variant)
    recipe = objective_for(config).recipe
    cfg = ClassDiffusionConfig.release(config, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                       betas=args.betas, weight_decay=args.weight_decay,
                                       class_dropout=args.class_dropout)
    dataset = LatentDataset.load(args.latents)
    check_latents(dataset, config, args.latents)
    seed_everything(args.seed)
    model = family_of(config).load_module(args.init, config) if args.init else build_for_training(config)
    for name in ("ema_decay", "grad_clip", "warmup_steps", "amp"):  # not given: the release's value
        if getattr(args, name) is None:
            setattr(args, name, getattr(recipe, name))
    run_training(ClassDiffusionTask(model, cfg), dataset, _loop_config(args, cfg.steps, cfg.batch_size), args.out,
                 resume=args.resume, info=info, allow_changed_config=args.allow_changed_config)


def _class_pipeline(args: argparse.Namespace, info) -> None:
    from dcae_deploy.train.class_diffusion import assemble_class_pipeline

    if info.is_main:
        out = assemble_class_pipeline(args.pipeline, args.autoencoder, args.denoiser, args.out, latents=args.latents)
        print(f"wrote pipeline {args.pipeline} to {out}: python -m dcae_deploy.export --model {args.pipeline} "
              f"--checkpoint {out} --output DIR", flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", required=True, help="registered variant name (python -m dcae_deploy variants --all); "
                   "for an autoencoder or a class-diffusion denoiser also a JSON config file (a checkpoint's "
                   "config.json)")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, loss_log.csv, loss_curve.png, final/")
    p.add_argument("--init", help="initial weights (a checkpoint folder the model's loader reads)")
    p.add_argument("--resume", help="a run folder (its newest intact checkpoint) or checkpoint step folder to "
                   "continue exactly; settings that differ from the checkpoint's are refused")
    p.add_argument("--allow-changed-config", action="store_true",
                   help="with --resume: continue even though settings (batch size, lr, seed, ...) differ from the "
                   "checkpoint's, with a warning listing them (the run is no longer an exact continuation)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--lr", type=float)
    p.add_argument("--betas", type=float, nargs=2)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"),
                   help="after warmup: constant, or cosine decay to 0 at --steps")
    p.add_argument("--amp", default="bfloat16", choices=("bfloat16", "float16", "none"), help="GPU only")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--keep-checkpoints", type=int, default=3)
    _process_args(p)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="shapes", help="'shapes' or 'folder:PATH' (images + optional captions.jsonl)")
    p.add_argument("--num-images", type=int, default=10_000, help="size of the procedural shapes set")
    p.add_argument("--resolution", type=int, help="image crop size (pixels)")


def _process_args(p: argparse.ArgumentParser) -> None:
    from dcae_deploy.train.distributed import DEFAULT_TIMEOUT_S

    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="under torchrun: a process that waits longer than this for the others (a collective, "
                   "rank 0 caching latents) fails instead of hanging (default %(default)g)")


def main(argv: list[str] | None = None) -> int:
    from dcae_deploy.train.autoencoder import PHASES
    from dcae_deploy.train.distributed import init_distributed, run_ranked

    parser = argparse.ArgumentParser(prog="python -m dcae_deploy.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("autoencoder", help="one DC-AE training phase")
    p.add_argument("--phase", required=True, choices=PHASES)
    p.add_argument("--lpips-weights", nargs="+", help="local VGG16 + LPIPS weight file(s); without them no perceptual loss")
    p.add_argument("--override", default=None, metavar="'KEY=VALUE ...'",
                   help="a custom architecture in the reference's syntax on top of --variant, e.g. \"latent_channels=16 "
                   "encoder.width_list=[16,32,64,64] ...\" (see dcae_deploy/models/autoencoder_overrides.py); the "
                   "resolved config is saved with every checkpoint")
    _common(p)
    _data_args(p)
    p.set_defaults(func=_autoencoder)
    p = sub.add_parser("denoiser", help="flow-matching training of a SANA denoiser on cached latents")
    p.add_argument("--latents", help="a latent cache folder (default: cache --data into OUT/latents)")
    p.add_argument("--autoencoder", help="DC-AE checkpoint used to cache latents")
    p.add_argument("--text-encoder", default="hash", help="a registered text-encoder variant (e.g. demo-text: trained jointly), "
                   "'hash' (frozen placeholder) or 'package.module:factory' (frozen)")
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    _common(p)
    _data_args(p)
    p.set_defaults(func=_denoiser)
    p = sub.add_parser("cache-latents", help="class-labelled DC-AE latents of an image folder, sharded over torchrun "
                       "ranks into one cache (the release's dc_ae_generate_latent)")
    p.add_argument("--autoencoder", required=True, help="DC-AE checkpoint (file or folder), or a registered "
                   "autoencoder variant (random weights: tests only)")
    p.add_argument("--data", required=True, help="folder:DIR, ImageNet style (DIR/<class>/<image>: labels are the "
                   "sorted class folder indices) or with --labels")
    p.add_argument("--labels", help="text file of '<image path relative to DIR> <integer label>' lines, instead of "
                   "class sub-folders")
    p.add_argument("--resolution", type=int, default=512, help="center-crop size in pixels (ADM crop; default 512)")
    p.add_argument("--out", required=True, help="the latent cache folder to create")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder call, per process (default 64)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed of a variant-name --autoencoder")
    _process_args(p)
    p.set_defaults(func=_cache_latents)
    p = sub.add_parser("class-diffusion", help="UViT (eps) / USiT (SiT velocity) / DiT (ADM hybrid) training on a "
                       "class-labelled latent cache, with the release's optimiser settings unless given")
    p.add_argument("--latents", required=True, help="a cache written by cache-latents")
    p.add_argument("--class-dropout", type=float, help="probability of the null label (default: the model's "
                   "class_dropout_prob, 0.1)")
    _common(p)
    p.set_defaults(ema_decay=None, grad_clip=None, warmup_steps=None, amp=None)  # None: the release's recipe
    p.set_defaults(func=_class_diffusion)
    p = sub.add_parser("class-pipeline", help="a class-conditional pipeline folder (pipeline.json, vae/, transformer/) "
                       "from a DC-AE checkpoint and a trained denoiser, for export")
    p.add_argument("--pipeline", required=True, help="registered class pipeline, e.g. tiny-uvit-c2i")
    p.add_argument("--autoencoder", required=True, help="DC-AE checkpoint of the pipeline's autoencoder variant")
    p.add_argument("--denoiser", required=True, help="trained denoiser: a class-diffusion run's final/ema (or final)")
    p.add_argument("--latents", help="the latent cache it was trained on: checked against the autoencoder")
    p.add_argument("--out", required=True, help="pipeline folder to write")
    p.set_defaults(func=_class_pipeline, device="cpu", dist_timeout=None)
    args = parser.parse_args(argv)
    info = init_distributed(args.device, args.dist_timeout)
    # A failing rank leaves at once (no barrier) and exits non-zero; torchrun then stops the others.
    # Exactly one rank reports the error.
    return run_ranked(info, lambda: args.func(args, info))


if __name__ == "__main__":
    sys.exit(run_cli(main))
