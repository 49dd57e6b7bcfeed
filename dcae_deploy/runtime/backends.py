"""Backends: one table of name -> backend, each a factory of per-component runners over one export folder.

``open_backend("onnxruntime", artifacts)`` -> a backend whose ``runner("denoiser")`` gives a
:class:`~dcae_deploy.runtime.runners.base.Runner`. :data:`BACKENDS` is the one list every command line
(``generate``, ``evaluate``, ``parity``) and the benchmarks offer; a new backend is a runner module plus one
``@register_backend`` class here. Runner modules are imported on first use: choosing ONNX Runtime or
TensorRT never imports torch. :func:`choose_backend` is ``--backend auto``: the fastest backend of the table that runs
an export on this machine within its gate (:data:`AUTO_PREFERENCE`), with one line saying why.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from dcae_deploy.precisions import QUANTIZED
from dcae_deploy.runtime.artifacts import Artifacts, open_export
from dcae_deploy.runtime.errors import BackendError
from dcae_deploy.runtime.runners.base import Runner
from dcae_deploy.tensorrt_support import FLAVOURS, PLAN_SUFFIX, EngineInfoError, read_sidecar, sidecar_paths


@dataclass(frozen=True)
class BackendOptions:
    """Backend settings. ``device``: ``auto``/``cpu``/``cuda`` (torch, ONNX Runtime); ``engine_dir``: TensorRT plans
    (default: the one engine folder under ``ARTIFACTS/engines`` that matches the export precision);
    ``trt_flavour``: ``tensorrt``/``tensorrt-rtx`` (default: the sidecar's, else whichever imports);
    ``checkpoint``: torch weights (default: the manifest's ``checkpoint``); ``threads``: ONNX Runtime and OpenVINO
    CPU threads. OpenVINO: ``ov_device`` ``CPU``/``GPU``/``GPU.N``/``NPU``/``AUTO``; ``ov_precision`` ``f32`` (the
    default, except on the NPU), ``bf16``, ``f16`` or ``default`` (OpenVINO's own choice: bf16 on CPUs with bf16);
    ``ov_cache_dir``: compiled-model cache (default ``$DCAE_DEPLOY_CACHE/openvino-cache`` or
    ``ARTIFACTS/openvino-cache``; ``""``: no cache)."""

    device: str = "auto"
    engine_dir: str | Path | None = None
    trt_flavour: str | None = None
    checkpoint: str | Path | None = None
    threads: int | None = None
    ov_device: str = "CPU"
    ov_precision: str | None = None
    ov_cache_dir: str | Path | None = None


class Backend:
    """Makes the runners of one export folder on one backend (subclasses set ``name`` and ``runner``)."""

    name = "?"

    def __init__(self, artifacts: Artifacts, options: BackendOptions) -> None:
        self.artifacts, self.options = artifacts, options

    def runner(self, component: str) -> Runner:
        raise NotImplementedError

    def has(self, component: str) -> bool:
        """Whether this backend can run ``component`` of the export (optional ones: the split decoder)."""
        return component in self.artifacts.manifest.components

    def nonfinite_cause(self, component: str) -> str | None:
        """Why ``component`` produced NaN/Inf, when this backend can tell (None: the error names the likely cause)."""
        return None


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Add a backend class to :data:`BACKENDS` under its ``name``."""
    if cls.name in BACKENDS:
        raise ValueError(f"backend {cls.name!r} is already registered")
    BACKENDS[cls.name] = cls
    return cls


@register_backend
class TorchBackend(Backend):
    """PyTorch fp32 reference. Models load once, from ``options.checkpoint`` or the manifest's ``checkpoint``
    (a pipeline folder, or a bare variant's checkpoint: ``load_parts``); an export made from random weights
    (``checkpoint`` null) is rebuilt with ``build_parts(variant, seed=0)``, the exporter's seed."""

    name = "torch"

    def __init__(self, artifacts: Artifacts, options: BackendOptions, models=None) -> None:
        super().__init__(artifacts, options)
        self._models = models  # PipelineModels already in memory (dcae_deploy.runtime.eager), else loaded on demand

    def models(self):
        if self._models is None:
            from dcae_deploy.family import config_from_record
            from dcae_deploy.models.pipeline import build_parts, load_parts

            checkpoint = self.options.checkpoint or self.artifacts.manifest.checkpoint
            variant = self.artifacts.variant
            config = config_from_record(variant, self.artifacts.manifest.model_config)
            if checkpoint is None:
                print(f"[runtime] the export of {variant} was made from random weights (checkpoint null): torch "
                      f"rebuilds them with build_parts({variant!r}, seed=0)", file=sys.stderr)
                self._models = build_parts(config, seed=0)
            else:
                if not Path(checkpoint).exists():
                    raise BackendError(
                        f"the torch backend needs the weights the export came from, {checkpoint}, which does not "
                        "exist here: pass --checkpoint PIPELINE_FOLDER, or use --backend onnxruntime"
                    )
                self._models = load_parts(config, checkpoint)
        return self._models

    def nonfinite_cause(self, component: str) -> str | None:
        """The non-finite weights of the loaded parts, if any (an fp32 model on sound weights gives finite values)."""
        from dcae_deploy.numerics import nonfinite_cause

        if self._models is None:
            return None
        return nonfinite_cause({role: getattr(self._models, role, None)
                                for role in ("text_encoder", "denoiser", "autoencoder")})

    def runner(self, component: str) -> Runner:
        from dcae_deploy.runtime.runners.torch import TorchRunner

        import torch

        device = self.options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            reason = ("this torch is a CPU-only build" if torch.version.cuda is None
                      else "torch sees no CUDA GPU (no device or no driver)")
            raise BackendError(f"--device cuda with --backend torch: {reason} (torch {torch.__version__}); "
                               "use --device cpu, or install a CUDA build of torch on a machine with a GPU")
        return TorchRunner(self.artifacts.component(component), self.models, device=device)


@register_backend
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def runner(self, component: str) -> Runner:
        from dcae_deploy.runtime.runners.onnxruntime import OnnxRuntimeRunner

        a = self.artifacts
        return OnnxRuntimeRunner(a.component(component), a.graph_path(component), a.precision_of(component),
                                 device=self.options.device, threads=self.options.threads)


@register_backend
class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, artifacts: Artifacts, options: BackendOptions) -> None:
        """Checks, once and before any stage runs: engines exist, were built from this export's graphs (no GPU
        needed to tell), and this machine has a GPU they can run on."""
        from dcae_deploy.tensorrt_support import GpuUnavailable, gpu_problem, no_gpu_message, require_gpu

        super().__init__(artifacts, options)
        try:
            self.engine_dir = find_engine_dir(artifacts, options.engine_dir)
        except BackendError as exc:
            problem = gpu_problem(options.trt_flavour)
            if problem is not None:  # building them would not let them run here
                raise BackendError(f"{no_gpu_message(options.trt_flavour, problem)}. (Also: {exc})") from exc
            raise
        self.flavour = options.trt_flavour or _sidecar_flavour(self.engine_dir)
        for component in (c for c in artifacts.manifest.components if self.has(c)):
            self.runner(component).check_plan()  # a stale plan: refused now, not after earlier stages ran
        try:
            require_gpu(self.flavour)
        except GpuUnavailable as exc:
            raise BackendError(str(exc)) from exc

    def plan(self, component: str) -> Path:
        return self.engine_dir / f"{component}{PLAN_SUFFIX}"

    def runner(self, component: str) -> Runner:
        from dcae_deploy.runtime.runners.tensorrt import TensorRTRunner

        return TensorRTRunner(self.artifacts.component(component), self.plan(component), self.flavour,
                              export_dir=self.artifacts.folder)

    def has(self, component: str) -> bool:
        return super().has(component) and self.plan(component).is_file()


@register_backend
class OpenVINOBackend(Backend):
    """OpenVINO on the export's ONNX graphs (``runners/openvino.py``): device, precision and cache from the options,
    all checked here, before anything is compiled."""

    name = "openvino"

    def __init__(self, artifacts: Artifacts, options: BackendOptions) -> None:
        from dcae_deploy.runtime.runners.openvino import (
            check_device,
            default_cache_root,
            import_openvino,
            normalise_precision,
        )

        super().__init__(artifacts, options)
        self.precision = normalise_precision(options.ov_precision)
        self.device = check_device(options.ov_device, list(import_openvino().Core().available_devices))
        cache = options.ov_cache_dir
        self.cache_root = default_cache_root(artifacts.folder) if cache is None else (Path(cache) if cache else None)

    def runner(self, component: str) -> Runner:
        from dcae_deploy.runtime.runners.openvino import OpenVINORunner, cache_folder

        a = self.artifacts
        comp = a.component(component)
        cache = cache_folder(self.cache_root, comp) if self.cache_root is not None else None
        return OpenVINORunner(comp, a.graph_path(component), device=self.device, precision=self.precision,
                              threads=self.options.threads, cache_dir=cache)

    def nonfinite_cause(self, component: str) -> str | None:
        precision = self.precision or ("default" if self.device.startswith("NPU") else "f32")
        if precision != "f32":
            return (f"OpenVINO computed in reduced precision (--ov-precision {precision}): rerun with "
                    "--ov-precision f32, or compare backends with `python -m dcae_deploy.parity`")
        return None


def open_backend(name: str, artifacts: Artifacts, options: BackendOptions | None = None) -> Backend:
    """The backend ``name`` of :data:`BACKENDS` over ``artifacts``."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](artifacts, options or BackendOptions())


def open_component(folder, component: str, backend: str = "onnxruntime",
                   options: BackendOptions | None = None) -> Runner:
    """A loaded runner of one exported component: ``open_component(EXPORT_DIR, "decoder").infer({"latent": z})``.

    Works on any export folder (a pipeline or a bare family variant) and any backend of :data:`BACKENDS`;
    close it (or use it as a context manager) to free its memory. This signature is stable.
    """
    artifacts = open_export(folder)
    artifacts.component(component)  # a clear error for a component the export lacks
    return open_backend(backend, artifacts, options).runner(component).load()


# --------------------------------------------------------------------------------------------- --backend auto

AUTO = "auto"


class BackendChoice(NamedTuple):
    """What ``--backend auto`` picked: a backend of :data:`BACKENDS`, its options, and one line saying why."""

    name: str
    options: BackendOptions
    reason: str


def _auto_tensorrt(artifacts: Artifacts, options: BackendOptions) -> tuple[BackendOptions, str] | str:
    from dcae_deploy.tensorrt_support import gpu_problem, probe_cuda

    try:
        engine_dir = find_engine_dir(artifacts, options.engine_dir)
    except BackendError:
        return "no engines of this export (`python -m dcae_deploy.engines build` makes them)"
    flavour = options.trt_flavour or _sidecar_flavour(engine_dir)
    problem = gpu_problem(flavour)
    if problem is not None:
        return f"its engines in {engine_dir} cannot run here: {problem}"
    return (options, f"tensorrt on {probe_cuda().devices[0].describe()}: this export's engines ({engine_dir.name}) "
                     "run on this GPU")


def _auto_onnxruntime_cuda(artifacts: Artifacts, options: BackendOptions) -> tuple[BackendOptions, str] | str:
    from dcae_deploy.tensorrt_support import probe_cuda

    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (`pip install onnxruntime-gpu`)"
    problem = probe_cuda().error
    if problem is not None:  # onnxruntime-gpu lists the provider on machines without a GPU too
        return f"no usable GPU: {problem}"
    return (replace(options, device="cuda"), "onnxruntime on CUDA: no TensorRT engines run here, and ONNX Runtime "
                                             "has the CUDA execution provider")


def _auto_openvino_cpu(artifacts: Artifacts, options: BackendOptions) -> tuple[BackendOptions, str] | str:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed (`pip install openvino`)"
    # f32 explicitly (None means f32 on the CPU too): OpenVINO's own CPU default is bf16 where the CPU has it, which
    # misses the fp32 gate; a quantized graph keeps its int8/fp8 ops and computes its float parts in f32
    quantized = any(artifacts.precision_of(name) in QUANTIZED for name in artifacts.manifest.components)
    floats = " for the float parts" if quantized else ""
    return (replace(options, ov_device="CPU", ov_precision="f32"),
            f"openvino on CPU (f32 inference precision{floats}): fastest installed CPU backend that meets the "
            f"export's {artifacts.precision} gate")


def _auto_onnxruntime_cpu(artifacts: Artifacts, options: BackendOptions) -> tuple[BackendOptions, str] | str:
    return replace(options, device="cpu"), "onnxruntime on CPU: the CPU backend every install has"


#: whether and how a backend runs an export here: its options and reason, or why not
AutoProbe = Callable[[Artifacts, BackendOptions], tuple[BackendOptions, str] | str]
#: ``--backend auto``'s order of preference: (backend, the device it runs on, its probe)
AUTO_PREFERENCE: tuple[tuple[str, str, AutoProbe], ...] = (
    ("tensorrt", "cuda", _auto_tensorrt),
    ("onnxruntime", "cuda", _auto_onnxruntime_cuda),
    ("openvino", "cpu", _auto_openvino_cpu),
    ("onnxruntime", "cpu", _auto_onnxruntime_cpu),
)


def auto_candidates(artifacts: Artifacts,
                    options: BackendOptions | None = None) -> tuple[list[BackendChoice], list[str]]:
    """Every backend of :data:`AUTO_PREFERENCE` that can run ``artifacts`` here, best first, and why the others
    cannot. ``options.device`` ``cpu``/``cuda`` keeps the backends of that device only."""
    options = options or BackendOptions()
    usable, skipped = [], []
    for name, device, probe in AUTO_PREFERENCE:
        if options.device not in ("auto", device):
            skipped.append(f"{name} on {device.upper()}: --device {options.device}")
            continue
        found = probe(artifacts, options)
        if isinstance(found, str):
            skipped.append(f"{name} on {device.upper()}: {found}")
        else:
            usable.append(BackendChoice(name, *found))
    return usable, skipped


def choose_backend(artifacts: Artifacts, options: BackendOptions | None = None) -> BackendChoice:
    """``--backend auto``: the fastest backend that runs ``artifacts`` on this machine within the export's gate.

    1. ``tensorrt``: the export has engines (:func:`find_engine_dir`) and this GPU runs them
       (:func:`~dcae_deploy.tensorrt_support.gpu_problem`);
    2. ``onnxruntime`` on CUDA: ONNX Runtime has the CUDA execution provider and the driver sees a GPU;
    3. ``openvino`` on the CPU at f32 inference precision (never OpenVINO's own bf16 default: it misses the fp32
       gate; a quantized export's float parts in f32). On float graphs it is level with ONNX Runtime (f32c32-sana
       decoder, 512 px, 2 cores: 8.5 s against 9.0 s in one run, 10.8 s against 9.5 s in another); on int8 Q/DQ
       graphs it is 4x faster (3.2 s against 12.9 s, benchmarks/README.md), hence first;
    4. ``onnxruntime`` on the CPU.
    """
    return _usable(artifacts, options or BackendOptions())[0]


def open_auto(artifacts: Artifacts, options: BackendOptions | None = None,
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> tuple[Backend, BackendChoice]:
    """:func:`choose_backend`, opened: a choice that does not open (BackendError) falls back to the next usable
    backend, saying so through ``log``; the last one's error is raised."""
    usable = _usable(artifacts, options or BackendOptions())
    for choice, following in zip(usable, usable[1:]):
        try:
            return open_backend(choice.name, artifacts, choice.options), choice
        except BackendError as exc:
            log(f"--backend auto: {choice.name} does not open here ({exc}); falling back to {following.name}")
    last = usable[-1]
    return open_backend(last.name, artifacts, last.options), last


def _usable(artifacts: Artifacts, options: BackendOptions) -> list[BackendChoice]:
    usable, skipped = auto_candidates(artifacts, options)
    if not usable:
        raise BackendError(f"--backend auto found no backend for --device {options.device} on this machine: "
                           f"{'; '.join(skipped)}")
    return usable


def find_engine_dir(artifacts: Artifacts, engine_dir: str | Path | None) -> Path:
    """The folder of ``<component>.plan`` files: ``engine_dir`` if given, else the only match under ``engines/``."""
    needed = artifacts.required_components()
    if engine_dir is not None:
        folder = Path(engine_dir)
        missing = [c for c in needed if not (folder / f"{c}{PLAN_SUFFIX}").is_file()]
        if missing:
            raise BackendError(f"engine folder {folder} has no {', '.join(c + PLAN_SUFFIX for c in missing)}")
        return folder
    root = artifacts.folder / "engines"
    candidates = [p for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    complete = [p for p in candidates if all((p / f"{c}{PLAN_SUFFIX}").is_file() for c in needed)]
    matching = [p for p in complete if p.name.endswith(f"-{artifacts.precision}")] or complete
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise BackendError(
            f"no engine folder with {', '.join(c + PLAN_SUFFIX for c in needed)} under {root}: build them with "
            f"`python -m dcae_deploy.engines build {artifacts.folder}` (or trtexec), or pass --engine-dir"
        )
    raise BackendError(f"several engine folders under {root} ({', '.join(p.name for p in matching)}): pick one with --engine-dir")


def _sidecar_flavour(engine_dir: Path) -> str | None:
    """The flavour a sidecar records (``tensorrt``/``tensorrt-rtx``); None for bare trtexec plans."""
    for path in sidecar_paths(engine_dir):
        try:
            flavour = read_sidecar(path, verify=False).backend
        except EngineInfoError:
            continue
        if flavour in FLAVOURS:
            return flavour
    return None
