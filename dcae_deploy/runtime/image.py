"""Decoder output -> 8-bit RGB, and PNG files written atomically (temp file + rename)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcae_deploy.checkpoints import atomic_write
from dcae_deploy.errors import DcaeDeployError


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = (np.clip(np.asarray(images, dtype=np.float32), -1.0, 1.0) + 1.0) * 127.5
    return np.round(x).astype(np.uint8).transpose(0, 2, 3, 1)


def output_paths(output: str | Path, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png``, ``out-1.png``, ... for a batch."""
    output = Path(output)
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix or '.png'}") for i in range(count)]


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write one (H, W, 3) uint8 image as PNG, atomically."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DcaeDeployError(f"--output {path} must end in .png")
    try:
        atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
    except OSError as exc:
        raise DcaeDeployError(f"cannot write {path} ({exc.strerror or exc}); choose another --output") from exc
    return path


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """(B, H, W, 3) uint8 -> one (rows * H, min(B, columns) * W, 3) image, row by row (black where a row ends early)."""
    images = np.asarray(images)
    count, height, width = images.shape[:3]
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    grid = np.zeros((rows * height, columns * width, images.shape[3]), dtype=images.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = image
    return grid
