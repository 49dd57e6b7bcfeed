"""The SANA linear-DiT denoiser family: its typed config and its :class:`~dcae_deploy.family.ModelFamily`.

The model is :mod:`dcae_deploy.models.denoiser`; the keys of ``DenoiserConfig.to_diffusers_config()`` are
the keyword arguments of ``diffusers.SanaTransformer2DModel``. Registered variants are in
:mod:`dcae_deploy.variants`. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dcae_deploy.family import ComponentDef, ModelFamily, register_family
from dcae_deploy.manifest import DenoiserFacts

#: image pixels per latent pixel of a bare denoiser export (it is meant for DC-AE f32 latents)
SANA_LATENT_RATIO = 32


@dataclass(frozen=True)
class DenoiserConfig:
    """A SANA linear-DiT variant (no positional embedding, adaLN-single, linear self-attention)."""

    kind = "denoiser"

    name: str
    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    num_cross_attention_heads: int
    cross_attention_head_dim: int
    caption_channels: int = 2304
    in_channels: int = 32
    out_channels: int = 32
    patch_size: int = 1
    mlp_ratio: float = 2.5
    attention_bias: bool = False
    norm_eps: float = 1e-6
    sample_size: int = 32
    timestep_scale: float = 1.0
    description: str = ""

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def ffn_hidden_dim(self) -> int:
        return int(self.mlp_ratio * self.inner_dim)

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the weights' names and shapes (not name, description, sample_size)."""
        skip = {"name", "description", "sample_size"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DenoiserConfig":
        return cls(**data)

    def to_diffusers_config(self) -> dict[str, Any]:
        """Keyword arguments for ``diffusers.SanaTransformer2DModel`` that build the same architecture."""
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            num_attention_heads=self.num_attention_heads,
            attention_head_dim=self.attention_head_dim,
            num_layers=self.num_layers,
            num_cross_attention_heads=self.num_cross_attention_heads,
            cross_attention_head_dim=self.cross_attention_head_dim,
            cross_attention_dim=self.inner_dim,
            caption_channels=self.caption_channels,
            mlp_ratio=self.mlp_ratio,
            dropout=0.0,
            attention_bias=self.attention_bias,
            sample_size=self.sample_size,
            patch_size=self.patch_size,
            norm_elementwise_affine=False,
            norm_eps=self.norm_eps,
            interpolation_scale=None,
            guidance_embeds=False,
            qk_norm=None,
            timestep_scale=self.timestep_scale,
        )

    @classmethod
    def from_diffusers_config(cls, cfg: dict[str, Any], name: str = "custom") -> "DenoiserConfig":
        """Inverse of :meth:`to_diffusers_config` (missing keys take diffusers' defaults).

        Raises:
            NotImplementedError: the config asks for a feature this denoiser does not implement
                (positional embedding, qk-norm, guidance embedding, affine norms).
        """
        _reject_unsupported_denoiser_features(cfg)
        heads, head_dim = cfg.get("num_attention_heads", 70), cfg.get("attention_head_dim", 32)
        cross_dim = cfg.get("cross_attention_dim", 2240)
        if cross_dim != heads * head_dim:
            raise NotImplementedError(
                f"cross_attention_dim={cross_dim} differs from the inner dim {heads * head_dim}; "
                "SANA feeds the projected caption (inner dim wide) to cross-attention"
            )
        in_channels = cfg.get("in_channels", 32)
        return cls(
            name=name,
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            num_layers=cfg.get("num_layers", 20),
            num_cross_attention_heads=cfg.get("num_cross_attention_heads", 20),
            cross_attention_head_dim=cfg.get("cross_attention_head_dim", 112),
            caption_channels=cfg.get("caption_channels", 2304),
            in_channels=in_channels,
            out_channels=cfg.get("out_channels") or in_channels,
            patch_size=cfg.get("patch_size", 1),
            mlp_ratio=float(cfg.get("mlp_ratio", 2.5)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            norm_eps=float(cfg.get("norm_eps", 1e-6)),
            sample_size=cfg.get("sample_size", 32),
            timestep_scale=float(cfg.get("timestep_scale", 1.0)),
        )


def _reject_unsupported_denoiser_features(cfg: dict[str, Any]) -> None:
    if cfg.get("interpolation_scale") is not None:
        raise NotImplementedError(
            f"positional embedding (interpolation_scale={cfg['interpolation_scale']}, as in the 2K/4K SANA "
            "configs) is not implemented; only interpolation_scale=None (the 512/1024 configs, no PE) is supported"
        )
    unsupported = {
        "qk_norm": (cfg.get("qk_norm") is not None, "qk-norm (SANA 1.5 / Sprint)"),
        "guidance_embeds": (bool(cfg.get("guidance_embeds", False)), "guidance embedding (SANA Sprint)"),
        "norm_elementwise_affine": (bool(cfg.get("norm_elementwise_affine", False)), "affine LayerNorms"),
    }
    for key, (asked, what) in unsupported.items():
        if asked:
            raise NotImplementedError(f"{what} is not implemented (config has {key}={cfg[key]!r})")


FAMILY = register_family(ModelFamily(
    "sana", "denoiser", DenoiserConfig, module="dcae_deploy.models.denoiser",
    build="build_denoiser", load="load_denoiser", save="save_denoiser",
    components=(ComponentDef("denoiser", "denoiser_spec", "denoiser_call"),),
    facts=lambda c, *_: DenoiserFacts(c.timestep_scale, c.in_channels, c.caption_channels),
    image_ratio=lambda config: SANA_LATENT_RATIO * config.patch_size,
))
