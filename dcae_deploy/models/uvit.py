"""UViT: the class-conditional denoiser of DC-AE-Diffusion (UViT-S/H/2B, and USiT, the same net with the SiT
objective), written for export; plus what the class-conditional families (this one and :mod:`dcae_deploy.models.dit`)
share: the layers both use, reading their checkpoints, and the export spec of their ``denoiser`` graph.

The function is the reference's ``UViT.forward_without_cfg(x, t, y)`` (mit-han-lab/efficientvit
``efficientvit/diffusioncore/models/uvit.py``, itself from baofff/U-ViT): tokens ``[label, time, patches]`` plus a
learned position embedding, ``depth // 2`` in-blocks whose outputs feed, last first, the ``depth // 2`` out-blocks
through ``skip_linear`` (Linear 2D -> D over ``concat(x, skip)``), a mid-block between them, LayerNorm, a linear
head, the two extra tokens dropped and the patches put back. Blocks are pre-norm attention (qkv without bias) and
an exact-GELU MLP. The time token is the raw D-wide sinusoid (cos half first), through an MLP only with
``mlp_time_embed``. Parameter names equal the reference's, so its checkpoints load by name
(:func:`load_uvit`).

Export notes: ``forward`` has no data-dependent branch (the reference's ``y is None`` case, label dropout and
gradient checkpointing are training or structure options, fixed here), (un)patchify are reshapes and permutes
(no einops / einsum), the token grid comes from the config (the position embedding fixes it: static spatial
size, dynamic batch). Attention and LayerNorm statistics run in fp32 inside fp16/bf16 graphs.

Checkpoints (all local; never ``strict=False``: a missing, unexpected or mis-shaped tensor is an error naming them):

* the DC-AE-Diffusion hub folder (``mit-han-lab/dc-ae-f32c32-in-1.0-uvit-h-in-512px``): ``config.json``
  (``{"model_name": ...}``) + ``model.safetensors`` with ``diffusion_model.<key>`` (and ``autoencoder.<key>``,
  the DC-AE in efficientvit's layout, which :func:`load_dcae_diffusion` reads for a pipeline);
* a raw training checkpoint: a ``.pt`` whose ``ema`` holds (in its first entry) keys prefixed ``uvit.`` / ``dit.``,
  read with ``torch.load(weights_only=True)``;
* our own folder, written by :func:`save_uvit` (``config.json`` with the full config + ``model.safetensors``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcae_deploy.checkpoints import describe_key_mismatch, read_json, read_state_dict, write_json, write_safetensors
from dcae_deploy.errors import CheckpointError, DcaeDeployError, InputShapeError, UnknownVariantError
from dcae_deploy.family import family_of
from dcae_deploy.models.uvit_family import TIMESTEP_RANGES, UViTConfig
from dcae_deploy.registry import get_variant, list_variants
from dcae_deploy.specs import ComponentSpec, SpecContext, TensorSpec

__all__ = [
    "UViT",
    "build_uvit",
    "check_inputs",
    "class_denoiser_call",
    "class_denoiser_spec",
    "load_dcae_diffusion",
    "load_uvit",
    "save_uvit",
    "timestep_embedding",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HUB_PICKLE = "pytorch_model.bin"  # what PyTorchModelHubMixin falls back to without safetensors
DENOISER_PREFIX = "diffusion_model."  # DCAE_Diffusion_HF's two submodules, in the hub bundle's keys
AUTOENCODER_PREFIX = "autoencoder."
EXTRA_TOKENS = 2  # [label, time] before the patch tokens

# ---------------------------------------------------------------------------------------------
# Layers shared with DiT (models/dit.py)
# ---------------------------------------------------------------------------------------------


def timestep_embedding(timestep: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps (fractional allowed) -> (B, dim) float32 ``[cos | sin]`` features, as the reference computes
    them (frequencies ``exp(-ln(max_period) * i / half)`` in float32; a zero column when ``dim`` is odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    args = timestep[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class LayerNorm32(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters, affine or not) whose statistics run in fp32 in fp16/bf16 models."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class PatchEmbed(nn.Module):
    """p x p strided conv, then (B, D, h, w) -> (B, h*w, D) tokens (``proj``, as the reference and timm name it)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class LabelEmbedder(nn.Module):
    """Class label -> vector; the last row (label ``num_classes``) is the null class when the model has one."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(rows, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (reference and timm layout: q, k, v blocks,
    each head-major), softmax attention in fp32, ``proj`` back."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).float()
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim).to(x.dtype))


class Mlp(nn.Module):
    """``fc1`` -> activation -> ``fc2`` (timm's ``Mlp`` without its identity dropout and norm)."""

    def __init__(self, dim: int, hidden: int, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def unpatchify(x: torch.Tensor, grid: int, patch: int, channels: int) -> torch.Tensor:
    """(B, grid*grid, p*p*C) tokens (patch layout ``(p1 p2 C)``) -> (B, C, grid*p, grid*p)."""
    x = x.reshape(-1, grid, grid, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, grid * patch, grid * patch)


# ---------------------------------------------------------------------------------------------
# UViT
# ---------------------------------------------------------------------------------------------

_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU}


class Block(nn.Module):
    """Pre-norm transformer block; an out-block first mixes in its long skip (``skip_linear``)."""

    def __init__(self, config: UViTConfig, skip: bool) -> None:
        super().__init__()
        dim = config.hidden_size
        self.norm1 = LayerNorm32(dim)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = LayerNorm32(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), _ACTIVATIONS[config.act_layer]())
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:  # a structural choice (out-blocks), not a data-dependent branch
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    """``forward(latent, timestep, class_labels)`` -> eps (``uvit-dpm``) or velocity (``sit``), (B, C, H, W).

    Randomly initialised as the reference does (truncated-normal 0.02 linears and position embedding, zero
    biases, unit LayerNorms; the label table and patch conv keep PyTorch's defaults).
    """

    def __init__(self, config: UViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embed = PatchEmbed(config.in_channels, dim, config.patch_size)
        self.time_embed = (nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
                           if config.mlp_time_embed else nn.Identity())
        self.label_emb = LabelEmbedder(config.label_count, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, EXTRA_TOKENS + config.num_patches, dim))
        self.in_blocks = nn.ModuleList(Block(config, skip=False) for _ in range(config.depth // 2))
        self.mid_block = Block(config, skip=False)
        self.out_blocks = nn.ModuleList(Block(config, skip=True) for _ in range(config.depth // 2))
        self.norm = LayerNorm32(dim)
        self.decoder_pred = nn.Linear(dim, config.patch_size**2 * config.in_channels)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_uvit_weights)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            latent: (B, in_channels, input_size, input_size), already multiplied by the DC-AE scaling factor.
            timestep: (B,) float32 in the config's ``timestep_convention`` (uvit-dpm: t_continuous * 1000).
            class_labels: (B,) int64 class ids; ``num_classes`` is the null class.

        Returns:
            (B, in_channels, input_size, input_size).
        """
        cfg = self.config
        x = self.patch_embed(latent)
        time_token = self.time_embed(timestep_embedding(timestep, cfg.hidden_size).to(x.dtype))[:, None]
        label_token = self.label_emb(class_labels)[:, None]
        x = torch.cat([label_token, time_token, x], dim=1) + self.pos_embed
        skips = []
        for block in self.in_blocks:
            x = block(x)
            skips.append(x)
        x = self.mid_block(x)
        for block in self.out_blocks:
            x = block(x, skips.pop())
        x = self.decoder_pred(self.norm(x))[:, EXTRA_TOKENS:]
        return unpatchify(x, cfg.input_size // cfg.patch_size, cfg.patch_size, cfg.in_channels)

    def forward_without_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The reference's name for :meth:`forward` (one branch of classifier-free guidance)."""
        return self(x, t, y)


def _init_uvit_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_uvit(config: UViTConfig | str, *, device: torch.device | str | None = None) -> UViT:
    """A randomly initialised UViT of a registered variant (name) or an explicit config, in eval mode."""
    config = _denoiser_config(config, UViTConfig)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return UViT(config).eval()


def _denoiser_config(config: Any, config_class: type) -> Any:
    if isinstance(config, str):
        config = get_variant(config, kind="denoiser")
    if not isinstance(config, config_class):
        raise DcaeDeployError(
            f"{config.name!r} is a {family_of(config).name} denoiser, not a {config_class.__name__[:-6]}: build or "
            f"load it as its own family ({', '.join(_class_denoiser_variants(type(config)))})"
        )
    return config


def check_inputs(config: Any, latent: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> None:
    """Raise :class:`InputShapeError` if the inputs do not fit a class-conditional denoiser ``config`` (UViT or DiT;
    kept out of ``forward`` for export)."""
    side, b = config.input_size, latent.shape[0] if latent.ndim else 0
    problems = []
    if tuple(latent.shape[1:]) != (config.in_channels, side, side) or latent.ndim != 4:
        problems.append(f"latent must be (B, {config.in_channels}, {side}, {side}) (the position embedding fixes "
                        f"the side), got {tuple(latent.shape)}")
    if tuple(timestep.shape) != (b,) or not timestep.is_floating_point():
        problems.append(f"timestep must be float ({b},), got {timestep.dtype} {tuple(timestep.shape)}")
    if tuple(class_labels.shape) != (b,) or class_labels.is_floating_point():
        problems.append(f"class_labels must be integer ({b},), got {class_labels.dtype} {tuple(class_labels.shape)}")
    elif class_labels.numel() and (int(class_labels.min()) < 0 or int(class_labels.max()) >= config.label_count):
        null = f" ({config.null_class} is the null class)" if config.null_class is not None else ""
        problems.append(f"class_labels must be in [0, {config.label_count}){null}, got {class_labels.tolist()}")
    if problems:
        raise InputShapeError(f"{config.name}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Checkpoints of the class-conditional families (shared with models/dit.py)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenoiserLayout:
    """How a class-conditional family's weights are stored: its config and module classes and the key prefix of
    its raw training checkpoints (``ModuleDict({"uvit": model})``)."""

    family: str  # "uvit" / "dit"
    title: str  # "UViT" / "DiT"
    config_class: type
    module_class: type
    training_prefix: str  # "uvit." / "dit."

    @property
    def format_tag(self) -> str:
        return f"dcae_deploy.{self.family}"


LAYOUT = DenoiserLayout("uvit", "UViT", UViTConfig, UViT, "uvit.")


def layout_of(config: Any) -> DenoiserLayout:
    """The storage layout of a class-conditional denoiser config (each family module defines ``LAYOUT``)."""
    return family_of(config).function("LAYOUT")


@dataclass(frozen=True)
class RawCheckpoint:
    """A checkpoint file's tensors as stored, and what it says about itself.

    ``layout``: ``"bundle"`` (hub: ``diffusion_model.`` / ``autoencoder.`` keys), ``"training"`` (an ``ema``
    entry), ``"dcae_deploy"`` (our save, ``config`` its config dict) or ``"plain"`` (the model's own keys).
    """

    state: dict[str, torch.Tensor]
    layout: str
    source: str
    model_name: str | None = None  # the hub bundle's config.json
    config: dict[str, Any] | None = None
    format_tag: str | None = None


def read_checkpoint(path: str | os.PathLike) -> RawCheckpoint:
    """Read a class-conditional denoiser checkpoint in any layout of the module docstring (a file or a folder)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_folder(path)
    return _read_file(path, model_name=None)


def _read_folder(folder: Path) -> RawCheckpoint:
    config_path = folder / CONFIG_FILE
    meta = read_json(config_path) if config_path.is_file() else {}
    tag = meta.get("format")
    if isinstance(tag, str) and tag.startswith("dcae_deploy."):
        if not isinstance(meta.get("config"), dict):
            raise CheckpointError(f"{config_path} has no 'config' object: save the model again")
        return RawCheckpoint(read_state_dict(folder / WEIGHTS_FILE), "dcae_deploy", str(folder),
                             config=meta["config"], format_tag=tag)
    for name in (WEIGHTS_FILE, HUB_PICKLE):
        if (folder / name).is_file():
            model_name = meta.get("model_name")
            return _read_file(folder / name, model_name if isinstance(model_name, str) else None, str(folder))
    raise CheckpointError(
        f"no denoiser weights in folder {folder}: expected {CONFIG_FILE} + {WEIGHTS_FILE} (a DC-AE-Diffusion hub "
        f"folder such as mit-han-lab/dc-ae-f32c32-in-1.0-uvit-h-in-512px, or a dcae_deploy save), or a training "
        "checkpoint .pt file (pass the file itself)"
    )


def _read_file(path: Path, model_name: str | None, source: str | None = None) -> RawCheckpoint:
    source = source or str(path)
    state = None
    if path.suffix != ".safetensors":
        tree = _load_pickle_tree(path)
        if isinstance(tree, dict) and "ema" in tree:
            return RawCheckpoint(_ema_state(tree["ema"], path), "training", source, model_name)
        if isinstance(tree, dict) and tree and all(isinstance(v, torch.Tensor) for v in tree.values()):
            state = tree
    if state is None:
        state = read_state_dict(path)  # safetensors, or a pickle holding a wrapped state dict (or an error saying why)
    bundle = any(k.startswith((DENOISER_PREFIX, AUTOENCODER_PREFIX)) for k in state)
    return RawCheckpoint(state, "bundle" if bundle else "plain", source, model_name)


def _load_pickle_tree(path: Path) -> Any:
    """A weights-only pickle's object (nested dicts of tensors); never executes code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        read_state_dict(path)  # raises the CheckpointError that says why (truncated, not PyTorch, needs code)
        raise


def _ema_state(ema: Any, path: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a training checkpoint: its first entry (efficientvit keeps ``{decay: state_dict}``), or
    ``ema`` itself when it is the state dict."""
    if isinstance(ema, dict) and ema and all(isinstance(v, torch.Tensor) for v in ema.values()):
        return dict(ema)
    first = next(iter(ema.values()), None) if isinstance(ema, dict) else None
    if isinstance(first, dict) and first and all(isinstance(v, torch.Tensor) for v in first.values()):
        return dict(first)
    raise CheckpointError(
        f"{path} has an 'ema' entry that holds no state dict (expected {{name: {{key: tensor}}}} as efficientvit's "
        "trainer writes, or {key: tensor})"
    )


def denoiser_state(raw: RawCheckpoint, layout: DenoiserLayout) -> dict[str, torch.Tensor]:
    """The denoiser's tensors under the model's own key names: the bundle's ``diffusion_model.`` part (its
    ``autoencoder.`` part belongs to the pipeline, not to the denoiser), or a training checkpoint's keys without
    the family prefix. Keys of neither kind stay as they are, so the strict check reports them."""
    if raw.layout == "bundle":
        return {k[len(DENOISER_PREFIX):] if k.startswith(DENOISER_PREFIX) else k: v
                for k, v in raw.state.items() if not k.startswith(AUTOENCODER_PREFIX)}
    prefix = layout.training_prefix
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in raw.state.items()}


def _stated_config(raw: RawCheckpoint, layout: DenoiserLayout) -> Any:
    """The denoiser config a checkpoint names: our save's, or the hub bundle's registered pipeline's; else None."""
    if raw.layout == "dcae_deploy":
        if raw.format_tag != layout.format_tag:
            raise CheckpointError(
                f"{raw.source} is a {raw.format_tag!r} save, not a {layout.title} ({layout.format_tag!r}): load it as "
                "its own family's variant"
            )
        try:
            return layout.config_class.from_dict(raw.config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{raw.source}/{CONFIG_FILE} holds no valid {layout.title} config: {exc}") from exc
    pipeline = _registered_class_pipeline(raw.model_name)
    if pipeline is None:
        return None
    found = pipeline.parts()["denoiser"]
    if not isinstance(found, layout.config_class):
        raise CheckpointError(
            f"{raw.source} holds {pipeline.name!r}, whose denoiser {found.name!r} is a {family_of(found).name}, "
            f"not a {layout.title}: load it as {found.name!r}"
        )
    return found


def _registered_class_pipeline(model_name: str | None) -> Any:
    if not model_name:
        return None
    try:
        config = get_variant(model_name.removeprefix("mit-han-lab/"), kind="pipeline")
    except UnknownVariantError:
        return None
    return config if getattr(config, "conditioning", None) == "class" else None


def _class_denoiser_variants(config_class: type | None = None) -> list[str]:
    """Registered UViT / DiT denoiser names (of one config class, or of both families)."""
    names = []
    for name in list_variants("denoiser"):
        config = get_variant(name)
        if family_of(config).name in ("uvit", "dit") and (config_class is None or isinstance(config, config_class)):
            names.append(name)
    return names


@functools.lru_cache(maxsize=64)
def _expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = layout_of(config).module_class(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def fitting_variants(state: dict[str, torch.Tensor]) -> list[str]:
    """Registered UViT / DiT variants whose key names and shapes ``state`` has exactly (a training prefix
    ``uvit.`` / ``dit.`` or the bundle's ``diffusion_model.`` is looked through)."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(AUTOENCODER_PREFIX)}
    for prefix in (DENOISER_PREFIX, "uvit.", "dit."):
        if shapes and all(k.startswith(prefix) for k in shapes):
            shapes = {k[len(prefix):]: v for k, v in shapes.items()}
    return [name for name in _class_denoiser_variants() if _expected_shapes(get_variant(name)) == shapes]


def _check_state(state: dict[str, torch.Tensor], config: Any, source: str) -> None:
    expected = _expected_shapes(config)
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
             for k in sorted(expected.keys() & state.keys()) if tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    message = describe_key_mismatch(source, config.name, missing, unexpected)
    if wrong:
        more = f" ... and {len(wrong) - 8} more" if len(wrong) > 8 else ""
        message += f"; {len(wrong)} tensors with the wrong shape: {', '.join(wrong[:8])}{more}"
    fits = [v for v in fitting_variants(state) if v != config.name]
    if fits:
        message += f". These weights fit variant {' / '.join(repr(v) for v in fits)}: load them as that variant"
    raise CheckpointError(message)


def denoiser_from_state(state: dict[str, torch.Tensor], config: Any, source: str, *,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> nn.Module:
    """A UViT or DiT of ``config`` holding ``state`` (the model's own key names), checked strictly, in eval mode."""
    _check_state(state, config, source)
    with torch.device("meta"):
        model = layout_of(config).module_class(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.to(device).eval()


def _resolve_config(raw: RawCheckpoint, state: dict[str, torch.Tensor], variant: Any, layout: DenoiserLayout) -> Any:
    requested = None if variant is None else _denoiser_config(variant, layout.config_class)
    stated = _stated_config(raw, layout)
    if requested is not None and stated is not None:
        diffs = [f"{k}: checkpoint {v!r}, variant {requested.architecture()[k]!r}"
                 for k, v in stated.architecture().items() if v != requested.architecture()[k]]
        if diffs:
            fits = [n for n in _class_denoiser_variants(layout.config_class)
                    if get_variant(n).architecture() == stated.architecture()]
            hint = f"; the checkpoint is variant {' / '.join(repr(n) for n in fits)}" if fits else ""
            raise CheckpointError(
                f"{raw.source} does not hold variant {requested.name!r} ({'; '.join(diffs)}){hint}: load it as its own "
                "variant, or without one"
            )
    if requested is not None:
        return requested
    if stated is not None:
        return stated
    fits = [n for n in fitting_variants(state) if isinstance(get_variant(n), layout.config_class)]
    if len(fits) == 1:
        return get_variant(fits[0])
    if fits:
        raise CheckpointError(
            f"{raw.source} fits several {layout.title} variants of the same architecture ({', '.join(fits)}: they "
            "differ in time convention or latent size) and does not say which: pass the variant"
        )
    raise CheckpointError(
        f"{raw.source} names no variant and fits no registered {layout.title}; pass the variant (a registered name or "
        f"a config): {', '.join(_class_denoiser_variants(layout.config_class))}"
    )


def load_class_denoiser(path: str | os.PathLike, variant: Any, layout: DenoiserLayout, *,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> nn.Module:
    """The UViT / DiT (per ``layout``) in the checkpoint at ``path`` (any layout of the module docstring)."""
    raw = read_checkpoint(path)
    state = denoiser_state(raw, layout)
    if not state:
        raise CheckpointError(
            f"{raw.source} holds no {layout.title} weights (only {AUTOENCODER_PREFIX}* keys): it is an autoencoder "
            "checkpoint"
        )
    config = _resolve_config(raw, state, variant, layout)
    return denoiser_from_state(state, config, raw.source, dtype=dtype, device=device)


def save_class_denoiser(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Our format: ``config.json`` (format tag + the full config) and ``model.safetensors``, each atomically."""
    folder = Path(folder)
    layout = layout_of(model.config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create output folder {folder}: {exc}") from exc
    write_safetensors(folder / WEIGHTS_FILE, model.state_dict(), metadata={"format": layout.format_tag})
    write_json(folder / CONFIG_FILE, {"format": layout.format_tag, "version": 1, "config": model.config.to_dict()})
    return folder


def load_uvit(path: str | os.PathLike, variant: UViTConfig | str | None = None, *,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> UViT:
    """A UViT (or USiT) from a local checkpoint: the hub folder (or its ``model.safetensors``), a training ``.pt``
    (``ema``, keys ``uvit.*``), or a folder written by :func:`save_uvit`.

    Args:
        variant: the registered name or config the weights must be; None: what the checkpoint says (our save's
            config, the hub bundle's ``model_name``), else the single registered UViT whose tensors they fit.

    Raises:
        CheckpointError: unreadable files; weights that do not fit (the message lists the missing, unexpected
            and mis-shaped keys and the variants they do fit); a checkpoint that says it is another variant.
    """
    return load_class_denoiser(path, variant, LAYOUT, dtype=dtype, device=device)


def save_uvit(model: UViT, folder: str | os.PathLike) -> Path:
    """Write ``model`` in our format (``config.json`` + ``model.safetensors``), which :func:`load_uvit` reads."""
    return save_class_denoiser(model, folder)


# --- a class-conditional pipeline's hub bundle: the DC-AE and the denoiser in one file -------------------------


def load_dcae_diffusion(path: str | os.PathLike, config: Any, roles: list[str]) -> dict[str, nn.Module]:
    """The parts ``roles`` of class-conditional pipeline ``config`` from its DC-AE-Diffusion checkpoint: the hub
    folder (or its ``model.safetensors``: ``autoencoder.<efficientvit DC-AE key>`` + ``diffusion_model.<key>``), or
    for the denoiser alone a training ``.pt``. (A dcae_deploy pipeline folder, with ``pipeline.json``, is read by
    :func:`dcae_deploy.models.pipeline.load_pipeline` itself.)

    Raises:
        CheckpointError: the checkpoint says it is another model, lacks a part, or a part does not fit.
    """
    parts = config.parts()
    raw = read_checkpoint(path)
    named = _registered_class_pipeline(raw.model_name)
    if named is not None and named.name != config.name:
        raise CheckpointError(f"{raw.source} holds {named.name!r} (its {CONFIG_FILE}), not {config.name!r}: load it as "
                              f"{named.name!r}")
    loaded: dict[str, nn.Module] = {}
    if "denoiser" in roles:
        den_config = parts["denoiser"]
        layout = layout_of(den_config)
        state = denoiser_state(raw, layout)
        _resolve_config(raw, state, den_config, layout)  # a save or bundle of another architecture is refused
        loaded["denoiser"] = denoiser_from_state(state, den_config, raw.source)
    if "autoencoder" in roles:
        ae_state = {k[len(AUTOENCODER_PREFIX):]: v for k, v in raw.state.items() if k.startswith(AUTOENCODER_PREFIX)}
        if raw.layout != "bundle" or not ae_state:
            raise CheckpointError(
                f"{raw.source} holds no {AUTOENCODER_PREFIX}* weights (a training or denoiser checkpoint has only the "
                f"denoiser): pass the DC-AE-Diffusion hub folder of {config.name!r}, or export --components denoiser"
            )
        loaded["autoencoder"] = _autoencoder_from_state(ae_state, parts["autoencoder"], raw.source)
    return loaded


def _autoencoder_from_state(state: dict[str, torch.Tensor], config: Any, source: str) -> nn.Module:
    """The bundle's DC-AE (efficientvit key names, the ``autoencoder.`` prefix removed), checked strictly."""
    from dcae_deploy.models.autoencoder import build_autoencoder
    from dcae_deploy.models.autoencoder_io import check_fits, detect_layout, matching_variants, to_native

    layout = detect_layout(state)
    native = to_native(state, layout, config)
    model = build_autoencoder(config, device="meta")
    native.update({k: torch.zeros((), dtype=torch.long) for k in model.state_dict()  # BatchNorm bookkeeping only
                   if k.endswith("num_batches_tracked") and k not in native})
    check_fits(native, config, f"{source} ({AUTOENCODER_PREFIX}*)", guess=lambda: matching_variants(state, layout))
    model.load_state_dict(native, strict=True, assign=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Export spec and PyTorch call of the class-conditional ``denoiser`` graph (UViT and DiT families)
# ---------------------------------------------------------------------------------------------


def class_denoiser_spec(context: SpecContext) -> ComponentSpec:
    """``denoiser(latent, timestep float32, class_labels int64) -> prediction``: dynamic batch up to
    2 * max_batch (classifier-free guidance batches both branches), the latent side static at the config's
    ``input_size`` (the position embedding fixes the token count).

    Raises:
        DcaeDeployError: the profile's image sides exclude the one image side the model makes.
    """
    config, res = context.config, context.res
    side = config.input_size
    pixels = side * context.ratio
    if not res.min_res <= pixels <= res.max_res:
        raise DcaeDeployError(
            f"{config.name} denoises {side}x{side} latents only ({pixels}x{pixels} images: its position embedding "
            f"fixes the token count), outside the profile --min-res {res.min_res} / --max-res {res.max_res}; "
            f"export with --min-res <= {pixels} <= --max-res"
        )
    latent = ("batch", config.in_channels, "latent_height", "latent_width")
    inputs = (
        TensorSpec("latent", latent),
        TensorSpec("timestep", ("batch",), "float32", "timestep", TIMESTEP_RANGES[config.timestep_convention]),
        TensorSpec("class_labels", ("batch",), "int64", "ids", config.label_count),
    )
    outputs = (TensorSpec("prediction", ("batch", config.out_channels, "latent_height", "latent_width")),)
    dims = {"batch": (1, 2, 2 * res.max_batch), "latent_height": (side, side, side), "latent_width": (side, side, side)}
    points = tuple({"batch": b, "latent_height": side, "latent_width": side} for b in (2, 1))
    return ComponentSpec("denoiser", inputs, outputs, dims, points, lambda parts: parts.denoiser)


def class_denoiser_call(denoiser: nn.Module):
    return denoiser, lambda x: denoiser(x["latent"], x["timestep"], x["class_labels"])
