"""Reading and writing weight files safely: safetensors or weights-only pickles, atomic writes, key checks.

A checkpoint never executes code: ``.pt``/``.pth``/``.bin`` files load with ``torch.load(weights_only=True)``.
Every write goes to a temporary file in the destination folder and is renamed into place, so an
interrupted save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are read, so that manifest/JSON users stay torch-free
    import torch

from dcae_deploy.errors import CheckpointError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Containers that training scripts wrap a state dict in, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model", "module")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file or a weights-only pickle, on the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise CheckpointError(
        f"unsupported checkpoint file {path.name!r}: expected .safetensors or a PyTorch pickle "
        f"({', '.join(PICKLE_SUFFIXES)})"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises SafetensorError / OSError / ValueError on bad files
        raise CheckpointError(
            f"cannot read safetensors file {path}: {exc}. The file is corrupt or truncated; "
            "download or export it again"
        ) from exc


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted save or download; write or copy it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        needs_code = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        if needs_code:  # the pickle asks for a class or function: never executed here
            raise CheckpointError(
                f"cannot load {path} with torch.load(weights_only=True): {needs_code[0]}. dcae_deploy never unpickles code; "
                "a file that needs it must be converted to safetensors by its producer"
            ) from exc
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's weights-only message starts with advice that does not apply to a damaged file: keep the cause
        causes = [line for line in lines if not line.startswith(("Weights only load failed", "Please file", "Check the"))]
        first_line = (causes or lines or [type(exc).__name__])[0].split(". This is an internal")[0]
        raise CheckpointError(
            f"cannot read {path}: the file is truncated or is not a PyTorch checkpoint ({first_line}); "
            "write or copy it again"
        ) from exc
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"config file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot parse JSON config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"config {path} must hold a JSON object")
    return data


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temporary file in the same folder,
    which is then renamed onto ``path`` (parent folders are created).

    If ``write`` raises (or the process is interrupted), the temporary file is removed and an existing
    ``path`` is left untouched. The new file gets the usual permissions (``0o666`` minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise




def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (temp file + rename)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata=None) -> None:
    """Write tensors to a safetensors file atomically (temp file + rename)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def describe_key_mismatch(
    source: str, variant: str, missing: Iterable[str], unexpected: Iterable[str], shown: int = 8
) -> str:
    """One message listing missing and unexpected keys (the first ``shown`` of each, and how many)."""
    parts = [f"checkpoint {source} does not fit variant {variant!r}"]
    for label, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected))):
        if keys:
            more = f" ... and {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {label} keys: {', '.join(keys[:shown])}{more}")
    return "; ".join(parts)
