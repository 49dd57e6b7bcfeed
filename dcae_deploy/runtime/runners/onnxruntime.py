"""ONNX Runtime runner: CPU EP, or CUDA EP with IO binding when ``onnxruntime-gpu`` sees a GPU.

CUDA EP notes (see shared/gpu-notes.md): ``onnxruntime.preload_dlls()`` is called first so that the
CUDA 13 libraries installed as pip packages are found; TF32 is off for fp32 graphs (``use_tf32=0``) so
that fp32 parity holds; inputs are copied host -> device with ``OrtValue.ortvalue_from_numpy`` (a
synchronous copy, so no cross-stream hazard), and an input passed again as the *same* array object
(the caption states across denoiser steps) keeps its device copy. :meth:`OnnxRuntimeRunner.bind` (the
benchmarks' path) copies its inputs once and runs once to allocate the outputs on the device; each
:meth:`~OnnxRuntimeRunner.run_bound` then is one ``run_with_iobinding`` into them. The CUDA path could not be run
on the CPU-only development machine; it is exercised on a GPU machine only.

CPU sessions use :class:`OrtSettings` (sequential execution, all graph optimisations, memory arena and
patterns, spinning threads, denormals as zero) and load the graph through
:func:`~dcae_deploy.runtime.ort_graph.load_rewritten`: the same function written so that the CPU EP's blocked
(NCHWc) layout covers it (upsampling as one ``Resize``, RMSNorm and GLU as convolutions; needs the ``onnx``
package, skipped without it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dcae_deploy.manifest import Component
from dcae_deploy.precisions import ORT_OPTIMIZATION_LIMIT, ORT_QDQ_DISABLED_OPTIMIZERS, QUANTIZED
from dcae_deploy.runtime.errors import BackendError
from dcae_deploy.runtime.ort_graph import load_rewritten
from dcae_deploy.runtime.runners.base import Binding, Runner

DEVICES = ("auto", "cpu", "cuda")


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendError(
            "ONNX Runtime is not installed: `pip install onnxruntime` (CPU) or `pip install onnxruntime-gpu` (CUDA)"
        ) from exc
    return ort


@dataclass(frozen=True)
class OrtSettings:
    """Session settings (benchmarks/ort_cpu_options.py compares the alternatives)."""

    graph_optimization_level: str = "ORT_ENABLE_ALL"
    enable_cpu_mem_arena: bool = True
    enable_mem_pattern: bool = True
    allow_spinning: bool = True  # idle threads spin between ops: faster, but busy on a shared machine
    denormal_as_zero: bool = True
    rewrite_graph: bool | None = None  # CPU layout rewrites (ort_graph.py); None: on for the CPU EP, off for CUDA
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    optimized_model_filepath: str | None = None  # save the optimised graph (tied to this CPU's instruction set)


@dataclass(eq=False)
class CudaIOBinding(Binding):
    """A :class:`Binding` on the CUDA EP: ORT's IO binding, with inputs and outputs resident on the GPU."""

    io_binding: Any = None
    device_inputs: dict[str, Any] = field(default_factory=dict)  # OrtValues, kept alive with the binding
    device_outputs: list[Any] = field(default_factory=list)  # OrtValues, in the session's output order


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self, component: Component, graph: str | Path, precision: str, device: str = "auto", threads: int | None = None,
        settings: OrtSettings | None = None,
    ) -> None:
        super().__init__(component)
        if device not in DEVICES:
            raise BackendError(f"unknown ONNX Runtime device {device!r}; choose one of {', '.join(DEVICES)}")
        self.graph = Path(graph)
        self.precision = precision
        self.device = device
        self.threads = threads
        self.settings = settings or OrtSettings()
        self.report: dict = {}  # what the loaded session used (benchmarks print it)
        self._session = None
        self._cuda = False
        self._bound: dict[str, tuple[np.ndarray, object]] = {}

    def _load(self) -> None:
        ort = _import_ort()
        self._cuda = self.device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers()
        if self.device == "cuda" and not self._cuda:
            raise BackendError(
                "--device cuda asked for ONNX Runtime's CUDA EP, which this onnxruntime does not have: "
                "`pip install onnxruntime-gpu` (and a CUDA-capable GPU), or use --device cpu"
            )
        t = self.settings
        providers: list = ["CPUExecutionProvider"]
        if self._cuda:
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            cuda_options = {"device_id": 0, "use_tf32": 0 if self.precision == "fp32" else 1,
                            "cudnn_conv_algo_search": t.cudnn_conv_algo_search}
            providers.insert(0, ("CUDAExecutionProvider", cuda_options))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        level = ORT_OPTIMIZATION_LIMIT.get(self.precision, t.graph_optimization_level)
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = int(self.threads or 0)
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = t.enable_cpu_mem_arena
        options.enable_mem_pattern = t.enable_mem_pattern
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if t.allow_spinning else "0")
        if t.denormal_as_zero:
            options.add_session_config_entry("session.set_denormal_as_zero", "1")
        if t.optimized_model_filepath:
            options.optimized_model_filepath = t.optimized_model_filepath
        source: str | bytes = str(self.graph)
        rewrites: dict[str, int] = {}
        quantized = self.precision in QUANTIZED  # a Q/DQ graph: ORT fuses its own int8 kernels; no rewrites
        if (not self._cuda if t.rewrite_graph is None else t.rewrite_graph) and self.graph.is_file() and not quantized:
            loaded = load_rewritten(self.graph)
            if loaded is not None:
                source, rewrites = loaded
        self.report = {**asdict(t), "intra_op_num_threads": options.intra_op_num_threads,
                       "graph_rewrite": {k: v for k, v in rewrites.items() if v} or None}
        try:
            extra = {"disabled_optimizers": list(ORT_QDQ_DISABLED_OPTIMIZERS)} if quantized else {}
            self._session = ort.InferenceSession(source, options, providers=providers, **extra)
        except Exception as exc:  # ORT raises its own Fail / InvalidGraph / NotImplemented types
            hint = " (ONNX Runtime's CPU EP has no bf16 convolution: use an fp32/fp16 export or a GPU)" if (
                self.precision == "bf16" and not self._cuda
            ) else ""
            raise BackendError(f"ONNX Runtime cannot load {self.graph}: {exc}{hint}") from exc
        self._outputs = [o.name for o in self._session.get_outputs()]

    @property
    def on_gpu(self) -> bool:
        """Whether the loaded session runs on the CUDA EP."""
        return self._cuda

    @property
    def providers(self) -> list[str]:
        """The execution providers of the loaded session, preferred first (empty before :meth:`load`)."""
        return self._session.get_providers() if self._session is not None else []

    @property
    def version(self) -> str:
        return _import_ort().__version__

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._failures_reported(feeds):
            if self._cuda:
                return self._infer_cuda(feeds)
            return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))

    def _infer_cuda(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        io, _ = self._io_binding(feeds, reuse_inputs=True)
        self._session.run_with_iobinding(io)
        return dict(zip(self._outputs, io.copy_outputs_to_cpu()))

    def _bind(self, feeds: dict[str, np.ndarray]) -> Binding:
        if not self._cuda:
            return super()._bind(feeds)
        with self._failures_reported(feeds):
            io, values = self._io_binding(feeds, reuse_inputs=False)
            self._session.run_with_iobinding(io)  # allocates the outputs once; later runs reuse them
            outputs = io.get_outputs()
            for name, value in zip(self._outputs, outputs):
                io.bind_ortvalue_output(name, value)
        return CudaIOBinding(feeds, io_binding=io, device_inputs=values, device_outputs=list(outputs))

    def run_bound(self, binding: Binding) -> None:
        if not isinstance(binding, CudaIOBinding):
            super().run_bound(binding)
            return
        with self._failures_reported(binding.inputs):
            self._session.run_with_iobinding(binding.io_binding)

    def fetch(self, binding: Binding) -> dict[str, np.ndarray]:
        if not isinstance(binding, CudaIOBinding):
            return super().fetch(binding)
        return {name: value.numpy() for name, value in zip(self._outputs, binding.device_outputs)}

    def _io_binding(self, feeds: dict[str, np.ndarray], reuse_inputs: bool) -> tuple[Any, dict[str, Any]]:
        """ORT's IO binding of ``feeds`` copied to the GPU, outputs bound to the GPU; and the input OrtValues.

        With ``reuse_inputs``, an array passed again as the same object keeps its earlier device copy.
        """
        ort = _import_ort()
        io = self._session.io_binding()
        values = {}
        for name, array in feeds.items():
            cached = self._bound.get(name) if reuse_inputs else None
            if cached is not None and cached[0] is array:
                value = cached[1]
            else:
                value = ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
                if reuse_inputs:
                    self._bound[name] = (array, value)  # keep the array alive: identity is the cache key
            io.bind_ortvalue_input(name, value)
            values[name] = value
        for name in self._outputs:
            io.bind_output(name, "cuda", 0)
        return io, values

    @contextmanager
    def _failures_reported(self, feeds: dict[str, np.ndarray]) -> Iterator[None]:
        """ONNX Runtime's own exception types (Fail, InvalidArgument, ...) -> BackendError naming the inputs."""
        try:
            yield
        except BackendError:
            raise
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise BackendError(f"ONNX Runtime failed on {self.name} with inputs {shapes}: {exc}") from exc

    def _close(self) -> None:
        self._session = None
        self._bound.clear()
