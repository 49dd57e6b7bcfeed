"""``python -m dcae_deploy.export``: ONNX graphs + manifest for a model variant, gated on parity with PyTorch."""

from __future__ import annotations

import argparse
import sys

from dcae_deploy.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    from dcae_deploy.export import DEFAULT_RESOLUTION, PRECISIONS

    d = DEFAULT_RESOLUTION
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.export", description=__doc__)
    p.add_argument(
        "--model",
        required=True,
        help="variant name: an autoencoder (f32c32-sana), a text-to-image pipeline (demo, tiny-t2i, sana-600m-t2i), "
        "a denoiser (sana-600m) or a text encoder (gemma-2-2b-it); see python -m dcae_deploy variants",
    )
    p.add_argument(
        "--override",
        default=None,
        metavar="'KEY=VALUE ...'",
        help="an autoencoder --model only: a custom architecture in the reference's syntax on top of it (e.g. "
        "\"latent_channels=16 encoder.width_list=[16,32,64,64] ...\"); --model may also be a JSON config file. The "
        "resolved config goes into the manifest",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="local weights (a pipeline folder for pipelines); without it, random weights (structure check)",
    )
    p.add_argument(
        "--components",
        default=None,
        help="comma-separated subset: encoder,decoder (autoencoder); text_encoder,denoiser,decoder,encoder "
        "(pipeline; default text_encoder,denoiser,decoder). Add decoder_global,decoder_local for exact tiled "
        "decoding of large images (the decoder split before its high-resolution, purely local stages)",
    )
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="fp32 / fp16 / bf16 graphs, int8 / fp8 Q/DQ graphs calibrated on real inputs (fp8: TensorRT "
                   "on compute capability 8.9+), or int4 weight-only (transformer text encoders); tolerances in the "
                   "README's export section")
    p.add_argument("--component-precision", default=None, metavar="COMPONENT=PRECISION[,...]",
                   help="components exported at another precision than --precision, e.g. text_encoder=int4 (Gemma-2 "
                   "as int4 weights, 2.45 GB against 5.2 GB in fp16, beside an int8 or fp16 denoiser and decoder)")
    p.add_argument("--calibration-images", default=None, metavar="FOLDER|photos|shapes|auto",
                   help="int8 / fp8: the images the encoder and decoder are calibrated on (their latents for the "
                   "decoder): a folder of images, the scikit-image photographs, the demo's shapes, or auto (default: "
                   "shapes for the demo, else photos); the denoiser is calibrated along the pipeline's own sampling "
                   "trajectories")
    p.add_argument("--keep-float", default=None, metavar="PATTERN[,PATTERN...]",
                   help="int8 / fp8 / int4: also keep float the layers whose PyTorch module path contains a pattern (e.g. "
                   "conv_point,conv_depth: the f32c32-sana decoder at 512 px went from 33.0 to 36.4 dB PSNR for 13%% "
                   "more time on OpenVINO, random weights)")
    p.add_argument("--calibration-samples", type=int, default=None,
                   help="int8 / fp8: images (and captions) to calibrate on, the last 2 held out for the gate (default 10)")
    p.add_argument("--min-res", type=int, default=None, help=f"smallest image side in pixels (default {d.min_res})")
    p.add_argument("--opt-res", type=int, default=None, help=f"image side engines optimise for (default {d.opt_res})")
    p.add_argument("--max-res", type=int, default=None,
                   help=f"largest image side in pixels (default {d.max_res}); refused when a tensor of a graph at "
                   "--max-res and --max-batch would pass TensorRT's 2^31-1 elements (the error says the largest that fits)")
    p.add_argument("--max-batch", type=int, default=None, help=f"largest batch (default {d.max_batch})")
    p.add_argument("--output", required=True,
                   help="output folder for the graphs, manifest.json and parity.json (a failed gate: parity-failed.json)")
    p.add_argument("--verbose", action="store_true", help="show the exporter's own output")
    return p


def _model(model: str, override: str | None):
    """A registered name as it is; a JSON config file or an override: the resolved autoencoder config."""
    from pathlib import Path

    from dcae_deploy.models.autoencoder_overrides import resolve_autoencoder_config

    if override or model.endswith(".json") or Path(model).is_file():
        return resolve_autoencoder_config(model, override)
    return model


def _component_precisions(text: str | None) -> dict[str, str]:
    """``text_encoder=int4,denoiser=fp16`` -> {"text_encoder": "int4", "denoiser": "fp16"}."""
    from dcae_deploy.errors import DcaeDeployError

    pairs = {}
    for item in (x.strip() for x in (text or "").split(",") if x.strip()):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise DcaeDeployError(f"--component-precision takes COMPONENT=PRECISION pairs (text_encoder=int4), "
                                  f"got {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def main(argv: list[str] | None = None) -> int:
    from dcae_deploy.export import export_model

    args = build_parser().parse_args(argv)
    components = [c.strip() for c in args.components.split(",") if c.strip()] if args.components else None
    export_model(
        _model(args.model, args.override),
        args.output,
        checkpoint=args.checkpoint,
        components=components,
        precision=args.precision,
        min_res=args.min_res,
        opt_res=args.opt_res,
        max_res=args.max_res,
        max_batch=args.max_batch,
        verbose=args.verbose,
        calibration_images=args.calibration_images,
        keep_float=tuple(x.strip() for x in args.keep_float.split(",") if x.strip()) if args.keep_float else (),
        component_precisions=_component_precisions(args.component_precision),
        **({} if args.calibration_samples is None else {"calibration_samples": args.calibration_samples}),
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
