"""The shipped demo model: ``dcae_deploy/demo/`` (a pipeline folder) exported once into a cache folder.

This sits above the export, engines and runtime stages (it calls the first two to prepare what the third
reads), so that the runtime itself never imports them; ``generate`` and ``evaluate`` use it.

Cache folder: ``$DCAE_DEPLOY_CACHE/demo-<sha>`` or ``~/.cache/dcae_deploy/demo-<sha>``, where ``<sha>`` is
the first 12 hex digits of a SHA-256 over the demo folder's files and the export settings, so new weights
or settings get a new export.
The first run exports (this needs torch and takes about half a minute); later runs only read the cache.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import sys
import tempfile
from pathlib import Path

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.manifest import SPLIT_DECODER
from dcae_deploy.runtime.artifacts import Artifacts, load_artifacts

DEMO_VARIANT = "demo"
CACHE_ENV = "DCAE_DEPLOY_CACHE"
# The demo export's profile: 128px is the demo's training size; 256px and batch 2 leave room. The split
# decoder makes --tile-size decoding exact.
DEMO_EXPORT = dict(precision="fp32", min_res=128, opt_res=128, max_res=256, max_batch=2,
                   components=["text_encoder", "denoiser", "decoder", *SPLIT_DECODER])


def demo_folder() -> Path:
    """``dcae_deploy/demo`` inside the installed package (raises if it was not shipped)."""
    folder = Path(str(importlib.resources.files("dcae_deploy") / "demo"))
    if not (folder / "pipeline.json").is_file():
        raise DcaeDeployError(
            f"the demo model is not installed ({folder} has no pipeline.json): pass --artifacts EXPORT_DIR "
            "with a folder written by `python -m dcae_deploy.export`, or reinstall dcae_deploy with its demo"
        )
    return folder


def weights_sha(folder: Path, length: int = 12) -> str:
    """Short SHA-256 over every file of ``folder`` (relative paths and contents, in sorted order) and DEMO_EXPORT."""
    digest = hashlib.sha256(json.dumps(DEMO_EXPORT, sort_keys=True).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:length]


def cache_folder(folder: Path) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dcae_deploy").expanduser()
    return root / f"{DEMO_VARIANT}-{weights_sha(folder)}"


def check_cache_writable(cache: Path) -> None:
    """Refuse a cache folder the demo's export cannot be written into, naming the setting that moves it."""
    existing = cache
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    else:
        try:  # a real write: permissions, read-only mounts and quotas (os.access says yes to root)
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            problem = f"{existing} is not writable ({exc.strerror})"
    if problem:
        raise DcaeDeployError(
            f"the shipped demo is exported once into the cache folder {cache}, but {problem}: set {CACHE_ENV} to a "
            f"writable folder (e.g. {CACHE_ENV}=/tmp/dcae_deploy), or pass --artifacts with an export of your own"
        )


def demo_artifacts() -> Artifacts:
    """The demo's export, made on first use (needs torch then) and read from the cache afterwards."""
    folder = demo_folder()
    cache = cache_folder(folder)
    try:
        return load_artifacts(cache, variant=DEMO_VARIANT)
    except DcaeDeployError:
        pass
    check_cache_writable(cache)
    print(f"[generate] first run: exporting the demo model to {cache} (once) ...", file=sys.stderr)
    from dcae_deploy.export import export_model

    export_model(DEMO_VARIANT, cache, checkpoint=folder, **DEMO_EXPORT)
    return load_artifacts(cache, variant=DEMO_VARIANT)


def require_engine_gpu() -> None:
    """Raise :class:`~dcae_deploy.runtime.errors.BackendError` when this machine has no GPU that the installed
    TensorRT flavour's engines run on (checked before the demo is exported or its engines built)."""
    from dcae_deploy.runtime.errors import BackendError
    from dcae_deploy.tensorrt_support import GpuUnavailable, require_gpu

    try:
        require_gpu()  # the flavour the build and the runner import first
    except GpuUnavailable as exc:
        raise BackendError(str(exc)) from exc


def demo_engines(artifacts: Artifacts) -> None:
    """Build the demo's TensorRT engines into its cache folder once (``generate --backend tensorrt`` without
    ``--artifacts``). TensorRT-RTX builds on any machine, full TensorRT needs a GPU; running them needs one, so
    a machine that could not run them is told so first, and nothing is built. Engines the cached export was not
    built from (stale) are rebuilt."""
    from dcae_deploy.runtime.backends import find_engine_dir
    from dcae_deploy.runtime.errors import BackendError
    from dcae_deploy.tensorrt_support import stale_engines

    require_engine_gpu()
    try:
        engine_dir = find_engine_dir(artifacts, None)
    except BackendError:
        engine_dir = None
    stale = stale_engines(engine_dir, artifacts.manifest.components) if engine_dir is not None else {}
    if engine_dir is not None and not stale:
        return
    if stale:
        print(f"[generate] the demo's engines in {engine_dir} were built from other graphs ({', '.join(stale)}): "
              "rebuilding them (once) ...", file=sys.stderr)
    else:
        print(f"[generate] first TensorRT run: building the demo's engines in {artifacts.folder / 'engines'} (once) ...",
              file=sys.stderr)
    from dcae_deploy.engines.build import build_engines

    build_engines(artifacts.folder)
