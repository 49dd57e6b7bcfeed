"""TensorRT flavours and engine files: what the engine builder (``dcae_deploy/engines/``) and the runtime's
TensorRT runner (``dcae_deploy/runtime/runners/tensorrt.py``) share.

* the two flavours, ``tensorrt`` (full TensorRT, ``import tensorrt``) and ``tensorrt-rtx`` (TensorRT-RTX,
  ``import tensorrt_rtx``), and one lazy importer of them: neither is imported until asked for;
* an engine folder's files: ``<component>.plan`` and its sidecar ``<component>.json``, written by
  ``dcae_deploy/engines/build.py`` (:meth:`EngineInfo.to_dict`) and read back here (:func:`read_sidecar`).

It imports neither torch nor ``dcae_deploy.engines``, so that the runtime can use it on a deploy machine.
Each caller words its own errors around :func:`import_flavour` (build hints in the engines stage, runtime
hints in the runner).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from dcae_deploy.checkpoints import read_json
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.manifest import ShapeProfile, TensorInfo, verify_hashes

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt-rtx"
FLAVOURS = (TENSORRT, TENSORRT_RTX)  # also the order in which "any flavour" tries them
MODULES = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt_rtx"}  # flavour -> Python module

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
