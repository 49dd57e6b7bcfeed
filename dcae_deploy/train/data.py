"""Training data: image folders (random crops), the procedural shapes set, and cached latents.

Items are ``{"image": float32 (3, R, R) in [-1, 1], "caption": str}`` (images) or
``{"latent": float32 (C, h, w), "caption": str}`` (latents). Datasets accept either an index or the
``(index, draw_seed)`` keys of :class:`dcae_deploy.train.loop.StepBatchSampler`; random crops come from
``draw_seed``, so a resumed run sees the same crops as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dcae_deploy.errors import DcaeDeployError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTIONS_FILE = "captions.jsonl"
LATENTS_FILE = "latents.safetensors"
LATENT_CAPTIONS_FILE = "captions.json"


def _split_key(key: Any) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), int(key)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


class ImageFolderDataset:
    """Images under ``root`` (recursive, sorted), random ``resolution``-square crops, captions from
    ``root/captions.jsonl`` (UTF-8, one JSON object per line, ``{"file": <path relative to root>,
    "caption": <text>}``; images without a line get ``""``).

    Images with a side shorter than ``resolution`` are first resized (bicubic) so the short side fits.

    Raises:
        DcaeDeployError: ``root`` is missing or not a folder, holds no images, or ``captions.jsonl`` is
            unreadable, has a malformed line, names a file twice or names a file that is not an image here.
    """

    def __init__(self, root: str | Path, resolution: int) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise DcaeDeployError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise DcaeDeployError(f"image folder {self.root} is a file, not a folder of images")
        if resolution < 1:
            raise DcaeDeployError(f"crop resolution must be a positive number of pixels, got {resolution}")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise DcaeDeployError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        self.resolution = resolution
        self.captions = self._read_captions()

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _read_captions(self) -> dict[str, str]:
        path = self.root / CAPTIONS_FILE
        if not path.is_file():
            return {}
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DcaeDeployError(f"cannot read captions file {path} (UTF-8 JSON lines expected): {exc}") from exc
        expected = 'one JSON object per line: {"file": "<image path relative to the folder>", "caption": "<text>"}'
        known = {self._key(p) for p in self.files}
        captions: dict[str, str] = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                entry = json.loads(line)
            except ValueError as exc:
                raise DcaeDeployError(f"{where}: invalid JSON ({exc}); expected {expected}, got {line[:80]!r}") from exc
            if not isinstance(entry, dict) or not {"file", "caption"} <= entry.keys():
                raise DcaeDeployError(
                    f"{where}: expected a JSON object with 'file' and 'caption', got {line[:80]!r}"
                )
            file, caption = entry["file"], entry["caption"]
            if not isinstance(file, str) or not isinstance(caption, str):
                raise DcaeDeployError(f"{where}: 'file' and 'caption' must be strings, got {line[:80]!r}")
            key = Path(file.replace("\\", "/")).as_posix()
            if key not in known:
                raise DcaeDeployError(
                    f"{where}: {file!r} is not an image under {self.root} (paths are relative to the folder, "
                    f"with the file's suffix; images: {', '.join(IMAGE_SUFFIXES)})"
                )
            if key in captions:
                raise DcaeDeployError(f"{where}: a second caption for {file!r}")
            captions[key] = caption
        return captions

    def __len__(self) -> int:
        return len(self.files)

    def caption(self, index: int) -> str:
        return self.captions.get(self._key(self.files[index]), "")

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, draw = _split_key(key)
        path = self.files[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DcaeDeployError(f"cannot read image {path}: {exc}") from exc
        r = self.resolution
        if min(image.size) < r:
            scale = r / min(image.size)
            size = (max(r, round(image.width * scale)), max(r, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC)
        rng = np.random.default_rng(draw)
        x = int(rng.integers(0, image.width - r + 1))
        y = int(rng.integers(0, image.height - r + 1))
        return {"image": to_tensor(image.crop((x, y, x + r, y + r))), "caption": self.caption(index)}


class ShapesImages:
    """:class:`dcae_deploy.data.shapes.ShapesDataset` rendered at ``resolution``, accepting sampler keys."""

    def __init__(self, length: int, resolution: int, seed: int = 0, split: str = "train") -> None:
        from dcae_deploy.data.shapes import ShapesDataset

        self.shapes = ShapesDataset(length, seed=seed, image_size=resolution, split=split)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        return self.shapes[_split_key(key)[0]]


def image_dataset(spec: str, resolution: int, *, length: int = 10_000, seed: int = 0):
    """``"shapes"`` (``length`` procedural images) or ``"folder:PATH"``."""
    if spec == "shapes":
        return ShapesImages(length, resolution, seed=seed)
    if spec.startswith("folder:"):
        return ImageFolderDataset(spec.removeprefix("folder:"), resolution)
    raise DcaeDeployError(f"unknown data source {spec!r}; expected 'shapes' or 'folder:PATH'")


class LatentDataset:
    """Latents (N, C, h, w) with one caption each, in memory."""

    def __init__(self, latents: torch.Tensor, captions: list[str]) -> None:
        if latents.ndim != 4 or len(captions) != latents.shape[0]:
            raise DcaeDeployError(
                f"latent cache needs (N, C, h, w) latents and N captions, got {tuple(latents.shape)} and {len(captions)}"
            )
        self.latents, self.captions = latents.float(), list(captions)

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        i = _split_key(key)[0]
        return {"latent": self.latents[i], "caption": self.captions[i]}

    @classmethod
    def load(cls, folder: str | Path) -> LatentDataset:
        from dcae_deploy.checkpoints import read_json, read_state_dict

        folder = Path(folder)
        latents = read_state_dict(folder / LATENTS_FILE)["latents"]
        return cls(latents, list(read_json(folder / LATENT_CAPTIONS_FILE)["captions"]))

    def save(self, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        from dcae_deploy.checkpoints import write_json, write_safetensors

        folder = Path(folder)
        write_safetensors(folder / LATENTS_FILE, {"latents": self.latents})
        write_json(folder / LATENT_CAPTIONS_FILE, {"captions": self.captions, **(metadata or {})})
        return folder


@torch.no_grad()
def cache_latents(autoencoder, dataset, *, batch_size: int = 16, device: str | torch.device = "cpu",
                  progress: bool = True) -> LatentDataset:
    """Encode every image of ``dataset`` once (scaled latents, what the denoiser consumes)."""
    from dcae_deploy.runtime.progress import ProgressBar

    autoencoder = autoencoder.to(device).eval()
    latents, captions = [], []
    bar = ProgressBar(len(dataset), "cache latents", enabled=progress)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([it["image"] for it in items]).to(device)
        latents.append(autoencoder.encode(images, scaled=True).float().cpu())
        captions += [it["caption"] for it in items]
        bar.update(len(items))
    return LatentDataset(torch.cat(latents), captions)
