"""Load and save DC-AE weights in three layouts, all from local paths.

* ``diffusers``: a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors`` as
  ``AutoencoderDC.save_pretrained`` writes it (or a single safetensors file with those key names).
* ``efficientvit``: the original mit-han-lab layout (``model.safetensors`` or a ``.pt`` whose
  ``state_dict`` has keys like ``encoder.stages.1.op_list.4.main.conv.conv.weight``).
* ``dcae_deploy``: our own format, ``model.safetensors`` + ``config.json`` holding the full config.

Keys are translated into our module names, then checked strictly: a missing, unexpected or
mis-shaped tensor is an error naming the keys, the variant expected and, where the weights fit
another registered variant, that variant.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dcae_deploy.checkpoints import describe_key_mismatch, read_json, read_state_dict, write_json, write_safetensors
from dcae_deploy.errors import CheckpointError, UnknownVariantError
from dcae_deploy.models.autoencoder import DCAE, DownBlock, EfficientViTBlock, ResBlock, UpBlock, build_autoencoder
from dcae_deploy.models.autoencoder_family import AutoencoderConfig
from dcae_deploy.registry import get_variant, list_variants

FORMAT_TAG = "dcae_deploy.autoencoder"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
MODEL_WEIGHTS = "model.safetensors"
CONFIG_FILE = "config.json"

# ---------------------------------------------------------------------------------------------
# Key layouts
# ---------------------------------------------------------------------------------------------


def from_diffusers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderDC`` names -> ours: fuse ``to_q/to_k/to_v`` into the 1x1 conv ``to_qkv``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".attn.to_q.weight"):
            prefix = key[: -len("to_q.weight")]
            parts = [state.get(f"{prefix}to_{n}.weight") for n in "qkv"]
            if any(p is None for p in parts):
                continue  # reported as a missing key by the strict check
            out[f"{prefix}to_qkv.weight"] = torch.cat(parts, dim=0)[:, :, None, None]
        elif key.endswith((".attn.to_k.weight", ".attn.to_v.weight")):
            continue
        elif key.endswith(".attn.to_out.weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]
        else:
            out[key] = value
    return out


def efficientvit_key_map(model: DCAE) -> dict[str, str]:
    """Our state-dict key -> the efficientvit key, derived from the module structure."""
    mapping: dict[str, str] = {}

    def add(ours: str, module: nn.Module, theirs: str) -> None:
        for name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            mapping[f"{ours}.{name}"] = f"{theirs}.{name}"

    enc, dec = model.encoder, model.decoder
    if isinstance(enc.conv_in, DownBlock):
        add("encoder.conv_in.conv", enc.conv_in.conv, "encoder.project_in." + _down_conv_name(enc.conv_in))
    else:
        add("encoder.conv_in", enc.conv_in, "encoder.project_in.conv")
    for i, stage in enumerate(enc.down_blocks):
        for j, block in enumerate(stage):
            _add_block(add, f"encoder.down_blocks.{i}.{j}", block, f"encoder.stages.{i}.op_list.{j}")
    add("encoder.conv_out", enc.conv_out, "encoder.project_out.main.op_list.0.conv")

    add("decoder.conv_in", dec.conv_in, "decoder.project_in.main.conv")
    for i, stage in enumerate(dec.up_blocks):
        for j, block in enumerate(stage):
            _add_block(add, f"decoder.up_blocks.{i}.{j}", block, f"decoder.stages.{i}.op_list.{j}")
    add("decoder.norm_out", dec.norm_out, "decoder.project_out.op_list.0")
    if isinstance(dec.conv_out, UpBlock):
        add("decoder.conv_out.conv", dec.conv_out.conv, "decoder.project_out.op_list.2.conv.conv")
    else:
        add("decoder.conv_out", dec.conv_out, "decoder.project_out.op_list.2.conv")
    return mapping


def _down_conv_name(block: DownBlock) -> str:
    # efficientvit wraps the conv of a pixel-unshuffle downsample in one more module than a strided conv
    return "conv.conv" if block.pixel_unshuffle else "conv"


def _add_block(add: Callable, ours: str, block: nn.Module, theirs: str) -> None:
    if isinstance(block, ResBlock):
        add(f"{ours}.conv1", block.conv1, f"{theirs}.main.conv1.conv")
        add(f"{ours}.conv2", block.conv2, f"{theirs}.main.conv2.conv")
        add(f"{ours}.norm", block.norm, f"{theirs}.main.conv2.norm")
    elif isinstance(block, EfficientViTBlock):
        attn, ctx = block.attn, f"{theirs}.context_module.main"
        add(f"{ours}.attn.to_qkv", attn.to_qkv, f"{ctx}.qkv.conv")
        for s, proj in enumerate(attn.to_qkv_multiscale):
            add(f"{ours}.attn.to_qkv_multiscale.{s}.proj_in", proj.proj_in, f"{ctx}.aggreg.{s}.0")
            add(f"{ours}.attn.to_qkv_multiscale.{s}.proj_out", proj.proj_out, f"{ctx}.aggreg.{s}.1")
        add(f"{ours}.attn.to_out", attn.to_out, f"{ctx}.proj.conv")
        add(f"{ours}.attn.norm_out", attn.norm_out, f"{ctx}.proj.norm")
        ffn, local = block.conv_out, f"{theirs}.local_module.main"
        add(f"{ours}.conv_out.conv_inverted", ffn.conv_inverted, f"{local}.inverted_conv.conv")
        add(f"{ours}.conv_out.conv_depth", ffn.conv_depth, f"{local}.depth_conv.conv")
        add(f"{ours}.conv_out.conv_point", ffn.conv_point, f"{local}.point_conv.conv")
        add(f"{ours}.conv_out.norm", ffn.norm, f"{local}.point_conv.norm")
    elif isinstance(block, DownBlock):
        add(f"{ours}.conv", block.conv, f"{theirs}.main.{_down_conv_name(block)}")
    elif isinstance(block, UpBlock):
        add(f"{ours}.conv", block.conv, f"{theirs}.main.conv.conv")
    else:  # pragma: no cover - every block type of the model is listed above
        raise TypeError(f"no efficientvit name for {type(block).__name__}")


def from_efficientvit_state_dict(state: dict[str, torch.Tensor], config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """efficientvit names -> ours. Keys with no counterpart are kept as-is so the strict check reports them."""
    theirs_to_ours = {v: k for k, v in _efficientvit_map(config).items()}
    return {theirs_to_ours.get(k, k): v for k, v in state.items()}


def to_efficientvit_state_dict(model: DCAE) -> dict[str, torch.Tensor]:
    """Our weights renamed to the original efficientvit layout (for tools that only read that layout)."""
    mapping = efficientvit_key_map(model)
    return {mapping[k]: v for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=32)
def _efficientvit_map(config: AutoencoderConfig) -> dict[str, str]:
    return efficientvit_key_map(build_autoencoder(config, device="meta"))


@functools.lru_cache(maxsize=32)
def _expected_shapes(config: AutoencoderConfig) -> dict[str, tuple[int, ...]]:
    model = build_autoencoder(config, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def detect_layout(keys) -> str:
    """``"efficientvit"``, ``"diffusers"`` or ``"dcae_deploy"`` from the key names of a DC-AE state dict."""
    keys = list(keys)
    if any(k.startswith(("encoder.stages.", "decoder.stages.", "encoder.project_in.", "decoder.project_in.")) for k in keys):
        return "efficientvit"
    if any(k.endswith(".attn.to_qkv.weight") for k in keys):
        return "dcae_deploy"
    if any(k.startswith(("encoder.conv_in", "decoder.conv_in")) for k in keys):
        return "diffusers"
    shown = ", ".join(sorted(keys)[:5]) or "(none)"
    raise CheckpointError(
        f"not a DC-AE checkpoint: no encoder/decoder keys of a known layout (first keys: {shown}). "
        "Expected the diffusers AutoencoderDC layout, the efficientvit DC-AE layout or a dcae_deploy save"
    )


def to_native(state: dict[str, torch.Tensor], layout: str, config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    if layout == "efficientvit":
        return from_efficientvit_state_dict(state, config)
    if layout == "diffusers":
        return from_diffusers_state_dict(state)
    return dict(state)


# ---------------------------------------------------------------------------------------------
# Matching weights to variants
# ---------------------------------------------------------------------------------------------


def matching_variants(state: dict[str, torch.Tensor], layout: str) -> list[str]:
    """Registered autoencoder variants whose keys and shapes the weights fit exactly."""
    found = []
    for name in list_variants("autoencoder"):
        config = get_variant(name)
        native = to_native(state, layout, config)
        if {k: tuple(v.shape) for k, v in native.items()} == _expected_shapes(config):
            found.append(name)
    return found


def check_fits(native: dict[str, torch.Tensor], config: AutoencoderConfig, source: str, guess: Callable[[], list[str]]):
    """Raise CheckpointError unless ``native`` has exactly the keys and shapes of ``config``."""
    expected = _expected_shapes(config)
    missing = expected.keys() - native.keys()
    unexpected = native.keys() - expected.keys()
    wrong_shape = [
        f"{k} {tuple(native[k].shape)} (expected {expected[k]})"
        for k in sorted(expected.keys() & native.keys())
        if tuple(native[k].shape) != expected[k]
    ]
    if not (missing or unexpected or wrong_shape):
        return
    message = describe_key_mismatch(source, config.name, missing, unexpected)
    if wrong_shape:
        more = f" ... and {len(wrong_shape) - 8} more" if len(wrong_shape) > 8 else ""
        message += f"; {len(wrong_shape)} tensors with the wrong shape: {', '.join(wrong_shape[:8])}{more}"
    others = [v for v in guess() if v != config.name]
    if others:
        message += f". These weights fit variant {' / '.join(repr(v) for v in others)}: load them as that variant"
    raise CheckpointError(message)


# ---------------------------------------------------------------------------------------------
# Load / save
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Checkpoint:
    state: dict[str, torch.Tensor]
    layout: str
    config: AutoencoderConfig | None  # what the checkpoint's own config file says, if it has one
    source: str


def _read_checkpoint(path: Path) -> _Checkpoint:
    if path.is_dir():
        return _read_folder(path)
    state = read_state_dict(path)
    return _Checkpoint(state, detect_layout(state), None, str(path))


def _read_folder(path: Path) -> _Checkpoint:
    config_path = path / CONFIG_FILE
    meta = read_json(config_path) if config_path.is_file() else {}
    if meta.get("format") == FORMAT_TAG:
        state = read_state_dict(path / MODEL_WEIGHTS)
        return _Checkpoint(state, "dcae_deploy", AutoencoderConfig.from_dict(meta["config"]), str(path))
    if (path / DIFFUSERS_WEIGHTS).is_file():
        if meta.get("_class_name", "AutoencoderDC") != "AutoencoderDC":
            raise CheckpointError(
                f"{config_path} describes a {meta['_class_name']!r}, not an AutoencoderDC: point at the 'vae' folder "
                "of a diffusers pipeline"
            )
        config = AutoencoderConfig.from_diffusers_config(meta) if meta else None
        return _Checkpoint(read_state_dict(path / DIFFUSERS_WEIGHTS), "diffusers", config, str(path))
    for name in (MODEL_WEIGHTS, "model.pt", "model.pth"):
        if (path / name).is_file():
            state = read_state_dict(path / name)
            config = _variant_from_model_name(meta.get("model_name"))
            return _Checkpoint(state, detect_layout(state), config, str(path))
    raise CheckpointError(
        f"no DC-AE weights in folder {path}: expected {DIFFUSERS_WEIGHTS} (diffusers), {MODEL_WEIGHTS} "
        "(efficientvit or dcae_deploy) or model.pt"
    )


def _variant_from_model_name(model_name: str | None) -> AutoencoderConfig | None:
    """The registered config behind an efficientvit hub config ``{"model_name": "dc-ae-..."}``, if known."""
    if not model_name:
        return None
    try:
        return get_variant(model_name.removeprefix("mit-han-lab/"), kind="autoencoder")
    except UnknownVariantError:
        return None


def _same_architecture(a: AutoencoderConfig, b: AutoencoderConfig) -> bool:
    strip = dict(name="", scaling_factor=0.0, description="")
    return dataclasses.replace(a, **strip) == dataclasses.replace(b, **strip)


def _resolve_config(ckpt: _Checkpoint, variant: str | AutoencoderConfig | None) -> AutoencoderConfig:
    requested = get_variant(variant, kind="autoencoder") if isinstance(variant, str) else variant
    if requested is not None:
        if ckpt.config is not None and not _same_architecture(ckpt.config, requested):
            fits = [v for v in list_variants("autoencoder") if _same_architecture(get_variant(v), ckpt.config)]
            hint = f" (architecture of {' / '.join(fits)})" if fits else ""
            raise CheckpointError(
                f"checkpoint {ckpt.source} was saved for a different architecture{hint} than the requested "
                f"variant {requested.name!r}; load it without a variant or with the matching one"
            )
        # A config shipped with the weights knows its own latent scale (in/mix share an architecture).
        if ckpt.config is not None and ckpt.layout != "efficientvit":
            return dataclasses.replace(requested, scaling_factor=ckpt.config.scaling_factor)
        return requested
    if ckpt.config is not None:
        fits = [v for v in list_variants("autoencoder") if _same_architecture(get_variant(v), ckpt.config)]
        same_scale = [v for v in fits if get_variant(v).scaling_factor == ckpt.config.scaling_factor]
        name = (same_scale or fits or [ckpt.config.name])[0]
        return dataclasses.replace(ckpt.config, name=name,
                                   description=get_variant(name).description if fits else ckpt.config.description)
    fits = matching_variants(ckpt.state, ckpt.layout)
    if len(fits) == 1:
        return get_variant(fits[0])
    if not fits:
        raise CheckpointError(
            f"checkpoint {ckpt.source} fits no registered DC-AE variant and carries no config; "
            f"valid variants: {', '.join(list_variants('autoencoder'))}"
        )
    raise CheckpointError(
        f"checkpoint {ckpt.source} fits several variants with different latent scaling factors "
        f"({', '.join(fits)}) and carries no config saying which: pass the variant explicitly"
    )


def load_autoencoder(
    path: str | os.PathLike,
    variant: str | AutoencoderConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> DCAE:
    """A DC-AE with weights from a local checkpoint (file or folder, any supported layout), in eval mode.

    Args:
        path: a diffusers folder, an efficientvit ``model.safetensors``/``.pt`` (or its folder), or a
            folder written by :func:`save_autoencoder`.
        variant: registered name or config the weights must fit. Defaults to the checkpoint's own config,
            or to the single registered variant its tensors fit.
        device: where to put the weights. Defaults to the CPU.
        dtype: cast floating-point weights to this dtype. Defaults to the stored dtype.

    Raises:
        CheckpointError: unreadable files, or weights that do not fit the variant (the message lists keys).
        UnknownVariantError: ``variant`` names no registered autoencoder.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    ckpt = _read_checkpoint(path)
    config = _resolve_config(ckpt, variant)
    native = to_native(ckpt.state, ckpt.layout, config)
    native.update(_default_bn_counters(native, config))
    check_fits(native, config, ckpt.source, guess=lambda: matching_variants(ckpt.state, ckpt.layout))
    model = build_autoencoder(config, device="meta")
    model.load_state_dict(native, strict=True, assign=True)
    model = model.to(device=device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def _default_bn_counters(native: dict[str, torch.Tensor], config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """BatchNorm's ``num_batches_tracked`` is bookkeeping only; fill it in where a checkpoint omits it."""
    return {
        k: torch.zeros((), dtype=torch.long)
        for k in _expected_shapes(config)
        if k.endswith("num_batches_tracked") and k not in native
    }


def save_autoencoder(model: DCAE, path: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (our format) into folder ``path``, each atomically."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create output folder {path}: {exc}") from exc
    write_safetensors(path / MODEL_WEIGHTS, model.state_dict(), metadata={"format": FORMAT_TAG})
    write_json(path / CONFIG_FILE, {"format": FORMAT_TAG, "version": 1, "config": model.config.to_dict()})
    return path
