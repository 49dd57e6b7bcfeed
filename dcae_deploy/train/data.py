"""Training data: image folders (random crops), class-labelled image folders (center crops), the procedural
shapes set, and cached latents.

Items are ``{"image": float32 (3, R, R) in [-1, 1], "caption": str}`` (images), ``{"image", "label": int}``
(class-labelled images) or ``{"latent": float32 (C, h, w), "caption": str}`` / ``{"latent", "label": int}``
(latents). Datasets accept either an index or the ``(index, draw_seed)`` keys of
:class:`dcae_deploy.train.loop.StepBatchSampler`; random crops come from ``draw_seed``, so a resumed run sees the
same crops as an uninterrupted one.

A latent cache is a folder with ``latents.safetensors`` (``latents`` (N, C, h, w) float32, already multiplied by
the autoencoder's scaling factor, and for class caches ``labels`` (N,) int64) and its index ``captions.json``
(``count``, the captions or, for a class cache, the image files, class names and how the latents were made).
:func:`cache_class_latents` writes one from an ImageNet-style folder under ``torchrun`` as efficientvit's
``applications/dc_ae/dc_ae_generate_latent.py`` does: ADM center crop (:func:`adm_center_crop`), ``ToTensor`` +
``Normalize(0.5, 0.5)``, fp32 encode, latents times the scaling factor, each rank encoding one contiguous shard
of the sorted file list. Unlike the release (one ``.npy`` per image, under the image's class folder), the shards
are gathered into the one file, in the same order whatever the number of processes.
:meth:`LatentDataset.load` memory-maps it, so the processes of a run share one copy in the page cache.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dcae_deploy.errors import DcaeDeployError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTIONS_FILE = "captions.jsonl"
LATENTS_FILE = "latents.safetensors"
LATENT_CAPTIONS_FILE = "captions.json"  # the cache's index (captions, or files and classes of a class cache)
LATENT_FORMAT = "dcae_deploy.latents"
#: torchvision's ``IMG_EXTENSIONS``: what the release's ``ImageFolder`` reads (case-insensitive)
CLASS_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ADM_CROP = "adm-center"  # efficientvit DMCrop (ADM's center crop), recorded in a class cache's index


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
    """Latents (N, C, h, w) with one caption and/or one class label each (held in memory, or memory-mapped by
    :meth:`load`). ``metadata``: what the cache's index says about how the latents were made."""

    def __init__(self, latents: torch.Tensor, captions: list[str] | None = None, labels: torch.Tensor | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
        n = latents.shape[0] if latents.ndim else 0
        if latents.ndim != 4 or (captions is not None and len(captions) != n):
            raise DcaeDeployError(
                f"latent cache needs (N, C, h, w) latents and N captions, got {tuple(latents.shape)} and "
                f"{len(captions) if captions is not None else 'no'} captions"
            )
        if labels is not None and (tuple(labels.shape) != (n,) or labels.is_floating_point()):
            raise DcaeDeployError(f"latent cache needs N integer class labels, got {labels.dtype} "
                                  f"{tuple(labels.shape)} for {n} latents")
        if captions is None and labels is None:
            raise DcaeDeployError("a latent cache needs captions or class labels")
        self.latents = latents.float()
        self.captions = list(captions) if captions is not None else None
        self.labels = labels.long() if labels is not None else None
        self.metadata = dict(metadata or {})

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        i = _split_key(key)[0]
        item: dict[str, Any] = {"latent": self.latents[i]}
        if self.captions is not None:
            item["caption"] = self.captions[i]
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item

    @classmethod
    def load(cls, folder: str | Path) -> LatentDataset:
        """Read a cache folder; ``latents.safetensors`` is memory-mapped (copy-on-write), not read into memory.

        Raises:
            DcaeDeployError: not a latent cache folder, unreadable or truncated files, or an index that does not
                match the latents (an interrupted write).
        """
        from dcae_deploy.checkpoints import read_json

        folder = Path(folder)
        path, index_path = folder / LATENTS_FILE, folder / LATENT_CAPTIONS_FILE
        if not path.is_file() or not index_path.is_file():
            missing = " and ".join(p.name for p in (path, index_path) if not p.is_file())
            raise DcaeDeployError(
                f"{folder} is not a latent cache (no {missing}): write one with `python -m dcae_deploy.train "
                "cache-latents` (class labels) or the denoiser command (captions)"
            )
        tensors = read_safetensors_mmap(path)
        if "latents" not in tensors:
            raise DcaeDeployError(f"{path} holds no 'latents' tensor (it has {', '.join(sorted(tensors)) or 'none'})")
        index = read_json(index_path)
        latents = tensors["latents"]
        count = index.get("count")
        if count is not None and count != latents.shape[0]:
            raise DcaeDeployError(
                f"{index_path} describes {count} latents but {path} holds {latents.shape[0]}: the cache was not "
                "written completely; write it again"
            )
        metadata = {k: v for k, v in index.items() if k not in ("captions", "count")}
        return cls(latents, index.get("captions"), tensors.get("labels"), metadata)

    def save(self, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``latents.safetensors`` then the index (each atomically; the index last)."""
        from dcae_deploy.checkpoints import write_json, write_safetensors

        folder = Path(folder)
        tensors = {"latents": self.latents}
        if self.labels is not None:
            tensors["labels"] = self.labels
        write_safetensors(folder / LATENTS_FILE, tensors)
        index: dict[str, Any] = {**self.metadata, **(metadata or {}), "count": len(self)}
        if self.captions is not None:
            index["captions"] = self.captions
        write_json(folder / LATENT_CAPTIONS_FILE, index)
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


# ---------------------------------------------------------------------------------------------
# Class-labelled images and their latent cache (efficientvit's dc_ae_generate_latent)
# ---------------------------------------------------------------------------------------------


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """efficientvit's ``DMCrop`` (ADM's center crop): halve with BOX filtering while the short side is at least
    ``2 * size``, resize (bicubic) so the short side is ``size``, then cut the centered ``size`` square."""
    if image.size == (size, size):
        return image
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision's ``ToTensor()`` then ``Normalize(0.5, 0.5)`` in its float32 order: ``(x / 255 - 0.5) / 0.5``."""
    arr = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return arr.to(torch.float32).div(255).sub_(0.5).div_(0.5)


def _is_class_image(name: str) -> bool:
    return name.lower().endswith(CLASS_IMAGE_SUFFIXES)


class ClassImageFolder:
    """Images with integer class labels, center-cropped (:func:`adm_center_crop`) to ``resolution``.

    Labels come from ImageNet-style class sub-folders (torchvision's ``ImageFolder``, as the release reads its
    data: the classes are the sorted names of ``root``'s sub-folders, label = position in that list, images
    anywhere below a class folder; images directly in ``root`` are skipped (listed in ``skipped``)) or, with
    ``labels_file``, from a text file of ``<image path relative to root> <integer label>`` lines (blank lines and
    ``#`` comments ignored; the label is the last field, so paths may hold spaces) that must label every image
    under ``root``. Order: class by class, the files of each as ``ImageFolder`` lists them (labels-file mode:
    sorted relative paths).

    Raises:
        DcaeDeployError: ``root`` is missing or holds no images; no class sub-folders and no labels file (the
            labels are missing); an empty class folder; a labels file that is unreadable, malformed, names a file
            that is not an image here or twice, or leaves images unlabelled.
    """

    def __init__(self, root: str | Path, resolution: int, labels_file: str | Path | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DcaeDeployError(f"image folder not found: {self.root}" if not self.root.exists()
                                  else f"image folder {self.root} is a file, not a folder of images")
        if resolution < 1:
            raise DcaeDeployError(f"crop resolution must be a positive number of pixels, got {resolution}")
        self.resolution = resolution
        self.skipped: list[Path] = []
        self.classes: list[str] | None
        if labels_file is not None:
            self.labels_file: Path | None = Path(labels_file)
            self.files, self.labels = self._from_labels_file(self.labels_file)
            self.classes = None
        else:
            self.labels_file = None
            self.files, self.labels, self.classes = self._from_class_folders()

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _from_class_folders(self) -> tuple[list[Path], list[int], list[str]]:
        classes = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
        self.skipped = sorted(p for p in self.root.iterdir() if p.is_file() and _is_class_image(p.name))
        if not classes:
            found = f"{len(self.skipped)} images but " if self.skipped else ""
            raise DcaeDeployError(
                f"class labels are missing: {self.root} holds {found}no class sub-folders. Put the images in one "
                f"sub-folder per class (ImageNet style: {self.root}/<class>/<image>), or pass a labels file "
                "(--labels FILE: '<image path> <label>' lines)"
            )
        files, labels, empty = [], [], []
        for label, name in enumerate(classes):
            found = [Path(dirpath) / f for dirpath, _, names in sorted(os.walk(self.root / name, followlinks=True))
                     for f in sorted(names) if _is_class_image(f)]
            if not found:
                empty.append(name)
            files += found
            labels += [label] * len(found)
        if empty:
            raise DcaeDeployError(
                f"{len(empty)} class folder(s) under {self.root} hold no images ({', '.join(empty[:5])}"
                f"{' ...' if len(empty) > 5 else ''}; images: {', '.join(CLASS_IMAGE_SUFFIXES)}): the release's "
                "ImageFolder refuses them too. Remove them or add their images"
            )
        return files, labels, classes

    def _from_labels_file(self, path: Path) -> tuple[list[Path], list[int]]:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DcaeDeployError(f"cannot read labels file {path} (UTF-8 text expected): {exc}") from exc
        images = {self._relative(p): p for p in self.root.rglob("*") if p.is_file() and _is_class_image(p.name)}
        if not images:
            raise DcaeDeployError(f"no images ({', '.join(CLASS_IMAGE_SUFFIXES)}) under {self.root}")
        labels: dict[str, int] = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.strip().rsplit(None, 1)
            where = f"{path}:{n}"
            if len(fields) != 2 or not fields[1].lstrip("+").isdigit():
                raise DcaeDeployError(
                    f"{where}: expected '<image path relative to {self.root}> <integer label >= 0>', got {line[:80]!r}"
                )
            key = Path(fields[0].replace("\\", "/")).as_posix()
            if key not in images:
                raise DcaeDeployError(f"{where}: {fields[0]!r} is not an image under {self.root} (paths are relative "
                                      f"to the folder, with the file's suffix)")
            if key in labels:
                raise DcaeDeployError(f"{where}: a second label for {fields[0]!r}")
            labels[key] = int(fields[1])
        missing = sorted(set(images) - set(labels))
        if missing:
            raise DcaeDeployError(
                f"class labels are missing for {len(missing)} of the {len(images)} images under {self.root} "
                f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): {path} must label every image"
            )
        keys = sorted(labels)
        return [images[k] for k in keys], [labels[k] for k in keys]

    @property
    def num_labels(self) -> int:
        """How many labels the data uses: the number of classes, or the largest label + 1 of a labels file."""
        return len(self.classes) if self.classes is not None else max(self.labels) + 1

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index = _split_key(key)[0]
        path = self.files[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DcaeDeployError(f"cannot read image {path}: {exc}") from exc
        image = adm_center_crop(image, self.resolution)
        return {"image": to_normalized_tensor(image), "label": self.labels[index], "index": index}

    def index(self) -> dict[str, Any]:
        """What a class cache's index records about the images."""
        return {
            "data": str(self.root), "files": [self._relative(p) for p in self.files], "classes": self.classes,
            "labels_file": str(self.labels_file) if self.labels_file is not None else None,
            "num_labels": self.num_labels, "resolution": self.resolution, "crop": ADM_CROP,
        }


def shard_range(count: int, rank: int, world_size: int) -> range:
    """The contiguous slice of ``count`` items that ``rank`` encodes (the release's ``DistributedRangedSampler``
    without shuffling, minus its wrap-around padding: every item exactly once)."""
    per = math.ceil(count / world_size)
    return range(min(rank * per, count), min((rank + 1) * per, count))


@torch.no_grad()
def cache_class_latents(autoencoder, images: ClassImageFolder, out: str | Path, *, info=None, batch_size: int = 64,
                        num_workers: int = 0, metadata: Mapping[str, Any] | None = None,
                        progress: bool = True) -> Path:
    """Encode ``images`` into the latent cache folder ``out`` (every rank of ``info`` calls this; ``info=None``:
    one process on the CPU). Returns ``out``.

    Each rank encodes its :func:`shard_range` in batches of ``batch_size`` (fp32, ``encode(scaled=True)``: the
    latents times the scaling factor, as the release stores them) into ``out/.partial/``; rank 0 then streams the
    shards, in rank order, into ``latents.safetensors`` with the labels, writes the index ``captions.json``
    (each file atomically, the index last) and removes ``.partial/``.

    Raises:
        DcaeDeployError: ``out`` already holds a cache, or the resolution is not a multiple of the autoencoder's
            spatial compression.
    """
    from torch.utils.data import DataLoader, Subset

    from dcae_deploy.runtime.progress import ProgressBar
    from dcae_deploy.train.distributed import DistInfo, barrier

    info = info or DistInfo(0, 1, 0, torch.device("cpu"))
    out = Path(out)
    config = autoencoder.config
    ratio, res = config.spatial_compression_ratio, images.resolution
    if res % ratio:
        raise DcaeDeployError(
            f"--resolution {res} is not a multiple of {config.name}'s spatial compression {ratio}: the latents would "
            f"not cover the image; use e.g. {max(ratio, res // ratio * ratio)}"
        )
    if (out / LATENTS_FILE).exists() or (out / LATENT_CAPTIONS_FILE).exists():
        raise DcaeDeployError(f"{out} already holds a latent cache: remove it or choose another output folder")
    shape = (config.latent_channels, res // ratio, res // ratio)
    partial = out / ".partial"
    if info.is_main:
        shutil.rmtree(partial, ignore_errors=True)  # a crashed earlier run's shards
        partial.mkdir(parents=True)
    barrier(info)

    mine = shard_range(len(images), info.rank, info.world_size)
    autoencoder = autoencoder.to(info.device).eval()
    shard = partial / f"rank-{info.rank:05d}.npy"
    tmp = partial / f".rank-{info.rank:05d}.npy.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype="<f4", shape=(len(mine), *shape))
    loader = DataLoader(Subset(images, list(mine)), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    label = f"cache latents{f' (rank 0 of {info.world_size})' if info.distributed else ''}"
    bar = ProgressBar(len(mine), label, enabled=progress and info.is_main)
    done = 0
    for batch in loader:
        latents = autoencoder.encode(batch["image"].to(info.device), scaled=True).float().cpu().numpy()
        array[done : done + len(latents)] = latents
        done += len(latents)
        bar.update(len(latents))
    array.flush()
    del array
    os.replace(tmp, shard)
    barrier(info)

    if info.is_main:
        shards = [partial / f"rank-{r:05d}.npy" for r in range(info.world_size)]
        labels = np.asarray(images.labels, dtype="<i8")
        _write_latent_file(out / LATENTS_FILE, shards, labels, (len(images), *shape))
        from dcae_deploy.checkpoints import write_json

        index = {"format": LATENT_FORMAT, "version": 1, "count": len(images), "latent_shape": list(shape),
                 "autoencoder_variant": config.name, "scaling_factor": config.scaling_factor,
                 "spatial_compression_ratio": ratio, "latent_channels": config.latent_channels,
                 **images.index(), **dict(metadata or {})}
        write_json(out / LATENT_CAPTIONS_FILE, index)
        shutil.rmtree(partial, ignore_errors=True)
        print(f"wrote {len(images)} latents {shape} with {images.num_labels} class labels to {out}", flush=True)
    barrier(info)
    return out


_CHUNK_BYTES = 64 << 20


def _write_latent_file(path: Path, shards: list[Path], labels: np.ndarray, shape: tuple[int, ...]) -> None:
    """Stream the rank shards (``.npy``, float32) and the labels into one safetensors file, atomically, without
    holding the latents in memory (format: an 8-byte little-endian header length, the JSON header padded with
    spaces to a multiple of 8, then the raw little-endian tensor bytes)."""
    from dcae_deploy.checkpoints import atomic_write

    latent_bytes = int(np.prod(shape)) * 4
    header = {
        "latents": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, latent_bytes]},
        "labels": {"dtype": "I64", "shape": [len(labels)],
                   "data_offsets": [latent_bytes, latent_bytes + labels.nbytes]},
        "__metadata__": {"format": LATENT_FORMAT},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little") + text)
            written = 0
            for shard in shards:
                data = np.load(shard, mmap_mode="r")
                flat = data.reshape(-1).view(np.uint8) if data.size else np.zeros(0, np.uint8)
                for start in range(0, flat.size, _CHUNK_BYTES):
                    f.write(flat[start : start + _CHUNK_BYTES].tobytes())
                written += flat.size
                del data, flat
            if written != latent_bytes:
                raise DcaeDeployError(f"the rank shards hold {written} bytes of latents, expected {latent_bytes}")
            f.write(labels.tobytes())
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
                       "U8": "u1", "BOOL": "?"}


def read_safetensors_mmap(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as CPU tensors over a copy-on-write memory map of it (pages are read on
    first use and shared between processes); dtypes numpy lacks (bfloat16) are read into memory instead.

    Raises:
        CheckpointError: the file is missing, truncated or not a safetensors file.
    """
    from dcae_deploy.checkpoints import read_state_dict
    from dcae_deploy.errors import CheckpointError

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 2 <= length <= size - 8:
                raise ValueError(f"header length {length} does not fit a file of {size} bytes")
            header = json.loads(f.read(length))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}. The file is corrupt or truncated; "
                              "write it again") from exc
    header.pop("__metadata__", None)
    if any(entry.get("dtype") not in _SAFETENSORS_DTYPES for entry in header.values()):
        return read_state_dict(path)
    tensors = {}
    start = 8 + length
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        if start + end > size or end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise CheckpointError(f"cannot read safetensors file {path}: tensor {name!r} does not fit the file "
                                  f"({size} bytes); the file is truncated, write it again")
        if end == begin:
            array = np.zeros(shape, dtype)
        else:
            array = np.memmap(path, dtype=dtype, mode="c", offset=start + begin, shape=shape)
        tensors[name] = torch.from_numpy(array)
    return tensors
