"""TensorRT flavours and engine files: what the engine builder (``dcae_deploy/engines/``) and the runtime's
TensorRT runner (``dcae_deploy/runtime/runners/tensorrt.py``) share.

* the two flavours, ``tensorrt`` (full TensorRT, ``import tensorrt``) and ``tensorrt-rtx`` (TensorRT-RTX,
  ``import tensorrt_rtx``), and one lazy importer of them: neither is imported until asked for;
* an engine folder's files: ``<component>.plan`` and its sidecar ``<component>.json``, written by
  ``dcae_deploy/engines/build.py`` (:meth:`EngineInfo.to_dict`) and read back here (:func:`read_sidecar`);
* whether a plan was built from the graphs an export's manifest lists now (:func:`engine_mismatch`,
  :func:`stale_engines`): a re-export, or an engine folder of another export, makes it stale;
* whether this machine can run engines at all (:func:`probe_cuda`, :func:`require_gpu`): a cheap look at the
  CUDA driver through ctypes (no CUDA context, no TensorRT), so that a missing driver, a driver too old, no
  device or a GPU the flavour does not support is said once, before anything is built or deserialised.

It imports neither torch nor ``dcae_deploy.engines``, so that the runtime can use it on a deploy machine.
Each caller words its own errors around :func:`import_flavour` (build hints in the engines stage, runtime
hints in the runner).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from dcae_deploy.checkpoints import read_json
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.manifest import Component, ShapeProfile, TensorInfo, verify_hashes

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt-rtx"
FLAVOURS = (TENSORRT, TENSORRT_RTX)  # also the order in which "any flavour" tries them
MODULES = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt_rtx"}  # flavour -> Python module
LABELS = {TENSORRT: "TensorRT", TENSORRT_RTX: "TensorRT-RTX"}

PLAN_SUFFIX = ".plan"  # as dcae_deploy.engines writes, and what trtexec --saveEngine is given
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "dcae_deploy.engine"
SIDECAR_VERSION = 1


# --------------------------------------------------------------------------------------------------- flavours


class TensorRTUnavailable(DcaeDeployError):
    """No asked-for flavour imports; ``failures`` holds one ``\\`import x\\` failed (...)`` line per module tried."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = tuple(failures)
        super().__init__("; ".join(self.failures))


@dataclass(frozen=True)
class TensorRTFlavour:
    """An imported TensorRT flavour: ``name`` is one of :data:`FLAVOURS`, ``trt`` the Python module."""

    name: str
    trt: ModuleType
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == TENSORRT_RTX


def import_flavour(name: str | None = None) -> TensorRTFlavour:
    """Import the flavour ``name``, or with ``None`` the first of :data:`FLAVOURS` that imports.

    Raises :class:`ValueError` for a name outside :data:`FLAVOURS` (callers check names first, in their own
    words) and :class:`TensorRTUnavailable` when no candidate imports.
    """
    if name is not None and name not in FLAVOURS:
        raise ValueError(f"unknown TensorRT flavour {name!r}; choose one of {', '.join(FLAVOURS)}")
    failures = []
    for candidate in [name] if name else FLAVOURS:
        try:
            module = importlib.import_module(MODULES[candidate])
        except ImportError as exc:  # also OSError-like failures of the native libs surface as ImportError
            failures.append(f"`import {MODULES[candidate]}` failed ({exc})")
            continue
        return TensorRTFlavour(candidate, module, str(getattr(module, "__version__", "unknown")))
    raise TensorRTUnavailable(failures)


def installed_flavour() -> str | None:
    """The flavour :func:`import_flavour` would import first, found without importing it (None: neither)."""
    for name in FLAVOURS:
        try:
            if importlib.util.find_spec(MODULES[name]) is not None:
                return name
        except (ImportError, ValueError):  # a module set to None in sys.modules (tests), a broken package
            continue
    return None


# --------------------------------------------------------------------------------------------------- sidecars


class EngineInfoError(DcaeDeployError):
    """An engine folder whose sidecars or plans are missing, malformed or changed after the build."""


@dataclass(frozen=True)
class EngineInfo:
    """What one sidecar says about its plan: where the plan came from (ONNX file and hash, manifest variant
    and precision), what built it (flavour, version, GPU target, build time), the optimisation profile and
    the manifest's tensors, so that a runtime can bind buffers by name without deserialising anything.

    ``plan_path`` is absolute; shapes are tuples. ``raw`` is the dictionary it was read from.
    """

    component: str
    plan_path: Path
    plan_sha256: str
    plan_bytes: int
    onnx_file: str
    onnx_sha256: str
    source_dir: str
    variant: str
    kind: str
    precision: str
    backend: str  # the flavour that built it, one of FLAVOURS
    backend_version: str
    target: str
    compute_capabilities: tuple[str, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    profiles: dict[str, ShapeProfile]
    build_seconds: float
    built_at: str
    onnx_files: dict[str, str] = field(default_factory=dict)  # every file of the graph -> SHA-256
    manifest_checkpoint: str | None = None
    manifest_sha256: str | None = None
    strongly_typed: bool = True
    host: str = ""
    min_compute_capability: str | None = None  # "8.9" for fp8 plans (see PRECISION_MIN_COMPUTE_CAPABILITY)
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The sidecar JSON (``plan`` relative to the sidecar's folder)."""
        return {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "component": self.component,
            "plan": self.plan_path.name,
            "plan_sha256": self.plan_sha256,
            "plan_bytes": self.plan_bytes,
            "onnx": {"file": self.onnx_file, "sha256": self.onnx_sha256, "files": dict(self.onnx_files)},
            "source_dir": self.source_dir,
            "manifest": {
                "variant": self.variant,
                "kind": self.kind,
                "precision": self.precision,
                "checkpoint": self.manifest_checkpoint,
                "sha256": self.manifest_sha256,
            },
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "target": self.target,
            "compute_capabilities": list(self.compute_capabilities),
            "inputs": [_tensor_to_dict(t) for t in self.inputs],
            "outputs": [_tensor_to_dict(t) for t in self.outputs],
            "profiles": {name: _profile_to_dict(p) for name, p in self.profiles.items()},
            "build_seconds": self.build_seconds,
            "built_at": self.built_at,
            "host": self.host,
            # optional (absent from version-1 sidecars of other precisions): fp8 plans need compute capability 8.9+
            **({"min_compute_capability": self.min_compute_capability} if self.min_compute_capability else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path) -> EngineInfo:
        """Read :meth:`to_dict`'s output; ``folder`` holds the sidecar (and the plan it names)."""
        onnx, manifest = data["onnx"], data["manifest"]
        return cls(
            component=data["component"],
            plan_path=(folder / data["plan"]).resolve(),
            plan_sha256=data["plan_sha256"],
            plan_bytes=int(data["plan_bytes"]),
            onnx_file=onnx["file"],
            onnx_sha256=onnx["sha256"],
            source_dir=data["source_dir"],
            variant=manifest["variant"],
            kind=manifest["kind"],
            precision=data["precision"],
            backend=data["backend"],
            backend_version=data["backend_version"],
            target=data["target"],
            compute_capabilities=tuple(data["compute_capabilities"]),
            inputs=tuple(_tensor_from_dict(t) for t in data["inputs"]),
            outputs=tuple(_tensor_from_dict(t) for t in data["outputs"]),
            profiles={name: _profile_from_dict(p) for name, p in data["profiles"].items()},
            build_seconds=float(data["build_seconds"]),
            built_at=data["built_at"],
            onnx_files=dict(onnx.get("files", {})),
            manifest_checkpoint=manifest.get("checkpoint"),
            manifest_sha256=manifest.get("sha256"),
            strongly_typed=bool(data.get("strongly_typed", True)),
            host=data.get("host", ""),
            min_compute_capability=data.get("min_compute_capability"),
            raw=data,
        )


def _tensor_to_dict(tensor: TensorInfo) -> dict[str, Any]:
    return {"name": tensor.name, "dtype": tensor.dtype, "shape": list(tensor.shape)}


def _tensor_from_dict(data: dict[str, Any]) -> TensorInfo:
    return TensorInfo(data["name"], data["dtype"], tuple(data["shape"]))


def _profile_to_dict(profile: ShapeProfile) -> dict[str, list[int]]:
    return {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)}


def _profile_from_dict(data: dict[str, Any]) -> ShapeProfile:
    return ShapeProfile(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def read_sidecar(path: str | Path, verify: bool = True) -> EngineInfo:
    """Read one sidecar; with ``verify``, check that its plan exists with the recorded SHA-256."""
    path = Path(path)
    try:
        data = read_json(path)
    except DcaeDeployError as exc:
        raise EngineInfoError(str(exc)) from exc
    if data.get("format") != SIDECAR_FORMAT or data.get("version") != SIDECAR_VERSION:
        raise EngineInfoError(
            f"{path} is not a dcae_deploy engine sidecar of version {SIDECAR_VERSION} "
            f"(format={data.get('format')!r}, version={data.get('version')!r}); rebuild the engines"
        )
    try:
        info = EngineInfo.from_dict(data, path.parent)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EngineInfoError(f"{path} is incomplete or malformed ({exc!r}); rebuild the engines") from exc
    if verify:
        verify_hashes(
            info.plan_path.parent,
            {info.plan_path.name: info.plan_sha256},
            EngineInfoError,
            listed_in=str(path),
            remedy="rebuild the engines",
            what="changed after it was built",
        )
    return info


def sidecar_paths(engine_dir: str | Path) -> list[Path]:
    """The sidecar candidates of an engine folder, sorted (hidden files, such as temporary ones, left out)."""
    return sorted(p for p in Path(engine_dir).glob(f"*{SIDECAR_SUFFIX}") if not p.name.startswith("."))


# --------------------------------------------------------------------------------------------------- freshness


def built_files(info: EngineInfo) -> dict[str, str]:
    """The files (graph, external data, tokenizer) and SHA-256s that the plan of ``info`` was built from."""
    return dict(info.onnx_files) or {info.onnx_file: info.onnx_sha256}


def engine_mismatch(info: EngineInfo, component: Component | None) -> str | None:
    """Why the plan described by ``info`` was not built from ``component`` (a manifest entry); None if it was.

    The sidecar records the SHA-256 of every file of the graph it came from (the manifest's own hashes), its
    tensors and its profile: a re-export into the same folder, or an engine folder of another export, differs.
    ``component=None``: the export has no such component (any more).
    """
    if component is None:
        return f"the export has no {info.component!r} component"
    if info.component != component.name:
        return f"it is the engine of {info.component!r}, not of {component.name!r}"
    built, now = built_files(info), component.files
    if built != now:
        names = sorted(set(built) | set(now), key=lambda n: (n != component.file, n))  # the graph file first
        name = next(n for n in names if built.get(n) != now.get(n))
        return (f"{name} had SHA-256 {_short(built.get(name))} when it was built; the manifest lists "
                f"{_short(now.get(name))}")
    if info.inputs != component.inputs or info.outputs != component.outputs:
        return "its input/output tensors differ from the manifest's"
    if info.profiles != component.profiles:
        return "its optimisation profile (min/opt/max shapes) differs from the manifest's"
    return None


def _short(sha: str | None) -> str:
    return f"{sha[:12]}..." if sha else "no such file"


def sidecar_path(plan: str | Path) -> Path:
    """The sidecar of ``<component>.plan``: ``<component>.json`` beside it."""
    plan = Path(plan)
    return plan.with_name(plan.name.removesuffix(PLAN_SUFFIX) + SIDECAR_SUFFIX)


def stale_engines(engine_dir: str | Path, components: dict[str, Component],
                  names: Iterable[str] | None = None) -> dict[str, str]:
    """``{component: why}`` for each plan of ``engine_dir`` (``names``: only these) not built from ``components``
    (a manifest's). Sidecars are read without hashing the plans; an unreadable sidecar counts as stale. Plans
    without a sidecar (trtexec's) cannot be checked and are left out."""
    wanted = set(names) if names is not None else None
    stale: dict[str, str] = {}
    for path in sidecar_paths(engine_dir):
        if wanted is not None and path.stem not in wanted:
            continue
        if not (path.parent / f"{path.stem}{PLAN_SUFFIX}").is_file():
            continue  # a sidecar without its plan describes nothing that could run
        try:
            info = read_sidecar(path, verify=False)
        except EngineInfoError as exc:
            stale[path.stem] = str(exc)
            continue
        why = engine_mismatch(info, components.get(info.component))
        if why is not None:
            stale[info.component] = why
    return stale


# --------------------------------------------------------------------------------------------------- GPU probe

#: The compute capabilities TensorRT-RTX runs engines on: its ``ComputeCapability`` targets (7.5 Turing, 8.0 / 8.6
#: Ampere, 8.9 Ada, 12.x Blackwell RTX). Data-centre GPUs in between (9.0 Hopper: H100, H200; 10.x: B200) are not.
RTX_COMPUTE_CAPABILITIES = ((7, 5), (8, 0), (8, 6), (8, 9), (12, 0), (12, 1))
#: A plan of TensorRT-RTX's portable default target (no --compute-capability) runs on 8.6 and later.
RTX_PORTABLE_MIN = (8, 6)
#: Precisions whose plans need a newer GPU than the flavour's own minimum: float8 (E4M3) Q/DQ graphs run on FP8
#: tensor cores, compute capability 8.9 (Ada) and later (Hopper 9.0 and Blackwell with full TensorRT; 8.9 and 12.x
#: with TensorRT-RTX, whose builder refuses fp8 for targets 7.5, 8.0 and 8.6: "Cannot compile for target(s) sm86,
#: because the model contains HW-specific datatypes: fp8_e4m3"). int8 Q/DQ graphs need nothing beyond the flavour.
PRECISION_MIN_COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {"fp8": (8, 9)}


def precision_min_cc(precision: str) -> tuple[int, int] | None:
    """The lowest compute capability that runs engines of ``precision`` (None: any the flavour runs on)."""
    return PRECISION_MIN_COMPUTE_CAPABILITY.get(precision)


def strictest_precision(precisions: Iterable[str]) -> str:
    """Of an export's component precisions, the one whose engines need the newest GPU (``fp8`` over ``int8``): it
    decides the build target of all of them."""
    return max(precisions, key=lambda p: precision_min_cc(p) or (0, 0))


def precision_cc_problem(precision: str, compute_capabilities: Iterable[tuple[int, int]], where: str) -> str | None:
    """Why engines of ``precision`` cannot be for ``compute_capabilities``; None if they can.

    ``where`` completes the sentence ("this is GPU 0 (..., compute capability 8.6)", "--compute-capability lists
    8.6"). Said the same way by the builder (targets) and the runtime (the GPU it runs on).
    """
    need = precision_min_cc(precision)
    too_old = sorted({cc for cc in compute_capabilities if need is not None and cc < need})
    if not too_old:
        return None
    return (f"{precision} engines need compute capability {need[0]}.{need[1]} or later (FP8 tensor cores: Ada, "
            f"Hopper, Blackwell), and {where}; GPUs below {need[0]}.{need[1]} need an export of another precision "
            "(--precision int8, fp16 or bf16)")

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
# CUresult codes of cuInit / cuDeviceGetCount that mean "no GPU to run on" (the runtime API uses the same numbers
# for 35 and 100: cudaErrorInsufficientDriver, cudaErrorNoDevice)
_CU_ERRORS = {
    34: "the CUDA driver library found is a stub (CUDA_ERROR_STUB_LIBRARY): no NVIDIA driver is installed",
    35: "the NVIDIA driver is too old for this CUDA version (CUDA error 35, insufficient driver): update the driver",
    46: "the GPU is busy or unavailable (CUDA_ERROR_DEVICE_UNAVAILABLE; exclusive-process mode?)",
    100: "the NVIDIA driver sees no GPU (CUDA error 100, no device{visible})",
    101: "no such GPU (CUDA_ERROR_INVALID_DEVICE{visible})",
    803: ("the NVIDIA kernel driver and its user-space library differ in version (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH): "
          "reboot, or reinstall the driver"),
    804: ("this GPU does not support the CUDA forward-compatibility package in use "
          "(CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE)"),
    999: "the NVIDIA driver failed to initialise (CUDA_ERROR_UNKNOWN; see `nvidia-smi` and the kernel log)",
}


class GpuUnavailable(DcaeDeployError):
    """No GPU here that can run engines of a flavour: no driver, a driver too old, no device, an unsupported GPU."""


@dataclass(frozen=True)
class CudaDevice:
    """One GPU as the CUDA driver lists it (``index`` counts the visible ones: CUDA_VISIBLE_DEVICES applies)."""

    index: int
    name: str
    compute_capability: tuple[int, int]

    @property
    def cc(self) -> str:
        return "{}.{}".format(*self.compute_capability)

    def describe(self) -> str:
        return f"GPU {self.index} ({self.name}, compute capability {self.cc})"


@dataclass(frozen=True)
class CudaProbe:
    """What the CUDA driver reports, without creating a context. ``error``: why no GPU can be used at all."""

    devices: tuple[CudaDevice, ...] = ()
    driver_version: int | None = None  # the CUDA version the driver supports: 13000 is 13.0
    error: str | None = None

    @property
    def driver_cuda(self) -> str | None:
        v = self.driver_version
        return f"{v // 1000}.{v % 1000 // 10}" if v else None


def _driver_names() -> tuple[str, ...]:
    if sys.platform == "win32":
        return ("nvcuda.dll",)
    if sys.platform == "darwin":
        return ()
    return ("libcuda.so.1", "libcuda.so")


@functools.lru_cache(maxsize=1)
def probe_cuda() -> CudaProbe:
    """Ask the CUDA driver (``libcuda`` through ctypes: cuInit, cuDeviceGetCount, the compute capabilities) which
    GPUs this process can use. Cached: asked once per process. Allocates nothing and imports no TensorRT."""
    names = _driver_names()
    if not names:
        return CudaProbe(error=f"there is no NVIDIA CUDA driver on {sys.platform}")
    lib, libname = None, names[0]
    for libname in names:
        try:
            lib = ctypes.CDLL(libname)
            break
        except OSError:
            continue
    if lib is None:
        return CudaProbe(error=f"no NVIDIA driver: {names[0]} cannot be loaded (no driver installed, or the "
                               "container was started without GPU access)")
    out = ctypes.c_int(0)
    try:
        driver = out.value if lib.cuDriverGetVersion(ctypes.byref(out)) == 0 and out.value > 0 else None
        status = lib.cuInit(0)
        if status == 0:
            status = lib.cuDeviceGetCount(ctypes.byref(out))
        if status != 0:
            return CudaProbe(driver_version=driver, error=_cu_error(lib, status))
        if out.value == 0:
            return CudaProbe(driver_version=driver, error=_cu_error(lib, 100))
        devices = []
        for index in range(out.value):
            handle, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
            text = ctypes.create_string_buffer(256)
            if lib.cuDeviceGet(ctypes.byref(handle), index) != 0:
                continue
            lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle)
            lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle)
            lib.cuDeviceGetName(text, len(text), handle)
            label = text.value.decode(errors="replace") or "unnamed GPU"
            devices.append(CudaDevice(index, label, (major.value, minor.value)))
    except AttributeError as exc:  # a library of that name without the driver API
        return CudaProbe(error=f"{libname} is not a usable CUDA driver ({exc})")
    if not devices:
        return CudaProbe(driver_version=driver, error=_cu_error(lib, 100))
    return CudaProbe(tuple(devices), driver)


def _cu_error(lib: Any, status: int) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    if status in _CU_ERRORS:
        return _CU_ERRORS[status].format(visible=hint)
    text = ctypes.c_char_p()
    try:
        named = lib.cuGetErrorName(status, ctypes.byref(text)) == 0 and text.value
    except AttributeError:
        named = False
    return f"the CUDA driver failed to initialise (CUDA error {status}{': ' + text.value.decode() if named else ''})"


@functools.lru_cache(maxsize=None)
def flavour_cuda_major(flavour: str) -> int | None:
    """The CUDA major version the installed wheel of ``flavour`` is for (``tensorrt-rtx-cu13``: 13); None: unknown."""
    from importlib import metadata

    pattern = re.compile(r"tensorrt_rtx_cu(\d+)(_libs|_bindings)?" if flavour == TENSORRT_RTX
                         else r"tensorrt_cu(\d+)(_libs|_bindings)?")
    majors = set()
    for dist in metadata.distributions():
        match = pattern.fullmatch(str(dist.metadata.get("Name") or "").lower().replace("-", "_"))
        if match:
            majors.add(int(match.group(1)))
    return max(majors) if majors else None


def rtx_runs_on(compute_capability: tuple[int, int]) -> bool:
    """Whether TensorRT-RTX runs engines on a GPU of this compute capability."""
    return compute_capability in RTX_COMPUTE_CAPABILITIES or compute_capability[0] == 12


def gpu_problem(flavour: str | None = None, probe: CudaProbe | None = None) -> str | None:
    """Why engines of ``flavour`` (None: the one installed, :func:`installed_flavour`) cannot run on this
    machine's first visible GPU; None when they can."""
    probe = probe or probe_cuda()
    if probe.error is not None:
        return probe.error
    name = flavour or installed_flavour()
    need = flavour_cuda_major(name) if name else None
    if need is not None and probe.driver_version and probe.driver_version // 1000 < need:
        return (f"the NVIDIA driver supports CUDA {probe.driver_cuda}, but the installed {LABELS[name]} is built for "
                f"CUDA {need} (CUDA error 35, insufficient driver): update the NVIDIA driver")
    device = probe.devices[0]
    if name == TENSORRT_RTX and not rtx_runs_on(device.compute_capability):
        return (f"{device.describe()} is not a GPU TensorRT-RTX runs on (it runs on RTX-class GPUs of compute "
                f"capability {_rtx_ccs()}; data-centre GPUs such as H100/H200 (9.0) are not supported)")
    return None


def _rtx_ccs() -> str:
    return ", ".join("{}.{}".format(*cc) for cc in RTX_COMPUTE_CAPABILITIES if cc[0] != 12) + " or 12.x"


def no_gpu_message(flavour: str | None, problem: str) -> str:
    """The one message for ``problem`` (from :func:`gpu_problem`): what is wrong and what to do."""
    name = flavour or installed_flavour()
    label = LABELS.get(name or "", "TensorRT")
    gpus = f" of compute capability {_rtx_ccs()}" if name == TENSORRT_RTX else ""
    return (f"no usable GPU to run {label} engines on this machine: {problem}. {label} engines run only on an "
            f"NVIDIA GPU{gpus} with its driver: here, use --backend onnxruntime (or torch) instead, or run on a "
            "machine with a supported GPU and driver (building engines with `python -m dcae_deploy.engines build` "
            "and TensorRT-RTX needs no GPU)")


def require_gpu(flavour: str | None = None) -> CudaDevice:
    """The GPU engines of ``flavour`` will run on (the first visible one); :class:`GpuUnavailable` if there is none
    they can run on. Call it before building or deserialising anything that only a GPU could use."""
    problem = gpu_problem(flavour)
    if problem is not None:
        raise GpuUnavailable(no_gpu_message(flavour, problem))
    return probe_cuda().devices[0]


def plan_device_problem(info: EngineInfo, device: CudaDevice) -> str | None:
    """Why the plan described by ``info`` cannot run on ``device`` (its build target or its precision excludes that
    GPU: fp8 plans need 8.9+, :data:`PRECISION_MIN_COMPUTE_CAPABILITY`), or None."""
    cc = device.compute_capability
    too_old = precision_cc_problem(info.precision, [cc], f"this is {device.describe()}")
    if too_old is not None:
        return f"it is an {info.precision} engine: {too_old}"
    listed = [c for c in info.compute_capabilities if re.fullmatch(r"\d+\.\d", c)]
    target = re.fullmatch(r"sm(\d+)(\d)", info.target)
    if info.backend == TENSORRT_RTX and listed:
        if device.cc in listed:
            return None
        built_for = f"compute capability {', '.join(listed)}"
    elif info.backend == TENSORRT_RTX and not info.compute_capabilities:  # the portable default
        if cc >= RTX_PORTABLE_MIN:
            return None
        built_for = f"the portable target {info.target} (compute capability 8.6 and later)"
    elif target is not None:  # built for the GPU of the build machine: full TensorRT, or TensorRT-RTX 'current'
        if (int(target.group(1)), int(target.group(2))) == cc:
            return None
        built_for = f"the GPU it was built on (compute capability {target.group(1)}.{target.group(2)})"
    else:
        return None
    return f"it was built for {built_for}, and this is {device.describe()}"
