"""A text-to-image model as one object: autoencoder + denoiser + text encoder + tokenizer (a class-conditional
model: autoencoder + denoiser; its DC-AE-Diffusion hub folder is read by its config's ``loader``).

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
from dcae_deploy.errors import CheckpointError, DcaeDeployError
from dcae_deploy.family import family_of, is_composite, resolve
from dcae_deploy.models.pipeline_config import PipelineConfig
from dcae_deploy.registry import get_variant

PIPELINE_FILE = "pipeline.json"
SUBFOLDERS = {"autoencoder": "vae", "denoiser": "transformer", "text_encoder": "text_encoder", "tokenizer": "tokenizer"}


PARTS = ("autoencoder", "denoiser", "text_encoder")  # the tokenizer comes with the text encoder


@dataclass
class PipelineModels:
    """The PyTorch parts of a variant, one attribute per role (all in eval mode); a part not asked for, or
    that the variant does not have, is None. ``config`` is the pipeline's (or a bare family variant's) config."""

    config: Any  # PipelineConfig, or the config of a bare family variant (build_parts / load_parts)
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


def _part_tokenizer(config, folder: Path | None, search: bool = True):
    """The tokenizer of a part that reads text (None for the others): saved in ``folder``, else built in."""
    return family_of(config).load_tokenizer(config, folder, search)


def build_pipeline(variant: str | PipelineConfig, seed: int = 0, parts=None) -> PipelineModels:
    """Randomly initialised parts of a registered pipeline (for structure and parity checks).

    Each part is drawn from its own seed (``seed``, ``seed + 1``, ``seed + 2`` in :data:`PARTS` order), so a
    subset (``parts``) has the same weights as in the full build.
    """
    config = get_variant(variant, kind="pipeline") if isinstance(variant, str) else variant
    configs = config.parts()
    wanted = [p for p in _check_parts(parts) if p in configs]  # a class-conditional pipeline has no text encoder
    built = {}
    for offset, part in enumerate(PARTS):
        if part in wanted:
            torch.manual_seed(seed + offset)
            built[part] = family_of(configs[part]).build_module(configs[part]).eval()
    tokenizer = _part_tokenizer(configs["text_encoder"], None) if "text_encoder" in wanted else None
    return PipelineModels(config=config, tokenizer=tokenizer, **_by_role(built))


def load_pipeline(folder: str | Path, variant: str | None = None, parts=None) -> PipelineModels:
    """Load the parts (default: all) of a pipeline folder (see the module docstring), in fp32.

    Raises:
        CheckpointError: not a pipeline folder, a part missing, or weights that do not fit the variant.
    """
    folder = Path(folder)
    config = _pipeline_config(folder, variant)
    configs = config.parts()
    wanted = [p for p in _check_parts(parts) if p in configs]
    loader = getattr(config, "loader", None)  # the pipeline's own checkpoint layout (a DC-AE-Diffusion hub folder)
    if loader is not None and not (folder / PIPELINE_FILE).is_file():
        loaded = {p: m.float().eval() for p, m in resolve(loader)(folder, config, wanted).items()}
        return PipelineModels(config=config, tokenizer=None, **_by_role(loaded))
    subfolders = [SUBFOLDERS[p] for p in wanted] + (["tokenizer"] if "text_encoder" in wanted else [])
    for sub in subfolders:
        if not (folder / sub).exists():
            raise CheckpointError(f"pipeline folder {folder} has no {sub}/ (part of {config.name})")
    # weights may be stored in fp16 (the shipped demo); compute in fp32
    loaded = {p: family_of(configs[p]).load_module(folder / SUBFOLDERS[p], configs[p].name).float().eval()
              for p in wanted}
    tokenizer = _part_tokenizer(configs["text_encoder"], folder / "tokenizer", search=False) if "text_encoder" in wanted else None
    return PipelineModels(config=config, tokenizer=tokenizer, **_by_role(loaded))


def save_pipeline(models: PipelineModels, folder: str | Path) -> Path:
    """Write a pipeline folder that :func:`load_pipeline` reads (each file atomically)."""
    folder = Path(folder)
    for role in PARTS:
        module = getattr(models, role)
        if module is not None:  # a class-conditional pipeline has no text encoder (and no tokenizer)
            family_of(module.config).save_module(module, folder / SUBFOLDERS[role])
    if models.tokenizer is not None:
        models.tokenizer.save(folder / "tokenizer")
    write_json(folder / PIPELINE_FILE, {"variant": models.config.name})
    return folder


def _by_role(modules: dict[str, nn.Module]) -> dict[str, nn.Module | None]:
    return {role: modules.get(role) for role in PARTS}


# --- any variant: a bare family variant is a pipeline of one part ----------------------------------


def build_parts(config, seed: int = 0, roles=None) -> PipelineModels:
    """Random weights for the parts ``roles`` (default: all) of any variant: a pipeline's
    (:func:`build_pipeline`) or a bare family variant's single part (drawn from ``seed``)."""
    if is_composite(config):
        return build_pipeline(config, seed=seed, parts=roles)
    torch.manual_seed(seed)
    module = family_of(config).build_module(config).eval()
    return PipelineModels(config=config, tokenizer=_part_tokenizer(config, None),
                          **_by_role({family_of(config).role: module}))


def load_parts(config, checkpoint: str | Path, roles=None) -> PipelineModels:
    """Load the parts ``roles`` of any variant from local files: a pipeline folder (:func:`load_pipeline`)
    or one part's checkpoint in any layout its family reads (a text encoder's tokenizer beside it)."""
    if is_composite(config):
        return load_pipeline(checkpoint, config.name, parts=roles)
    family = family_of(config)
    module = family.load_module(checkpoint, config).eval()
    tokenizer = _part_tokenizer(config, Path(checkpoint))
    return PipelineModels(config=config, tokenizer=tokenizer, **_by_role({family.role: module}))


def _hub_model_name(folder: Path) -> str | None:
    """``model_name`` of a hub folder's ``config.json`` (``{"model_name": "mit-han-lab/dc-ae-..."}``) when it names
    a registered pipeline, else None."""
    try:
        name = json.loads((folder / "config.json").read_text()).get("model_name")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str):
        return None
    name = name.removeprefix("mit-han-lab/")
    try:
        get_variant(name, kind="pipeline")
    except DcaeDeployError:
        return None
    return name


def _pipeline_config(folder: Path, variant: str | None) -> PipelineConfig:
    path = folder / PIPELINE_FILE
    if not path.is_file():
        if variant is None:
            variant = _hub_model_name(folder)  # a DC-AE-Diffusion hub folder names its model in config.json
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
