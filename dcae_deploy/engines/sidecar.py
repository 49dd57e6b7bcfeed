"""Engine folders: ``<component>.json`` sidecars next to every ``<component>.plan``.

The sidecar format itself (:class:`~dcae_deploy.tensorrt_support.EngineInfo`, its ``to_dict``/``from_dict``
and :func:`~dcae_deploy.tensorrt_support.read_sidecar`) lives in ``dcae_deploy/tensorrt_support.py``, which
the runtime shares; this module reads whole engine folders and checks them against the export they were built from
(:func:`engine_export`, :func:`check_freshness`).
"""

from __future__ import annotations

from pathlib import Path

from dcae_deploy.manifest import MANIFEST_FILE, Manifest
from dcae_deploy.tensorrt_support import (
    PLAN_SUFFIX,
    SIDECAR_FORMAT,
    SIDECAR_SUFFIX,
    SIDECAR_VERSION,
    EngineInfo,
    EngineInfoError,
    engine_mismatch,
    read_sidecar,
    sidecar_paths,
)

__all__ = [
    "PLAN_SUFFIX",
    "SIDECAR_FORMAT",
    "SIDECAR_SUFFIX",
    "SIDECAR_VERSION",
    "EngineInfo",
    "check_freshness",
    "engine_export",
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


def engine_export(engine_dir: str | Path, infos: dict[str, EngineInfo],
                  export: str | Path | None = None) -> Path | None:
    """The export folder whose manifest ``engine_dir``'s plans are checked against: ``export`` if given, else the
    export that holds the folder (``EXPORT/engines/<name>/``, what the runtime pairs them with), else the folder
    the sidecars say they were built from, if it still has a manifest; None when there is none."""
    if export is not None:
        export = Path(export)
        if not (export / MANIFEST_FILE).is_file():
            raise EngineInfoError(
                f"--export {export} has no {MANIFEST_FILE}: pass the folder `python -m dcae_deploy.export` wrote"
            )
        return export
    folder = Path(engine_dir).resolve()
    if folder.parent.name == "engines" and (folder.parent.parent / MANIFEST_FILE).is_file():
        return folder.parent.parent
    for info in infos.values():
        if (Path(info.source_dir) / MANIFEST_FILE).is_file():
            return Path(info.source_dir)
    return None


def check_freshness(infos: dict[str, EngineInfo], manifest: Manifest) -> dict[str, str]:
    """``{component: why}`` for each engine of ``infos`` that was not built from ``manifest``'s graphs (stale)."""
    stale = {}
    for name, info in infos.items():
        why = engine_mismatch(info, manifest.components.get(info.component))
        if why is not None:
            stale[name] = why
    return stale
