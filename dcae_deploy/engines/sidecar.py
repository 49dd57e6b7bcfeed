"""Engine folders: ``<component>.json`` sidecars next to every ``<component>.plan``.

The sidecar format itself (:class:`~dcae_deploy.tensorrt_support.EngineInfo`, its ``to_dict``/``from_dict``
and :func:`~dcae_deploy.tensorrt_support.read_sidecar`) lives in ``dcae_deploy/tensorrt_support.py``, which
the runtime shares; this module reads whole engine folders.
"""

from __future__ import annotations

from pathlib import Path

from dcae_deploy.tensorrt_support import (
    PLAN_SUFFIX,
    SIDECAR_FORMAT,
    SIDECAR_SUFFIX,
    SIDECAR_VERSION,
    EngineInfo,
    EngineInfoError,
    read_sidecar,
    sidecar_paths,
)

__all__ = [
    "PLAN_SUFFIX",
    "SIDECAR_FORMAT",
    "SIDECAR_SUFFIX",
    "SIDECAR_VERSION",
    "EngineInfo",
    "list_engine_dirs",
    "load_engine_info",
    "read_sidecar",
]


def load_engine_info(engine_dir: str | Path, verify: bool = True) -> dict[str, EngineInfo]:
    """``{component: EngineInfo}`` for every sidecar in ``engine_dir`` (a folder written by the builder)."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise EngineInfoError(
            f"engine folder {engine_dir} not found: build one with `python -m dcae_deploy.engines build EXPORT_DIR`"
        )
    infos = {}
    for path in sidecar_paths(engine_dir):
        info = read_sidecar(path, verify=verify)
        infos[info.component] = info
    if not infos:
        raise EngineInfoError(
            f"{engine_dir} holds no engine sidecars (<component>{SIDECAR_SUFFIX}): it is not an engine folder, "
            "or its build did not finish"
        )
    return infos


def list_engine_dirs(root: str | Path) -> list[Path]:
    """Engine folders (those holding at least one sidecar) directly under ``root``, e.g. ``EXPORT/engines``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and any(p.glob(f"*{PLAN_SUFFIX}")) and any(p.glob(f"*{SIDECAR_SUFFIX}"))
    )
