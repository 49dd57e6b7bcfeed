"""Image folders for reconstruction metrics: listing, checking and the release's preprocessing.

``list_images`` walks a folder (sorted, sub-folders included, as the release's ImageNet loader does) for files with
an image suffix; ``check_images`` opens each one's header (and verifies PNG checksums) before any model runs, so an
unreadable file or one smaller than the resolution is named up front; ``load_image`` is the release's ``DMCrop``
(ADM centre crop: halve with a box filter while the short side is at least twice the resolution, bicubic resize of
the short side to the resolution, centre crop) to an RGB uint8 array.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcae_deploy.errors import DcaeDeployError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageError(DcaeDeployError):
    """An image file that cannot be used (unreadable, too small)."""


@dataclass(frozen=True)
class BadImage:
    path: Path
    reason: str
    small: bool = False  # readable, but its short side is below the resolution

    def describe(self, root: Path) -> str:
        try:
            name = self.path.relative_to(root)
        except ValueError:
            name = self.path
        return f"{name}: {self.reason}"


def list_images(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """``(images, others)``: the files under ``folder`` with an image suffix (sorted) and the other files."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise DcaeDeployError(f"--images {folder} does not exist")
    if not root.is_dir():
        raise DcaeDeployError(f"--images {folder} is a file: pass the folder that holds the images")
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return sorted(images), sorted(others)


def check_image(path: Path, resolution: int) -> BadImage | None:
    """Why ``path`` cannot be evaluated at ``resolution`` (None when it can): header and size, PNG checksums."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()  # PNG: every chunk's CRC; other formats: the header
    except UnidentifiedImageError:
        return BadImage(path, "not an image PIL can read (unknown format or damaged header)")
    except Image.DecompressionBombError as exc:
        return BadImage(path, f"refused by PIL as a decompression bomb ({exc})")
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data, unreadable file
        return BadImage(path, f"damaged or truncated ({exc})")
    if min(size) < resolution:
        return BadImage(path, f"{size[0]}x{size[1]}, short side {min(size)} < --resolution {resolution}", small=True)
    return None


def load_image(path: Path, resolution: int) -> np.ndarray:
    """(resolution, resolution, 3) uint8 RGB: the release's ``DMCrop`` of the image at ``path``."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            img = opened.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode {path}: {exc}") from exc
    if img.size != (resolution, resolution):
        while min(img.size) >= 2 * resolution:
            img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
        scale = resolution / min(img.size)
        img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return np.ascontiguousarray(arr[top:top + resolution, left:left + resolution])


def to_model_input(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1] (``ToTensor`` + ``Normalize(0.5, 0.5)``)."""
    return (images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - 0.5) / 0.5
