"""dcae_deploy/tensorrt_support.py: one flavour importer (each caller keeps its own error wording) and one sidecar
format, written by EngineInfo.to_dict and read by read_sidecar. Needs no TensorRT: imports are blocked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcae_deploy.checkpoints import write_json
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.manifest import ShapeProfile, TensorInfo
from dcae_deploy.tensorrt_support import (
    FLAVOURS,
    PLAN_SUFFIX,
    EngineInfo,
    EngineInfoError,
    TensorRTUnavailable,
    import_flavour,
    read_sidecar,
)

# the keys dcae_deploy.engines has written since sidecar version 1: existing engine folders must still read
SIDECAR_KEYS = {
    "format", "version", "component", "plan", "plan_sha256", "plan_bytes", "onnx", "source_dir", "manifest",
    "precision", "strongly_typed", "backend", "backend_version", "target", "compute_capabilities", "inputs",
    "outputs", "profiles", "build_seconds", "built_at", "host",
}


@pytest.fixture
def no_tensorrt(monkeypatch):
    for module in ("tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, module, None)


def _info(folder: Path) -> EngineInfo:
    return EngineInfo(
        component="decoder", plan_path=folder / f"decoder{PLAN_SUFFIX}", plan_sha256="0" * 64, plan_bytes=4,
        onnx_file="decoder.onnx", onnx_sha256="1" * 64, onnx_files={"decoder.onnx": "1" * 64},
        source_dir=str(folder), variant="tiny-f32c32-sana", kind="autoencoder", precision="fp16",
        manifest_checkpoint=None, manifest_sha256="2" * 64, backend="tensorrt-rtx", backend_version="1.7",
        target="sm86-sm89", compute_capabilities=("8.6", "8.9"),
        inputs=(TensorInfo("latent", "float16", ("batch", 32, "h", "w")),),
        outputs=(TensorInfo("image", "float16", ("batch", 3, "H", "W")),),
        profiles={"latent": ShapeProfile((1, 32, 2, 2), (1, 32, 4, 4), (2, 32, 8, 8))},
        build_seconds=1.5, built_at="2025-01-01T00:00:00+00:00", host="Linux x86_64, python 3.11",
    )


def test_sidecar_round_trip_keeps_the_version_1_keys(tmp_path):
    info = _info(tmp_path)
    data = info.to_dict()
    assert set(data) == SIDECAR_KEYS
    assert set(data["onnx"]) == {"file", "sha256", "files"}
    assert set(data["manifest"]) == {"variant", "kind", "precision", "checkpoint", "sha256"}
    assert data["inputs"] == [{"name": "latent", "dtype": "float16", "shape": ["batch", 32, "h", "w"]}]
    assert data["profiles"] == {"latent": {"min": [1, 32, 2, 2], "opt": [1, 32, 4, 4], "max": [2, 32, 8, 8]}}
    write_json(tmp_path / "decoder.json", data)
    back = read_sidecar(tmp_path / "decoder.json", verify=False)
    assert back == EngineInfo.from_dict(data, tmp_path)
    assert back.to_dict() == json.loads((tmp_path / "decoder.json").read_text())
    assert {**vars(back), "raw": {}} == {**vars(info), "plan_path": info.plan_path.resolve(), "raw": {}}


def test_sidecar_reader_refuses_other_files(tmp_path):
    (tmp_path / "decoder.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(EngineInfoError, match="not a dcae_deploy engine sidecar"):
        read_sidecar(tmp_path / "decoder.json")
    (tmp_path / "decoder.json").write_text(json.dumps({**_info(tmp_path).to_dict(), "onnx": None}))
    with pytest.raises(EngineInfoError, match="incomplete or malformed"):
        read_sidecar(tmp_path / "decoder.json")


def test_import_flavour_lists_every_failure(no_tensorrt):
    with pytest.raises(TensorRTUnavailable) as caught:
        import_flavour()
    assert [f.split("`")[1] for f in caught.value.failures] == ["import tensorrt", "import tensorrt_rtx"]
    with pytest.raises(ValueError, match="unknown TensorRT flavour"):
        import_flavour("tensorrt-llm")
    assert FLAVOURS == ("tensorrt", "tensorrt-rtx")


def _engines_import(name):
    from dcae_deploy.engines import load_flavour

    return load_flavour(name)


def _runtime_import(name):
    from dcae_deploy.runtime.runners.tensorrt import import_tensorrt

    return import_tensorrt(name)


@pytest.mark.parametrize(
    "load, name, error, message",
    [
        (_engines_import, "auto", "EngineBuildError", "no TensorRT backend available: `import tensorrt` failed.*tensorrt-rtx-cu13"),
        (_engines_import, "trt", "EngineBuildError", "unknown backend 'trt': choose one of auto, tensorrt, tensorrt-rtx"),
        (_runtime_import, "tensorrt-rtx", "BackendError", "no TensorRT runtime: `import tensorrt_rtx` failed.*cuda-python"),
        (_runtime_import, "trt", "BackendError", "unknown TensorRT flavour 'trt'; choose one of tensorrt, tensorrt-rtx"),
    ],
)
def test_engines_and_runtime_word_a_missing_tensorrt_their_own_way(no_tensorrt, load, name, error, message):
    with pytest.raises(DcaeDeployError, match=message) as caught:
        load(name)
    assert type(caught.value).__name__ == error


def test_the_runtime_reads_sidecars_without_torch_or_the_engines_package():
    code = (
        "import sys; import dcae_deploy.tensorrt_support, dcae_deploy.runtime.runners.tensorrt; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('dcae_deploy.engines')); "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
