"""``--backend auto`` (generate's default): the policy of ``runtime.backends.choose_backend`` on this machine and on
faked ones, its fallback when a choice does not open, and ``generate``'s reason line. The tiny text-to-image export
of ``conftest.py``; OpenVINO's compiled-model cache goes to a temporary ``$DCAE_DEPLOY_CACHE``, not the shared
export folder."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from PIL import Image

from dcae_deploy.cli import run_cli
from dcae_deploy.generate import main as generate_main
from dcae_deploy.runtime import BackendError, BackendOptions, TextToImage
from dcae_deploy.runtime import backends
from dcae_deploy.runtime.backends import choose_backend, open_auto

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed: auto picks onnxruntime here")
OPENVINO_REASON = ("openvino on CPU (f32 inference precision): fastest installed CPU backend that meets the export's "
                   "fp32 gate")


def _gpu_free() -> bool:
    from dcae_deploy.tensorrt_support import probe_cuda

    return probe_cuda().error is not None


@pytest.fixture
def ov_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DCAE_DEPLOY_CACHE", str(tmp_path))
    return tmp_path / "openvino-cache"


def _rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@needs_openvino
@pytest.mark.skipif(not _gpu_free(), reason="this machine has a GPU: auto prefers a GPU backend")
def test_auto_picks_openvino_at_f32_and_matches_onnxruntime(artifacts, recipe, ov_cache):
    choice = choose_backend(artifacts, BackendOptions(threads=1))
    assert choice.name == "openvino" and choice.reason == OPENVINO_REASON
    assert (choice.options.ov_device, choice.options.ov_precision, choice.options.threads) == ("CPU", "f32", 1)
    backend, opened = open_auto(artifacts, BackendOptions(threads=1))
    assert opened == choice
    with TextToImage(artifacts, backend, progress=False) as t2i:
        auto = t2i.generate(recipe.generation())
        assert t2i._runners["decoder"].report["precision"] == "f32"
    from dcae_deploy.parity import run_backend

    ort = run_backend(artifacts, "onnxruntime", recipe.generation(), BackendOptions(device="cpu", threads=1))
    # the fp32 gate on the decoded image (float, before uint8): rel L2 <= 1e-4
    assert _rel_l2(auto.stages["image"], ort.stages["image"]) <= 1e-4
    assert np.abs(auto.images.astype(int) - ort.images.astype(int)).max() <= 1


@needs_openvino
@pytest.mark.skipif(not _gpu_free(), reason="this machine has a GPU: auto prefers a GPU backend")
def test_generate_defaults_to_auto_says_why_and_honours_an_explicit_backend(artifacts_dir, tmp_path, ov_cache, capsys):
    common = ["--artifacts", str(artifacts_dir), "--prompt", "a red circle on a blue background", "--steps", "2",
              "--height", "64", "--width", "64", "--seed", "5", "--quiet"]
    assert run_cli(generate_main, [*common, "--backend", "onnxruntime", "--output", str(tmp_path / "ort.png")]) == 0
    err = capsys.readouterr().err
    assert "--backend auto" not in err
    assert not ov_cache.exists()  # ONNX Runtime ran: OpenVINO compiled nothing
    assert run_cli(generate_main, [*common, "--verbose", "--output", str(tmp_path / "auto.png")]) == 0
    err = capsys.readouterr().err
    assert f"[generate] --backend auto: {OPENVINO_REASON}\n" in err
    assert "[generate] --backend auto passed over: tensorrt on CUDA: no engines of this export" in err
    assert list(ov_cache.rglob("*.blob"))  # OpenVINO ran
    ort, auto = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("ort", "auto"))
    assert np.abs(auto - ort).max() <= 1  # uint8 rounding of images within rel L2 1e-4 of each other


def test_a_backend_that_does_not_open_falls_back_to_the_next(artifacts, monkeypatch):
    class Broken(backends.Backend):
        name = "openvino"

        def __init__(self, artifacts, options):
            raise BackendError("no CPU plugin")

    monkeypatch.setitem(backends.BACKENDS, "openvino", Broken)
    cpu_ort = next(p for p in backends.AUTO_PREFERENCE if p[:2] == ("onnxruntime", "cpu"))
    monkeypatch.setattr(backends, "AUTO_PREFERENCE", (("openvino", "cpu", lambda a, o: (o, "openvino")), cpu_ort))
    lines = []
    backend, choice = open_auto(artifacts, BackendOptions(), log=lines.append)
    assert (backend.name, choice.name, choice.options.device) == ("onnxruntime", "onnxruntime", "cpu")
    assert lines == ["--backend auto: openvino does not open here (no CPU plugin); falling back to onnxruntime"]


def test_without_openvino_auto_runs_onnxruntime_on_the_cpu(artifacts, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    monkeypatch.setattr(backends, "AUTO_PREFERENCE", tuple(p for p in backends.AUTO_PREFERENCE if p[1] == "cpu"))
    choice = choose_backend(artifacts)
    assert (choice.name, choice.options.device) == ("onnxruntime", "cpu")
    assert choice.reason == "onnxruntime on CPU: the CPU backend every install has"


def test_tensorrt_first_where_engines_run_and_never_where_they_cannot(artifacts, tmp_path, monkeypatch):
    """Faked: plans of every required component, and a GPU that does (not) run them."""
    import dcae_deploy.tensorrt_support as trt

    for component in artifacts.required_components():
        (tmp_path / f"{component}.plan").write_bytes(b"")
    options = BackendOptions(engine_dir=tmp_path)
    monkeypatch.setattr(trt, "probe_cuda", lambda: trt.CudaProbe(devices=(trt.CudaDevice(0, "H200", (9, 0)),)))
    monkeypatch.setattr(trt, "gpu_problem", lambda flavour=None: None)
    choice = choose_backend(artifacts, options)
    assert choice.name == "tensorrt" and choice.options == options
    assert choice.reason == (f"tensorrt on GPU 0 (H200, compute capability 9.0): this export's engines "
                             f"({tmp_path.name}) run on this GPU")
    monkeypatch.setattr(trt, "gpu_problem", lambda flavour=None: "the driver is too old")
    assert choose_backend(artifacts, options).name != "tensorrt"
    assert choose_backend(artifacts, BackendOptions(engine_dir=tmp_path / "missing")).name != "tensorrt"


@pytest.mark.skipif(not _gpu_free(), reason="this machine has a GPU")
def test_device_narrows_auto(artifacts):
    cpu = choose_backend(artifacts, BackendOptions(device="cpu"))
    assert cpu.name == ("openvino" if HAS_OPENVINO else "onnxruntime")
    with pytest.raises(BackendError, match="--backend auto found no backend for --device cuda on this machine: "
                                           "tensorrt on CUDA: no engines"):
        choose_backend(artifacts, BackendOptions(device="cuda"))


def test_flags_of_one_backend_are_refused_under_auto(tmp_path, capsys):
    argv = ["--prompt", "a red circle", "--output", str(tmp_path / "x.png")]
    assert run_cli(generate_main, [*argv, "--ov-precision", "bf16"]) == 1
    assert ("--ov-precision sets OpenVINO, which --backend auto (the default) does not take: add --backend openvino"
            in capsys.readouterr().err)
    assert run_cli(generate_main, [*argv, "--engine-dir", str(tmp_path)]) == 1
    assert "which --backend auto (the default) does not take: add --backend tensorrt" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
