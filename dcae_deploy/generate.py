"""``python -m dcae_deploy.generate``: text (or ImageNet class labels) to PNG from an export folder, on torch, ONNX
Runtime, TensorRT or OpenVINO.

::

    python -m dcae_deploy.generate --prompt "a red circle on a blue background" --output out.png   # --backend auto
    python -m dcae_deploy.generate --artifacts export/demo --backend tensorrt --seed 7 --batch 4 --output img.png
    python -m dcae_deploy.generate --backend torch --checkpoint runs/demo/pipeline --output out.png   # no export
    python -m dcae_deploy.generate --backend openvino --ov-precision bf16 --output out.png   # Intel CPU / GPU / NPU
    python -m dcae_deploy.generate --artifacts export/uvit-h --class-labels 279,333,979,936 --guidance 6.0 --grid \
        --output grid.png                                  # a class-conditional DC-AE-Diffusion export

Without ``--artifacts`` it uses the shipped demo model (exported once into ``~/.cache/dcae_deploy``,
or ``$DCAE_DEPLOY_CACHE``; with ``--backend tensorrt`` its engines are built there once too). ``--batch N`` writes ``img-0.png`` ... ``img-{N-1}.png`` (seeds seed ... seed+N-1).

``--backend auto`` (the default) picks, and says on stderr which and why: TensorRT where the export has engines this
GPU runs, else ONNX Runtime on CUDA where it has the CUDA execution provider and a GPU, else OpenVINO on the CPU at
f32 inference precision where it is installed, else ONNX Runtime on the CPU (``choose_backend`` in
``dcae_deploy/runtime/backends.py``); a backend that does not open falls back to the next. ``--device cpu|cuda``
keeps it to that device. A named ``--backend`` is used as given.
"""

from __future__ import annotations

import argparse
import sys

from dcae_deploy.cli import check_output_file, check_seed, run_cli
from dcae_deploy.errors import DcaeDeployError


def build_parser() -> argparse.ArgumentParser:
    from dcae_deploy.runtime.backends import AUTO, BACKENDS
    from dcae_deploy.diffusion_samplers import CLASS_SAMPLERS
    from dcae_deploy.runtime.schedulers import SAMPLERS

    p = argparse.ArgumentParser(prog="python -m dcae_deploy.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", action="append", help="text-to-image: what to draw (repeat for several images)")
    p.add_argument("--class-labels", default=None, metavar="279,333,...",
                   help="class-conditional exports (DC-AE-Diffusion UViT / USiT / DiT): ImageNet class ids, one image each")
    p.add_argument("--grid", action="store_true", help="write all images as one grid PNG (rows of 8) at --output")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (default: the empty prompt)")
    p.add_argument("--artifacts", default=None, help="export folder (manifest.json); default: the shipped demo")
    p.add_argument("--variant", default=None, help="refuse an export of another pipeline variant")
    p.add_argument("--backend", default=AUTO, choices=[AUTO, *BACKENDS],
                   help="auto (default): TensorRT where the export's engines run on this GPU, else ONNX Runtime on "
                   "CUDA, else OpenVINO on the CPU (f32) where installed, else ONNX Runtime on the CPU; stderr says "
                   "which and why")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="torch / ONNX Runtime device (with --backend auto: only backends on that device)")
    p.add_argument("--engine-dir", default=None, help="TensorRT plans (default: the one under ARTIFACTS/engines)")
    p.add_argument("--ov-device", default=None, help="OpenVINO device: CPU (default), GPU, GPU.N, NPU, AUTO")
    p.add_argument("--ov-precision", default=None, choices=("f32", "bf16", "f16", "default"),
                   help="OpenVINO inference precision (default f32; bf16/f16 are faster and coarser; "
                   "default: OpenVINO's own choice, bf16 on CPUs with bf16)")
    p.add_argument("--checkpoint", default=None, help="torch backend: pipeline folder (default: the manifest's); "
                   "without --artifacts it runs that folder directly, with no export")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--sampler", default=None, choices=[*SAMPLERS, *CLASS_SAMPLERS],
                   help="default: the model's (text: dpm-solver++ / euler; class-conditional: its reference sampler, "
                   "e.g. dpm-solver++-uvit, adm, ddim, sit-dopri5, sit-heun, sit-euler)")
    p.add_argument("--seed", type=int, default=0, help="initial-noise seed; image i of a batch uses seed + i")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch", type=int, default=1, help="images per prompt")
    p.add_argument("--low-memory", action="store_true", help="hold one stage's model at a time")
    p.add_argument("--tile-size", type=int, default=None, help="decode in tiles of this many pixels")
    p.add_argument("--verbose", action="store_true", help="per-stage timings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--output", required=True, help="PNG path (a batch adds -0, -1, ... before .png)")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad or ignored arguments before anything is loaded or computed."""
    from dcae_deploy.runtime.schedulers import guidance_note

    if args.prompt and args.class_labels:
        raise DcaeDeployError("--prompt (text-to-image) and --class-labels (class-conditional) exclude each other")
    if not args.prompt and not args.class_labels:
        raise DcaeDeployError("say what to draw: --prompt 'a red circle on a blue background' (text-to-image), or "
                              "--class-labels 279,333 (a class-conditional export)")
    if args.class_labels is not None:
        try:
            args.labels = tuple(int(v) for v in args.class_labels.split(",") if v.strip())
        except ValueError as exc:
            raise DcaeDeployError(f"--class-labels {args.class_labels!r} must be comma-separated integers, "
                                  "e.g. 279,333,979") from exc
        if not args.labels:
            raise DcaeDeployError("--class-labels is empty: give ImageNet class ids, e.g. 279,333")
    if args.batch < 1:
        raise DcaeDeployError(f"--batch must be at least 1, got {args.batch}")
    if args.steps is not None and args.steps < 1:
        raise DcaeDeployError(f"--steps must be at least 1, got {args.steps}")
    check_seed(args.seed)
    check_output_file(args.output, "--output", (".png",))
    unused = _not_used_by(args.backend)
    if args.engine_dir is not None and args.backend != "tensorrt":
        raise DcaeDeployError(f"--engine-dir holds TensorRT plans, which {unused}: "
                              "add --backend tensorrt, or drop --engine-dir")
    given = [flag for flag, value in (("--ov-device", args.ov_device), ("--ov-precision", args.ov_precision)) if value]
    if given and args.backend != "openvino":
        raise DcaeDeployError(f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} OpenVINO, which "
                              f"{unused}: add --backend openvino, or drop {' and '.join(given)}")
    if args.backend == "openvino":  # installed, and the device exists, before the demo's export-on-first-use
        from dcae_deploy.runtime.runners.openvino import check_device, import_openvino

        check_device(args.ov_device or "CPU", list(import_openvino().Core().available_devices))
    if args.checkpoint is not None and args.backend != "torch":
        raise DcaeDeployError(f"--checkpoint names PyTorch weights, which {unused} "
                              "(it runs exported graphs): add --backend torch to run them directly, or export them first "
                              "(python -m dcae_deploy.export) and pass --artifacts")
    note = guidance_note(args.guidance)  # refuses nan, inf and negative scales
    if note and not args.class_labels:  # class-conditional samplers guide at any scale but 1, as their reference
        print(f"[generate] {note}", file=sys.stderr)


def _not_used_by(backend: str) -> str:
    """Whom a flag of one backend's settings is refused for (``auto`` sets up the backend it picks itself)."""
    from dcae_deploy.runtime.backends import AUTO

    if backend == AUTO:
        return "--backend auto (the default) does not take"
    return f"--backend {backend} does not use"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dcae_deploy.runtime import BackendOptions, GenerationConfig, TextToImage, load_artifacts
    from dcae_deploy.runtime.image import image_grid, output_paths, save_png

    check_arguments(args)
    eager = args.checkpoint is not None and args.artifacts is None  # PyTorch weights, no export
    if eager:
        artifacts = None
    elif args.artifacts is None:
        from dcae_deploy.shipped_demo import demo_artifacts

        if args.backend == "tensorrt":  # before the demo's first export: say at once when engines cannot run here
            from dcae_deploy.shipped_demo import require_engine_gpu

            require_engine_gpu()

        artifacts = demo_artifacts()
        if args.variant not in (None, artifacts.variant):
            raise DcaeDeployError(f"the shipped demo is {artifacts.variant!r}, not {args.variant!r}: pass --artifacts")
        if args.backend == "tensorrt" and args.engine_dir is None:
            from dcae_deploy.shipped_demo import demo_engines

            demo_engines(artifacts)
    else:
        artifacts = load_artifacts(args.artifacts, variant=args.variant)
    from dcae_deploy.runtime.backends import AUTO, auto_candidates, open_auto, open_backend

    options = BackendOptions(device=args.device, engine_dir=args.engine_dir, checkpoint=args.checkpoint,
                             ov_device=args.ov_device or "CPU", ov_precision=args.ov_precision)
    config = GenerationConfig(
        prompts=tuple(p for p in args.prompt or () for _ in range(args.batch)),
        class_labels=tuple(y for y in getattr(args, "labels", ()) for _ in range(args.batch)),
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance,
        height=args.height,
        width=args.width,
        sampler=args.sampler,
        tile_size=args.tile_size,
    )
    settings = dict(low_memory=args.low_memory, progress=not args.quiet, verbose=args.verbose)
    if eager:
        from dcae_deploy.runtime.eager import open_pytorch

        t2i = open_pytorch(args.checkpoint, variant=args.variant, device=args.device, **settings)
    else:
        if args.backend == AUTO:
            backend, choice = open_auto(artifacts, options,
                                        log=lambda line: print(f"[generate] {line}", file=sys.stderr))
            print(f"[generate] --backend auto: {choice.reason}", file=sys.stderr)
            if args.verbose:
                passed_over = auto_candidates(artifacts, options)[1]
                if passed_over:
                    print(f"[generate] --backend auto passed over: {'; '.join(passed_over)}", file=sys.stderr)
        else:
            backend = open_backend(args.backend, artifacts, options)
        t2i = TextToImage(artifacts, backend, **settings)
    with t2i:
        result = t2i.generate(config)
    if args.grid:
        print(save_png(image_grid(result.images), args.output))
        return 0
    for image, path in zip(result.images, output_paths(args.output, len(result.images))):
        save_png(image, path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
