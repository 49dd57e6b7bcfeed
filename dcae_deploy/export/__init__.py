"""Export stage: a model variant (and optional checkpoint) -> ONNX graphs + ``manifest.json``, parity-gated.

``python -m dcae_deploy.export --model f32c32-sana --checkpoint PATH --output DIR`` (an autoencoder),
``--model demo --checkpoint PIPELINE_FOLDER`` (text-to-image: text_encoder, denoiser, decoder graphs,
the tokenizer copied into ``DIR/tokenizer/`` and the manifest's ``pipeline`` section), or from Python
:func:`export_model`. Graphs are written into a hidden staging folder inside ``DIR`` and moved into place
only after every graph passed the parity gate; the manifest is written last. A failed export leaves
``DIR/parity.json`` (what failed, by how much) and no graphs or manifest.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dcae_deploy.checkpoints import write_json
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.export.onnx_export import OPSET, export_onnx
from dcae_deploy.export.parity import OnnxGraphRunner, ParityError, compare, summarize
from dcae_deploy.export.specs import (
    SANA_CAPTION_TOKENS,
    SANA_LATENT_RATIO,
    ComponentSpec,
    Resolution,
    TensorSpec,
    autoencoder_spec,
    component_names,
    decoder_split_spec,
    denoiser_spec,
    text_encoder_spec,
)
from dcae_deploy.manifest import SPLIT_DECODER, Component, Manifest, ShapeProfile, TensorInfo, sha256_file, write_manifest
from dcae_deploy.variants import get_variant

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NUMPY_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DEFAULT_RESOLUTION = Resolution(min_res=256, opt_res=512, max_res=1024, max_batch=4)
PARITY_FILE = "parity.json"
TOKENIZER_DIR = "tokenizer"
# pipeline part -> the components that need it
PIPELINE_PARTS = {
    "autoencoder": ("encoder", "decoder", *SPLIT_DECODER),
    "denoiser": ("denoiser",),
    "text_encoder": ("text_encoder",),
}

__all__ = ["DEFAULT_RESOLUTION", "PRECISIONS", "ExportParts", "Resolution", "export_model"]


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


@dataclass
class ExportParts:
    """The loaded PyTorch parts an export reads from (None where the variant has no such part)."""

    autoencoder: nn.Module | None = None
    denoiser: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    pipeline: Any = None  # PipelineConfig of a text-to-image export


def export_model(
    variant: str,
    output_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    components: list[str] | None = None,
    precision: str = "fp32",
    min_res: int | None = None,
    opt_res: int | None = None,
    max_res: int | None = None,
    max_batch: int | None = None,
    verbose: bool = False,
) -> Manifest:
    """Export ``components`` of ``variant`` to ONNX in ``output_dir``, run the parity gate, write the manifest.

    Args:
        variant: registered variant name (``python -m dcae_deploy variants``): an autoencoder
            (encoder, decoder), a denoiser, a text encoder, or a text-to-image pipeline (text_encoder,
            denoiser, decoder by default; encoder on request).
        output_dir: destination folder; created if missing.
        checkpoint: local weights: for an autoencoder any layout ``load_autoencoder`` reads, for a
            pipeline a pipeline folder (``load_pipeline``), for a denoiser a diffusers transformer
            folder, for a text encoder its folder (with its tokenizer in it or next to it). Defaults
            to random weights, which only checks the graph structure, and says so.
        components: subset of the variant's components. Defaults as above.
        precision: ``fp32``, ``fp16`` or ``bf16``: the dtype of weights and float tensors in the graph
            (timesteps stay float32, token ids and masks int64).
        min_res, opt_res, max_res, max_batch: the shape profile in image pixels. Defaults to 256/512/1024/4
            (a pipeline: its own image size as the optimum).

    Raises:
        DcaeDeployError: bad arguments, unreadable checkpoint, unwritable folder, export failure.
        ParityError: a graph broke its tolerance (details in ``output_dir/parity.json``).
    """
    config = get_variant(variant)
    names = component_names(config.kind, variant, components)
    if precision not in PRECISIONS:
        raise DcaeDeployError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    ratio = _compression_ratio(config)
    res = _resolution(config, min_res, opt_res, max_res, max_batch)
    res.validate(ratio)
    output_dir = _prepare_output(Path(output_dir))
    parts = _load_parts(config, checkpoint, names)
    specs = [_component_spec(name, parts, config, res, ratio) for name in names]

    staging = Path(tempfile.mkdtemp(prefix=".export-staging-", dir=output_dir))
    try:
        exported, records = {}, []
        tokenizer_files, tokenizer_path = _save_tokenizer(parts, staging) if "text_encoder" in names else ({}, None)
        for spec in specs:
            extra = tokenizer_files if spec.name == "text_encoder" else {}
            exported[spec.name] = _export_component(parts, spec, precision, staging, extra, verbose)
            records += _parity(parts, spec, precision, staging)
        failed = [r for r in records if not r.passed]
        report = {"variant": config.name, "precision": precision, "passed": not failed,
                  "records": [r.to_dict() for r in records]}
        log("parity against PyTorch fp32:\n" + summarize(records))
        if failed:
            write_json(output_dir / PARITY_FILE, report)
            raise ParityError(
                f"{len(failed)} of {len(records)} parity checks failed for {config.name} ({precision}):\n"
                f"{summarize(failed)}\nNo graphs were kept; details in {output_dir / PARITY_FILE}"
            )
        ae = parts.autoencoder.config if parts.autoencoder is not None else None
        manifest = Manifest(
            variant=config.name,
            kind=config.kind,
            precision=precision,
            opset=OPSET,
            components=exported,
            scaling_factor=ae.scaling_factor if ae else None,
            spatial_compression_ratio=ae.spatial_compression_ratio if ae else None,
            latent_channels=ae.latent_channels if ae else None,
            resolution=dataclasses.asdict(res),
            checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
            versions=_versions(),
            pipeline=_pipeline_section(parts, tokenizer_path) if config.kind == "pipeline" else None,
        )
        for component in exported.values():
            for name in component.files:
                (output_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).replace(output_dir / name)
        write_json(output_dir / PARITY_FILE, report)
        write_manifest(output_dir, manifest)
        _write_build_script(output_dir, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {', '.join(c.file for c in manifest.components.values())} and manifest.json to {output_dir}")
    return manifest


def _compression_ratio(config) -> int:
    """Image pixels per latent pixel: the autoencoder's; a bare denoiser assumes DC-AE f32; 1 for text encoders."""
    if config.kind == "autoencoder":
        return config.spatial_compression_ratio
    if config.kind == "pipeline":
        return config.parts()["autoencoder"].spatial_compression_ratio
    if config.kind == "denoiser":
        return SANA_LATENT_RATIO * config.patch_size
    return 1


def _resolution(config, min_res, opt_res, max_res, max_batch) -> Resolution:
    d = DEFAULT_RESOLUTION
    if config.kind == "pipeline":  # the pipeline's own image size is the optimum, inside the default range
        side = config.height
        d = Resolution(min(d.min_res, side), side, max(d.max_res, side), d.max_batch)
    min_res = d.min_res if min_res is None else min_res
    max_res = d.max_res if max_res is None else max_res
    if opt_res is None:  # the default optimum must stay inside a user-narrowed range
        opt_res = min(max(d.opt_res, min_res), max_res)
    return Resolution(min_res, opt_res, max_res, d.max_batch if max_batch is None else max_batch)


def _prepare_output(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise DcaeDeployError(f"output folder {path} is not writable ({exc.strerror}); choose another --output") from exc
    return path


def _load_parts(config, checkpoint, names: list[str]) -> ExportParts:
    """Build (random weights, with a loud warning) or load the PyTorch parts of ``config`` that the
    components ``names`` need (a pipeline's decoder alone does not load its text encoder)."""
    if checkpoint is None:
        log("=" * 78)
        log(f"WARNING: no --checkpoint: exporting RANDOMLY INITIALISED {config.name} weights.")
        log("These graphs check structure and numerics only; they do not produce meaningful images.")
        log("=" * 78)
    else:
        log(f"loading {config.name} weights from {checkpoint}")
    if config.kind == "autoencoder":
        from dcae_deploy.models.autoencoder import build_autoencoder
        from dcae_deploy.models.autoencoder_io import load_autoencoder

        if checkpoint is None:
            torch.manual_seed(0)
            return ExportParts(autoencoder=build_autoencoder(config))
        return ExportParts(autoencoder=load_autoencoder(checkpoint, config.name))
    if config.kind == "denoiser":
        from dcae_deploy.models.denoiser import build_denoiser, load_denoiser

        if checkpoint is None:
            torch.manual_seed(0)
            return ExportParts(denoiser=build_denoiser(config).eval())
        return ExportParts(denoiser=load_denoiser(checkpoint, config.name).eval())
    if config.kind == "text_encoder":
        from dcae_deploy.models import text_encoder as te

        if checkpoint is None:
            torch.manual_seed(0)
            return ExportParts(text_encoder=te.build_text_encoder(config).eval(), tokenizer=te.default_tokenizer(config))
        folder = Path(checkpoint)
        model = te.load_text_encoder(folder, config.name).eval()
        return ExportParts(text_encoder=model, tokenizer=_find_tokenizer(folder, config))
    from dcae_deploy.models.pipeline import build_pipeline, load_pipeline

    needed = [part for part, comps in PIPELINE_PARTS.items() if set(comps) & set(names)]
    if checkpoint is None:
        models = build_pipeline(config, parts=needed)
    else:
        models = load_pipeline(checkpoint, config.name, parts=needed)
    return ExportParts(models.autoencoder, models.denoiser, models.text_encoder, models.tokenizer, models.config)


def _find_tokenizer(folder: Path, config):
    """The tokenizer of a bare text-encoder checkpoint: in ``folder``, ``folder/tokenizer`` or ``../tokenizer``."""
    from dcae_deploy.models.text_encoder import default_tokenizer, load_tokenizer
    from dcae_deploy.tokenizer import TOKENIZER_FILES

    for candidate in (folder, folder / "tokenizer", folder.parent / "tokenizer"):
        if any((candidate / name).is_file() for name in TOKENIZER_FILES):
            return load_tokenizer(candidate, config)
    log(f"no tokenizer files next to {folder}; using the default tokenizer of {config.name}")
    return default_tokenizer(config)


def _component_spec(name: str, parts: ExportParts, config, res: Resolution, ratio: int) -> ComponentSpec:
    if name in ("encoder", "decoder"):
        return autoencoder_spec(name, parts.autoencoder.config, res)
    if name in SPLIT_DECODER:
        return decoder_split_spec(name, parts.autoencoder.config, parts.autoencoder.decoder, res)
    if name == "denoiser":
        te = parts.text_encoder
        tokens = te.config.max_length if te is not None else _caption_tokens(parts.pipeline)
        return denoiser_spec(parts.denoiser.config, res, ratio, tokens)
    te_config = parts.text_encoder.config
    lengths = getattr(parts.tokenizer, "input_lengths", (te_config.max_length, te_config.max_length))
    return text_encoder_spec(te_config, res, tuple(lengths), parts.tokenizer.vocab_size)


def _caption_tokens(pipeline) -> int:
    if pipeline is not None:
        return get_variant(pipeline.text_encoder, kind="text_encoder").max_length
    return SANA_CAPTION_TOKENS


def _save_tokenizer(parts: ExportParts, staging: Path) -> tuple[dict[str, str], str]:
    """Write the tokenizer into ``staging/tokenizer/``; return ``{relative path: sha256}`` and its main file."""
    main = Path(parts.tokenizer.save(staging / TOKENIZER_DIR))
    files = {
        p.relative_to(staging).as_posix(): sha256_file(p)
        for p in sorted((staging / TOKENIZER_DIR).rglob("*"))
        if p.is_file()
    }
    return files, main.relative_to(staging).as_posix()


def _pipeline_section(parts: ExportParts, tokenizer_path: str | None) -> dict[str, Any]:
    """The manifest's ``pipeline`` field: what the runtime needs and cannot read from the graphs."""
    pipe = parts.pipeline
    registered = pipe.parts()  # for the parts this export did not load
    ae = parts.autoencoder.config if parts.autoencoder is not None else registered["autoencoder"]
    den = parts.denoiser.config if parts.denoiser is not None else registered["denoiser"]
    te_config = registered["text_encoder"]
    tok = parts.tokenizer
    lengths = getattr(tok, "input_lengths", (te_config.max_length, te_config.max_length))
    return {
        "variant": pipe.name,
        "autoencoder": {
            "scaling_factor": ae.scaling_factor,
            "spatial_compression_ratio": ae.spatial_compression_ratio,
            "latent_channels": ae.latent_channels,
        },
        "denoiser": {
            "timestep_scale": den.timestep_scale,
            "in_channels": den.in_channels,
            "caption_channels": den.caption_channels,
        },
        "text_encoder": {
            "family": te_config.family,
            "max_length": te_config.max_length,
            "hidden_size": te_config.hidden_size,
            "tokenizer": tokenizer_path,  # None when the text encoder was not exported
            "input_tokens": list(lengths),
            "complex_human_instruction": bool(getattr(tok, "instruction", None)),
        },
        "defaults": {
            "height": pipe.height,
            "width": pipe.width,
            "steps": pipe.steps,
            "guidance_scale": pipe.guidance_scale,
            "flow_shift": pipe.flow_shift,
            "sampler": pipe.sampler,
        },
    }


def _export_component(
    parts: ExportParts, spec: ComponentSpec, precision: str, staging: Path, extra_files: dict[str, str], verbose: bool
) -> Component:
    start = time.perf_counter()
    log(f"{spec.name}: exporting to ONNX ({precision}, dynamo exporter, opset {OPSET}) ...")
    dtype = PRECISIONS[precision]
    module = spec.module(parts).to(dtype).eval()
    example = tuple(
        x.to(dtype) if t.dtype == "float" else x
        for t, x in zip(spec.inputs, spec.sample_inputs(spec.example_point(), seed=0))
    )
    path = staging / f"{spec.name}.onnx"
    try:
        files = export_onnx(module, example, path, spec.input_names, spec.output_names, spec.dynamic_shapes(), verbose)
    finally:
        spec.module(parts).float()  # the model is shared by the parity reference: restore fp32
    size = sum(f.stat().st_size for f in files) / 1e6
    log(f"{spec.name}: {size:.1f} MB in {time.perf_counter() - start:.1f} s")
    return _component_record(spec, precision, path.name, {**{f.name: sha256_file(f) for f in files}, **extra_files})


def _component_record(spec: ComponentSpec, precision: str, file: str, files: dict[str, str]) -> Component:
    return Component(
        name=spec.name,
        file=file,
        files=files,
        inputs=tuple(TensorInfo(t.name, _dtype_name(t, precision), t.shape) for t in spec.inputs),
        outputs=tuple(TensorInfo(t.name, _dtype_name(t, precision), t.shape) for t in spec.outputs),
        profiles={name: ShapeProfile(*shapes) for name, shapes in spec.profile().items()},
    )


def describe_pipeline(
    models,
    *,
    min_res: int | None = None,
    opt_res: int | None = None,
    max_res: int | None = None,
    max_batch: int | None = None,
) -> Manifest:
    """The fp32 manifest an export of these PyTorch pipeline parts would write (default components plus the
    split decoder), without exporting anything.

    Components carry their inputs, outputs and shape profiles but no graph file (``file`` is empty), and
    ``pipeline.text_encoder.tokenizer`` is None: enough for the runtime's torch backend to run the models
    in memory (:func:`dcae_deploy.runtime.eager.open_pytorch`).
    """
    config = models.config
    ratio = _compression_ratio(config)
    res = _resolution(config, min_res, opt_res, max_res, max_batch)
    res.validate(ratio)
    parts = ExportParts(models.autoencoder, models.denoiser, models.text_encoder, models.tokenizer, config)
    names = component_names(config.kind, config.name, None) + list(SPLIT_DECODER)
    components = {n: _component_record(_component_spec(n, parts, config, res, ratio), "fp32", "", {}) for n in names}
    ae = models.autoencoder.config
    return Manifest(
        variant=config.name, kind=config.kind, precision="fp32", opset=OPSET, components=components,
        scaling_factor=ae.scaling_factor, spatial_compression_ratio=ae.spatial_compression_ratio,
        latent_channels=ae.latent_channels, resolution=dataclasses.asdict(res), versions=_versions(),
        pipeline=_pipeline_section(parts, None),
    )


def _dtype_name(tensor: TensorSpec, precision: str) -> str:
    return NUMPY_DTYPES[precision] if tensor.dtype == "float" else tensor.dtype


def _parity(parts: ExportParts, spec: ComponentSpec, precision: str, staging: Path):
    runner = OnnxGraphRunner(staging / f"{spec.name}.onnx", precision)
    module = spec.module(parts).float().eval()
    records = []
    for i, point in enumerate(spec.points):
        inputs = spec.sample_inputs(point, seed=100 + i)
        with torch.no_grad():
            expected = module(*inputs).numpy()
        feeds = {}
        for t, x in zip(spec.inputs, inputs):
            if t.dtype == "float":
                x = x.to(PRECISIONS[precision]).float().numpy().astype(_numpy_dtype(precision))
            else:
                x = x.numpy()
            feeds[t.name] = x
        actual = runner.run(feeds)[0]
        records.append(
            compare(spec.name, spec.output_names[0], np.asarray(actual, dtype=np.float32), expected, precision,
                    is_image=spec.image_output, runner=runner.name)
        )
    return records


def _numpy_dtype(precision: str):
    if precision == "bf16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(NUMPY_DTYPES[precision])


def _versions() -> dict[str, str]:
    import onnx

    import dcae_deploy

    versions = {"dcae_deploy": dcae_deploy.__version__, "torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency of the export extra
        pass
    return versions


def _write_build_script(output_dir: Path, manifest: Manifest) -> None:
    """``build_engines.sh`` with the equivalent trtexec command lines, when the engines stage is installed."""
    try:
        from dcae_deploy.engines import write_build_script
    except ImportError:
        return
    write_build_script(output_dir, manifest)

