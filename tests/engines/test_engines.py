"""Engine building from an export folder: TensorRT-RTX builds on the CPU (ahead of time), sidecars,
hash checks, build failures that leave nothing behind, and the trtexec / tensorrt_rtx script.

The export folders are made here (tiny DC-AE decoder through the dynamo exporter, manifest written by
hand); no engine is ever deserialised, because that needs a GPU.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import copy_export

from dcae_deploy.cli import run_cli
from dcae_deploy.engines import (
    EngineBuildError,
    EngineInfoError,
    build_engines,
    load_engine_info,
    write_build_script,
)
from dcae_deploy.engines.__main__ import main as engines_main
from dcae_deploy.manifest import (
    Component,
    Manifest,
    ManifestError,
    ShapeProfile,
    TensorInfo,
    read_manifest,
    sha256_file,
    write_manifest,
)

VARIANT = "tiny-f32c32-sana"
PRECISIONS = ("fp32", "fp16", "bf16")
LATENT_PROFILE = ShapeProfile(min=(1, 32, 2, 2), opt=(1, 32, 4, 4), max=(2, 32, 8, 8))


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(precision) -> folder``: the tiny decoder through the export stage (64-256 px, batch <= 2).

    Made once per precision per session (about 10-15 s each on 2 cores: dynamo export + parity gate).
    """
    from dcae_deploy.export import export_model

    cache: dict[str, Path] = {}

    def make(precision: str) -> Path:
        if precision not in cache:
            folder = tmp_path_factory.mktemp(f"export-{precision}")
            export_model(
                VARIANT,
                folder,
                components=["decoder"],
                precision=precision,
                min_res=64,
                opt_res=128,
                max_res=256,
                max_batch=2,
            )
            assert read_manifest(folder).components["decoder"].profiles["latent"] == LATENT_PROFILE
            cache[precision] = folder
        return cache[precision]

    return make


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", PRECISIONS)
def test_rtx_builds_on_cpu_with_sidecar(precision, exported, trt_rtx, tmp_path):
    folder = copy_export(exported(precision), tmp_path)
    infos = build_engines(folder, backend="tensorrt-rtx", progress=True)

    info = infos["decoder"]
    engine_dir = folder / "engines" / f"tensorrt-rtx-{trt_rtx.__version__}-sm86+-{precision}"
    assert info.plan_path == (engine_dir / "decoder.plan").resolve()
    plan = info.plan_path.read_bytes()
    assert len(plan) > 100_000 and len(plan) == info.plan_bytes
    assert not list(engine_dir.glob(".*.tmp")), "temporary files left behind"

    sidecar = json.loads((engine_dir / "decoder.json").read_text())
    assert sidecar["onnx"] == {
        "file": "decoder.onnx",
        "sha256": sha256_file(folder / "decoder.onnx"),
        "files": read_manifest(folder).components["decoder"].files,
    }
    assert sidecar["manifest"]["variant"] == VARIANT
    assert sidecar["manifest"]["sha256"] == sha256_file(folder / "manifest.json")
    assert sidecar["backend"] == "tensorrt-rtx" and sidecar["backend_version"] == trt_rtx.__version__
    assert sidecar["target"] == "sm86+" and sidecar["compute_capabilities"] == []
    assert sidecar["precision"] == precision
    assert sidecar["profiles"] == {"latent": {"min": [1, 32, 2, 2], "opt": [1, 32, 4, 4], "max": [2, 32, 8, 8]}}
    assert [t["name"] for t in sidecar["inputs"]] == ["latent"] and [t["name"] for t in sidecar["outputs"]] == ["image"]
    assert sidecar["build_seconds"] > 0
    import hashlib

    assert sidecar["plan_sha256"] == hashlib.sha256(plan).hexdigest()

    loaded = load_engine_info(engine_dir)["decoder"]
    assert loaded.profiles["latent"] == LATENT_PROFILE
    assert loaded.inputs[0].name == "latent" and loaded.precision == precision


@pytest.mark.tensorrt
def test_cli_build_explicit_targets_and_info(exported, trt_rtx, tmp_path, capsys):
    folder = copy_export(exported("fp16"), tmp_path)
    out = tmp_path / "engine-root"
    argv = [
        "build",
        str(folder),
        "--backend",
        "tensorrt-rtx",
        "--compute-capability",
        "12.0,8.6,sm89",
        "--output",
        str(out),
        "--components",
        "decoder",
        "--quiet",
    ]
    assert run_cli(engines_main, argv) == 0
    engine_dir = out / f"tensorrt-rtx-{trt_rtx.__version__}-sm86-sm89-sm120-fp16"
    sidecar = json.loads((engine_dir / "decoder.json").read_text())
    assert sidecar["compute_capabilities"] == ["8.6", "8.9", "12.0"]
    assert "decoder.plan" in capsys.readouterr().out

    assert run_cli(engines_main, ["info", str(engine_dir)]) == 0
    text = capsys.readouterr().out
    assert "target sm86-sm89-sm120" in text and "min [1, 32, 2, 2]" in text


@pytest.mark.tensorrt
def test_failed_build_reports_backend_error_and_leaves_nothing(exported, trt_rtx, tmp_path):
    # TensorRT-RTX cannot compile FP32 GEMMs for Turing: a real builder failure, found in about a second.
    folder = copy_export(exported("fp32"), tmp_path)
    with pytest.raises(EngineBuildError, match="(?s)failed to build decoder.*Turing"):
        build_engines(folder, backend="tensorrt-rtx", compute_capability="7.5", progress=False)
    engine_root = folder / "engines"
    leftovers = [p for p in engine_root.rglob("*") if p.is_file()] if engine_root.exists() else []
    assert leftovers == []


@pytest.mark.tensorrt
def test_parser_error_carries_parser_messages(trt_rtx, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FrobnicateX", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "bad.onnx")
    write_manifest(
        tmp_path,
        Manifest(
            variant=VARIANT,
            kind="autoencoder",
            precision="fp32",
            opset=18,
            components={
                "bad": Component(
                    name="bad",
                    file="bad.onnx",
                    files={"bad.onnx": sha256_file(tmp_path / "bad.onnx")},
                    inputs=(TensorInfo("x", "float32", (1, 4)),),
                    outputs=(TensorInfo("y", "float32", (1, 4)),),
                    profiles={},
                )
            },
        ),
    )
    with pytest.raises(EngineBuildError, match="(?s)cannot parse .*bad.onnx.*FrobnicateX"):
        build_engines(tmp_path, backend="tensorrt-rtx", progress=False)


@pytest.mark.tensorrt
def test_unsupported_compute_capability_lists_choices(exported, trt_rtx, tmp_path):
    folder = exported("fp32")
    with pytest.raises(EngineBuildError, match=r"'9\.0' is not a TensorRT-RTX .*8\.6, 8\.9, 12\.0"):
        build_engines(folder, backend="tensorrt-rtx", compute_capability="9.0", output=tmp_path)


def test_tampered_onnx_is_refused(exported, tmp_path, capsys):
    folder = copy_export(exported("fp32"), tmp_path)
    data = folder / "decoder.onnx"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(ManifestError, match="changed after export"):
        build_engines(folder, backend="tensorrt-rtx")
    capsys.readouterr()
    assert run_cli(engines_main, ["build", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "changed after export" in err and "Traceback" not in err
    assert not (folder / "engines").exists()


def test_missing_backend_says_how_to_install(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(EngineBuildError, match="pip install tensorrt-rtx-cu13"):
        build_engines(exported("fp32"))


def test_engine_info_detects_changed_plan(tmp_path):
    (tmp_path / "decoder.plan").write_bytes(b"plan")
    sidecar = {
        "format": "dcae_deploy.engine",
        "version": 1,
        "component": "decoder",
        "plan": "decoder.plan",
        "plan_sha256": "0" * 64,
        "plan_bytes": 4,
        "onnx": {"file": "decoder.onnx", "sha256": "1" * 64, "files": {}},
        "source_dir": str(tmp_path),
        "manifest": {"variant": VARIANT, "kind": "autoencoder"},
        "precision": "fp32",
        "backend": "tensorrt-rtx",
        "backend_version": "1",
        "target": "sm86+",
        "compute_capabilities": [],
        "inputs": [],
        "outputs": [],
        "profiles": {},
        "build_seconds": 1.0,
        "built_at": "now",
    }
    (tmp_path / "decoder.json").write_text(json.dumps(sidecar))
    with pytest.raises(EngineInfoError, match="changed after it was built"):
        load_engine_info(tmp_path)
    assert load_engine_info(tmp_path, verify=False)["decoder"].target == "sm86+"
    with pytest.raises(EngineInfoError, match="not found"):
        load_engine_info(tmp_path / "nowhere")


def test_build_script_has_manifest_shapes_and_runs(exported, tmp_path, capsys):
    folder = copy_export(exported("bf16"), tmp_path)
    manifest = read_manifest(folder)
    path = write_build_script(folder, manifest)
    assert path == folder / "build_engines.sh"
    assert path.stat().st_mode & stat.S_IXUSR
    text = path.read_text()
    for flag in (
        "--onnx=decoder.onnx",
        "--minShapes=latent:1x32x2x2",
        "--optShapes=latent:1x32x4x4",
        "--maxShapes=latent:2x32x8x8",
        "--stronglyTyped",
        "--skipInference",
        "--computeCapabilities=",
    ):
        assert flag in text
    assert not [line for line in text.splitlines() if "--fp16" in line and not line.startswith("#")]
    subprocess.run(["bash", "-n", str(path)], check=True)

    # Run it with stand-in tools that record their arguments.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("trtexec", "tensorrt_rtx"):
        stub = bin_dir / tool
        stub.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "$ARGS_LOG"\n')
        stub.chmod(0o755)
    log = tmp_path / "args.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "ARGS_LOG": str(log),
        "RTX_COMPUTE_CAPABILITIES": "86,89,120",
    }
    subprocess.run([str(path)], check=True, env=env, capture_output=True)
    subprocess.run([str(path), "tensorrt_rtx"], check=True, env=env, capture_output=True)
    calls = log.read_text().splitlines()
    assert calls[0].split() == [
        "trtexec",
        "--onnx=decoder.onnx",
        "--saveEngine=engines/trtexec-bf16/decoder.plan",
        "--minShapes=latent:1x32x2x2",
        "--optShapes=latent:1x32x4x4",
        "--maxShapes=latent:2x32x8x8",
        "--stronglyTyped",
        "--skipInference",
        "--timingCacheFile=engines/trtexec.timing.cache",
    ]
    assert calls[1].split() == [
        "tensorrt_rtx",
        "--onnx=decoder.onnx",
        "--saveEngine=engines/tensorrt_rtx-bf16/decoder.plan",
        "--minShapes=latent:1x32x2x2",
        "--optShapes=latent:1x32x4x4",
        "--maxShapes=latent:2x32x8x8",
        "--skipInference",
        "--computeCapabilities=86,89,120",
    ]

    path.unlink()
    assert run_cli(engines_main, ["script", str(folder)]) == 0
    assert path.read_text() == text


# ------------------------------------------------------------------------------------------------------------
@pytest.mark.tensorrt
def test_rtx_leaves_timing_cache_alone(exported, trt_rtx, tmp_path, capsys):
    folder = copy_export(exported("fp32"), tmp_path)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from full TensorRT")
    build_engines(folder, backend="tensorrt-rtx", timing_cache=cache, progress=False)
    assert cache.read_bytes() == b"from full TensorRT"
    assert "TensorRT-RTX ignores timing caches" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# Multi-input components: the tiny text-to-image export (text encoder, denoiser, decoder)


@pytest.fixture(scope="module")
def t2i_export(tmp_path_factory):
    """tiny-t2i (tiny Gemma-2 + tiny SANA DiT + tiny DC-AE decoder), fp32, through the export CLI."""
    folder = tmp_path_factory.mktemp("t2i-export")
    argv = [sys.executable, "-m", "dcae_deploy.export", "--model", "tiny-t2i", "--min-res", "64", "--opt-res", "64",
            "--max-res", "128", "--max-batch", "1", "--output", str(folder)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RANDOMLY INITIALISED tiny-t2i" in done.stderr
    return folder


@pytest.mark.tensorrt
def test_rtx_builds_every_t2i_component_with_all_input_profiles(t2i_export, trt_rtx, tmp_path):
    folder = copy_export(t2i_export, tmp_path)
    manifest = read_manifest(folder)
    infos = build_engines(folder, backend="tensorrt-rtx", progress=False)
    assert sorted(infos) == ["decoder", "denoiser", "text_encoder"]
    for name, info in infos.items():
        assert info.plan_path.is_file() and info.plan_bytes > 100_000
        assert info.profiles == manifest.components[name].profiles
        assert [t.name for t in info.inputs] == [t.name for t in manifest.components[name].inputs]
    den = load_engine_info(infos["denoiser"].plan_path.parent)["denoiser"]
    assert sorted(den.profiles) == ["encoder_attention_mask", "encoder_hidden_states", "latent", "timestep"]
    assert den.profiles["timestep"] == ShapeProfile((1,), (2,), (2,))
    te = infos["text_encoder"]
    lo, hi = manifest.pipeline.to_dict()["text_encoder"]["input_tokens"]
    assert te.profiles["input_ids"] == ShapeProfile((1, lo), (1, hi), (2, hi)) == te.profiles["attention_mask"]
    assert [t.dtype for t in te.inputs] == ["int64", "int64"]


def test_t2i_build_script_lists_every_input(t2i_export, tmp_path):
    folder = copy_export(t2i_export, tmp_path)
    manifest = read_manifest(folder)
    text = write_build_script(folder, manifest).read_text()
    subprocess.run(["bash", "-n", str(folder / "build_engines.sh")], check=True)
    lo, hi = manifest.pipeline.to_dict()["text_encoder"]["input_tokens"]
    assert f"--minShapes=input_ids:1x{lo},attention_mask:1x{lo}" in text
    assert f"--maxShapes=input_ids:2x{hi},attention_mask:2x{hi}" in text
    assert (
        "--optShapes=latent:2x32x2x2,timestep:2,encoder_hidden_states:2x24x64,encoder_attention_mask:2x24" in text
    )
    for component in ("text_encoder", "denoiser", "decoder"):
        assert f"--onnx={component}.onnx" in text
        assert f"engines/tensorrt_rtx-fp32/{component}.plan" in text
