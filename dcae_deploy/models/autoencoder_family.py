"""The DC-AE autoencoder family: its typed config and its :class:`~dcae_deploy.family.ModelFamily` declaration.

The model is :mod:`dcae_deploy.models.autoencoder` (build, export specs, PyTorch calls) and
:mod:`dcae_deploy.models.autoencoder_io` (load / save in the diffusers, efficientvit and our own layouts).
Registered variants are in :mod:`dcae_deploy.variants`. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from dcae_deploy.family import ComponentDef, ModelFamily, register_family
from dcae_deploy.manifest import SPLIT_DECODER, AutoencoderFacts

BlockType = Literal["ResBlock", "EfficientViTBlock"]
NormType = Literal["rms_norm", "batch_norm"]
ActType = Literal["silu", "relu"]


@dataclass(frozen=True)
class EncoderConfig:
    """DC-AE encoder: one entry per stage (stage i runs at 1/2**i of the input resolution)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    block_types: tuple[BlockType, ...]
    qkv_multiscales: tuple[tuple[int, ...], ...]
    downsample: Literal["pixel_unshuffle", "conv"] = "pixel_unshuffle"
    out_shortcut: bool = True

    def __post_init__(self) -> None:
        _check_stage_lengths("encoder", self.widths, self.depths, self.block_types, self.qkv_multiscales)


@dataclass(frozen=True)
class DecoderConfig:
    """DC-AE decoder: per-stage lists in encoder order (stage 0 = full resolution)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    block_types: tuple[BlockType, ...]
    qkv_multiscales: tuple[tuple[int, ...], ...]
    norms: tuple[NormType, ...]
    acts: tuple[ActType, ...]
    upsample: Literal["pixel_shuffle", "interpolate"] = "pixel_shuffle"
    in_shortcut: bool = True
    out_act: ActType = "relu"

    def __post_init__(self) -> None:
        _check_stage_lengths(
            "decoder", self.widths, self.depths, self.block_types, self.qkv_multiscales, self.norms, self.acts
        )


@dataclass(frozen=True)
class AutoencoderConfig:
    """A DC-AE variant: architecture plus the latent scaling factor (1 / RMS of its latents)."""

    kind = "autoencoder"

    name: str
    encoder: EncoderConfig
    decoder: DecoderConfig
    scaling_factor: float
    latent_channels: int = 32
    in_channels: int = 3
    attention_head_dim: int = 32
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.encoder.widths) != len(self.decoder.widths):
            raise ValueError(f"{self.name}: encoder and decoder must have the same number of stages")
        for side, width in (("encoder", self.encoder.widths[-1]), ("decoder", self.decoder.widths[-1])):
            if width % self.latent_channels:
                raise ValueError(
                    f"{self.name}: {side} last width {width} must be a multiple of latent_channels "
                    f"{self.latent_channels} (the residual shortcut averages/duplicates channel groups)"
                )

    @property
    def spatial_compression_ratio(self) -> int:
        return 2 ** (len(self.encoder.widths) - 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, height, width) of the latent of an image of the given size."""
        f = self.spatial_compression_ratio
        return (self.latent_channels, height // f, width // f)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AutoencoderConfig":
        data = dict(data)
        encoder = EncoderConfig(**_tuplify(data.pop("encoder")))
        decoder = DecoderConfig(**_tuplify(data.pop("decoder")))
        return cls(encoder=encoder, decoder=decoder, **data)

    def to_diffusers_config(self) -> dict[str, Any]:
        """Keyword arguments for ``diffusers.AutoencoderDC`` that build the same architecture."""
        enc, dec = self.encoder, self.decoder
        return dict(
            in_channels=self.in_channels,
            latent_channels=self.latent_channels,
            attention_head_dim=self.attention_head_dim,
            encoder_block_types=tuple(enc.block_types),
            decoder_block_types=tuple(dec.block_types),
            encoder_block_out_channels=tuple(enc.widths),
            decoder_block_out_channels=tuple(dec.widths),
            encoder_layers_per_block=tuple(enc.depths),
            decoder_layers_per_block=tuple(dec.depths),
            encoder_qkv_multiscales=tuple(enc.qkv_multiscales),
            decoder_qkv_multiscales=tuple(dec.qkv_multiscales),
            upsample_block_type=dec.upsample,
            downsample_block_type=enc.downsample,
            decoder_norm_types=tuple(dec.norms),
            decoder_act_fns=tuple(dec.acts),
            encoder_out_shortcut=enc.out_shortcut,
            decoder_in_shortcut=dec.in_shortcut,
            decoder_conv_act_fn=dec.out_act,
            scaling_factor=self.scaling_factor,
        )

    @classmethod
    def from_diffusers_config(cls, cfg: dict[str, Any], name: str = "custom") -> "AutoencoderConfig":
        """Inverse of :meth:`to_diffusers_config`, from a diffusers ``config.json`` dictionary."""
        n = len(cfg["encoder_block_out_channels"])

        def per_stage(value: Any) -> tuple:
            return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n

        def multiscales(value: Any) -> tuple[tuple[int, ...], ...]:
            return tuple(tuple(s) for s in value)

        encoder = EncoderConfig(
            widths=tuple(cfg["encoder_block_out_channels"]),
            depths=tuple(cfg["encoder_layers_per_block"]),
            block_types=per_stage(cfg.get("encoder_block_types", "ResBlock")),
            qkv_multiscales=multiscales(cfg["encoder_qkv_multiscales"]),
            downsample="pixel_unshuffle" if cfg.get("downsample_block_type") == "pixel_unshuffle" else "conv",
            out_shortcut=cfg.get("encoder_out_shortcut", True),
        )
        decoder = DecoderConfig(
            widths=tuple(cfg["decoder_block_out_channels"]),
            depths=tuple(cfg["decoder_layers_per_block"]),
            block_types=per_stage(cfg.get("decoder_block_types", "ResBlock")),
            qkv_multiscales=multiscales(cfg["decoder_qkv_multiscales"]),
            norms=per_stage(cfg.get("decoder_norm_types", "rms_norm")),
            acts=per_stage(cfg.get("decoder_act_fns", "silu")),
            upsample="interpolate" if cfg.get("upsample_block_type") == "interpolate" else "pixel_shuffle",
            in_shortcut=cfg.get("decoder_in_shortcut", True),
            out_act=cfg.get("decoder_conv_act_fn", "relu"),
        )
        return cls(
            name=name,
            encoder=encoder,
            decoder=decoder,
            scaling_factor=float(cfg.get("scaling_factor", 1.0)),
            latent_channels=cfg["latent_channels"],
            in_channels=cfg.get("in_channels", 3),
            attention_head_dim=cfg.get("attention_head_dim", 32),
        )


def _tuplify(data: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; frozen configs want (hashable) tuples back."""

    def conv(v: Any) -> Any:
        return tuple(conv(x) for x in v) if isinstance(v, list) else v

    return {k: conv(v) for k, v in data.items()}


def _check_stage_lengths(side: str, *per_stage: tuple) -> None:
    lengths = {len(x) for x in per_stage}
    if len(lengths) != 1:
        raise ValueError(f"{side} config: every per-stage list must have one entry per stage, got lengths {lengths}")


FAMILY = register_family(ModelFamily(
    "dc-ae", "autoencoder", AutoencoderConfig, module="dcae_deploy.models.autoencoder",
    build="build_autoencoder",
    load="dcae_deploy.models.autoencoder_io:load_autoencoder",
    save="dcae_deploy.models.autoencoder_io:save_autoencoder",
    components=(
        ComponentDef("encoder", "encoder_spec", "encoder_call", in_pipeline=False),
        ComponentDef("decoder", "decoder_spec", "decoder_call"),
        ComponentDef(SPLIT_DECODER[0], "decoder_global_spec", "decoder_global_call", default=False),
        ComponentDef(SPLIT_DECODER[1], "decoder_local_spec", "decoder_local_call", default=False),
    ),
    facts=lambda c, *_: AutoencoderFacts(c.scaling_factor, c.spatial_compression_ratio, c.latent_channels),
    image_ratio=lambda config: config.spatial_compression_ratio,
))
