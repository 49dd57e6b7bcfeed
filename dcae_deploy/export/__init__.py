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
from pathlib import Path

import numpy as np
import torch

from dcae_deploy.checkpoints import write_json
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.export.gate import OnnxGraphRunner, ParityError, compare, summarize
from dcae_deploy.export.onnx_export import OPSET, export_onnx
from dcae_deploy.family import component_names, image_ratio, roles_for, text_components
from dcae_deploy.manifest import Component, Manifest, sha256_file, write_manifest
from dcae_deploy.models.pipeline import PipelineModels, build_parts, load_parts
from dcae_deploy.registry import get_variant
from dcae_deploy.specs import (
    DEFAULT_RESOLUTION,
    NUMPY_DTYPES,
    ComponentSpec,
    Resolution,
    autoencoder_fields,
    component_record,
    component_spec,
    default_resolution,
    pipeline_section,
    tool_versions,
)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PARITY_FILE = "parity.json"
TOKENIZER_DIR = "tokenizer"

__all__ = ["DEFAULT_RESOLUTION", "PRECISIONS", "Resolution", "export_model"]


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


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
    names = component_names(config, components)
    if precision not in PRECISIONS:
        raise DcaeDeployError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    res = default_resolution(config, min_res, opt_res, max_res, max_batch)
    res.validate(image_ratio(config))
    output_dir = _prepare_output(Path(output_dir))
    parts = _load_parts(config, checkpoint, names)
    specs = [component_spec(config, name, parts, res, parts.tokenizer) for name in names]

    staging = Path(tempfile.mkdtemp(prefix=".export-staging-", dir=output_dir))
    try:
        exported, records = {}, []
        readers = text_components(config, names)  # the graphs whose inputs come from the tokenizer
        tokenizer_files, tokenizer_path = _save_tokenizer(parts, staging) if readers else ({}, None)
        for spec in specs:
            extra = tokenizer_files if spec.name in readers else {}
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
        manifest = Manifest(
            variant=config.name,
            kind=config.kind,
            precision=precision,
            opset=OPSET,
            components=exported,
            **autoencoder_fields(config, parts),
            resolution=dataclasses.asdict(res),
            checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
            versions=tool_versions(),
            pipeline=pipeline_section(config, parts, parts.tokenizer, tokenizer_path),
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


def _prepare_output(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise DcaeDeployError(f"output folder {path} is not writable ({exc.strerror}); choose another --output") from exc
    return path


def _load_parts(config, checkpoint, names: list[str]) -> PipelineModels:
    """Build (random weights, with a loud warning) or load the PyTorch parts of ``config`` that the
    components ``names`` need (a pipeline's decoder alone does not load its text encoder)."""
    if checkpoint is None:
        log("=" * 78)
        log(f"WARNING: no --checkpoint: exporting RANDOMLY INITIALISED {config.name} weights.")
        log("These graphs check structure and numerics only; they do not produce meaningful images.")
        log("=" * 78)
        return build_parts(config, seed=0, roles=roles_for(config, names))
    log(f"loading {config.name} weights from {checkpoint}")
    return load_parts(config, checkpoint, roles=roles_for(config, names))


def _save_tokenizer(parts: PipelineModels, staging: Path) -> tuple[dict[str, str], str]:
    """Write the tokenizer into ``staging/tokenizer/``; return ``{relative path: sha256}`` and its main file."""
    main = Path(parts.tokenizer.save(staging / TOKENIZER_DIR))
    files = {
        p.relative_to(staging).as_posix(): sha256_file(p)
        for p in sorted((staging / TOKENIZER_DIR).rglob("*"))
        if p.is_file()
    }
    return files, main.relative_to(staging).as_posix()


def _export_component(
    parts: PipelineModels, spec: ComponentSpec, precision: str, staging: Path, extra_files: dict[str, str], verbose: bool
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
    return component_record(spec, precision, path.name, {**{f.name: sha256_file(f) for f in files}, **extra_files})


def _parity(parts: PipelineModels, spec: ComponentSpec, precision: str, staging: Path):
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


def _write_build_script(output_dir: Path, manifest: Manifest) -> None:
    """``build_engines.sh`` with the equivalent trtexec command lines, when the engines stage is installed."""
    try:
        from dcae_deploy.engines import write_build_script
    except ImportError:
        return
    write_build_script(output_dir, manifest)

