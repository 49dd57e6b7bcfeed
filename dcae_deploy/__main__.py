"""``python -m dcae_deploy``: list the model variants, or reconstruct an image through an autoencoder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcae_deploy.checkpoints import atomic_write
from dcae_deploy.cli import check_output_file, run_cli, run_subcommand
from dcae_deploy.errors import DcaeDeployError


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _variants(args: argparse.Namespace) -> None:
    import torch

    from dcae_deploy.models.autoencoder import build_autoencoder
    from dcae_deploy.variants import get_variant, list_variants

    print(f"{'variant':<20} {'f':>4} {'latent':>6} {'scaling':>8} {'params':>14}  description")
    for name in list_variants("autoencoder", include_tiny=args.all):
        cfg = get_variant(name)
        params = sum(p.numel() for p in build_autoencoder(cfg, device=torch.device("meta")).parameters())
        print(
            f"{name:<20} {cfg.spatial_compression_ratio:>4} {cfg.latent_channels:>6} {cfg.scaling_factor:>8g} "
            f"{params:>14,}  {cfg.description}"
        )
    print("\nother variants (python -m dcae_deploy.export --model NAME):")
    print(f"{'variant':<20} {'kind':<13} description")
    for kind in ("pipeline", "denoiser", "text_encoder"):
        for name in list_variants(kind, include_tiny=args.all):
            cfg = get_variant(name)
            parts = (" [" + " + ".join(p.name for p in cfg.parts().values()) + "]" if kind == "pipeline" else "")
            print(f"{name:<20} {kind:<13} {cfg.description}{parts}")


def _reconstruct(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from dcae_deploy.numerics import weights_hint
    from dcae_deploy.models.autoencoder_io import load_autoencoder
    from dcae_deploy.models.autoencoder_overrides import resolve_autoencoder_config

    check_output_file(args.output, "--output", IMAGE_SUFFIXES)
    if args.override and not args.variant:
        raise DcaeDeployError("--override applies to a --variant: add --variant NAME (the base of the overrides)")
    variant = resolve_autoencoder_config(args.variant, args.override) if args.variant else None
    model = load_autoencoder(args.checkpoint, variant)
    try:
        image = Image.open(args.image).convert("RGB")
    except (OSError, ValueError) as exc:
        raise DcaeDeployError(f"cannot read image {args.image}: {exc}") from exc
    f = model.spatial_compression_ratio
    width, height = image.width // f * f, image.height // f * f
    if width == 0 or height == 0:
        raise DcaeDeployError(f"image {args.image} is smaller than the compression ratio {f} of {model.config.name}")
    pixels = np.asarray(image.crop((0, 0, width, height)), dtype=np.float32) / 127.5 - 1.0
    with torch.no_grad():
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        latents = model.encode(x)
        recon = model.decode(latents)
    if not (bool(torch.isfinite(latents).all()) and bool(torch.isfinite(recon).all())):
        stage = "encoder" if not bool(torch.isfinite(latents).all()) else "decoder"
        raise DcaeDeployError(f"the {stage} of {model.config.name} produced NaN/Inf on {args.image}, so no image "
                              f"was written: {weights_hint(model)}")
    mse = torch.mean((recon.clamp(-1, 1) - x) ** 2 / 4).item()
    out = ((recon[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, lambda tmp: Image.fromarray(out).save(tmp, format=Image.registered_extensions()[
        Path(args.output).suffix.lower()]))
    psnr = 10 * np.log10(1.0 / max(mse, 1e-12))
    print(f"{model.config.name}: {width}x{height} -> latent {tuple(latents.shape[1:])} -> {args.output}, PSNR {psnr:.2f} dB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcae_deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("variants", help="list the registered variants: autoencoders with parameter counts, then "
                       "pipelines, denoisers and text encoders")
    p.add_argument("--all", action="store_true", help="include the tiny test variants of every kind")
    p.set_defaults(func=_variants)
    p = sub.add_parser("reconstruct", help="encode and decode an image with a local checkpoint")
    p.add_argument("--checkpoint", required=True, help="diffusers folder, efficientvit file/folder or dcae_deploy save")
    p.add_argument("--variant", default=None, help="variant the weights must fit: a registered name or a JSON config "
                   "file (default: from the checkpoint)")
    p.add_argument("--override", default=None, metavar="'KEY=VALUE ...'",
                   help="reference-syntax overrides on top of --variant (a custom architecture)")
    p.add_argument("--image", required=True)
    p.add_argument("--output", required=True, help=f"the reconstruction ({', '.join(IMAGE_SUFFIXES)})")
    p.set_defaults(func=_reconstruct)
    return run_subcommand(parser, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
