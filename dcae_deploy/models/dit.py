"""DiT: the class-conditional adaLN-Zero transformer of DC-AE-Diffusion (DiT-XL), written for export.

The function is the reference's ``DiT.forward_without_cfg(x, t, y)`` (mit-han-lab/efficientvit
``efficientvit/diffusioncore/models/dit.py``, itself from facebookresearch/DiT): patch tokens plus a fixed 2-D
sin-cos position embedding (stored as a parameter, so it is in the state dict), a conditioning vector
``c = t_embedder(t) + y_embedder(y)`` (256-wide sinusoid -> Linear -> SiLU -> Linear; a label table whose last row
is the null class), ``depth`` blocks modulated by ``c`` (adaLN-Zero: shift / scale / gate for attention and MLP;
LayerNorms without affine, eps 1e-6; qkv with bias; tanh-GELU MLP), a modulated final layer and the patches put
back. With ``learn_sigma`` the output has 2 * in_channels channels: eps, then the variance interpolation values.
Parameter names equal the reference's (timm ``PatchEmbed`` / ``Attention`` / ``Mlp`` included), so its checkpoints
load by name (:func:`load_dit`; layouts as in :mod:`dcae_deploy.models.uvit`).

Export notes: no einsum (un-patchify is a permute), no data-dependent branch; ``post_norm`` is a structural
choice of the config; the position embedding fixes the token grid (static spatial size, dynamic batch); the
timestep is a float32 input (an ADM sampler passes its original integer step as a float).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from dcae_deploy.models.dit_family import DiTConfig
from dcae_deploy.models.uvit import (
    Attention,
    DenoiserLayout,
    LabelEmbedder,
    LayerNorm32,
    Mlp,
    PatchEmbed,
    _denoiser_config,
    load_class_denoiser,
    save_class_denoiser,
    timestep_embedding,
    unpatchify,
)

__all__ = ["DiT", "build_dit", "load_dit", "save_dit", "sincos_pos_embed_2d"]

FREQUENCY_CHANNELS = 256  # the timestep sinusoid's width before the MLP


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) fixed position embedding of DiT (MAE's): tokens row-major; the first half of the channels
    encodes the column, the second half the row, each as ``[sin | cos]`` of ``pos * 10000**(-i / (dim/4))``.
    Computed in float64 and rounded to float32, as the reference does with numpy."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = coords.repeat_interleave(grid), coords.repeat(grid)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, base: float = 1.0) -> torch.Tensor:
    return x * (base + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """256-wide sinusoid -> ``mlp`` (Linear, SiLU, Linear) -> (B, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_CHANNELS, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(timestep, FREQUENCY_CHANNELS)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """adaLN-Zero block: ``x + gate * attn(modulate(norm(x)))``, the same for the MLP; with ``post_norm`` the
    reference's variant ``x + modulate(norm(attn(x)), base 0)`` (4 modulation vectors)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.post_norm = config.post_norm
        self.norm1 = LayerNorm32(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, config.num_heads, qkv_bias=True)
        self.norm2 = LayerNorm32(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (4 if config.post_norm else 6) * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.post_norm:  # structural (config), fixed at trace time
            shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            x = x + modulate(self.norm1(self.attn(x)), shift_msa, scale_msa, base=0.0)
            return x + modulate(self.norm2(self.mlp(x)), shift_mlp, scale_mlp, base=0.0)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """Modulated LayerNorm (no affine) -> Linear to p*p*out_channels."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = LayerNorm32(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """``forward(latent, timestep, class_labels)`` -> (B, out_channels, H, W): eps (+ variance values).

    ``reference_init=True`` initialises exactly as the reference (xavier linears, normal 0.02 label table and
    timestep MLP, and **zero** adaLN modulations and final layer: a zero output, the training start). The default
    keeps xavier weights in those layers too, so that a random-weight export's parity gate compares non-trivial
    outputs. The position embedding is the fixed sin-cos table either way.
    """

    def __init__(self, config: DiTConfig, reference_init: bool = False) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.x_embedder = PatchEmbed(config.in_channels, dim, config.patch_size)
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(config.label_count, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, dim), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(dim, config.patch_size, config.out_channels)
        self._initialize(reference_init)

    def _initialize(self, reference_init: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        grid = self.config.input_size // self.config.patch_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.config.hidden_size, grid)[None])
        conv = self.x_embedder.proj
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(conv.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if reference_init:
            for layer in [block.adaLN_modulation[-1] for block in self.blocks] + [
                    self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            latent: (B, in_channels, input_size, input_size), already multiplied by the DC-AE scaling factor.
            timestep: (B,) float32: the original ADM step (0..999).
            class_labels: (B,) int64 class ids; ``num_classes`` is the null class.

        Returns:
            (B, out_channels, input_size, input_size): eps, then (``learn_sigma``) the variance values.
        """
        cfg = self.config
        x = self.x_embedder(latent) + self.pos_embed
        c = self.t_embedder(timestep) + self.y_embedder(class_labels)
        for block in self.blocks:
            x = block(x, c)
        x = self.final_layer(x, c)
        return unpatchify(x, cfg.input_size // cfg.patch_size, cfg.patch_size, cfg.out_channels)

    def forward_without_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The reference's name for :meth:`forward` (one branch of classifier-free guidance)."""
        return self(x, t, y)


LAYOUT = DenoiserLayout("dit", "DiT", DiTConfig, DiT, "dit.")


def build_dit(config: DiTConfig | str, *, device: torch.device | str | None = None,
              reference_init: bool = False) -> DiT:
    """A randomly initialised DiT of a registered variant (name) or an explicit config, in eval mode (see
    :class:`DiT` for ``reference_init``)."""
    config = _denoiser_config(config, DiTConfig)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return DiT(config, reference_init=reference_init).eval()


def load_dit(path: str | os.PathLike, variant: DiTConfig | str | None = None, *,
             dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> DiT:
    """A DiT from a local checkpoint: the hub folder (or its ``model.safetensors``), a training ``.pt`` (``ema``,
    keys ``dit.*``), or a folder written by :func:`save_dit`. ``variant`` and errors as
    :func:`dcae_deploy.models.uvit.load_uvit`."""
    return load_class_denoiser(path, variant, LAYOUT, dtype=dtype, device=device)


def save_dit(model: DiT, folder: str | os.PathLike) -> Path:
    """Write ``model`` in our format (``config.json`` + ``model.safetensors``), which :func:`load_dit` reads."""
    return save_class_denoiser(model, folder)
