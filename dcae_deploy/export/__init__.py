"""Export stage: a model variant (and optional checkpoint) -> ONNX graphs + ``manifest.json``, parity-gated.

``python -m dcae_deploy.export --model f32c32-sana --checkpoint PATH --output DIR`` (an autoencoder),
``--model demo --checkpoint PIPELINE_FOLDER`` (text-to-image: text_encoder, denoiser, decoder graphs,
the tokenizer copied into ``DIR/tokenizer/`` and the manifest's ``pipeline`` section), or from Python
:func:`export_model`.

Nothing half-written is left behind, and ``parity.json`` always describes the graphs beside it:

* The profile is checked before any work: order, multiples of the compression ratio, and an upper bound
  (no tensor past TensorRT's per-tensor limit, :mod:`dcae_deploy.export.limits`).
* Weights with NaN/Inf are refused as soon as they are loaded; a PyTorch reference that produces NaN/Inf is
  reported as the model's fault, NaN/Inf in a graph as the export's (:mod:`dcae_deploy.export.numerics`).
* Graphs are written into a hidden staging folder ``DIR/.export-staging-<pid>-*`` (its owner in
  ``owner.json``) and moved into place only after every graph passed the parity gate: the previous
  ``manifest.json`` and ``parity.json`` are removed first and the new manifest is written last, so a folder
  with a manifest is always complete. The staging folders of exports that were killed (their process is gone)
  are removed by the next export into ``DIR``; a live concurrent export's is left alone.
* A failed export keeps no graphs and leaves the previous export untouched; its report (what failed, by how
  much) goes to ``DIR/parity-failed.json``, never over the previous graphs' ``parity.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcae_deploy.checkpoints import write_json
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.export.calibration import DEFAULT_SAMPLES, build_calibration, check_calibration_images, torch_output
from dcae_deploy.export.gate import OnnxGraphRunner, ParityError, compare, failure_message, summarize
from dcae_deploy.export.limits import check_profile_size
from dcae_deploy.export.numerics import check_weights, overflow_note, reference_error
from dcae_deploy.export.onnx_export import OPSET, export_onnx
from dcae_deploy.family import component_names, describe_config, image_ratio, roles_for, text_components
from dcae_deploy.manifest import MANIFEST_FILE, Component, Manifest, sha256_file, write_manifest
from dcae_deploy.models.pipeline import PipelineModels, build_parts, load_parts
from dcae_deploy.precisions import PRECISIONS as ALL_PRECISIONS
from dcae_deploy.precisions import QUANTIZED, get_precision
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

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRECISIONS = {name: TORCH_DTYPES[p.float_dtype] for name, p in ALL_PRECISIONS.items()}  # the dtype torch exports in
HELD_OUT = 2  # calibration samples per component kept for the quantized graph's gate
PARITY_FILE = "parity.json"
FAILED_PARITY_FILE = "parity-failed.json"  # a failed export's report: never over the valid graphs' parity.json
TOKENIZER_DIR = "tokenizer"
STAGING_PREFIX = ".export-staging-"  # + "<pid>-<random>"
OWNER_FILE = "owner.json"  # in a staging folder: the exporting process (pid, host, start time)
ENGINES_DIR = "engines"  # where python -m dcae_deploy.engines builds by default
_OWN_STAGING: set[Path] = set()  # the staging folders of exports running in this process (threads)

__all__ = ["DEFAULT_RESOLUTION", "PRECISIONS", "Resolution", "export_model"]


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


def export_model(
    variant: str | Any,
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
    calibration_images: str | Path | None = None,
    calibration_samples: int = DEFAULT_SAMPLES,
    keep_float: tuple[str, ...] = (),
    component_precisions: dict[str, str] | None = None,
) -> Manifest:
    """Export ``components`` of ``variant`` to ONNX in ``output_dir``, run the parity gate, write the manifest.

    Args:
        variant: registered variant name (``python -m dcae_deploy variants``) or a config (a custom
            architecture: :func:`dcae_deploy.models.autoencoder_overrides.resolve_autoencoder_config`; the manifest
            records it as ``model_config``): an autoencoder
            (encoder, decoder), a denoiser, a text encoder, or a text-to-image pipeline (text_encoder,
            denoiser, decoder by default; encoder on request).
        output_dir: destination folder; created if missing.
        checkpoint: local weights: for an autoencoder any layout ``load_autoencoder`` reads, for a
            pipeline a pipeline folder (``load_pipeline``), for a denoiser a diffusers transformer
            folder, for a text encoder its folder (with its tokenizer in it or next to it). Defaults
            to random weights, which only checks the graph structure, and says so.
        components: subset of the variant's components. Defaults as above.
        precision: ``fp32``, ``fp16`` or ``bf16``: the dtype of weights and float tensors in the graph
            (timesteps stay float32, token ids and masks int64); ``int8`` or ``fp8``: a Q/DQ graph
            (:mod:`dcae_deploy.export.quantize`) calibrated on real inputs, float32 inputs and outputs. See
            :mod:`dcae_deploy.precisions` for the tolerances of each.
        calibration_images: quantized precisions: a folder of images, ``photos``, ``shapes`` or ``auto``
            (:mod:`dcae_deploy.export.calibration`); checked before any work.
        calibration_samples: quantized precisions: how many images (and captions) to calibrate on, of which the
            last two are held out for the gate.
        keep_float: quantized precisions: more layers to keep float, by module path (``conv_point`` keeps every
            GLUMBConv output projection float); added to :data:`dcae_deploy.export.quantize.FLOAT_SCOPES`.
        component_precisions: component -> precision, for the components whose precision differs from
            ``precision`` (``{"text_encoder": "int4"}``: Gemma-2 as int4 weights beside an int8 denoiser and
            decoder); the manifest records them (``Manifest.precision_of``).
        min_res, opt_res, max_res, max_batch: the shape profile in image pixels. Defaults to 256/512/1024/4
            (a pipeline: its own image size as the optimum).

    Raises:
        DcaeDeployError: bad arguments (a profile past TensorRT's limits included), unreadable checkpoint or one
            with NaN/Inf weights, unwritable folder, export failure.
        ParityError: a graph broke its tolerance or computed NaN/Inf (details in ``output_dir/parity-failed.json``).
    """
    config = get_variant(variant) if isinstance(variant, str) else variant
    names = component_names(config, components)
    own = _component_precisions(component_precisions, names, precision)
    precision_of = {name: own.get(name, precision) for name in names}
    quantized = [name for name in names if get_precision(precision_of[name]).quantized]
    if quantized:
        calibration_images = check_calibration_images(calibration_images)
        _check_samples(calibration_samples)
    elif keep_float:
        raise DcaeDeployError(f"--keep-float applies to quantized precisions ({', '.join(QUANTIZED)}), not {precision}")
    res = default_resolution(config, min_res, opt_res, max_res, max_batch)
    res.validate(image_ratio(config))
    check_profile_size(config, names, res)  # before the folder, the checkpoint or any graph
    output_dir = _prepare_output(Path(output_dir))
    _remove_stale_staging(output_dir)
    parts = _load_parts(config, checkpoint, names)
    source = str(checkpoint) if checkpoint else None
    modules = _modules(parts, config, names)
    check_weights(modules, source)
    specs = [component_spec(config, name, parts, res, parts.tokenizer) for name in names]

    staging = _new_staging(output_dir)
    _OWN_STAGING.add(staging)
    try:
        exported, records = {}, []
        readers = text_components(config, names)  # the graphs whose inputs come from the tokenizer
        tokenizer_files, tokenizer_path = _save_tokenizer(parts, staging) if readers else ({}, None)
        for spec in specs:
            extra = tokenizer_files if spec.name in readers else {}
            # a Q/DQ graph starts as a gated fp32 graph
            graph_precision = "fp32" if spec.name in quantized else precision_of[spec.name]
            exported[spec.name] = _export_component(parts, spec, graph_precision, staging, extra, verbose)
            records += _parity(parts, spec, graph_precision, staging, source, modules)
        failed = [r for r in records if not r.passed]
        report = {"variant": config.name, "precision": precision, "passed": not failed,
                  "records": [r.to_dict() for r in records]}
        if own:
            report["component_precisions"] = own
        log("parity against PyTorch fp32:\n" + summarize(records))
        quantization = None
        if quantized and not failed:
            report["fp32_graph_records"] = report["records"]
            requantized, new_records, quantization = _quantize(
                config, parts, [s for s in specs if s.name in quantized], exported, staging, precision_of,
                res.opt_res, calibration_images, calibration_samples, tuple(keep_float))
            exported.update(requantized)
            records = [r for r in records if r.component not in quantized] + new_records
            failed = [r for r in records if not r.passed]
            report.update(passed=not failed, records=[r.to_dict() for r in records])
            log("parity of the quantized graphs against PyTorch fp32 on held-out real inputs:\n"
                + summarize(new_records))
        if failed:
            write_json(output_dir / FAILED_PARITY_FILE, report)
            note = overflow_note(modules, precision)
            kept = " (the previous export in this folder is untouched)" if (output_dir / MANIFEST_FILE).is_file() else ""
            raise ParityError(
                f"{failure_message(failed, len(records), config.name, precision, note)}\n"
                f"No graphs were kept{kept}; details in {output_dir / FAILED_PARITY_FILE}"
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
            model_config=describe_config(config),
            quantization=quantization,
            component_precisions=own,
        )
        # Commit. Without its manifest the folder is no export (the runtime refuses it), so removing the previous
        # one first means a kill from here on leaves an incomplete folder that says so, never old metadata
        # over new graphs; the manifest, written last, completes it.
        for stale in (MANIFEST_FILE, PARITY_FILE, FAILED_PARITY_FILE):
            (output_dir / stale).unlink(missing_ok=True)
        for component in exported.values():
            for name in component.files:
                (output_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).replace(output_dir / name)
        write_json(output_dir / PARITY_FILE, report)
        write_manifest(output_dir, manifest)
        _write_build_script(output_dir, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _OWN_STAGING.discard(staging)
    log(f"wrote {', '.join(c.file for c in manifest.components.values())} and manifest.json to {output_dir}")
    _note_engines(output_dir)
    return manifest


def _prepare_output(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise DcaeDeployError(f"output folder {path} is not writable ({exc.strerror}); choose another --output") from exc
    return path


def _new_staging(output_dir: Path) -> Path:
    """A fresh staging folder named after this process (``.export-staging-<pid>-*``), its owner in ``owner.json``.

    The pid is in the name, which ``mkdtemp`` creates atomically, so even a process killed before it wrote
    ``owner.json`` leaves a folder that the next export can tell to be stale.
    """
    pid = os.getpid()
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{pid}-", dir=output_dir))
    write_json(staging / OWNER_FILE, {"pid": pid, "host": socket.gethostname(), "started": _process_start(pid)})
    return staging


def _remove_stale_staging(output_dir: Path) -> None:
    """Remove the staging folders in ``output_dir`` of exports whose process is gone (killed: SIGKILL, power,
    out of memory); keep those of live exports, and those whose owner cannot be checked (another host)."""
    for path in sorted(output_dir.glob(STAGING_PREFIX + "*")):
        if not path.is_dir():
            continue
        owner = _staging_owner(path)
        if owner is None:
            log(f"note: {path} was left by an older dcae_deploy that recorded no owner; delete it if no export is "
                "running into this folder")
            continue
        pid, host, started = owner
        if path in _OWN_STAGING:  # another thread of this process is exporting into this folder
            continue
        if host is not None and host != socket.gethostname():
            log(f"note: {path} belongs to an export on host {host} (pid {pid}); left alone")
            continue
        if _process_alive(pid, started):
            log(f"note: {path} belongs to a running export (pid {pid}) into this folder; left alone")
            continue
        shutil.rmtree(path, ignore_errors=True)
        log(f"removed {path.name}: the partial graphs of an export (pid {pid}) that was killed")


def _staging_owner(path: Path) -> tuple[int, str | None, int | None] | None:
    """(pid, host, process start time) of a staging folder, from its name and ``owner.json``; None if unknown."""
    head, _, rest = path.name[len(STAGING_PREFIX):].partition("-")
    if not head.isdigit() or not rest:
        return None
    pid, host, started = int(head), None, None
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
        if owner.get("pid") == pid:
            host, started = owner.get("host"), owner.get("started")
    except (OSError, ValueError, AttributeError):  # killed before owner.json was complete: the name says enough
        pass
    return pid, host, started


def _process_alive(pid: int, started: int | None) -> bool:
    """Whether process ``pid`` runs (``os.kill(pid, 0)``) and is the one that started at ``started`` (a pid that was
    reused by a later process is not the owner)."""
    if pid == os.getpid():
        return False  # not one of this process's own (see _OWN_STAGING): an earlier process with our pid made it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True  # cannot tell: keep it
    now = _process_start(pid)
    return started is None or now is None or now == started


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _note_engines(output_dir: Path) -> None:
    """Say so when the folder holds engines: they were built from the graphs this export replaced."""
    engines = output_dir / ENGINES_DIR
    if engines.is_dir() and any(engines.iterdir()):
        log(f"note: {engines} holds TensorRT engines built from the previous graphs; they do not match the new "
            f"graphs and will be refused until rebuilt: python -m dcae_deploy.engines build {output_dir}")


def _modules(parts: PipelineModels, config, names: list[str]) -> dict[str, torch.nn.Module]:
    """Role -> loaded PyTorch module, for the parts that ``names`` need."""
    return {role: getattr(parts, role) for role in roles_for(config, names) if getattr(parts, role, None) is not None}


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


def _parity(parts: PipelineModels, spec: ComponentSpec, precision: str, staging: Path, source: str | None,
            modules: dict[str, torch.nn.Module]):
    runner = OnnxGraphRunner(staging / f"{spec.name}.onnx", precision)
    module = spec.module(parts).float().eval()
    records = []
    for i, point in enumerate(spec.points):
        inputs = spec.sample_inputs(point, seed=100 + i)
        with torch.no_grad():
            expected = module(*inputs).numpy()
        if not np.isfinite(expected).all():  # the model's fault, not the graph's: say so before comparing
            shapes = ", ".join(f"{t.name} {tuple(x.shape)}" for t, x in zip(spec.inputs, inputs))
            raise reference_error(spec.name, spec.output_names[0], expected, modules, source,
                                  f"the gate's seeded random {shapes}")
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


def _component_precisions(requested: dict[str, str] | None, names: list[str], precision: str) -> dict[str, str]:
    """The components whose precision differs from ``precision`` (checked: exported components, known precisions)."""
    own = {}
    for name, value in (requested or {}).items():
        if name not in names:
            raise DcaeDeployError(f"--component-precision names {name!r}, which this export does not write; its "
                                  f"components are {', '.join(names)}")
        get_precision(value)
        if value != precision:
            own[name] = value
    return own


def _check_samples(count) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or not HELD_OUT + 1 <= count <= 1000:
        raise DcaeDeployError(f"--calibration-samples must be a whole number from {HELD_OUT + 1} to 1000 (the last "
                              f"{HELD_OUT} are held out for the gate), got {count!r}")


def _quantize(config, parts: PipelineModels, specs: list[ComponentSpec], exported: dict[str, Component],
              staging: Path, precision_of: dict[str, str], side: int, images: str, count: int,
              keep_float: tuple[str, ...]):
    """Quantize the gated fp32 graphs of ``specs`` in ``staging`` to Q/DQ graphs of the same names (each at its
    precision), calibrated on real inputs; gate them on the held-out inputs. Returns (their components, their parity
    records, the manifest's ``quantization``)."""
    from dcae_deploy.export.quantize import graph_files, quantize_graph

    spec_of = {s.name: s for s in specs}
    calib = build_calibration(config, parts, spec_of, side, images, count, HELD_OUT)
    fp32_dir = staging / "fp32"
    fp32_dir.mkdir()
    components, records, layers = {}, [], {}
    for name in spec_of:
        component, precision = exported[name], precision_of[name]
        for file in component.files:
            if (staging / file).is_file() and file.startswith(component.file):  # the graph and its external data
                (staging / file).replace(fp32_dir / file)
        target = staging / component.file
        layers[name] = quantize_graph(fp32_dir / component.file, target, calib.feeds[name], get_precision(precision),
                                      name, keep_float)
        files = {f.name: sha256_file(f) for f in graph_files(target)}
        extra = {k: v for k, v in component.files.items() if not k.startswith(component.file)}  # tokenizer files
        components[name] = component_record(spec_of[name], precision, component.file, {**files, **extra})
        runner = OnnxGraphRunner(target, precision)
        spec = spec_of[name]
        for feeds in calib.held_out[name]:
            expected = torch_output(config, name, parts, feeds)
            actual = runner.run(feeds)[0]
            records.append(compare(name, spec.output_names[0], np.asarray(actual, dtype=np.float32), expected, precision,
                                   is_image=spec.image_output, runner=runner.name))
        del runner
    shutil.rmtree(fp32_dir, ignore_errors=True)
    # weight-only components (int4) use only their held-out inputs, for the gate
    quantization = {"components": layers, "calibration": calib.describe()}
    return components, records, quantization


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

