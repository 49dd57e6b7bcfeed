"""The runners' binding API (bind / run_bound / fetch, dcae_deploy/runtime/runners/base.py) gives what infer gives.

On ONNX Runtime's CPU EP over the session's tiny export (every component), and on the base-class defaults
with a toy runner; the CUDA EP and TensorRT paths need a GPU and are exercised by the benchmarks there.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from dcae_deploy.manifest import Component, TensorInfo
from dcae_deploy.runtime import BackendError, BackendOptions, open_backend
from dcae_deploy.runtime.runners import Binding, Runner


def _feeds(component: Component, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at the profile's opt shape: standard-normal floats, ones for integer inputs (token ids, masks)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in component.inputs:
        profile = component.profiles.get(tensor.name)
        shape = profile.opt if profile is not None else tuple(tensor.shape)
        if np.dtype(tensor.dtype).kind in "iub":
            feeds[tensor.name] = np.ones(shape, dtype=tensor.dtype)
        else:
            feeds[tensor.name] = rng.standard_normal(shape)  # float64: bind casts to the manifest dtype
    return feeds


@pytest.fixture
def cpu_runner(artifacts):
    def make(component: str):
        return open_backend("onnxruntime", artifacts, BackendOptions(device="cpu", threads=1)).runner(component)

    return make


@pytest.mark.parametrize("component", ["text_encoder", "denoiser", "decoder"])
def test_bind_run_fetch_equals_infer_on_ort_cpu(cpu_runner, component):
    with cpu_runner(component) as runner:
        feeds = _feeds(runner.component)
        expected = runner.infer(feeds)
        binding = runner.bind(feeds)
        assert {k: v.dtype for k, v in binding.inputs.items()} == {
            t.name: np.dtype(t.dtype) for t in runner.component.inputs
        }
        runner.run_bound(binding)
        first = runner.fetch(binding)
        runner.run_bound(binding)  # a binding runs again without being bound again
        again = runner.fetch(binding)
    assert sorted(first) == sorted(expected) == [t.name for t in runner.component.outputs]
    for name, value in expected.items():
        assert first[name].dtype == value.dtype and np.array_equal(first[name], value), name
        assert np.array_equal(again[name], value), name


def test_bindings_keep_their_own_outputs(cpu_runner):
    with cpu_runner("decoder") as runner:
        a, b = runner.bind(_feeds(runner.component, seed=1)), runner.bind(_feeds(runner.component, seed=2))
        runner.run_bound(a)
        runner.run_bound(b)
        out_a, out_b = runner.fetch(a)["image"], runner.fetch(b)["image"]
        assert np.array_equal(out_a, runner.infer(_feeds(runner.component, seed=1))["image"])
    assert not np.array_equal(out_a, out_b)


def test_public_properties_of_the_ort_cpu_runner(cpu_runner):
    runner = cpu_runner("decoder")
    assert runner.providers == []  # not loaded yet
    with runner:
        assert runner.on_gpu is False
        assert runner.providers == ["CPUExecutionProvider"]
        assert runner.version == onnxruntime.__version__
        binding = runner.bind(_feeds(runner.component))
        with pytest.raises(BackendError, match="before run_bound"):
            runner.fetch(binding)


class _Doubler(Runner):
    """A host runner with nothing but the abstract methods: the binding API is the base class's."""

    backend = "toy"

    def _load(self) -> None:
        self.calls = 0

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"y": feeds["x"] * 2}


def test_base_class_defaults_store_host_arrays_and_call_infer():
    component = Component("toy", "toy.onnx", {}, (TensorInfo("x", "float16", (2,)),), (TensorInfo("y", "float16", (2,)),), {})
    runner = _Doubler(component)
    binding = runner.bind({"x": np.array([1.0, 2.0])})  # loads the runner and casts to the manifest's float16
    assert isinstance(binding, Binding) and binding.inputs["x"].dtype == np.float16 and runner.calls == 0
    assert runner.on_gpu is False and runner.version == "unknown"
    runner.run_bound(binding)
    runner.run_bound(binding)
    out = runner.fetch(binding)
    assert runner.calls == 2 and out["y"].dtype == np.float16 and out["y"].tolist() == [2.0, 4.0]
    with pytest.raises(BackendError, match="do not match the manifest"):
        runner.bind({"z": np.zeros(2)})
