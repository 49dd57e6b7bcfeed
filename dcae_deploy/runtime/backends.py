"""Backends: a factory of per-component runners over one artifacts folder.

``open_backend("onnxruntime", artifacts)`` -> a backend whose ``runner("denoiser")`` gives a
:class:`~dcae_deploy.runtime.runners.base.Runner`. Backends are imported on first use: choosing
ONNX Runtime or TensorRT never imports torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dcae_deploy.runtime.artifacts import Artifacts
from dcae_deploy.runtime.errors import BackendError
from dcae_deploy.runtime.runners.base import Runner

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PLAN_SUFFIX = ".plan"  # as dcae_deploy.engines writes, and what trtexec --saveEngine is given


@dataclass(frozen=True)
class BackendOptions:
    """Backend settings. ``device``: ``auto``/``cpu``/``cuda`` (torch, ONNX Runtime); ``engine_dir``: TensorRT plans
    (default: the one engine folder under ``ARTIFACTS/engines`` that matches the export precision);
    ``trt_flavour``: ``tensorrt``/``tensorrt-rtx`` (default: the sidecar's, else whichever imports);
    ``checkpoint``: torch weights (default: the manifest's ``checkpoint``); ``threads``: ONNX Runtime CPU threads."""

    device: str = "auto"
    engine_dir: str | Path | None = None
    trt_flavour: str | None = None
    checkpoint: str | Path | None = None
    threads: int | None = None


class Backend:
    name = "?"

    def __init__(self, artifacts: Artifacts, options: BackendOptions) -> None:
        self.artifacts, self.options = artifacts, options

    def runner(self, component: str) -> Runner:
        raise NotImplementedError

    def has(self, component: str) -> bool:
        """Whether this backend can run ``component`` of the export (optional ones: the split decoder)."""
        return component in self.artifacts.manifest.components


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def runner(self, component: str) -> Runner:
        from dcae_deploy.runtime.runners.onnxruntime import OnnxRuntimeRunner

        a = self.artifacts
        return OnnxRuntimeRunner(a.component(component), a.graph_path(component), a.precision,
                                 device=self.options.device, threads=self.options.threads)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, artifacts: Artifacts, options: BackendOptions) -> None:
        super().__init__(artifacts, options)
        self.engine_dir = find_engine_dir(artifacts, options.engine_dir)
        self.flavour = options.trt_flavour or _sidecar_flavour(self.engine_dir)

    def runner(self, component: str) -> Runner:
        from dcae_deploy.runtime.runners.tensorrt import TensorRTRunner

        return TensorRTRunner(self.artifacts.component(component), self.engine_dir / f"{component}.plan", self.flavour)

    def has(self, component: str) -> bool:
        return super().has(component) and (self.engine_dir / f"{component}{PLAN_SUFFIX}").is_file()


class TorchBackend(Backend):
    """PyTorch fp32 reference. Models load once, from ``options.checkpoint`` or the manifest's ``checkpoint``
    (a pipeline folder, via ``load_pipeline``); an export made from random weights (``checkpoint`` null)
    is rebuilt with ``build_pipeline(variant, seed=0)``, the exporter's seed."""

    name = "torch"

    def __init__(self, artifacts: Artifacts, options: BackendOptions, models=None) -> None:
        super().__init__(artifacts, options)
        self._models = models  # PipelineModels already in memory (dcae_deploy.runtime.eager), else loaded on demand

    def models(self):
        if self._models is None:
            from dcae_deploy.models.pipeline import build_pipeline, load_pipeline

            checkpoint = self.options.checkpoint or self.artifacts.manifest.checkpoint
            variant = self.artifacts.variant
            if checkpoint is None:
                print(f"[runtime] the export of {variant} was made from random weights (checkpoint null): torch "
                      f"rebuilds them with build_pipeline({variant!r}, seed=0)", file=sys.stderr)
                self._models = build_pipeline(variant, seed=0)
            else:
                if not Path(checkpoint).exists():
                    raise BackendError(
                        f"the torch backend needs the weights the export came from, {checkpoint}, which does not "
                        "exist here: pass --checkpoint PIPELINE_FOLDER, or use --backend onnxruntime"
                    )
                self._models = load_pipeline(checkpoint, variant=variant)
        return self._models

    def runner(self, component: str) -> Runner:
        from dcae_deploy.runtime.runners.torch import TorchRunner

        device = self.options.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return TorchRunner(self.artifacts.component(component), self.models, device=device)


def open_backend(name: str, artifacts: Artifacts, options: BackendOptions | None = None) -> Backend:
    options = options or BackendOptions()
    classes = {"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend, "tensorrt": TensorRTBackend}
    if name not in classes:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return classes[name](artifacts, options)


def find_engine_dir(artifacts: Artifacts, engine_dir: str | Path | None) -> Path:
    """The folder of ``<component>.plan`` files: ``engine_dir`` if given, else the only match under ``engines/``."""
    needed = ("text_encoder", "denoiser", "decoder")
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
    """The backend a sidecar records (``tensorrt``/``tensorrt-rtx``); None for bare trtexec plans."""
    import json

    for path in sorted(engine_dir.glob("*.json")):
        try:
            backend = json.loads(path.read_text()).get("backend")
        except (OSError, ValueError, AttributeError):
            continue
        if backend in ("tensorrt", "tensorrt-rtx"):
            return backend
    return None
