"""Engines of quantized exports (int8 / fp8: float32 graphs with QuantizeLinear/DequantizeLinear pairs).

* an int8 export of the tiny autoencoder's decoder builds TensorRT-RTX engines on the CPU, strongly typed, into an
  ``...-int8`` folder that the runtime's ``find_engine_dir`` picks;
* the same for an fp8 export, into an ``...-sm89+-fp8`` folder;
* ``build_engines.sh`` of int8 and fp8 exports: ``--stronglyTyped`` trtexec lines, no ``--int8`` / ``--fp8`` /
  ``--calib``, and the fp8 script's compute-capability guards;
* fp8 needs compute capability 8.9+: its portable TensorRT-RTX target is ``sm89+``, older targets are refused before
  building, the sidecar records it and the runtime's verdict names it (a hand-made fp8 Q/DQ graph builds in about
  a second, so fp8 is covered without the exporter);
* a graph whose biases are int32 DequantizeLinear nodes (ONNX Runtime's default bias quantization) fails to parse
  with an explanation;
* the weakly typed fallback (a TensorRT without strongly typed networks) sets INT8 / FP8.

No engine is deserialised (no GPU here). Each export (int8, fp8) takes about 20 s on 2 cores, each build a few
seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import copy_export

from dcae_deploy.engines import EngineBuildError, build_engines, load_engine_info, write_build_script
from dcae_deploy.engines import common as engines_common
from dcae_deploy.engines.build import network_flags
from dcae_deploy.engines.common import TensorRTFlavour, engine_folder_name, portable_target, resolve_target
from dcae_deploy.manifest import (
    Component,
    Manifest,
    ShapeProfile,
    TensorInfo,
    read_manifest,
    sha256_file,
    write_manifest,
)
from dcae_deploy.tensorrt_support import CudaDevice, EngineInfo, plan_device_problem

VARIANT = "tiny-f32c32-sana"
FORBIDDEN_FLAGS = ("--int8", "--fp8", "--fp16", "--bf16", "--best", "--calib")


def _export_decoder(tmp_path_factory, precision: str) -> Path:
    """The tiny autoencoder's decoder exported at ``precision`` (64-256 px, batch <= 2), through the export stage."""
    from dcae_deploy.export import export_model

    folder = tmp_path_factory.mktemp(f"export-{precision}")
    export_model(VARIANT, folder, components=["decoder"], precision=precision, min_res=64, opt_res=128, max_res=256,
                 max_batch=2)
    return folder


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    return _export_decoder(tmp_path_factory, "int8")


@pytest.fixture(scope="module")
def fp8_export(tmp_path_factory):
    """float8 E4M3 Q/DQ."""
    return _export_decoder(tmp_path_factory, "fp8")


# ------------------------------------------------------------------------------------------------------------
# int8 export -> TensorRT-RTX engines


@pytest.mark.tensorrt
def test_int8_export_builds_rtx_engines(int8_export, trt_rtx, tmp_path):
    import onnx

    folder = copy_export(int8_export, tmp_path)
    manifest = read_manifest(folder)
    assert manifest.precision == "int8" and manifest.to_dict().get("quantization")
    ops = [n.op_type for n in onnx.load(str(folder / "decoder.onnx"), load_external_data=False).graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0

    infos = build_engines(folder, backend="tensorrt-rtx", progress=False)

    engine_dir = folder / "engines" / f"tensorrt-rtx-{trt_rtx.__version__}-sm86+-int8"
    info = infos["decoder"]
    assert info.plan_path == (engine_dir / "decoder.plan").resolve() and info.plan_bytes > 100_000
    sidecar = json.loads((engine_dir / "decoder.json").read_text())
    assert sidecar["precision"] == sidecar["manifest"]["precision"] == "int8"
    assert sidecar["strongly_typed"] is True and "min_compute_capability" not in sidecar  # fp8 only
    assert [(t["name"], t["dtype"]) for t in sidecar["inputs"]] == [("latent", "float32")]  # Q/DQ: float32 I/O
    loaded = load_engine_info(engine_dir)["decoder"]
    assert loaded.precision == "int8" and loaded.profiles == manifest.components["decoder"].profiles

    # an explicit Ampere target is fine for int8 (only fp8 needs 8.9)
    more = build_engines(folder, backend="tensorrt-rtx", compute_capability="8.6", progress=False)
    assert more["decoder"].plan_path.parent.name.endswith("-sm86-int8")
    assert plan_device_problem(loaded, CudaDevice(0, "RTX 3090", (8, 6))) is None


@pytest.mark.tensorrt
def test_fp8_export_builds_rtx_engines_for_89_and_later(fp8_export, trt_rtx, tmp_path):
    folder = copy_export(fp8_export, tmp_path)
    assert read_manifest(folder).precision == "fp8"
    with pytest.raises(EngineBuildError, match=r"fp8 engines need compute capability 8\.9.*lists 8\.6"):
        build_engines(folder, backend="tensorrt-rtx", compute_capability="8.6", progress=False)
    info = build_engines(folder, backend="tensorrt-rtx", progress=False)["decoder"]
    assert info.plan_path.parent.name == f"tensorrt-rtx-{trt_rtx.__version__}-sm89+-fp8" and info.plan_bytes > 100_000
    sidecar = json.loads(info.plan_path.with_suffix(".json").read_text())
    assert sidecar["precision"] == "fp8" and sidecar["min_compute_capability"] == "8.9" and sidecar["strongly_typed"]

    # the script the export wrote: strongly typed, no precision flag, guarded below 8.9
    text = (fp8_export / "build_engines.sh").read_text()
    flags = _script_flags(text)
    assert "--stronglyTyped" in flags and not [f for f in flags if f.split("=")[0] in FORBIDDEN_FLAGS]
    assert "engines/tensorrt_rtx-fp8/decoder.plan" in text and "RTX_COMPUTE_CAPABILITIES lists" in text


@pytest.mark.tensorrt
def test_int4_text_encoder_builds_rtx_engines_beside_an_int8_export(trt_rtx, tmp_path):
    """An int8 export whose text encoder is int4 weight-only (block-quantized DequantizeLinear, opset 21): each plan
    is built and recorded at its component's precision, in the export's ``-int8`` folder; the script says both."""
    from dcae_deploy.export import export_model
    from dcae_deploy.shipped_demo import demo_folder

    folder = tmp_path / "demo"
    export_model("demo", folder, checkpoint=demo_folder(), components=["text_encoder", "decoder"], precision="int8",
                 component_precisions={"text_encoder": "int4"}, calibration_samples=4, min_res=128, opt_res=128,
                 max_res=128, max_batch=2)
    infos = build_engines(folder, backend="tensorrt-rtx", progress=False)
    assert {name: info.precision for name, info in infos.items()} == {"text_encoder": "int4", "decoder": "int8"}
    assert infos["text_encoder"].plan_path.parent.name == f"tensorrt-rtx-{trt_rtx.__version__}-sm86+-int8"
    sidecar = json.loads(infos["text_encoder"].plan_path.with_suffix(".json").read_text())
    assert sidecar["strongly_typed"] is True and sidecar["precision"] == "int4"
    text = (folder / "build_engines.sh").read_text()
    assert "int8 (text_encoder int4)" in text and "--stronglyTyped" in _script_flags(text)


def test_runtime_finds_int8_and_fp8_engine_folders(tmp_path):
    from dcae_deploy.runtime.artifacts import Artifacts
    from dcae_deploy.runtime.backends import find_engine_dir

    for precision in ("int8", "fp8"):
        folder = tmp_path / precision
        manifest = _manifest(folder, precision)
        artifacts = Artifacts(folder, manifest, None)
        engines = folder / "engines"
        names = [f"tensorrt-rtx-1.7.1.116-{portable_target(precision)}-{precision}",
                 "tensorrt-rtx-1.7.1.116-sm86+-fp32", "tensorrt-rtx-1.7.1.116-sm86+-fp16"]
        for name in names:
            (engines / name).mkdir(parents=True)
            (engines / name / "decoder.plan").write_bytes(b"plan")
        assert find_engine_dir(artifacts, None) == engines / names[0]
        shutil.rmtree(engines / names[0])
        (engines / f"trtexec-{precision}").mkdir()
        (engines / f"trtexec-{precision}" / "decoder.plan").write_bytes(b"plan")
        assert find_engine_dir(artifacts, None) == engines / f"trtexec-{precision}"


# ------------------------------------------------------------------------------------------------------------
# build_engines.sh


def _stub_tools(tmp_path: Path, gpu_cc: str | None = None) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("trtexec", "tensorrt_rtx"):
        stub = bin_dir / tool
        stub.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "$ARGS_LOG"\n')
        stub.chmod(0o755)
    if gpu_cc is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/usr/bin/env bash\necho {gpu_cc}\n")
        smi.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ARGS_LOG": str(tmp_path / "args.log")}


def _script_flags(text: str) -> list[str]:
    return [line.strip().rstrip("\\").strip() for line in text.splitlines() if line.strip().startswith("--")]


def test_int8_build_script_is_strongly_typed_without_precision_flags(int8_export, tmp_path):
    folder = copy_export(int8_export, tmp_path)
    text = write_build_script(folder, read_manifest(folder)).read_text()
    subprocess.run(["bash", "-n", str(folder / "build_engines.sh")], check=True)
    flags = _script_flags(text)
    assert "--stronglyTyped" in flags
    assert not [f for f in flags if f.split("=")[0] in FORBIDDEN_FLAGS]
    assert "no calibration (--calib)" in text and "nvidia-smi" not in text  # no fp8 guard for int8

    env = {**_stub_tools(tmp_path), "RTX_COMPUTE_CAPABILITIES": "86,89"}
    subprocess.run([str(folder / "build_engines.sh"), "trtexec"], check=True, env=env, capture_output=True)
    subprocess.run([str(folder / "build_engines.sh"), "tensorrt_rtx"], check=True, env=env, capture_output=True)
    trtexec, rtx = (line.split() for line in (tmp_path / "args.log").read_text().splitlines())
    assert trtexec == ["trtexec", "--onnx=decoder.onnx", "--saveEngine=engines/trtexec-int8/decoder.plan",
                       "--minShapes=latent:1x32x2x2", "--optShapes=latent:1x32x4x4", "--maxShapes=latent:2x32x8x8",
                       "--stronglyTyped", "--skipInference", "--timingCacheFile=engines/trtexec.timing.cache"]
    assert rtx == ["tensorrt_rtx", "--onnx=decoder.onnx", "--saveEngine=engines/tensorrt_rtx-int8/decoder.plan",
                   "--minShapes=latent:1x32x2x2", "--optShapes=latent:1x32x4x4", "--maxShapes=latent:2x32x8x8",
                   "--skipInference", "--computeCapabilities=86,89"]


def test_fp8_build_script_guards_compute_capability(tmp_path):
    folder = tmp_path / "fp8"
    manifest = _manifest(folder, "fp8")
    path = write_build_script(folder, manifest)
    text = path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)
    flags = _script_flags(text)
    assert "--stronglyTyped" in flags and not [f for f in flags if f.split("=")[0] in FORBIDDEN_FLAGS]
    assert "engines/tensorrt_rtx-fp8/decoder.plan" in text and "compute capability 8.9 or later" in text

    env = _stub_tools(tmp_path, gpu_cc="8.6")
    log = tmp_path / "args.log"
    refused = subprocess.run([str(path), "tensorrt_rtx"], env={**env, "RTX_COMPUTE_CAPABILITIES": "86,89"},
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "fp8 engines need compute capability 8.9 or later" in refused.stderr
    assert "RTX_COMPUTE_CAPABILITIES lists 86" in refused.stderr and not log.exists()
    subprocess.run([str(path), "tensorrt_rtx"], env={**env, "RTX_COMPUTE_CAPABILITIES": "89,120"}, check=True,
                   capture_output=True)
    assert log.read_text().split()[-1] == "--computeCapabilities=89,120"
    warned = subprocess.run([str(path), "trtexec"], env=env, capture_output=True, text=True, check=True)
    assert "the first GPU has 86: trtexec will fail there" in warned.stderr


# ------------------------------------------------------------------------------------------------------------
# fp8: compute capability 8.9+


@pytest.mark.tensorrt
def test_fp8_targets_and_rtx_build(trt_rtx, tmp_path):
    folder = tmp_path / "fp8"
    _manifest(folder, "fp8", graph=_qdq_conv_graph("fp8"))
    rtx = engines_common.load_flavour("tensorrt-rtx")
    assert resolve_target(rtx, None, "fp8").name == "sm89+" and resolve_target(rtx, None, "int8").name == "sm86+"
    assert resolve_target(rtx, "12.0,8.9", "fp8").name == "sm89-sm120"
    with pytest.raises(EngineBuildError, match=r"(?s)fp8 engines need compute capability 8\.9.*lists 8\.6[;,].*"
                                               r"builds fp8 for 8\.9, 12\.0"):
        build_engines(folder, backend="tensorrt-rtx", compute_capability="8.6,8.9", progress=False)
    assert not (folder / "engines").exists()

    infos = build_engines(folder, backend="tensorrt-rtx", progress=False)
    engine_dir = infos["decoder"].plan_path.parent
    assert engine_dir.name == engine_folder_name(rtx, resolve_target(rtx, None, "fp8"), "fp8")
    assert engine_dir.name.endswith("-sm89+-fp8")
    sidecar = json.loads((engine_dir / "decoder.json").read_text())
    assert sidecar["precision"] == "fp8" and sidecar["min_compute_capability"] == "8.9" and sidecar["strongly_typed"]
    info = load_engine_info(engine_dir)["decoder"]
    problem = plan_device_problem(info, CudaDevice(0, "RTX 3090", (8, 6)))
    assert problem is not None and "it is an fp8 engine" in problem and "--precision int8" in problem
    assert plan_device_problem(info, CudaDevice(0, "RTX 4090", (8, 9))) is None
    assert build_engines(folder, backend="tensorrt-rtx", compute_capability="8.9", progress=False)


def test_fp8_full_tensorrt_refuses_an_older_gpu(monkeypatch):
    flavour = TensorRTFlavour("tensorrt", SimpleNamespace(), "10.13")
    monkeypatch.setattr(engines_common, "detect_gpu_target", lambda: "sm86")
    with pytest.raises(EngineBuildError, match=r"fp8 engines need compute capability 8\.9.*full TensorRT builds for"):
        resolve_target(flavour, None, "fp8")
    assert resolve_target(flavour, None, "int8").name == "sm86"
    monkeypatch.setattr(engines_common, "detect_gpu_target", lambda: "sm90")
    assert resolve_target(flavour, None, "fp8").name == "sm90"
    monkeypatch.setattr(engines_common, "detect_gpu_target", lambda: None)  # unknown GPU: the builder decides
    assert resolve_target(flavour, None, "fp8").name == "gpu"


def test_fp8_plans_refuse_older_gpus_of_either_flavour(tmp_path):
    def info(precision: str, backend: str, target: str) -> EngineInfo:
        return EngineInfo(
            component="decoder", plan_path=tmp_path / "decoder.plan", plan_sha256="0" * 64, plan_bytes=1,
            onnx_file="decoder.onnx", onnx_sha256="1" * 64, source_dir=str(tmp_path), variant=VARIANT,
            kind="autoencoder", precision=precision, backend=backend, backend_version="1", target=target,
            compute_capabilities=(), inputs=(), outputs=(), profiles={}, build_seconds=1.0, built_at="now",
        )

    a6000, h100 = CudaDevice(0, "RTX A6000", (8, 6)), CudaDevice(0, "H100", (9, 0))
    assert plan_device_problem(info("int8", "tensorrt-rtx", "sm86+"), a6000) is None
    assert "compute capability 8.9 or later" in plan_device_problem(info("fp8", "tensorrt-rtx", "sm89+"), a6000)
    assert "compute capability 8.9 or later" in plan_device_problem(info("fp8", "tensorrt", "sm86"), a6000)
    assert plan_device_problem(info("fp8", "tensorrt", "sm90"), h100) is None


# ------------------------------------------------------------------------------------------------------------
# graphs TensorRT cannot take, and old TensorRT


@pytest.mark.tensorrt
def test_int32_bias_dequantize_is_explained(trt_rtx, tmp_path):
    folder = tmp_path / "int8"
    _manifest(folder, "int8", graph=_qdq_conv_graph("int8", int32_bias=True))
    with pytest.raises(EngineBuildError, match=r"(?s)cannot parse .*Int32.*biases as int32.*QuantizeBias=False"):
        build_engines(folder, backend="tensorrt-rtx", progress=False)
    _manifest(folder, "int8", graph=_qdq_conv_graph("int8"))  # the same layer with a float bias builds
    assert build_engines(folder, backend="tensorrt-rtx", progress=False)["decoder"].plan_bytes > 0


def test_weakly_typed_fallback_sets_the_precision_flag():
    flags = SimpleNamespace(INT8="INT8", FP8="FP8", FP16="FP16", BF16="BF16")
    weak = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(), BuilderFlag=flags)
    old = TensorRTFlavour("tensorrt", weak, "8.6")
    assert network_flags(old, "int8") == (0, ["INT8"], False)
    assert network_flags(old, "fp8") == (0, ["FP8"], False)
    assert network_flags(old, "fp32") == (0, [], False)
    typed = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1), BuilderFlag=flags)
    for precision in ("fp32", "int8", "fp8"):
        assert network_flags(TensorRTFlavour("tensorrt", typed, "10.13"), precision) == (2, [], True)
    no_fp8 = TensorRTFlavour("tensorrt", SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(),
                                                         BuilderFlag=SimpleNamespace(INT8="INT8")), "8.5")
    with pytest.raises(EngineBuildError, match="cannot build fp8 engines; install TensorRT 10"):
        network_flags(no_fp8, "fp8")


# ------------------------------------------------------------------------------------------------------------
# helpers: hand-made manifests and Q/DQ graphs


PROFILE = ShapeProfile((1, 8, 4, 4), (1, 8, 8, 8), (2, 8, 16, 16))


def _manifest(folder: Path, precision: str, graph=None) -> Manifest:
    """A one-component export ("decoder", latent -> image) in ``folder``: ``graph`` (an ONNX model) or a stand-in
    file."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "decoder.onnx"
    if graph is not None:
        onnx.save(graph, path)
    elif not path.exists():
        path.write_bytes(b"not a graph")
    manifest = Manifest(
        variant=VARIANT, kind="autoencoder", precision=precision, opset=21,
        components={"decoder": Component(
            name="decoder", file="decoder.onnx", files={"decoder.onnx": sha256_file(path)},
            inputs=(TensorInfo("latent", "float32", ("batch", 8, "h", "w")),),
            outputs=(TensorInfo("image", "float32", ("batch", 16, "h", "w")),),
            profiles={"latent": PROFILE},
        )},
    )
    write_manifest(folder, manifest)
    return manifest


def _qdq_conv_graph(precision: str, int32_bias: bool = False):
    """latent -> Q/DQ -> Conv(Q/DQ weight, bias) -> image, as ONNX Runtime's quantizer writes it (symmetric, zero
    point 0): int8 weights per output channel or float8 E4M3 per tensor; the bias float32, or int32 through a
    DequantizeLinear (``int32_bias``, what ONNX Runtime writes by default and TensorRT cannot parse)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.1
    bias = rng.standard_normal(16).astype(np.float32) * 0.1
    inits, nodes = [], []
    if precision == "fp8":
        from ml_dtypes import float8_e4m3fn

        qtype, act_scale = TensorProto.FLOAT8E4M3FN, np.float32(4.0 / 448)
        w_scale = np.float32(np.abs(weight).max() / 448)
        w_fp8 = (weight / w_scale).astype(float8_e4m3fn)
        w_q = helper.make_tensor("w_q", qtype, weight.shape, w_fp8.tobytes(), raw=True)
        inits += [w_q, numpy_helper.from_array(w_scale, "w_scale"), helper.make_tensor("w_zero", qtype, [], [0.0]),
                  helper.make_tensor("x_zero", qtype, [], [0.0])]
        w_axis = {}
    else:
        qtype, act_scale = TensorProto.INT8, np.float32(4.0 / 127)
        w_scale = (np.abs(weight).reshape(16, -1).max(axis=1) / 127).astype(np.float32)
        w_q = np.clip(np.round(weight / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
                  numpy_helper.from_array(np.zeros(16, np.int8), "w_zero"),
                  numpy_helper.from_array(np.int8(0), "x_zero")]
        w_axis = {"axis": 0}
    inits.append(numpy_helper.from_array(act_scale, "x_scale"))
    nodes += [
        helper.make_node("QuantizeLinear", ["latent", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], **w_axis),
    ]
    if int32_bias:
        b_scale = (act_scale * w_scale).astype(np.float32)
        inits += [numpy_helper.from_array(np.round(bias / b_scale).astype(np.int32), "b_q"),
                  numpy_helper.from_array(b_scale, "b_scale"),
                  numpy_helper.from_array(np.zeros(16, np.int32), "b_zero")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["bias"], axis=0))
    else:
        inits.append(numpy_helper.from_array(bias, "bias"))
    nodes.append(helper.make_node("Conv", ["x_dq", "w_dq", "bias"], ["image"], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes, "qdq_conv",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", 8, "h", "w"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 16, "h", "w"])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_hand_made_graphs_are_valid_onnx():
    import onnx

    for precision, int32_bias in (("int8", False), ("int8", True), ("fp8", False)):
        onnx.checker.check_model(_qdq_conv_graph(precision, int32_bias), full_check=True)
