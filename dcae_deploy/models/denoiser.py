"""SANA linear DiT: the denoiser of SANA text-to-image (arXiv 2410.10629), written for export.

One file, no diffusers import. Parameter names equal those of diffusers ``SanaTransformer2DModel``,
so a diffusers checkpoint folder loads with an identity key mapping (:func:`load_denoiser`).

Export notes: ``forward`` has no data-dependent control flow and no Python branch on runtime
shapes; token reshapes use sizes taken from the input's shape. The only branches are on dtype and
on whether a caption mask is given, both fixed at trace time. Linear attention accumulates in fp32
(q, k, v, both matmuls and the normaliser division), so fp16/bf16 graphs stay stable.

Supported: patch embedding without positional embedding (``interpolation_scale=None``, the 512px and
1024px SANA configs), no qk-norm, no guidance embedding. See ``DenoiserConfig.from_diffusers_config``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dcae_deploy.checkpoints import describe_key_mismatch, read_json, read_state_dict, write_json, write_safetensors
from dcae_deploy.errors import CheckpointError, InputShapeError
from dcae_deploy.models.denoiser_family import DenoiserConfig
from dcae_deploy.registry import get_variant
from dcae_deploy.specs import ComponentSpec, Resolution, SpecContext, TensorSpec, spatial_dims, spatial_points

__all__ = ["SanaDenoiser", "build_denoiser", "check_inputs", "load_denoiser", "save_denoiser", "timestep_sinusoid"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"
TIMESTEP_CHANNELS = 256
MASK_BIAS = -10000.0  # additive bias for padded caption tokens (as diffusers; not -inf, so no NaN rows)
LINEAR_ATTN_EPS = 1e-15
FP16_MAX = 65504.0

# ---------------------------------------------------------------------------------------------
# Embeddings and norms
# ---------------------------------------------------------------------------------------------


def timestep_sinusoid(timestep: torch.Tensor, channels: int = TIMESTEP_CHANNELS) -> torch.Tensor:
    """(B,) timesteps -> (B, channels) fp32 [cos | sin] features, frequencies 10000**(-i/half)."""
    half = channels // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timestep.device) * -math.log(10000.0) / half
    angles = timestep[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class MLP(nn.Module):
    """Linear -> activation -> Linear (names ``linear_1``/``linear_2`` as in diffusers)."""

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int, act: nn.Module) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, dim_hidden)
        self.act = act
        self.linear_2 = nn.Linear(dim_hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TimestepEmbedding(nn.Module):
    """Sinusoidal features (256) -> MLP(SiLU) -> (B, dim): the ``embedded_timestep``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = MLP(TIMESTEP_CHANNELS, dim, dim, nn.SiLU())

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        features = timestep_sinusoid(timestep)
        return self.timestep_embedder(features.to(self.timestep_embedder.linear_1.weight.dtype))


class AdaLayerNormSingle(nn.Module):
    """adaLN-single: one timestep MLP shared by all blocks, giving 6 modulation vectors per sample."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.emb = TimestepEmbedding(dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (modulation (B, 6*dim), embedded_timestep (B, dim))."""
        embedded = self.emb(timestep)
        return self.linear(F.silu(embedded)), embedded


class RMSNorm(nn.Module):
    """RMSNorm over the last axis, variance in fp32, weight only."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(self.weight.dtype) * self.weight


class PatchEmbed(nn.Module):
    """p x p strided conv, then (B, C, h, w) -> (B, h*w, C) tokens. No positional embedding."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Attention and feed-forward
# ---------------------------------------------------------------------------------------------


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*hd) -> (B, heads, N, hd)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, hd) -> (B, N, heads*hd)."""
    return x.transpose(1, 2).flatten(2)


class LinearAttention(nn.Module):
    """Self-attention with a ReLU kernel: out_i = sum_j (q_i.k_j) v_j / sum_j (q_i.k_j), O(N) in tokens."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = F.relu(_split_heads(self.to_q(x), self.heads)).float()
        k = F.relu(_split_heads(self.to_k(x), self.heads)).float()
        v = _split_heads(self.to_v(x), self.heads).float()
        v = F.pad(v, (0, 1), value=1.0)  # a ones column: its output is the normaliser sum_j q_i.k_j
        kv = torch.matmul(k.transpose(-1, -2), v)  # (B, h, hd, hd+1), summed over tokens in fp32
        out = torch.matmul(q, kv)  # (B, h, N, hd+1)
        out = out[..., :-1] / (out[..., -1:] + LINEAR_ATTN_EPS)
        out = self.to_out[0](_merge_heads(out).to(x.dtype))
        if out.dtype == torch.float16:
            out = out.clamp(-FP16_MAX, FP16_MAX)
        return out


class CrossAttention(nn.Module):
    """Softmax attention from image tokens to caption tokens, with biases, optional additive mask."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        q = _split_heads(self.to_q(x), self.heads)
        k = _split_heads(self.to_k(context), self.heads)
        v = _split_heads(self.to_v(context), self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias)
        return self.to_out[0](_merge_heads(out))


class GLUMBConv(nn.Module):
    """Mix-FFN: 1x1 d->2h (bias), SiLU, depthwise 3x3 (bias), a * SiLU(gate), 1x1 h->d (no bias)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv_inverted = nn.Conv2d(dim, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_depth(F.silu(self.conv_inverted(x)))
        a, gate = x.chunk(2, dim=1)
        return self.conv_point(a * F.silu(gate))


class SanaBlock(nn.Module):
    """Modulated linear self-attention, cross-attention (no norm), modulated Mix-FFN."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        dim = cfg.inner_dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=cfg.norm_eps)
        self.attn1 = LinearAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim, cfg.attention_bias)
        self.attn2 = CrossAttention(dim, cfg.num_cross_attention_heads, cfg.cross_attention_head_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=cfg.norm_eps)
        self.ff = GLUMBConv(dim, cfg.ffn_hidden_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        context: torch.Tensor,
        mask_bias: torch.Tensor | None,
        height: int,
    ) -> torch.Tensor:
        """x (B, N, d) tokens of a (height, N/height) grid; modulation (B, 6*d)."""
        mod = self.scale_shift_table[None] + modulation.unflatten(1, (6, -1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)

        h = (self.norm1(x) * (1 + scale_msa) + shift_msa).to(x.dtype)
        x = x + gate_msa * self.attn1(h)
        x = x + self.attn2(x, context, mask_bias)

        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        h = h.transpose(1, 2).unflatten(2, (height, -1))  # (B, d, H, W)
        h = self.ff(h).flatten(2).transpose(1, 2)
        return x + gate_mlp * h


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class SanaDenoiser(nn.Module):
    """SANA linear DiT: velocity prediction for latents (B, C, H, W) given timestep and caption."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.inner_dim
        self.patch_embed = PatchEmbed(config.in_channels, dim, config.patch_size)
        self.time_embed = AdaLayerNormSingle(dim)
        self.caption_projection = MLP(config.caption_channels, dim, dim, nn.GELU(approximate="tanh"))
        self.caption_norm = RMSNorm(dim, eps=1e-5)
        self.transformer_blocks = nn.ModuleList(SanaBlock(config) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, config.patch_size**2 * config.out_channels)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity.

        Args:
            hidden_states: (B, in_channels, H, W) latents; H and W multiples of ``patch_size``.
            timestep: (B,) float, sigma * 1000 (times ``timestep_scale``).
            encoder_hidden_states: (B, L, caption_channels) text-encoder states.
            encoder_attention_mask: (B, L), 1 for real caption tokens and 0 for padding; None = all real.

        Returns:
            (B, out_channels, H, W).
        """
        p = self.config.patch_size
        height = hidden_states.shape[-2] // p
        x = self.patch_embed(hidden_states)
        modulation, embedded_timestep = self.time_embed(timestep)
        context = self.caption_norm(self.caption_projection(encoder_hidden_states))
        mask_bias = _mask_to_bias(encoder_attention_mask, x.dtype)
        for block in self.transformer_blocks:
            x = block(x, modulation, context, mask_bias, height)
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)
        return self._unpatchify(x, height)

    def _unpatchify(self, x: torch.Tensor, height: int) -> torch.Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p)."""
        p, c = self.config.patch_size, self.config.out_channels
        x = x.unflatten(1, (height, -1)).unflatten(-1, (p, p, c))  # (B, h, w, p, p, C)
        return x.permute(0, 5, 1, 3, 2, 4).flatten(4, 5).flatten(2, 3)


def _mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, L) keep-mask -> (B, 1, 1, L) additive bias: 0 where kept, -10000 where padded."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * MASK_BIAS)[:, None, None, :]


def build_denoiser(config: DenoiserConfig | str) -> SanaDenoiser:
    """A randomly initialised denoiser of a registered variant (name) or an explicit config."""
    if isinstance(config, str):
        config = get_variant(config, kind="denoiser")
    return SanaDenoiser(config)


def check_inputs(
    config: DenoiserConfig,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_attention_mask: torch.Tensor | None = None,
) -> None:
    """Raise :class:`InputShapeError` if the inputs do not fit ``config`` (kept out of ``forward`` for export)."""
    x, cap = tuple(hidden_states.shape), tuple(encoder_hidden_states.shape)
    b, p = x[0], config.patch_size
    problems = []
    if len(x) != 4 or x[1] != config.in_channels:
        problems.append(f"hidden_states must be (B, {config.in_channels}, H, W), got {x}")
    elif x[2] % p or x[3] % p:
        problems.append(f"H and W of hidden_states must be multiples of patch_size {p}, got {x}")
    if tuple(timestep.shape) != (b,):
        problems.append(f"timestep must be ({b},), got {tuple(timestep.shape)}")
    if len(cap) != 3 or cap[0] != b or cap[2] != config.caption_channels:
        problems.append(f"encoder_hidden_states must be ({b}, L, {config.caption_channels}), got {cap}")
    if encoder_attention_mask is not None and tuple(encoder_attention_mask.shape) != cap[:2]:
        problems.append(f"encoder_attention_mask must be {cap[:2]}, got {tuple(encoder_attention_mask.shape)}")
    if problems:
        raise InputShapeError(f"{config.name}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Loading a diffusers folder
# ---------------------------------------------------------------------------------------------


def load_denoiser(
    path: str | os.PathLike,
    variant: str | DenoiserConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> SanaDenoiser:
    """Load a local diffusers ``SanaTransformer2DModel`` folder (``config.json`` + safetensors, maybe sharded).

    Args:
        path: the folder (a pipeline's ``transformer/`` subfolder). Nothing is ever downloaded.
        variant: the registered variant (or config) the weights must be; None = whatever config.json says.
        dtype, device: where the weights end up.

    Raises:
        CheckpointError: no/corrupt weights, config.json disagrees with ``variant``, or the weights'
            names/shapes do not fit (the message lists the keys and the variant expected).
        NotImplementedError: config.json asks for an unsupported feature (positional embedding, qk-norm, ...).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"denoiser checkpoint folder not found: {folder}")
    config = _resolve_config(folder, variant)
    state = _read_weights(folder)
    with torch.device("meta"):
        model = SanaDenoiser(config)
    _check_state(model, state, str(folder), config.name)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    return model.to(device).eval()


def save_denoiser(model: SanaDenoiser, folder: str | os.PathLike) -> Path:
    """Write a diffusers-layout folder (config.json + safetensors) that :func:`load_denoiser` reads."""
    folder = Path(folder)
    config = {"_class_name": "SanaTransformer2DModel", **model.config.to_diffusers_config()}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_safetensors(folder / WEIGHTS_FILE, state, metadata={"format": "pt"})
    write_json(folder / CONFIG_FILE, config)
    return folder


def _resolve_config(folder: Path, variant: str | DenoiserConfig | None) -> DenoiserConfig:
    expected = get_variant(variant, kind="denoiser") if isinstance(variant, str) else variant
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        if expected is None:
            raise CheckpointError(f"{folder} has no {CONFIG_FILE}; pass variant= to say which denoiser it holds")
        return expected
    found = DenoiserConfig.from_diffusers_config(read_json(config_path), name=folder.name)
    if expected is None:
        return found
    diffs = [
        f"{key}: checkpoint {value!r}, variant {expected.architecture()[key]!r}"
        for key, value in found.architecture().items()
        if value != expected.architecture()[key]
    ]
    if diffs:
        raise CheckpointError(f"{config_path} does not describe variant {expected.name!r}: " + "; ".join(diffs))
    return expected


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the single or sharded safetensors checkpoint in ``folder``."""
    single, index = folder / WEIGHTS_FILE, folder / INDEX_FILE
    if single.is_file():
        return read_state_dict(single)
    if not index.is_file():
        raise CheckpointError(
            f"{folder} holds neither {WEIGHTS_FILE} nor {INDEX_FILE} (only safetensors checkpoints are read)"
        )
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no 'weight_map'")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_state_dict(folder / shard))
    return state


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, variant: str) -> None:
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise CheckpointError(describe_key_mismatch(source, variant, missing, unexpected))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)}, variant {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        more = f" ... and {len(wrong) - 8} more" if len(wrong) > 8 else ""
        raise CheckpointError(
            f"checkpoint {source} does not fit variant {variant!r}: {len(wrong)} tensors of the wrong shape: "
            + "; ".join(wrong[:8])
            + more
        )


# ---------------------------------------------------------------------------------------------
# Export spec and PyTorch call of the family's component (named in models/denoiser_family.py)
# ---------------------------------------------------------------------------------------------

SANA_CAPTION_TOKENS = 300  # caption length of a bare SANA denoiser export (SanaPipeline's max_sequence_length)


class DenoiserGraph(nn.Module):
    """``forward(latent, timestep, encoder_hidden_states, encoder_attention_mask)`` -> velocity."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, latent, timestep, encoder_hidden_states, encoder_attention_mask):
        return self.denoiser(latent, timestep, encoder_hidden_states, encoder_attention_mask)


def sana_denoiser_spec(den_config, res: Resolution, ratio: int, caption_tokens: int) -> ComponentSpec:
    """SANA denoiser: (latent, timestep, caption states, caption mask) -> velocity; batch up to 2 * max_batch."""
    c = den_config.in_channels
    latent_shape = ("batch", c, "latent_height", "latent_width")
    inputs = (
        TensorSpec("latent", latent_shape),
        TensorSpec("timestep", ("batch",), "float32", "timestep", 1000.0 * den_config.timestep_scale),
        TensorSpec("encoder_hidden_states", ("batch", caption_tokens, den_config.caption_channels)),
        TensorSpec("encoder_attention_mask", ("batch", caption_tokens), "int64", "mask"),
    )
    outputs = (TensorSpec("velocity", ("batch", den_config.out_channels, "latent_height", "latent_width")),)
    dims = {"batch": (1, 2, 2 * res.max_batch), **spatial_dims(res, ratio)}
    dims = {k: v for k, v in dims.items() if k in ("batch", "latent_height", "latent_width")}
    points = tuple(
        {"batch": b, "latent_height": p["latent_height"], "latent_width": p["latent_width"]}
        for b, p in zip((2, 1), spatial_points(res, ratio))
    )
    return ComponentSpec("denoiser", inputs, outputs, dims, points, lambda parts: DenoiserGraph(parts.denoiser))


def denoiser_spec(context: SpecContext) -> ComponentSpec:
    """The denoiser graph; captions as long as the pipeline's text encoder output (a bare export: SANA's 300)."""
    text_encoder = context.configs.get("text_encoder")
    tokens = text_encoder.max_length if text_encoder is not None else SANA_CAPTION_TOKENS
    return sana_denoiser_spec(context.config, context.res, context.ratio, tokens)


def denoiser_call(denoiser: SanaDenoiser):
    return denoiser, lambda x: denoiser(x["latent"], x["timestep"], x["encoder_hidden_states"],
                                        x["encoder_attention_mask"].to(x["encoder_hidden_states"].dtype))
