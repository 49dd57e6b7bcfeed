"""Export stage: a model variant (and optional checkpoint) -> ONNX graphs + ``manifest.json``, parity-gated.

``python -m dcae_deploy.export --model f32c32-sana --checkpoint PATH --output DIR`` or, from Python,
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
from dcae_deploy.export.onnx_export import OPSET, export_onnx
from dcae_deploy.export.parity import OnnxGraphRunner, ParityError, compare, summarize
from dcae_deploy.export.specs import ComponentSpec, Resolution, component_specs
from dcae_deploy.manifest import Component, Manifest, ShapeProfile, TensorInfo, sha256_file, write_manifest
from dcae_deploy.variants import get_variant

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NUMPY_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DEFAULT_RESOLUTION = Resolution(min_res=256, opt_res=512, max_res=1024, max_batch=4)
PARITY_FILE = "parity.json"

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
        variant: registered variant name (``python -m dcae_deploy variants``).
        output_dir: destination folder; created if missing.
        checkpoint: local weights (any layout ``load_autoencoder`` reads). Defaults to random weights,
            which only checks the graph structure, and says so.
        components: subset of the variant's components. Defaults to all of them.
        precision: ``fp32``, ``fp16`` or ``bf16``: the dtype of weights, inputs and outputs in the graph.
        min_res, opt_res, max_res, max_batch: the shape profile in image pixels. Defaults to 256/512/1024/4.

    Raises:
        DcaeDeployError: bad arguments, unreadable checkpoint, unwritable folder, export failure.
        ParityError: a graph broke its tolerance (details in ``output_dir/parity.json``).
    """
    config = get_variant(variant)
    specs = component_specs(config.kind, variant, components)
    if precision not in PRECISIONS:
        raise DcaeDeployError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    res = _resolution(min_res, opt_res, max_res, max_batch)
    res.validate(config.spatial_compression_ratio)
    output_dir = _prepare_output(Path(output_dir))
    model = _load_model(config, checkpoint)
    config = model.config  # a checkpoint's own config may refine the scaling factor

    staging = Path(tempfile.mkdtemp(prefix=".export-staging-", dir=output_dir))
    try:
        exported, records = {}, []
        for spec in specs:
            exported[spec.name] = _export_component(model, spec, config, res, precision, staging, verbose)
            records += _parity(model, spec, config, res, precision, staging)
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
            scaling_factor=config.scaling_factor,
            spatial_compression_ratio=config.spatial_compression_ratio,
            latent_channels=config.latent_channels,
            resolution=dataclasses.asdict(res),
            checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
            versions=_versions(),
        )
        for component in exported.values():
            for name in component.files:
                (staging / name).replace(output_dir / name)
        write_json(output_dir / PARITY_FILE, report)
        write_manifest(output_dir, manifest)
        _write_build_script(output_dir, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {', '.join(c.file for c in manifest.components.values())} and manifest.json to {output_dir}")
    return manifest


def _resolution(min_res, opt_res, max_res, max_batch) -> Resolution:
    d = DEFAULT_RESOLUTION
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


def _load_model(config, checkpoint):
    from dcae_deploy.models.autoencoder import build_autoencoder
    from dcae_deploy.models.autoencoder_io import load_autoencoder

    if checkpoint is None:
        log("=" * 78)
        log(f"WARNING: no --checkpoint: exporting RANDOMLY INITIALISED {config.name} weights.")
        log("These graphs check structure and numerics only; they do not produce meaningful images.")
        log("=" * 78)
        torch.manual_seed(0)
        return build_autoencoder(config)
    log(f"loading {config.name} weights from {checkpoint}")
    return load_autoencoder(checkpoint, config.name)


def _export_component(model, spec: ComponentSpec, config, res: Resolution, precision, staging: Path, verbose):
    start = time.perf_counter()
    log(f"{spec.name}: exporting to ONNX ({precision}, dynamo exporter, opset {OPSET}) ...")
    module = spec.module(model).to(PRECISIONS[precision]).eval()
    example = spec.sample_input(config, 2, res.opt_res, res.opt_res, seed=0).to(PRECISIONS[precision])
    path = staging / f"{spec.name}.onnx"
    files = export_onnx(module, example, path, spec.input_name, spec.output_name, spec.dynamic_shapes(config, res), verbose)
    spec.module(model).float()  # the model is shared by the parity reference: restore fp32
    in_shape, out_shape = spec.symbolic_shapes(config)
    dtype = NUMPY_DTYPES[precision]
    profile = {name: ShapeProfile(*shapes) for name, shapes in spec.profile(config, res).items()}
    size = sum(f.stat().st_size for f in files) / 1e6
    log(f"{spec.name}: {size:.1f} MB in {time.perf_counter() - start:.1f} s")
    return Component(
        name=spec.name,
        file=path.name,
        files={f.name: sha256_file(f) for f in files},
        inputs=(TensorInfo(spec.input_name, dtype, in_shape),),
        outputs=(TensorInfo(spec.output_name, dtype, out_shape),),
        profiles=profile,
    )


def _parity(model, spec: ComponentSpec, config, res: Resolution, precision, staging: Path):
    runner = OnnxGraphRunner(staging / f"{spec.name}.onnx", precision)
    module = spec.module(model).float().eval()
    records = []
    for i, (batch, height, width) in enumerate(res.parity_shapes()):
        x = spec.sample_input(config, batch, height, width, seed=100 + i)
        with torch.no_grad():
            expected = module(x).numpy()
        feed = x.to(PRECISIONS[precision])
        feed = feed.float().numpy().astype(_numpy_dtype(precision))
        actual = runner.run({spec.input_name: feed})[0]
        records.append(
            compare(spec.name, spec.output_name, np.asarray(actual, dtype=np.float32), expected, precision,
                    is_image=not spec.input_is_image, runner=runner.name)
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

