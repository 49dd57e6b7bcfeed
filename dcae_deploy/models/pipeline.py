"""A text-to-image model as one object: autoencoder + denoiser + text encoder + tokenizer.

On disk a pipeline is a folder in the ``diffusers.SanaPipeline`` layout, plus our ``pipeline.json``::

    pipeline.json        {"variant": "demo", ...}  (the registered PipelineConfig name)
    vae/                 autoencoder (any layout load_autoencoder reads)
    transformer/         denoiser, diffusers layout
    text_encoder/        text encoder (family-specific; see models/text_encoder.py)
    tokenizer/           tokenizer files

Nothing is downloaded: every part loads from the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcae_deploy.checkpoints import write_json
from dcae_deploy.errors import CheckpointError
from dcae_deploy.variants import PipelineConfig, get_variant

PIPELINE_FILE = "pipeline.json"
SUBFOLDERS = {"autoencoder": "vae", "denoiser": "transformer", "text_encoder": "text_encoder", "tokenizer": "tokenizer"}


PARTS = ("autoencoder", "denoiser", "text_encoder")  # the tokenizer comes with the text encoder


@dataclass
class PipelineModels:
    """The PyTorch parts of a text-to-image model (all in eval mode); a part not asked for is None."""

    config: PipelineConfig
    autoencoder: nn.Module | None
    denoiser: nn.Module | None
    text_encoder: nn.Module | None
    tokenizer: Any  # callable: prompts -> (input_ids, attention_mask) int64 numpy arrays (None without text encoder)


def _check_parts(parts) -> tuple[str, ...]:
    parts = PARTS if parts is None else tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown pipeline part(s) {', '.join(unknown)}; parts are {', '.join(PARTS)}")
    return parts


def build_pipeline(variant: str | PipelineConfig, seed: int = 0, parts=None) -> PipelineModels:
    """Randomly initialised parts of a registered pipeline (for structure and parity checks).

    Each part is drawn from its own seed (``seed``, ``seed + 1``, ``seed + 2`` in :data:`PARTS` order), so a
    subset (``parts``) has the same weights as in the full build.
    """
    from dcae_deploy.models.autoencoder import build_autoencoder
    from dcae_deploy.models.denoiser import build_denoiser
    from dcae_deploy.models.text_encoder import build_text_encoder, default_tokenizer

    config = get_variant(variant, kind="pipeline") if isinstance(variant, str) else variant
    wanted, configs = _check_parts(parts), config.parts()
    builders = {"autoencoder": build_autoencoder, "denoiser": build_denoiser, "text_encoder": build_text_encoder}
    built = {}
    for offset, part in enumerate(PARTS):
        if part in wanted:
            torch.manual_seed(seed + offset)
            built[part] = builders[part](configs[part]).eval()
    with_text = "text_encoder" in wanted
    return PipelineModels(config=config, autoencoder=built.get("autoencoder"), denoiser=built.get("denoiser"),
                          text_encoder=built.get("text_encoder"),
                          tokenizer=default_tokenizer(configs["text_encoder"]) if with_text else None)


def load_pipeline(folder: str | Path, variant: str | None = None, parts=None) -> PipelineModels:
    """Load the parts (default: all) of a pipeline folder (see the module docstring), in fp32.

    Raises:
        CheckpointError: not a pipeline folder, a part missing, or weights that do not fit the variant.
    """
    from dcae_deploy.models.autoencoder_io import load_autoencoder
    from dcae_deploy.models.denoiser import load_denoiser
    from dcae_deploy.models.text_encoder import load_text_encoder, load_tokenizer

    folder = Path(folder)
    config = _pipeline_config(folder, variant)
    wanted, configs = _check_parts(parts), config.parts()
    subfolders = [SUBFOLDERS[p] for p in wanted] + (["tokenizer"] if "text_encoder" in wanted else [])
    for sub in subfolders:
        if not (folder / sub).exists():
            raise CheckpointError(f"pipeline folder {folder} has no {sub}/ (part of {config.name})")
    loaders = {  # weights may be stored in fp16 (the shipped demo); compute in fp32
        "autoencoder": lambda: load_autoencoder(folder / "vae", configs["autoencoder"].name),
        "denoiser": lambda: load_denoiser(folder / "transformer", configs["denoiser"].name),
        "text_encoder": lambda: load_text_encoder(folder / "text_encoder", configs["text_encoder"].name),
    }
    loaded = {p: loaders[p]().float().eval() for p in wanted}
    return PipelineModels(
        config=config, autoencoder=loaded.get("autoencoder"), denoiser=loaded.get("denoiser"),
        text_encoder=loaded.get("text_encoder"),
        tokenizer=load_tokenizer(folder / "tokenizer", configs["text_encoder"]) if "text_encoder" in wanted else None,
    )


def save_pipeline(models: PipelineModels, folder: str | Path) -> Path:
    """Write a pipeline folder that :func:`load_pipeline` reads (each file atomically)."""
    from dcae_deploy.models.autoencoder_io import save_autoencoder
    from dcae_deploy.models.denoiser import save_denoiser
    from dcae_deploy.models.text_encoder import save_text_encoder

    folder = Path(folder)
    save_autoencoder(models.autoencoder, folder / "vae")
    save_denoiser(models.denoiser, folder / "transformer")
    save_text_encoder(models.text_encoder, folder / "text_encoder")
    models.tokenizer.save(folder / "tokenizer")
    write_json(folder / PIPELINE_FILE, {"variant": models.config.name})
    return folder


def is_pipeline_folder(path: str | Path) -> bool:
    return (Path(path) / PIPELINE_FILE).is_file()


def _pipeline_config(folder: Path, variant: str | None) -> PipelineConfig:
    path = folder / PIPELINE_FILE
    if not path.is_file():
        if variant is None:
            raise CheckpointError(
                f"{folder} is not a pipeline folder (no {PIPELINE_FILE}); pass the pipeline variant to say what it holds"
            )
        return get_variant(variant, kind="pipeline")
    try:
        found = json.loads(path.read_text())["variant"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if variant is not None and get_variant(variant, kind="pipeline").name != get_variant(found, kind="pipeline").name:
        raise CheckpointError(f"{folder} holds pipeline {found!r}, not {variant!r}")
    return get_variant(found, kind="pipeline")
