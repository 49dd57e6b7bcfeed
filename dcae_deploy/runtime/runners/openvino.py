"""OpenVINO runner (``openvino``, imported lazily): the export's ONNX graphs on Intel CPUs, GPUs and NPUs.

The component's ONNX graph is compiled straight from its file (``Core.compile_model(path, device, properties)``;
external data files beside it are read too), shapes left dynamic (the CPU plugin runs dynamic dimensions), with

* ``INFERENCE_PRECISION_HINT``: ``f32`` unless asked otherwise. OpenVINO's own CPU default on CPUs with bf16
  (AMX or AVX512-BF16) is bf16, too coarse for the SANA transformer; ``bf16`` / ``f16`` are explicit choices and
  ``default`` leaves OpenVINO's choice for the device. OpenVINO then computes every op of the fp32 graph in that
  precision (the export's fp32 islands do not exist in an fp32 graph). Measured on the tiny exports (random
  weights, AVX512-BF16 Xeon, three photographs at 64-128 px) against ONNX Runtime fp32: bf16 gives rel L2 7.7e-3
  to 1.0e-2 (53-55 dB) on the DC-AE decoder and 5.8e-3 to 1.3e-2 on the encoder, at the bf16 gate's edge, and
  6.4e-2 on the demo denoiser's first step, past it; f16 wrecks the decoder on large enough latents (rel L2 1.0,
  12 dB, the demo decoder too; an overflow: the same latent halved decodes at 1e-3). The NPU computes in f16
  (untested here, no NPU): there no hint is set by default.
* ``PERFORMANCE_HINT=LATENCY`` (one request at a time, as the generation loop runs), ``INFERENCE_NUM_THREADS``
  from ``threads`` (CPU only; None: OpenVINO's choice).
* ``CACHE_DIR``: the compiled model is cached, so the second load of a graph starts at once. The folder is
  ``cache_dir`` (``""`` turns the cache off), by default ``$DCAE_DEPLOY_CACHE/openvino-cache`` when that variable is
  set, else ``ARTIFACTS/openvino-cache``; one subfolder per graph, named by the SHA-256s of its files in the
  manifest (a re-export never meets a stale blob), and in it one per device and precision (OpenVINO's CPU blobs
  do not key on the precision hint: an f16 blob would serve a later f32 request). An unwritable folder turns the
  cache off with one warning line.

:attr:`OpenVINORunner.report` records what the compiled model uses (device(s), precision actually used,
threads, hint, cache folder and whether the model came from it). Inputs and outputs keep the manifest's
names (checked against the compiled model's port names at load) and dtypes.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from dcae_deploy.manifest import Component
from dcae_deploy.runtime.errors import BackendError
from dcae_deploy.runtime.runners.base import Runner, numpy_dtype

#: device names the runner accepts (``GPU.1``: the second Intel GPU; ``AUTO:GPU,CPU``: AUTO with a priority list)
DEVICES = ("CPU", "GPU", "NPU", "AUTO")
#: inference precisions (``default``: no hint, OpenVINO's choice for the device); ``fp32``/``fp16`` are accepted too
PRECISIONS = ("f32", "bf16", "f16", "default")
_ALIASES = {"fp32": "f32", "fp16": "f16", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}
CACHE_ENV = "DCAE_DEPLOY_CACHE"
CACHE_FOLDER = "openvino-cache"
INSTALL_HINT = "`pip install openvino` (the CPU plugin is in the wheel; Intel GPUs and NPUs need their drivers)"

_warned_cache: set[str] = set()  # cache folders already reported unwritable (one warning line each)


def import_openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendError(f"OpenVINO is not installed: {INSTALL_HINT}, or choose another --backend") from exc
    return ov


def normalise_precision(precision: str | None) -> str | None:
    """``precision`` as OpenVINO spells it (``fp32`` -> ``f32``); None stays None; unknown -> BackendError."""
    if precision is None:
        return None
    value = _ALIASES.get(precision.lower(), precision.lower())
    if value not in PRECISIONS:
        raise BackendError(f"unknown OpenVINO precision {precision!r}; choose one of {', '.join(PRECISIONS)} "
                           "(f32: exact, the default; bf16/f16: faster where the device computes them natively; "
                           "default: OpenVINO's own choice for the device)")
    return value


def check_device(device: str, available: list[str]) -> str:
    """``device`` in OpenVINO's spelling, checked against :data:`DEVICES` and the devices this machine has."""
    name = device.strip().upper()
    seen = ", ".join(available) or "none"
    auto = name == "AUTO" or name.startswith("AUTO:")
    wanted = [p.strip() for p in name[5:].split(",") if p.strip()] if auto else [name]
    for want in wanted:
        base, dot, index = want.partition(".")
        if base not in DEVICES[:3] or (dot and not index.isdigit()):
            raise BackendError(f"unknown OpenVINO device {device!r}; choose one of {', '.join(DEVICES)} (GPU.N: the "
                               f"N-th Intel GPU; AUTO:GPU,CPU: AUTO with a priority list); this machine's OpenVINO "
                               f"sees: {seen}")
        present = want in available or (not dot and any(d.startswith(base + ".") for d in available)) or (
            index == "0" and base in available)
        if not present:
            needs = {"GPU": "an Intel GPU and its OpenCL / Level Zero driver", "NPU": "an Intel NPU and its driver",
                     "CPU": "a CPU OpenVINO supports"}[base]
            raise BackendError(f"OpenVINO sees no {want} on this machine (it sees: {seen}); {base} needs {needs}: use "
                               "--ov-device CPU (or AUTO)")
    return name


def default_cache_root(artifacts_folder: Path) -> Path:
    """``$DCAE_DEPLOY_CACHE/openvino-cache`` when the variable is set, else ``ARTIFACTS/openvino-cache``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) / CACHE_FOLDER if env else Path(artifacts_folder) / CACHE_FOLDER


def cache_folder(root: Path, component: Component) -> Path:
    """One folder per graph under ``root``, named by the component and the SHA-256s of its files."""
    digest = hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(component.files.items())).encode()).hexdigest()
    return Path(root) / f"{component.name}-{digest[:16]}"


def _writable_cache(folder: Path) -> Path | None:
    """``folder`` created and writable, else None after one warning line per folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return folder
    except OSError as exc:
        if str(folder) not in _warned_cache:
            _warned_cache.add(str(folder))
            print(f"[openvino] cannot write the compiled-model cache {folder} ({exc.strerror or exc}): running without "
                  f"a cache (every load compiles again); set ${CACHE_ENV} to a writable folder", file=sys.stderr)
        return None


class OpenVINORunner(Runner):
    """One component's ONNX graph compiled by OpenVINO for ``device`` at ``precision``."""

    backend = "openvino"

    def __init__(self, component: Component, graph: str | Path, device: str = "CPU", precision: str | None = None,
                 threads: int | None = None, cache_dir: str | Path | None = None) -> None:
        super().__init__(component)
        self.graph = Path(graph)
        self.device = device
        self.precision = normalise_precision(precision)  # None: f32, or the NPU's default
        self.threads = threads
        self.cache_dir = cache_dir  # None: no cache (the backend passes the default folder); "" also: no cache
        self.report: dict = {}
        self._compiled = None
        self._request = None
        self._inputs: dict[str, int] = {}
        self._outputs: list[tuple[str, int, np.dtype]] = []

    @property
    def version(self) -> str:
        return import_openvino().__version__

    def _properties(self, device: str) -> tuple[dict, str]:
        """The compile properties, and the precision asked for (``default``: none)."""
        precision = self.precision or ("default" if device.startswith("NPU") else "f32")
        props: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if precision != "default":
            props["INFERENCE_PRECISION_HINT"] = precision
        if self.threads and device.startswith(("CPU", "AUTO")):
            props["INFERENCE_NUM_THREADS"] = int(self.threads)
        return props, precision

    def _load(self) -> None:
        ov = import_openvino()
        core = ov.Core()
        if self.threads is not None and self.threads < 1:
            raise BackendError(f"threads must be at least 1, got {self.threads}")
        device = check_device(self.device, list(core.available_devices))
        props, asked = self._properties(device)
        # OpenVINO's CPU blobs are not keyed on INFERENCE_PRECISION_HINT (measured, 2026.4: an f16 blob served a
        # later f32 request with f16 numerics): one folder per device and precision
        tag = "".join(c if c.isalnum() or c in ".-" else "_" for c in f"{device}-{asked}")
        cache = _writable_cache(Path(self.cache_dir) / tag) if self.cache_dir else None
        if cache is not None:
            props["CACHE_DIR"] = str(cache)
        if not self.graph.is_file():
            raise BackendError(f"{self.graph} does not exist: re-export the folder")
        t0 = time.perf_counter()
        try:
            compiled = core.compile_model(str(self.graph), device, props)
        except RuntimeError as exc:
            raise BackendError(f"OpenVINO cannot compile {self.graph} for {device} ({_first_line(exc)})") from exc
        compile_s = time.perf_counter() - t0
        self._bind_names(compiled)
        used = _precision_used(core, compiled, device, asked)
        if self.precision not in (None, "default") and used != self.precision:
            print(f"[openvino] {self.name}: asked for {self.precision}, {device} computes in {used} "
                  "(it has no native support for the precision asked)", file=sys.stderr)
        self.report = {
            "openvino": ov.__version__, "device": device,
            "execution_devices": list(compiled.get_property("EXECUTION_DEVICES")),
            "precision_asked": asked, "precision": used,
            "performance_hint": str(_property(compiled, "PERFORMANCE_HINT", "LATENCY")).rsplit(".", 1)[-1],
            "threads": _property(compiled, "INFERENCE_NUM_THREADS", self.threads),
            "cache_dir": str(cache) if cache is not None else None,
            "loaded_from_cache": _property(compiled, "LOADED_FROM_CACHE", False),
            "compile_s": round(compile_s, 3), "graph": str(self.graph),
        }
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    def _bind_names(self, compiled) -> None:
        """Map the manifest's input and output names to the compiled model's ports (BackendError if one is missing)."""
        def ports(nodes) -> dict[str, int]:
            return {name: i for i, port in enumerate(nodes) for name in port.get_names()}

        inputs, outputs = ports(compiled.inputs), ports(compiled.outputs)
        missing = [t.name for t in self.component.inputs if t.name not in inputs] + [
            t.name for t in self.component.outputs if t.name not in outputs]
        if missing:
            names = sorted({*inputs, *outputs})
            raise BackendError(f"{self.graph}: OpenVINO's model has no tensor(s) {', '.join(missing)} named in the "
                               f"manifest (it has {', '.join(names)}): re-export the folder")
        self._inputs = {t.name: inputs[t.name] for t in self.component.inputs}
        self._outputs = [(t.name, outputs[t.name], numpy_dtype(t.dtype)) for t in self.component.outputs]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ov = import_openvino()
        request = self._request
        try:
            for name, array in feeds.items():
                request.set_input_tensor(self._inputs[name], _to_tensor(ov, array))
            request.infer()
            out = {}
            for name, index, dtype in self._outputs:
                tensor = request.get_output_tensor(index)
                data = tensor.data
                if dtype.itemsize == 2 and dtype.kind == "V":  # bfloat16: OpenVINO hands out the raw 16-bit words
                    data = data.view(np.uint16).view(dtype)
                out[name] = np.array(data, dtype=dtype, copy=True)  # the request reuses its output memory
            return out
        except BackendError:
            raise
        except RuntimeError as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise BackendError(f"OpenVINO failed on {self.name} with inputs {shapes}: {_first_line(exc)}") from exc

    def _close(self) -> None:
        self._request = None
        self._compiled = None


def _to_tensor(ov, array: np.ndarray):
    """An ``ov.Tensor`` over ``array`` (no copy); bfloat16 arrays through their raw 16-bit words."""
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:  # ml_dtypes.bfloat16
        return ov.Tensor(array.view(np.uint16), list(array.shape), ov.Type.bf16)
    return ov.Tensor(array, shared_memory=True)


def _precision_used(core, compiled, device: str, asked: str) -> str:
    """The inference precision the compiled model uses (AUTO does not say: the asked one, or its device's default)."""
    try:
        return _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except RuntimeError:
        pass
    if asked != "default":
        return asked
    devices = list(compiled.get_property("EXECUTION_DEVICES"))
    try:
        return _type_name(core.get_property(devices[0], "INFERENCE_PRECISION_HINT")) if devices else "unknown"
    except RuntimeError:
        return "unknown"


def _property(compiled, name: str, default):
    """A property of the compiled model (not every device reports every one: ``default`` then)."""
    try:
        return compiled.get_property(name)
    except RuntimeError:
        return default


def _type_name(value) -> str:
    """OpenVINO's element type -> ``f32`` / ``bf16`` / ``f16``."""
    text = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)


def _first_line(exc: Exception) -> str:
    """OpenVINO's exceptions start with 'Exception from src/...' lines: the last non-empty line says what happened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from")]
    return lines[-1] if lines else str(exc).strip()
