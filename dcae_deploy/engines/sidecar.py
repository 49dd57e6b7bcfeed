"""Engine sidecars: ``<component>.json`` next to every ``<component>.plan``.

A sidecar records where the plan came from (ONNX file and hash, manifest variant and precision),
what built it (backend, version, GPU target, build time), the optimisation profile and the tensor
names, dtypes and shapes of the manifest, so that a runtime can bind buffers by name and pick an
engine folder without deserialising anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcae_deploy.checkpoints import read_json
from dcae_deploy.engines.common import EngineInfoError
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.manifest import ShapeProfile, TensorInfo, verify_hashes

SIDECAR_FORMAT = "dcae_deploy.engine"
SIDECAR_VERSION = 1
PLAN_SUFFIX = ".plan"


@dataclass(frozen=True)
class EngineInfo:
    """What one sidecar says about its plan. ``plan_path`` is absolute; shapes are tuples."""

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
    backend: str
    backend_version: str
    target: str
    compute_capabilities: tuple[str, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    profiles: dict[str, ShapeProfile]
    build_seconds: float
    built_at: str
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path) -> EngineInfo:
        return cls(
            component=data["component"],
            plan_path=(folder / data["plan"]).resolve(),
            plan_sha256=data["plan_sha256"],
            plan_bytes=int(data["plan_bytes"]),
            onnx_file=data["onnx"]["file"],
            onnx_sha256=data["onnx"]["sha256"],
            source_dir=data["source_dir"],
            variant=data["manifest"]["variant"],
            kind=data["manifest"]["kind"],
            precision=data["precision"],
            backend=data["backend"],
            backend_version=data["backend_version"],
            target=data["target"],
            compute_capabilities=tuple(data["compute_capabilities"]),
            inputs=tuple(TensorInfo(t["name"], t["dtype"], tuple(t["shape"])) for t in data["inputs"]),
            outputs=tuple(TensorInfo(t["name"], t["dtype"], tuple(t["shape"])) for t in data["outputs"]),
            profiles={
                k: ShapeProfile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for k, p in data["profiles"].items()
            },
            build_seconds=float(data["build_seconds"]),
            built_at=data["built_at"],
            raw=data,
        )


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
    except (KeyError, TypeError, ValueError) as exc:
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


def load_engine_info(engine_dir: str | Path, verify: bool = True) -> dict[str, EngineInfo]:
    """``{component: EngineInfo}`` for every sidecar in ``engine_dir`` (a folder written by the builder)."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise EngineInfoError(
            f"engine folder {engine_dir} not found: build one with `python -m dcae_deploy.engines build EXPORT_DIR`"
        )
    infos = {}
    for path in sorted(engine_dir.glob("*.json")):
        if path.name.startswith("."):
            continue
        info = read_sidecar(path, verify=verify)
        infos[info.component] = info
    if not infos:
        raise EngineInfoError(
            f"{engine_dir} holds no engine sidecars (<component>.json): it is not an engine folder, "
            "or its build did not finish"
        )
    return infos


def list_engine_dirs(root: str | Path) -> list[Path]:
    """Engine folders (those holding at least one sidecar) directly under ``root``, e.g. ``EXPORT/engines``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob(f"*{PLAN_SUFFIX}")) and any(p.glob("*.json")))
