"""TensorRT / TensorRT-RTX engine runner (``tensorrt`` or ``tensorrt_rtx``, imported lazily).

Only a ``.plan`` and the manifest's tensor names are needed, so engines built by ``trtexec`` (or the
``tensorrt_rtx`` CLI) run as well as those of ``python -m dcae_deploy.engines``. Before anything is deserialised,
``load`` checks (without a GPU) that the plan was built from the manifest's graphs, when its sidecar says what it
was built from (a re-export, or an engine folder of another export, is refused as stale), then that this machine
has a GPU and driver the flavour runs on and that the plan's build target includes it (one cheap driver probe,
``dcae_deploy/tensorrt_support.py``). Per ``infer`` call: every
input shape is set (and checked against the engine's profile), device buffers grow as needed, inputs are
copied host -> device, ``execute_async_v3`` runs on a private stream and outputs are copied back.
``bind`` does the first half once (shapes, buffers, input copies, tensor addresses), each ``run_bound`` is one
``execute_async_v3`` + stream synchronize, and ``fetch`` copies the outputs back. The runner has one set of
device buffers: a binding whose tensors ``infer`` or another ``bind`` replaced is placed again when it runs.
The flavours and their import are those of ``dcae_deploy/tensorrt_support.py``, shared with the engine builder.

Device memory and copies go through cuda-python (``cuda.bindings.runtime`` or the older ``cuda.cudart``)
or, without it, through ``libcudart`` loaded with ctypes (TensorRT wheels bring the CUDA runtime along).
None of this can run on the CPU-only development machine (TensorRT needs a GPU to deserialize a plan);
its tests are marked ``tensorrt`` + ``gpu`` and skip there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcae_deploy.manifest import MANIFEST_FILE, Component, ManifestError, read_manifest
from dcae_deploy.runtime.errors import BackendError
from dcae_deploy.runtime.runners.base import Binding, Runner, numpy_dtype
from dcae_deploy.tensorrt_support import (
    FLAVOURS,
    EngineInfo,
    EngineInfoError,
    GpuUnavailable,
    TensorRTFlavour,
    TensorRTUnavailable,
    engine_mismatch,
    import_flavour,
    plan_device_problem,
    read_sidecar,
    require_gpu,
    sidecar_path,
)

_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
               "BOOL": "bool", "INT8": "int8", "UINT8": "uint8"}
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2


def import_tensorrt(flavour: str | None = None):
    """``(flavour, module)`` for ``"tensorrt"``, ``"tensorrt-rtx"`` or ``None`` (TensorRT first, then RTX)."""
    imported = _load_flavour(flavour)
    return imported.name, imported.trt


def _load_flavour(flavour: str | None) -> TensorRTFlavour:
    if flavour and flavour not in FLAVOURS:
        raise BackendError(f"unknown TensorRT flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    try:
        return import_flavour(flavour or None)
    except TensorRTUnavailable as exc:
        raise BackendError(
            f"no TensorRT runtime: {exc}. Install `tensorrt` (NVIDIA's index) or "
            "`tensorrt-rtx-cu13` for RTX GPUs, plus `cuda-python`"
        ) from exc


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


class CudaRuntime:
    """The few CUDA runtime calls the runner needs, over cuda-python or ctypes + libcudart."""

    def __init__(self) -> None:
        self._cudart = None
        try:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                from cuda import cudart  # cuda-python < 12.6
            self._cudart = cudart
        except ImportError:
            self._lib = self._load_libcudart()

    @staticmethod
    def _load_libcudart():
        names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12",
                 "cudart64_13.dll", "cudart64_12.dll", "cudart64_130.dll", "cudart64_120.dll"]
        for name in filter(None, names):
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            vp, sz = ctypes.c_void_p, ctypes.c_size_t
            lib.cudaMalloc.argtypes = [ctypes.POINTER(vp), sz]
            lib.cudaFree.argtypes = [vp]
            lib.cudaMemcpyAsync.argtypes = [vp, vp, sz, ctypes.c_int, vp]
            lib.cudaStreamCreate.argtypes = [ctypes.POINTER(vp)]
            lib.cudaStreamSynchronize.argtypes = [vp]
            lib.cudaStreamDestroy.argtypes = [vp]
            lib.cudaGetErrorString.restype = ctypes.c_char_p
            return lib
        raise BackendError("TensorRT buffers need the CUDA runtime: `pip install cuda-python` (or put libcudart on the library path)")

    def _check(self, result, what: str):
        if self._cudart is not None:
            err, *rest = result if isinstance(result, tuple) else (result,)
            if int(err) != 0:
                raise BackendError(f"CUDA {what} failed: {self._cudart.cudaGetErrorString(err)[1]!r}")
            return rest[0] if rest else None
        if result != 0:
            raise BackendError(f"CUDA {what} failed: {self._lib.cudaGetErrorString(result).decode()}")
        return None

    def malloc(self, nbytes: int) -> int:
        if self._cudart is not None:
            return int(self._check(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
        ptr = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(ptr), nbytes), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        if self._cudart is not None:
            self._check(self._cudart.cudaFree(ptr), "cudaFree")
        else:
            self._check(self._lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def stream_create(self):
        if self._cudart is not None:
            return self._check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        stream = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return stream

    @staticmethod
    def handle(stream) -> int:
        return int(stream.value or 0) if isinstance(stream, ctypes.c_void_p) else int(stream)

    def copy(self, dst: int, src: int, nbytes: int, kind: int, stream) -> None:
        if self._cudart is not None:
            kinds = self._cudart.cudaMemcpyKind
            k = kinds.cudaMemcpyHostToDevice if kind == _HOST_TO_DEVICE else kinds.cudaMemcpyDeviceToHost
            self._check(self._cudart.cudaMemcpyAsync(dst, src, nbytes, k, stream), "cudaMemcpyAsync")
        else:
            self._check(self._lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), nbytes, kind, stream),
                        "cudaMemcpyAsync")

    def synchronize(self, stream) -> None:
        fn = self._cudart.cudaStreamSynchronize if self._cudart is not None else self._lib.cudaStreamSynchronize
        self._check(fn(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream) -> None:
        fn = self._cudart.cudaStreamDestroy if self._cudart is not None else self._lib.cudaStreamDestroy
        self._check(fn(stream), "cudaStreamDestroy")


@dataclass(frozen=True)
class DeviceTensor:
    """A tensor in one of the runner's device buffers."""

    pointer: int
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(eq=False)
class TensorRTBinding(Binding):
    """A :class:`Binding` whose inputs sit in the runner's device buffers; ``ran``: they hold its outputs."""

    device_outputs: dict[str, DeviceTensor] = field(default_factory=dict)
    ran: bool = False


class TensorRTRunner(Runner):
    """One deserialised engine; tensors are bound by the manifest's names. ``export_dir``: the export folder the
    manifest entry ``component`` comes from, named in the rebuild command of a stale plan (found from the plan's
    place when it lies in that export's ``engines/``)."""

    backend = "tensorrt"

    def __init__(self, component: Component, plan: str | Path, flavour: str | None = None,
                 export_dir: str | Path | None = None) -> None:
        super().__init__(component)
        self.plan = Path(plan)
        self.flavour = flavour
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._imported: TensorRTFlavour | None = None
        self._placed: TensorRTBinding | None = None  # the binding whose tensors the context and buffers hold

    @property
    def on_gpu(self) -> bool:
        return True

    @property
    def version(self) -> str:
        return self._imported.version if self._imported is not None else "unknown"

    def _load(self) -> None:
        if not self.plan.is_file():
            raise BackendError(f"engine {self.plan} not found: build it with `python -m dcae_deploy.engines build`")
        info = self.check_plan()  # a stale plan is refused before anything needs a GPU
        try:
            device = require_gpu(self.flavour or (info.backend if info is not None else None))
        except GpuUnavailable as exc:
            raise BackendError(str(exc)) from exc
        problem = plan_device_problem(info, device) if info is not None else None
        needs = getattr(info, "min_compute_capability", None)  # fp8 plans: no rebuild helps below it
        if problem is not None and needs and device.compute_capability < tuple(int(x) for x in needs.split(".")):
            raise BackendError(f"{self.name}: engine {self.plan} cannot run here: {problem}")
        if problem is not None:
            raise BackendError(
                f"{self.name}: engine {self.plan} cannot run here: {problem}. Rebuild it for this GPU: "
                f"`python -m dcae_deploy.engines build {self._export_hint()} --compute-capability current` "
                "(TensorRT-RTX), or build it on this GPU (full TensorRT)"
            )
        self._imported = _load_flavour(self.flavour)
        self.flavour = self.backend = self._imported.name
        trt = self._trt = self._imported.trt
        self._cuda = CudaRuntime()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if engine is None:
            built = f" (built by {info.backend} {info.backend_version})" if info is not None else ""
            raise BackendError(
                f"{self.flavour} {self._imported.version} could not deserialize {self.plan}{built} on "
                f"{device.describe()}: it was built by another version, or for another GPU; rebuild it here "
                f"(`python -m dcae_deploy.engines build {self._export_hint()}`)"
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        self._check_bindings()
        self._stream = self._cuda.stream_create()

    def check_plan(self) -> EngineInfo | None:
        """The plan's sidecar, checked against the manifest entry (no GPU, nothing deserialised); None for a bare
        plan (trtexec's), which has nothing to check it against."""
        path = sidecar_path(self.plan)
        if not path.is_file():
            return None
        try:
            info = read_sidecar(path, verify=False)  # the plan's size is checked below; its SHA-256 costs a read
        except EngineInfoError as exc:
            raise BackendError(f"{self.name}: {exc}") from exc
        size = self.plan.stat().st_size
        if size != info.plan_bytes:
            raise BackendError(
                f"{self.name}: engine {self.plan} has {size} bytes, its sidecar {path.name} says {info.plan_bytes}: "
                f"it changed after it was built (truncated or replaced); rebuild the engines: "
                f"`python -m dcae_deploy.engines build {self._export_hint()}`"
            )
        why = engine_mismatch(info, self.component)
        if why is None:
            return info
        export = self._export_dir()
        source = Path(info.source_dir)
        head = (f"{self.name}: refusing stale engine {self.plan}: it was built from other graphs than the export's "
                f"{self.name} ({why})")
        if export is not None and _same_folder(source, export):
            raise BackendError(f"{head}. {export} was re-exported after the engines were built; rebuild them: "
                               f"`python -m dcae_deploy.engines build {export}`")
        raise BackendError(
            f"{head}. It was built from the export in {source}: this engine folder belongs to another export (or "
            f"to an earlier one). Use the engines built from this export, or build them: "
            f"`python -m dcae_deploy.engines build {export if export is not None else 'EXPORT_DIR'}`"
            + ("" if export is not None else " (EXPORT_DIR: the export folder you are running)")
        )

    def _export_dir(self) -> Path | None:
        """The export this runner's manifest entry comes from: ``export_dir``, else the export folder holding the
        plan (``EXPORT/engines/<name>/``) when its manifest lists this very component (same files)."""
        if self.export_dir is not None:
            return self.export_dir
        folder = self.plan.resolve().parent
        candidate = folder.parent.parent
        if folder.parent.name != "engines" or not (candidate / MANIFEST_FILE).is_file():
            return None
        try:
            listed = read_manifest(candidate, verify=False).components.get(self.name)
        except ManifestError:
            return None
        return candidate if listed is not None and listed.files == self.component.files else None

    def _export_hint(self) -> str:
        export = self._export_dir()
        return str(export) if export is not None else "EXPORT_DIR"

    def _check_bindings(self) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        outputs = set(names) - inputs
        want_in = {t.name for t in self.component.inputs}
        want_out = {t.name for t in self.component.outputs}
        if inputs != want_in or outputs != want_out:
            raise BackendError(
                f"{self.plan} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the manifest's "
                f"{self.name} has {sorted(want_in)} -> {sorted(want_out)}: the plan was built from another graph"
            )
        for t in (*self.component.inputs, *self.component.outputs):
            found = _TRT_DTYPES.get(engine.get_tensor_dtype(t.name).name, "?")
            if found != t.dtype:
                raise BackendError(f"{self.plan}: tensor {t.name!r} is {found} in the engine, {t.dtype} in the manifest")

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if ptr:
                self._cuda.free(ptr)
            ptr = self._cuda.malloc(max(nbytes, 1))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._placed = None  # this call's tensors replace any binding's
        outputs = self._set_tensors(feeds)
        self._execute()
        return self._download(outputs)  # its synchronize also keeps `feeds` alive until the copies are done

    def _bind(self, feeds: dict[str, np.ndarray]) -> Binding:
        binding = TensorRTBinding(feeds)
        self._place(binding)
        return binding

    def run_bound(self, binding: Binding) -> None:
        if binding is not self._placed:  # infer() or another bind() has set the context's tensors since
            self._place(binding)
        self._execute()
        self._cuda.synchronize(self._stream)
        binding.ran = True

    def fetch(self, binding: Binding) -> dict[str, np.ndarray]:
        if binding is not self._placed or not binding.ran:
            raise BackendError(
                f"{self.name}: fetch() needs a run_bound() of this binding first (the device buffers hold the "
                "tensors of another call)"
            )
        return self._download(binding.device_outputs)

    def _place(self, binding: TensorRTBinding) -> None:
        binding.device_outputs = self._set_tensors(binding.inputs)
        binding.ran = False
        self._cuda.synchronize(self._stream)  # the inputs are on the device
        self._placed = binding

    def _set_tensors(self, feeds: dict[str, np.ndarray]) -> dict[str, DeviceTensor]:
        """Set every input's shape, copy the inputs into device buffers (on the stream), set every tensor's
        address; return where the outputs will be."""
        ctx, stream = self._context, self._stream
        for name, array in feeds.items():
            lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
            if len(lo) != array.ndim or any(not a <= s <= b for a, s, b in zip(lo, array.shape, hi)):
                raise BackendError(
                    f"{self.name}: input {name!r} of shape {array.shape} is outside the engine profile "
                    f"{tuple(lo)} .. {tuple(hi)}; rebuild the engine with a wider profile or use another size"
                )
            if not ctx.set_input_shape(name, array.shape):
                raise BackendError(f"{self.name}: the engine refused shape {array.shape} for {name!r}")
            ptr = self._buffer(name, array.nbytes)
            self._cuda.copy(ptr, array.ctypes.data, array.nbytes, _HOST_TO_DEVICE, stream)
            ctx.set_tensor_address(name, ptr)
        outputs = {}
        for t in self.component.outputs:
            shape = tuple(ctx.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.name}: output {t.name!r} shape {shape} is unresolved after setting the inputs")
            dtype = numpy_dtype(t.dtype)
            pointer = self._buffer(t.name, math.prod(shape) * dtype.itemsize)
            ctx.set_tensor_address(t.name, pointer)
            outputs[t.name] = DeviceTensor(pointer, shape, dtype)
        return outputs

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._cuda.handle(self._stream)):
            raise BackendError(f"{self.flavour} failed to run {self.name} ({self.plan})")

    def _download(self, outputs: dict[str, DeviceTensor]) -> dict[str, np.ndarray]:
        """Copy ``outputs`` to new host arrays and wait for the stream."""
        hosts = {name: np.empty(t.shape, dtype=t.dtype) for name, t in outputs.items()}
        for name, host in hosts.items():
            self._cuda.copy(host.ctypes.data, outputs[name].pointer, host.nbytes, _DEVICE_TO_HOST, self._stream)
        self._cuda.synchronize(self._stream)
        return hosts

    def _close(self) -> None:
        self._placed = None
        self._cuda.synchronize(self._stream)
        for ptr, _ in self._buffers.values():
            self._cuda.free(ptr)
        self._buffers.clear()
        self._cuda.stream_destroy(self._stream)
        self._context = self._engine = self._runtime = None
