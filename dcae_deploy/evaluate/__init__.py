"""Evaluate a shapes text-to-image model: autoencoder reconstruction and prompt adherence.

``python -m dcae_deploy.evaluate --checkpoint dcae_deploy/demo`` (PyTorch) or
``python -m dcae_deploy.evaluate --artifacts DIR --backend onnxruntime`` (exported graphs) prints

- reconstruction PSNR of the autoencoder on held-out shapes images (held-out caption triples,
  images never seen in training), when an autoencoder is available (``--checkpoint``);
- prompt adherence on held-out prompts: each image is judged by :mod:`dcae_deploy.data.judge`
  (foreground colour = median colour of the largest non-background component; shape from its
  bounding-box fill ratio and solidity) and compared with its prompt.

Exit status 1 when a ``--min-*`` goal is given and missed.

``python -m dcae_deploy.evaluate reconstruction --images FOLDER ...`` is the other mode: the release's reconstruction
metrics (PSNR, SSIM, LPIPS, rFID) of any DC-AE on your own images, PyTorch fp32 against an export on any backend
(:mod:`dcae_deploy.evaluate.reconstruction`; ``reconstruction --help``). ``generation`` is the FID of a
class-conditional DC-AE-Diffusion model against reference statistics, ``fid-stats`` builds such statistics from images
(:mod:`dcae_deploy.evaluate.generation`; ``generation --help``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

import numpy as np

from dcae_deploy.cli import check_output_file, run_cli
from dcae_deploy.errors import DcaeDeployError

EVAL_SEED = 20_261_124  # images and prompts for evaluation; training uses small seeds


def _cycled_captions(triples: list, count: int) -> list[str]:
    """``count`` captions cycling through ``triples`` in a fixed (EVAL_SEED) shuffled order."""
    from dcae_deploy.data.shapes import caption_for

    order = [triples[i] for i in np.random.default_rng(EVAL_SEED).permutation(len(triples))]
    return [caption_for(*order[i % len(order)]) for i in range(count)]


def heldout_prompts(count: int) -> list[str]:
    """``count`` prompts cycling through the held-out caption triples (never seen in training)."""
    from dcae_deploy.data.shapes import heldout_triples

    return _cycled_captions(heldout_triples(), count)


def training_prompts(count: int) -> list[str]:
    """``count`` prompts cycling through the training caption triples: for choosing sampling settings (such as
    the guidance scale) without looking at the held-out ones."""
    from dcae_deploy.data.shapes import train_triples

    return _cycled_captions(train_triples(), count)


PROMPT_SPLITS = {"heldout": heldout_prompts, "train": training_prompts}


def reconstruction_psnr(autoencoder, count: int = 64, resolution: int = 128, batch_size: int = 16) -> dict[str, float]:
    """PSNR (dB, images in [0, 1]) of encode -> decode on ``count`` held-out shapes images."""
    import torch

    from dcae_deploy.data.shapes import ShapesDataset

    data = ShapesDataset(count, seed=EVAL_SEED, image_size=resolution, split="heldout")
    psnrs = []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            x = torch.stack([data[i]["image"] for i in range(start, min(start + batch_size, count))])
            y = autoencoder.decode(autoencoder.encode(x))
            if not bool(torch.isfinite(y).all()):
                from dcae_deploy.numerics import weights_hint

                raise DcaeDeployError(f"the autoencoder's reconstructions hold NaN/Inf: {weights_hint(autoencoder)}")
            y = y.clamp(-1, 1)
            mse = ((y - x) / 2).pow(2).flatten(1).mean(1)
            psnrs += (10 * torch.log10(1 / mse.clamp_min(1e-12))).tolist()
    return {"psnr_mean": float(np.mean(psnrs)), "psnr_min": float(np.min(psnrs)), "images": count}


def prompt_adherence(generate: Callable[[list[str], int], Sequence[np.ndarray]], prompts: list[str],
                     batch_size: int = 8, progress: bool = True) -> dict[str, float]:
    """Judge ``generate(prompts_batch, seed) -> uint8 HxWx3 images`` on every prompt."""
    from dcae_deploy.data.judge import score

    images: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        images += list(generate(prompts[start:start + batch_size], EVAL_SEED + start))
        if progress:
            print(f"\r[evaluate] {len(images)}/{len(prompts)} images", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return score(prompts, images)


def torch_generator(models, steps: int, guidance: float, height: int, width: int):
    """``generate(prompts, seed)`` on the PyTorch parts of a pipeline (fp32, CPU), through the runtime's own
    generation loop (:func:`dcae_deploy.runtime.eager.open_pytorch`): the same noise, sampler and guidance as
    an export evaluated with ``--artifacts``."""
    from dcae_deploy.runtime.eager import open_pytorch
    from dcae_deploy.runtime.generation import GenerationConfig

    pipe = open_pytorch(models, device="cpu", max_res=max(height, width), progress=False)

    def generate(prompts: list[str], seed: int) -> list[np.ndarray]:
        request = GenerationConfig(prompts=tuple(prompts), seed=seed, steps=steps, guidance_scale=guidance,
                                   height=height, width=width)
        return list(pipe.generate(request).images)

    return generate


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reconstruction"]:
        from dcae_deploy.evaluate.reconstruction import main as reconstruction_main

        return reconstruction_main(argv[1:])
    if argv[:1] in (["generation"], ["fid-stats"]):
        from dcae_deploy.evaluate.generation import fid_stats_main, main as generation_main

        return (generation_main if argv[0] == "generation" else fid_stats_main)(argv[1:])
    from dcae_deploy.runtime.backends import BACKENDS

    p = argparse.ArgumentParser(prog="python -m dcae_deploy.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="a pipeline folder (PyTorch); default: the shipped demo model")
    src.add_argument("--artifacts", help="an exported pipeline folder (manifest.json), run through --backend")
    p.add_argument("--backend", default=None, choices=list(BACKENDS),
                   help="with --artifacts: the backend (default: onnxruntime)")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--prompt-split", choices=sorted(PROMPT_SPLITS), default="heldout",
                   help="held-out caption triples (the evaluation) or training ones (to tune sampling settings)")
    p.add_argument("--reconstruction-images", type=int, default=64, help="0 skips the reconstruction check")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--min-psnr", type=float, help="fail below this reconstruction PSNR (dB)")
    p.add_argument("--min-colour", type=float, help="fail below this foreground-colour accuracy (0-1)")
    p.add_argument("--min-shape", type=float, help="fail below this shape accuracy (0-1)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    check_arguments(args)

    results: dict[str, dict[str, float]] = {}
    if args.artifacts:
        generate, _ = _runtime_generator(args)
        autoencoder = config = None
    else:
        from dcae_deploy.models.pipeline import load_pipeline
        from dcae_deploy.shipped_demo import demo_folder

        models = load_pipeline(args.checkpoint or demo_folder())
        config = models.config.sampling
        generate = torch_generator(models, args.steps or config.steps, _guidance(args, config),
                                   config.height, config.width)
        autoencoder = models.autoencoder
    if autoencoder is not None and args.reconstruction_images:
        results["reconstruction"] = reconstruction_psnr(autoencoder, args.reconstruction_images, config.height)
        print(f"reconstruction: PSNR {results['reconstruction']['psnr_mean']:.2f} dB mean "
              f"({results['reconstruction']['psnr_min']:.2f} min) on {args.reconstruction_images} held-out images")
    if args.num_prompts:
        prompts = PROMPT_SPLITS[args.prompt_split](args.num_prompts)
        results["adherence"] = {**prompt_adherence(generate, prompts, args.batch_size), "split": args.prompt_split}
        a = results["adherence"]
        print(f"prompt adherence on {a['n']} {args.prompt_split} prompts: foreground colour {a['fg_colour_accuracy']:.0%}, "
              f"shape {a['shape_accuracy']:.0%}, background {a['bg_colour_accuracy']:.0%}, all three {a['joint_accuracy']:.0%}")
    if args.json:
        from dcae_deploy.checkpoints import write_json

        write_json(args.json, results)
    return _check_goals(args, results)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad, ignored or empty requests before any model is loaded."""
    from dcae_deploy.runtime.schedulers import guidance_note

    if args.num_prompts < 0 or args.reconstruction_images < 0:
        raise DcaeDeployError("--num-prompts and --reconstruction-images must be >= 0")
    if args.backend is not None and not args.artifacts:
        raise DcaeDeployError(f"--backend {args.backend} says how an export runs: add --artifacts EXPORT_DIR, or drop "
                              "--backend to evaluate the PyTorch weights (--checkpoint, default: the shipped demo)")
    args.backend = args.backend or "onnxruntime"
    reconstruction = 0 if args.artifacts else args.reconstruction_images  # exports hold no encoder to check
    if args.num_prompts == 0 and reconstruction == 0:
        what = "--num-prompts 0 with --artifacts" if args.artifacts else "--num-prompts 0 and --reconstruction-images 0"
        raise DcaeDeployError(f"nothing to evaluate ({what}): ask for at least one prompt or reconstruction image")
    if args.steps is not None and args.steps < 1:
        raise DcaeDeployError(f"--steps must be at least 1, got {args.steps}")
    if args.batch_size < 1:
        raise DcaeDeployError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.json:
        check_output_file(args.json, "--json")
    note = guidance_note(args.guidance)  # refuses nan, inf and negative scales
    if note:
        print(f"[evaluate] {note}", file=sys.stderr)


def _guidance(args, config) -> float:
    return config.guidance_scale if args.guidance is None else args.guidance


def _runtime_generator(args):
    """``generate`` over exported artifacts through the runtime's text-to-image pipeline."""
    from dcae_deploy.runtime.generation import GenerationConfig, TextToImage

    pipe = TextToImage.open(args.artifacts, backend=args.backend, progress=False)

    def generate(prompts: list[str], seed: int) -> list[np.ndarray]:
        request = GenerationConfig(prompts=tuple(prompts), seed=seed, steps=args.steps, guidance_scale=args.guidance)
        return list(pipe.generate(request).images)

    return generate, pipe


def _check_goals(args, results) -> int:
    failed = []
    rec, adh = results.get("reconstruction"), results.get("adherence")
    if args.min_psnr is not None and rec and rec["psnr_mean"] < args.min_psnr:
        failed.append(f"reconstruction PSNR {rec['psnr_mean']:.2f} dB < {args.min_psnr}")
    if args.min_colour is not None and adh and adh["fg_colour_accuracy"] < args.min_colour:
        failed.append(f"foreground colour {adh['fg_colour_accuracy']:.2f} < {args.min_colour}")
    if args.min_shape is not None and adh and adh["shape_accuracy"] < args.min_shape:
        failed.append(f"shape {adh['shape_accuracy']:.2f} < {args.min_shape}")
    for message in failed:
        print(f"FAILED: {message}", file=sys.stderr)
    print(json.dumps(results, indent=1))
    return 1 if failed else 0
