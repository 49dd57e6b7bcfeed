"""Fault injection around TensorRT engines: engines bound to the export they were built from, and a machine
without a GPU that could run them.

* A re-export into a folder leaves its old ``engines/`` behind: ``engines info`` marks the plans STALE (exit 1),
  the runtime refuses them before anything needs a GPU, and a rebuild replaces them (and says so).
* ``--engine-dir`` of another export is refused by the runtime, naming the component, the plan and the fix.
* ``generate --backend tensorrt`` on a machine without a usable GPU/driver says so once (not "rebuild it
  here") and builds nothing for the shipped demo. Skipped on a machine whose GPU the engines could run on.

Real exports (the tiny DC-AE decoder; the demo pipeline at 64 px) and real TensorRT-RTX builds on the CPU.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx not installed: the engines here are built with TensorRT-RTX")

from dcae_deploy.runtime import BackendError, BackendOptions  # noqa: E402
from dcae_deploy.runtime.backends import open_component  # noqa: E402
from dcae_deploy.tensorrt_support import (  # noqa: E402
    CudaDevice,
    CudaProbe,
    EngineInfo,
    gpu_problem,
    plan_device_problem,
    read_sidecar,
)

VARIANT = "tiny-f32c32-sana"
TINY = ["--model", VARIANT, "--components", "decoder", "--min-res", "64", "--opt-res", "64", "--max-res", "128",
        "--max-batch", "1"]
NO_GPU = "no usable GPU"
SMALL = ["--height", "64", "--width", "64", "--steps", "1", "--quiet"]  # what the 64 px demo export admits


def _python(module: str, *args, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m module args`` (the conftest's runner, for module-scoped fixtures)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two exports of the tiny decoder with different weights: ``a`` (random, seed 0) and ``b`` (a checkpoint
    drawn with seed 1, also at ``checkpoint``)."""
    import torch

    from dcae_deploy import build_autoencoder, save_autoencoder

    root = tmp_path_factory.mktemp("engine-faults")
    torch.manual_seed(1)
    checkpoint = save_autoencoder(build_autoencoder(VARIANT), root / "seed1")
    _ok(_python("dcae_deploy.export", *TINY, "--output", root / "a"))
    _ok(_python("dcae_deploy.export", *TINY, "--checkpoint", checkpoint, "--output", root / "b"))
    return {"a": root / "a", "b": root / "b", "checkpoint": checkpoint}


@pytest.fixture(scope="module")
def demo64(tmp_path_factory):
    """The shipped demo pipeline exported at 64 px, batch 1 (a small but real export of the demo's weights)."""
    from dcae_deploy.shipped_demo import demo_folder

    out = tmp_path_factory.mktemp("demo64")
    _ok(_python("dcae_deploy.export", "--model", "demo", "--checkpoint", demo_folder(), "--min-res", "64",
                "--opt-res", "64", "--max-res", "64", "--max-batch", "1", "--output", out))
    return out


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("engines"))
    return dest


def _plans(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.plan")}


@pytest.fixture
def no_deserialising(monkeypatch):
    """Fail the test if anything reaches TensorRT-RTX's deserialiser (a guard, not a stand-in: nothing is faked)."""
    import tensorrt_rtx

    def forbidden(*args, **kwargs):
        raise AssertionError("a plan was handed to TensorRT although it should have been refused first")

    monkeypatch.setattr(tensorrt_rtx, "Runtime", forbidden)


# ------------------------------------------------------------------------------------------------------------
# engines bound to their export


def test_reexport_makes_engines_stale_until_rebuilt(exports, run, tmp_path, no_deserialising):
    folder = _copy(exports["a"], tmp_path / "export")
    _ok(run("dcae_deploy.engines", "build", folder, "--backend", "tensorrt-rtx", "--quiet"))
    (engine_dir,) = (folder / "engines").iterdir()
    plan = engine_dir / "decoder.plan"
    fresh = _ok(run("dcae_deploy.engines", "info", engine_dir))
    assert "STALE" not in fresh.stdout

    # a re-export with other weights into the same folder: the old engines stay, built from the old graphs
    _ok(run("dcae_deploy.export", *TINY, "--checkpoint", exports["checkpoint"], "--output", folder))
    before = _plans(folder)
    for target in (engine_dir, folder):  # an engine folder, or the export folder (all its engine folders)
        info = run("dcae_deploy.engines", "info", target)
        assert info.returncode == 1, info.stdout + info.stderr
        assert re.search(r"^STALE decoder: ", info.stdout, re.M) and "built from other graphs" in info.stdout
        assert info.stderr.startswith("error: 1 stale engine(s)") and str(plan) in info.stderr
        assert f"python -m dcae_deploy.engines build {folder}" in info.stderr and "Traceback" not in info.stderr

    with pytest.raises(BackendError) as caught:
        open_component(folder, "decoder", backend="tensorrt")
    message = str(caught.value)
    for part in ("decoder: refusing stale engine", str(plan), "built from other graphs", "re-exported",
                 f"`python -m dcae_deploy.engines build {folder}`"):
        assert part in message, message
    assert _plans(folder) == before, "refusing a stale plan must leave it alone"

    rebuilt = _ok(run("dcae_deploy.engines", "build", folder, "--backend", "tensorrt-rtx", "--quiet"))
    assert f"replacing stale engine {plan}: it was built from other graphs" in rebuilt.stderr
    assert _plans(folder).keys() == before.keys() and _plans(folder) != before
    again = _ok(run("dcae_deploy.engines", "info", folder))
    assert "STALE" not in again.stdout and "fresh" in again.stdout
    assert read_sidecar(engine_dir / "decoder.json").onnx_sha256 == hashlib.sha256(
        (folder / "decoder.onnx").read_bytes()).hexdigest()

    try:  # fresh now: past the stale check (on a machine without a usable GPU, on to the GPU check)
        open_component(folder, "decoder", backend="tensorrt").close()
    except BackendError as exc:
        assert "stale" not in str(exc) and NO_GPU in str(exc), str(exc)


def test_engine_dir_of_another_export_is_refused(exports, run, tmp_path, no_deserialising):
    ours = _copy(exports["a"], tmp_path / "ours")
    theirs = exports["b"]  # same model, other weights
    _ok(run("dcae_deploy.engines", "build", ours, "--backend", "tensorrt-rtx", "--quiet"))
    (engine_dir,) = (ours / "engines").iterdir()

    with pytest.raises(BackendError) as caught:
        open_component(theirs, "decoder", backend="tensorrt", options=BackendOptions(engine_dir=engine_dir))
    message = str(caught.value)
    for part in ("decoder: refusing stale engine", str(engine_dir / "decoder.plan"), "built from other graphs",
                 f"built from the export in {ours}", "another export", "python -m dcae_deploy.engines build"):
        assert part in message, message

    info = run("dcae_deploy.engines", "info", engine_dir, "--export", theirs)
    assert info.returncode == 1 and "STALE decoder" in info.stdout, info.stdout + info.stderr
    assert f"python -m dcae_deploy.engines build {theirs}" in info.stderr
    _ok(run("dcae_deploy.engines", "info", engine_dir))  # against its own export: fresh


# ------------------------------------------------------------------------------------------------------------
# a machine without a GPU that could run the engines


def _usable_gpu(flavour: str) -> str | None:
    """A reason to skip when this machine has a GPU that engines of ``flavour`` (``auto``: whichever the demo
    builds with) could run on, found independently of dcae_deploy's own probe (nvidia-smi)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        if list(Path("/dev").glob("nvidia[0-9]*")):
            return "an NVIDIA device node exists but nvidia-smi does not: cannot tell independently whether it is usable"
        return None
    done = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True,
                          timeout=60)
    caps = [tuple(int(x) for x in c.split(".")) for c in done.stdout.split() if re.fullmatch(r"\d+\.\d+", c)]
    if done.returncode != 0 or not caps:
        return None  # nvidia-smi finds no GPU: the driver cannot be used either
    import importlib.util

    full = flavour == "auto" and importlib.util.find_spec("tensorrt") is not None
    if full or caps[0] in {(7, 5), (8, 0), (8, 6), (8, 9)} or caps[0][0] == 12:
        return f"this machine has a GPU the engines can run on (compute capability {caps[0]}): nothing to refuse"
    return None


def test_generate_tensorrt_without_a_usable_gpu_says_so_once(demo64, run, tmp_path):
    reason = _usable_gpu("tensorrt-rtx")
    if reason:
        pytest.skip(reason)
    folder = _copy(demo64, tmp_path / "export")
    _ok(run("dcae_deploy.engines", "build", folder, "--backend", "tensorrt-rtx", "--quiet"))  # no GPU needed
    out = tmp_path / "out.png"
    done = run("dcae_deploy.generate", "--artifacts", folder, "--backend", "tensorrt", "--prompt", "a red circle",
               "--output", out, *SMALL, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count(NO_GPU) == 1 and done.stderr.count("error: ") == 1, done.stderr
    assert "TensorRT-RTX" in done.stderr and "--backend onnxruntime" in done.stderr
    assert "rebuild it here" not in done.stderr and "deserializ" not in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_demo_tensorrt_without_a_usable_gpu_builds_nothing(demo64, run, tmp_path, monkeypatch):
    reason = _usable_gpu("auto")
    if reason:
        pytest.skip(reason)
    from dcae_deploy.shipped_demo import CACHE_ENV, cache_folder, demo_folder

    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    _copy(demo64, cache_folder(demo_folder()))  # the demo's export is cached already (else generate exports it)
    out = tmp_path / "out.png"
    done = run("dcae_deploy.generate", "--backend", "tensorrt", "--prompt", "a red circle", "--output", out, *SMALL,
               env={CACHE_ENV: str(cache)}, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count(NO_GPU) == 1 and done.stderr.count("error: ") == 1, done.stderr
    assert "--backend onnxruntime" in done.stderr and "rebuild it here" not in done.stderr
    assert "building the demo's engines" not in done.stderr and "Traceback" not in done.stderr
    assert _plans(cache) == {}, "engines were built although this machine cannot run them"
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------------
# the probe's verdicts on GPUs this machine does not have (driver answers written down, nothing else faked)


def _probe(cc: tuple[int, int], driver: int = 13000, name: str = "GPU") -> CudaProbe:
    return CudaProbe(devices=(CudaDevice(0, name, cc),), driver_version=driver)


def test_gpu_verdicts_for_driver_and_compute_capability():
    h200 = gpu_problem("tensorrt-rtx", _probe((9, 0), name="NVIDIA H200"))
    assert h200 is not None and "NVIDIA H200, compute capability 9.0" in h200 and "not a GPU TensorRT-RTX runs on" in h200
    assert gpu_problem("tensorrt", _probe((9, 0))) is None  # full TensorRT runs on Hopper
    for cc in ((8, 6), (8, 9), (12, 0)):
        assert gpu_problem("tensorrt-rtx", _probe(cc)) is None
    old = gpu_problem("tensorrt-rtx", _probe((8, 9), driver=12040))  # the installed wheel is tensorrt-rtx-cu13
    assert old is not None and "CUDA 12.4" in old and "CUDA error 35" in old and "update the NVIDIA driver" in old
    assert gpu_problem("tensorrt-rtx", CudaProbe(error="no NVIDIA driver: x")) == "no NVIDIA driver: x"


def test_plan_target_must_include_the_gpu(tmp_path):
    def info(target: str, ccs: tuple[str, ...], backend: str = "tensorrt-rtx") -> EngineInfo:
        return EngineInfo(
            component="decoder", plan_path=tmp_path / "decoder.plan", plan_sha256="0" * 64, plan_bytes=1,
            onnx_file="decoder.onnx", onnx_sha256="1" * 64, source_dir=str(tmp_path), variant=VARIANT,
            kind="autoencoder", precision="fp32", backend=backend, backend_version="1", target=target,
            compute_capabilities=ccs, inputs=(), outputs=(), profiles={}, build_seconds=1.0, built_at="now",
        )

    a100, rtx4090 = CudaDevice(0, "A100", (8, 0)), CudaDevice(0, "RTX 4090", (8, 9))
    assert "portable target sm86+" in plan_device_problem(info("sm86+", ()), a100)
    assert plan_device_problem(info("sm86+", ()), rtx4090) is None
    assert "compute capability 8.6, 12.0" in plan_device_problem(info("sm86-sm120", ("8.6", "12.0")), rtx4090)
    assert plan_device_problem(info("sm80-sm89", ("8.0", "8.9")), a100) is None
    assert "the GPU it was built on (compute capability 8.9)" in plan_device_problem(info("sm89", (), "tensorrt"), a100)
