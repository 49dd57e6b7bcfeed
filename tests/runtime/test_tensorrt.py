"""TensorRT / TensorRT-RTX engines through the runtime. Running an engine needs an NVIDIA GPU: skipped without one."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from dcae_deploy.runtime import BackendError, open_backend


def _gpu_reason() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine: TensorRT deserialises and runs plans only on a GPU"
    if not any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx")):
        return "neither tensorrt nor tensorrt_rtx is installed"
    from dcae_deploy.tensorrt_support import gpu_problem

    problem = gpu_problem()  # e.g. only TensorRT-RTX installed, on an H100/H200 (compute capability 9.0)
    return f"the installed TensorRT cannot run engines on this machine: {problem}" if problem else None


def test_missing_engines_say_how_to_build_them(artifacts):
    with pytest.raises(BackendError, match="python -m dcae_deploy.engines build"):
        open_backend("tensorrt", artifacts)


def test_engine_dir_without_plans(artifacts, tmp_path):
    from dcae_deploy.runtime import BackendOptions

    with pytest.raises(BackendError, match="has no text_encoder.plan, denoiser.plan, decoder.plan"):
        open_backend("tensorrt", artifacts, BackendOptions(engine_dir=tmp_path))


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(_gpu_reason() is not None, reason=_gpu_reason() or "")
def test_tensorrt_engines_match_pytorch(artifacts_dir, artifacts, recipe, torch_result):
    from dcae_deploy.engines import build_engines
    from dcae_deploy.parity import compare_stages, run_backend

    build_engines(artifacts_dir, progress=False)
    result = run_backend(artifacts, "tensorrt", recipe.generation())
    records = compare_stages(result.stages, torch_result.stages, artifacts.precision, "tensorrt")
    assert all(r.passed for r in records), [(r.component, r.rel_l2) for r in records]
    assert np.isfinite(result.stages["image"]).all()
