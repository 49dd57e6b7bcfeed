"""Training checkpoints: one folder per step, every file written atomically, ``state.json`` written last.

Layout of ``<out>/checkpoints/step-0000100/``:

* ``<module>.safetensors``: weights of every trained module (``model``, maybe ``discriminator``);
* ``ema.safetensors``: the EMA copy of ``model``;
* ``optimizer-<module>.pt``: optimizer state dicts (``torch.load(weights_only=True)`` reads them);
* ``rng-rank<r>.pt``: each rank's RNG states;
* ``config.json``: task, loop and model configs;
* ``state.json``: step and world size; its presence marks the folder complete.

``<out>/checkpoints/latest.json`` names the newest complete folder.
"""

from __future__ import annotations

import random
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
    """Mark ``folder`` complete, point ``latest.json`` at it and delete all but the newest ``keep`` folders."""
    write_json(folder / STATE_FILE, {"step": step, "world_size": world_size})
    write_json(folder.parent / LATEST_FILE, {"folder": folder.name, "step": step})
    if keep > 0:
        done = sorted(p for p in folder.parent.glob("step-*") if (p / STATE_FILE).is_file())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: Path) -> Path:
    """A complete step folder from ``path``: the folder itself, or a run / checkpoints folder's latest."""
    for candidate in (path, path / "checkpoints"):
        if (candidate / STATE_FILE).is_file():
            return candidate
        if (candidate / LATEST_FILE).is_file():
            folder = candidate / read_json(candidate / LATEST_FILE)["folder"]
            if (folder / STATE_FILE).is_file():
                return folder
    raise CheckpointError(
        f"no complete training checkpoint at {path}: expected a step folder with {STATE_FILE} "
        f"or a folder with {LATEST_FILE}"
    )


def load_checkpoint(folder: Path, rank: int) -> dict[str, Any]:
    """Everything :func:`save_checkpoint` wrote, on the CPU: ``state``, ``config``, ``weights``, ``ema``,
    ``optimizers`` and this rank's ``rng`` (None when the checkpoint came from fewer ranks)."""
    state = read_json(folder / STATE_FILE)
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
