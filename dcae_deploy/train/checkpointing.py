"""Training checkpoints: one folder per step, every file written atomically, ``state.json`` written last.

Layout of ``<out>/checkpoints/step-0000100/``:

* ``<module>.safetensors``: weights of every trained module (``model``, maybe ``discriminator``);
* ``ema.safetensors``: the EMA copy of ``model``;
* ``optimizer-<module>.pt``: optimizer state dicts (``torch.load(weights_only=True)`` reads them);
* ``rng-rank<r>.pt``: each rank's RNG states;
* ``config.json``: task, loop and model configs;
* ``state.json``: step, world size and the size and SHA-256 of every other file; its presence marks
  the folder complete, and a resume checks every file against it (no silent garbage).

``<out>/checkpoints/latest.json`` names the newest complete folder. A resume from a run folder takes
the newest *intact* checkpoint: a folder that is incomplete, unreadable or whose files do not match
``state.json`` is skipped (and reported), falling back to an older one.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcae_deploy.checkpoints import (
    atomic_write,
    read_json,
    read_state_dict,
    write_json,
    write_safetensors,
)
from dcae_deploy.errors import CheckpointError

STATE_FILE = "state.json"
LATEST_FILE = "latest.json"


def step_folder(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def torch_save_atomic(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def torch_load_weights_only(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} with torch.load(weights_only=True): {exc}") from exc


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, in types ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(
    folder: Path,
    *,
    rank: int,
    step: int,
    world_size: int,
    modules: dict[str, torch.nn.Module],
    ema: dict[str, torch.Tensor],
    optimizers: dict[str, torch.optim.Optimizer],
    config: dict[str, Any],
) -> None:
    """Rank 0 writes weights, EMA, optimizers and configs; every rank writes its RNG file.

    The caller must barrier between this and :func:`finish_checkpoint` (rank 0 only).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # re-saving a step (after a resume from an older one): the folder is incomplete until finished
        (folder / STATE_FILE).unlink(missing_ok=True)
    torch_save_atomic(rng_state(), folder / f"rng-rank{rank}.pt")
    if rank != 0:
        return
    for name, module in modules.items():
        write_safetensors(folder / f"{name}.safetensors", module.state_dict())
    write_safetensors(folder / "ema.safetensors", ema)
    for name, opt in optimizers.items():
        torch_save_atomic(opt.state_dict(), folder / f"optimizer-{name}.pt")
    write_json(folder / "config.json", config)


def finish_checkpoint(folder: Path, step: int, world_size: int, keep: int) -> None:
    """Mark ``folder`` complete (``state.json`` with every file's size and SHA-256), point ``latest.json``
    at it and delete all but the newest ``keep`` complete folders."""
    write_json(folder / STATE_FILE, {"step": step, "world_size": world_size, "files": _manifest(folder)})
    write_json(folder.parent / LATEST_FILE, {"folder": folder.name, "step": step})
    if keep > 0:
        done = sorted(p for p in folder.parent.glob("step-*")
                      if _STEP_DIR.fullmatch(p.name) and (p / STATE_FILE).is_file())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def set_aside(skipped: list[tuple[Path, str]], chosen: Path) -> list[tuple[Path, Path]]:
    """After a resume fell back to ``chosen``: rename each skipped step folder to ``<name>.corrupt`` (kept
    for inspection, no longer a checkpoint nor counted by the rotation) and point ``latest.json`` at
    ``chosen``. Returns the ``(old, new)`` names. Rank 0 only, once every rank has loaded ``chosen``."""
    moved = []
    for path, _ in skipped:
        if path.is_dir() and _STEP_DIR.fullmatch(path.name):
            target, n = path.with_name(f"{path.name}.corrupt"), 1
            while target.exists():
                target, n = path.with_name(f"{path.name}.corrupt{n}"), n + 1
            path.rename(target)
            moved.append((path, target))
    if skipped:
        state = read_json(chosen / STATE_FILE)
        write_json(chosen.parent / LATEST_FILE, {"folder": chosen.name, "step": state["step"]})
    return moved


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file in ``folder`` but ``state.json`` (temporary dot-files excluded)."""
    return {
        p.name: {"bytes": p.stat().st_size, "sha256": _digest(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != STATE_FILE and not p.name.startswith(".")
    }


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """``state.json`` of a complete step folder whose files match it.

    Raises:
        CheckpointError: naming the file that is missing, unreadable, truncated or altered.
    """
    state_path = folder / STATE_FILE
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not state_path.is_file():
        raise CheckpointError(f"{state_path} is missing: the checkpoint was never finished (interrupted save)")
    state = read_json(state_path)
    if not isinstance(state.get("step"), int):
        raise CheckpointError(f"{state_path} has no integer 'step'")
    files = state.get("files", {})  # absent in checkpoints written before the manifest existed
    for name, want in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {STATE_FILE})")
        size = path.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointError(f"{path} is corrupt: {size} bytes, but {STATE_FILE} recorded {want.get('bytes')} "
                                  "(truncated or overwritten)")
        if _digest(path) != want.get("sha256"):
            raise CheckpointError(f"{path} is corrupt: its SHA-256 differs from the one {STATE_FILE} recorded")
    return state


_STEP_DIR = re.compile(r"step-(\d+)")


def checkpoint_candidates(path: Path) -> tuple[list[Path], list[tuple[Path, str]], bool]:
    """Where a resume from ``path`` may start: ``(folders newest first, problems found, explicit)``.

    ``path`` is a step folder (``explicit``: only that one), a checkpoints folder or a run folder (its
    ``checkpoints/``): then ``latest.json``'s folder first, then every other complete step folder by
    descending step. ``problems`` lists what was seen but cannot be used (an unreadable ``latest.json``).

    Raises:
        CheckpointError: ``path`` holds no training checkpoint at all.
    """
    if _STEP_DIR.fullmatch(path.name) and path.is_dir() or (path / STATE_FILE).is_file():
        return [path], [], True
    for root in (path, path / "checkpoints"):
        steps = sorted((p for p in root.glob("step-*") if p.is_dir() and _STEP_DIR.fullmatch(p.name)),
                       key=lambda p: int(p.name.removeprefix("step-")), reverse=True)
        latest_file = root / LATEST_FILE
        if not steps and not latest_file.is_file():
            continue
        problems: list[tuple[Path, str]] = []
        order: list[Path] = []
        if latest_file.is_file():
            try:
                name = read_json(latest_file).get("folder")
                if not isinstance(name, str) or not _STEP_DIR.fullmatch(name):
                    raise CheckpointError(f"{latest_file} names no step folder (got {name!r})")
                order.append(root / name)
            except CheckpointError as exc:
                problems.append((latest_file, str(exc)))
        order += [p for p in steps if p not in order and (p / STATE_FILE).is_file()]
        return order, problems, False
    raise CheckpointError(
        f"no complete training checkpoint at {path}: expected a step folder with {STATE_FILE} "
        f"or a folder with {LATEST_FILE}"
    )


def load_newest_intact(path: Path, rank: int) -> tuple[Path, dict[str, Any], list[tuple[Path, str]]]:
    """The newest intact checkpoint reachable from ``path`` (see :func:`checkpoint_candidates`), loaded:
    ``(folder, load_checkpoint(folder, rank), skipped)`` where ``skipped`` lists ``(path, why)`` of every
    newer folder or file that could not be used.

    Raises:
        CheckpointError: no intact checkpoint; the message names each corrupt file and why.
    """
    candidates, skipped, explicit = checkpoint_candidates(path)
    for folder in candidates:
        try:
            return folder, load_checkpoint(folder, rank), skipped
        except CheckpointError as exc:
            if explicit:
                raise CheckpointError(
                    f"cannot resume from {folder}: {exc}. Resume from an older step folder, or from the run "
                    "folder to use its newest intact checkpoint"
                ) from exc
            skipped.append((folder, str(exc)))
    where = candidates[0].parent if candidates else path
    reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped) or "no step folder has a state.json"
    raise CheckpointError(
        f"no intact training checkpoint under {where} ({reasons}). Restore the named file(s) from a backup, "
        "or start again without --resume"
    )


def load_checkpoint(folder: Path, rank: int) -> dict[str, Any]:
    """Everything :func:`save_checkpoint` wrote, on the CPU: ``state``, ``config``, ``weights``, ``ema``,
    ``optimizers`` and this rank's ``rng`` (None when the checkpoint came from fewer ranks).

    Every file is first checked against ``state.json`` (:func:`verify_checkpoint`).

    Raises:
        CheckpointError: a file is missing, unreadable or corrupt (the message names it).
    """
    state = verify_checkpoint(folder)
    weights = {
        p.stem: read_state_dict(p) for p in sorted(folder.glob("*.safetensors")) if p.stem != "ema"
    }
    optimizers = {p.stem.removeprefix("optimizer-"): torch_load_weights_only(p) for p in folder.glob("optimizer-*.pt")}
    rng_path = folder / f"rng-rank{rank}.pt"
    return {
        "state": state,
        "config": read_json(folder / "config.json"),
        "weights": weights,
        "ema": read_state_dict(folder / "ema.safetensors"),
        "optimizers": optimizers,
        "rng": torch_load_weights_only(rng_path) if rng_path.is_file() else None,
    }
