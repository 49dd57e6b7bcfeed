"""One registry of named model variants, each a frozen, typed config.

>>> from dcae_deploy.variants import get_variant
>>> cfg = get_variant("f32c32-sana")
>>> cfg.spatial_compression_ratio, cfg.latent_channels, cfg.scaling_factor
(32, 32, 0.41407)

Every model family registers its configs here (``register``); callers look them up by name
(``get_variant``) and optionally by kind (``"autoencoder"``, ``"denoiser"``, ...). Unknown names fail
with the list of valid ones. Names prefixed ``tiny-`` are narrow test variants of the same
architecture, small enough for fast CPU tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from dcae_deploy.errors import UnknownVariantError

__all__ = ["AutoencoderConfig", "DecoderConfig", "EncoderConfig", "get_variant", "list_variants", "register"]

BlockType = Literal["ResBlock", "EfficientViTBlock"]
NormType = Literal["rms_norm", "batch_norm"]
ActType = Literal["silu", "relu"]

# ---------------------------------------------------------------------------------------------
# DC-AE configs
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Any] = {}
_ALIASES: dict[str, str] = {}


def register(config: Any, *aliases: str) -> Any:
    """Add a config (any frozen dataclass with ``name`` and a class-level ``kind``) to the registry."""
    for key in (config.name, *aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"variant name {key!r} is already registered")
    _REGISTRY[config.name] = config
    for alias in aliases:
        _ALIASES[alias] = config.name
    return config


def list_variants(kind: str | None = None, include_tiny: bool = True) -> list[str]:
    """Registered names (aliases excluded), optionally of one kind only."""
    return sorted(
        name
        for name, cfg in _REGISTRY.items()
        if (kind is None or cfg.kind == kind) and (include_tiny or not name.startswith("tiny-"))
    )


def get_variant(name: str, kind: str | None = None) -> Any:
    """The config registered under ``name`` (or one of its aliases).

    Raises:
        UnknownVariantError: the name is unknown, or names a variant of another kind.
    """
    canonical = _ALIASES.get(name, name)
    config = _REGISTRY.get(canonical)
    if config is None or (kind is not None and config.kind != kind):
        valid = list_variants(kind)
        what = f"{kind} variant" if kind else "variant"
        raise UnknownVariantError(f"unknown {what} {name!r}; valid names: {', '.join(valid)}")
    return config


# ---------------------------------------------------------------------------------------------
# DC-AE variants (values: shared/reference/dcae-and-sana-reference.md, section 1.3)
# ---------------------------------------------------------------------------------------------

R, E = "ResBlock", "EfficientViTBlock"
_IN_MIX_WIDTHS = {
    "f32c32": (128, 256, 512, 512, 1024, 1024),
    "f64c128": (128, 256, 512, 512, 1024, 1024, 2048),
    "f128c512": (128, 256, 512, 512, 1024, 1024, 2048, 2048),
}
_IN_MIX_SCALING = {
    ("f32c32", "in"): 0.3189,
    ("f32c32", "mix"): 0.4552,
    ("f64c128", "in"): 0.2889,
    ("f64c128", "mix"): 0.4538,
    ("f128c512", "in"): 0.4883,
    ("f128c512", "mix"): 0.3620,
}
_DATASET_TEXT = {"in": "ImageNet", "mix": "mixed datasets"}


def _in_mix_config(name: str, widths: tuple[int, ...], latent: int, scaling: float, enc_depths, dec_depths, description):
    """The in/mix family: ResBlocks in the first three stages, EfficientViT blocks after; BN+ReLU decoder head stages."""
    n = len(widths)
    blocks = (R,) * 3 + (E,) * (n - 3)
    return AutoencoderConfig(
        name=name,
        latent_channels=latent,
        scaling_factor=scaling,
        description=description,
        encoder=EncoderConfig(
            widths=widths,
            depths=enc_depths,
            block_types=blocks,
            qkv_multiscales=((),) * n,
            downsample="pixel_unshuffle",
        ),
        decoder=DecoderConfig(
            widths=widths,
            depths=dec_depths,
            block_types=blocks,
            qkv_multiscales=((),) * n,
            norms=("batch_norm",) * 3 + ("rms_norm",) * (n - 3),
            acts=("relu",) * 3 + ("silu",) * (n - 3),
            upsample="pixel_shuffle",
        ),
    )


def _sana_config(name: str, widths, enc_depths, dec_depths, description: str) -> AutoencoderConfig:
    """The SANA family: RMSNorm + SiLU everywhere, multi-scale (5x5) attention, strided-conv down, nearest+conv up."""
    n = len(widths)
    blocks = (R,) * 3 + (E,) * (n - 3)
    scales = ((),) * 3 + ((5,),) * (n - 3)
    return AutoencoderConfig(
        name=name,
        latent_channels=32,
        scaling_factor=0.41407,
        description=description,
        encoder=EncoderConfig(
            widths=widths, depths=enc_depths, block_types=blocks, qkv_multiscales=scales, downsample="conv"
        ),
        decoder=DecoderConfig(
            widths=widths,
            depths=dec_depths,
            block_types=blocks,
            qkv_multiscales=scales,
            norms=("rms_norm",) * n,
            acts=("silu",) * n,
            upsample="interpolate",
        ),
    )


for _family, _widths in _IN_MIX_WIDTHS.items():
    _latent = int(_family.split("c")[1])
    _n = len(_widths)
    for _data in ("in", "mix"):
        register(
            _in_mix_config(
                f"{_family}-{_data}",
                _widths,
                _latent,
                _IN_MIX_SCALING[(_family, _data)],
                enc_depths=(0, 4, 8) + (2,) * (_n - 3),
                dec_depths=(0, 5, 10) + (2,) * (_n - 3),
                description=f"DC-AE {_family} trained on {_DATASET_TEXT[_data]} (dc-ae-{_family}-{_data}-1.0)",
            ),
            f"dc-ae-{_family}-{_data}-1.0",
        )

_SANA_WIDTHS = (128, 256, 512, 512, 1024, 1024)
register(
    _sana_config(
        "f32c32-sana",
        _SANA_WIDTHS,
        (2, 2, 2, 3, 3, 3),
        (3, 3, 3, 3, 3, 3),
        "DC-AE f32c32 used by SANA 1.0 (dc-ae-f32c32-sana-1.0)",
    ),
    "f32c32-sana-1.0",
    "dc-ae-f32c32-sana-1.0",
)
register(
    dataclasses.replace(
        get_variant("f32c32-sana"),
        name="f32c32-sana-1.1",
        description="DC-AE f32c32 SANA 1.1: same architecture and encoder as 1.0, better decoder weights",
    ),
    "dc-ae-f32c32-sana-1.1",
)

# Tiny test variants: the same block graph with narrow widths and shallow stages.
_TINY = (8, 16, 32, 32, 64, 64)
register(
    _sana_config("tiny-f32c32-sana", _TINY, (1,) * 6, (1,) * 6, "narrow f32c32-sana for tests"),
)
register(
    _in_mix_config(
        "tiny-f32c32-in", _TINY, 32, 0.3189, (0, 1, 2, 1, 1, 1), (0, 1, 2, 1, 1, 1), "narrow f32c32-in for tests"
    )
)
register(
    _in_mix_config(
        "tiny-f64c128-mix",
        _TINY + (128,),
        128,
        0.4538,
        (0, 1, 1, 1, 1, 1, 1),
        (0, 1, 1, 1, 1, 1, 1),
        "narrow f64c128-mix for tests",
    )
)
register(
    _in_mix_config(
        "tiny-f128c512-in",
        _TINY + (128, 512),
        512,
        0.4883,
        (0, 1, 1, 1, 1, 1, 1, 1),
        (0, 1, 1, 1, 1, 1, 1, 1),
        "narrow f128c512-in for tests",
    )
)


# --- Denoiser variants ---
# SANA linear DiT configs (values: shared/reference/dcae-and-sana-reference.md, section 3.3).
# Owned by dcae_deploy/models/denoiser.py; the keys of to_diffusers_config() are the keyword
# arguments of diffusers.SanaTransformer2DModel.


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


register(
    DenoiserConfig(
        "sana-600m",
        num_attention_heads=36,
        attention_head_dim=32,
        num_layers=28,
        num_cross_attention_heads=16,
        cross_attention_head_dim=72,
        description="SANA 0.6B linear DiT (SanaMS_600M_P1_D28), 512px and 1024px checkpoints",
    ),
    "SanaMS_600M_P1_D28",
    "sana-0.6b",
)
register(
    DenoiserConfig(
        "sana-1600m",
        num_attention_heads=70,
        attention_head_dim=32,
        num_layers=20,
        num_cross_attention_heads=20,
        cross_attention_head_dim=112,
        description="SANA 1.6B linear DiT (SanaMS_1600M_P1_D20), 512px and 1024px checkpoints",
    ),
    "SanaMS_1600M_P1_D20",
    "sana-1.6b",
)
register(
    DenoiserConfig(
        "tiny-sana",
        num_attention_heads=2,
        attention_head_dim=32,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=32,
        caption_channels=64,
        description="narrow SANA linear DiT for tests",
    )
)


# ---------------------------------------------------------------------------------------------
# Text-encoder variants
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderConfig:
    """A caption encoder: prompt -> (tokens, hidden_size) states that the denoiser cross-attends to.

    ``family`` picks the implementation: ``"word"`` is the demo's own small transformer over a word
    vocabulary (:mod:`dcae_deploy.models.text_encoder`); ``"gemma2"`` is Gemma-2 through ``transformers``
    from a local folder (``arch`` holds the ``Gemma2Config`` keyword arguments).
    """

    kind = "text_encoder"

    name: str
    family: Literal["word", "gemma2"]
    hidden_size: int
    max_length: int
    num_layers: int = 2
    num_heads: int = 4
    ffn_ratio: float = 2.0
    vocab_size: int = 0  # word family: size of the vocabulary (specials included)
    arch: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextEncoderConfig":
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# Text-to-image pipelines: which autoencoder, denoiser and text encoder work together
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineConfig:
    """A text-to-image model: names of its three parts plus its sampling defaults.

    A pipeline checkpoint is a folder with ``vae/``, ``transformer/`` and ``text_encoder/`` (and
    ``tokenizer/``) sub-folders, as ``diffusers.SanaPipeline.save_pretrained`` writes.
    """

    kind = "pipeline"

    name: str
    autoencoder: str
    denoiser: str
    text_encoder: str
    height: int = 1024
    width: int = 1024
    steps: int = 20
    guidance_scale: float = 4.5
    flow_shift: float = 3.0
    sampler: Literal["dpm-solver++", "euler"] = "dpm-solver++"
    description: str = ""

    def parts(self) -> dict[str, Any]:
        """The configs of the three parts, looked up in the registry."""
        return {
            "autoencoder": get_variant(self.autoencoder, kind="autoencoder"),
            "denoiser": get_variant(self.denoiser, kind="denoiser"),
            "text_encoder": get_variant(self.text_encoder, kind="text_encoder"),
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- demo model: trained by this project on the procedural shapes set (dcae_deploy/demo/) -------

DEMO_VOCABULARY = (
    ("a", "an", "on", "background")
    + ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
    + ("circle", "square", "triangle", "star")
)

register(
    dataclasses.replace(
        _sana_config(
            "demo-f32c32",
            (16, 32, 64, 64, 128, 128),
            (1, 1, 1, 1, 1, 1),
            (1, 1, 1, 1, 1, 1),
            "small f32c32 DC-AE (SANA family) of the shipped demo model, trained on 128px procedural shapes",
        ),
        scaling_factor=0.27583,  # 1 / RMS of its latents, measured by scripts/train_demo.py
    )
)
register(
    DenoiserConfig(
        "demo-denoiser",
        num_attention_heads=4,
        attention_head_dim=32,
        num_layers=6,
        num_cross_attention_heads=4,
        cross_attention_head_dim=32,
        caption_channels=128,
        sample_size=4,
        description="small SANA linear DiT of the shipped demo model",
    )
)
register(
    TextEncoderConfig(
        "demo-text",
        family="word",
        hidden_size=128,
        max_length=16,
        num_layers=2,
        num_heads=4,
        vocab_size=3 + len(DEMO_VOCABULARY),
        description="the demo's own small transformer text encoder over a 19-word vocabulary",
    )
)
register(
    PipelineConfig(
        "demo",
        autoencoder="demo-f32c32",
        denoiser="demo-denoiser",
        text_encoder="demo-text",
        height=128,
        width=128,
        steps=20,
        # chosen on 100 training prompts (python -m dcae_deploy.evaluate --prompt-split train --guidance G):
        # shape 72% at 2, 80% at 3, 84% at 4, 79% at 5, 78% at 6, 74% at 8; foreground colour 99-100% at each
        guidance_scale=4.0,
        description="shipped demo: coloured shapes from captions ('a red circle on a blue background')",
    )
)


# --- SANA text-to-image: Gemma-2 text encoder and the pipelines (export helper) -----------------

register(
    TextEncoderConfig(
        "gemma-2-2b-it",
        family="gemma2",
        hidden_size=2304,
        max_length=300,
        arch=dict(
            vocab_size=256000,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=4096,
            max_position_embeddings=8192,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            hidden_activation="gelu_pytorch_tanh",
        ),
        description="Gemma-2-2B-IT (Efficient-Large-Model/gemma-2-2b-it), SANA's text encoder: BOS + last 299 "
        "of the instruction-prefixed prompt, 2304 channels",
    )
)
register(
    TextEncoderConfig(
        "tiny-gemma-2",
        family="gemma2",
        hidden_size=64,
        max_length=24,
        arch=dict(
            vocab_size=512,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=4096,
            max_position_embeddings=2048,
        ),
        description="tiny random Gemma-2 for tests (built-in 320-token BPE tokenizer)",
    )
)
register(
    TextEncoderConfig(
        "tiny-gemma-2-2304",
        family="gemma2",
        hidden_size=2304,
        max_length=24,
        arch=dict(
            vocab_size=512,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
            query_pre_attn_scalar=64,
            sliding_window=4096,
            max_position_embeddings=2048,
        ),
        description="tiny random Gemma-2 with SANA's 2304-channel states (real-size SANA denoisers in tests)",
    )
)
register(
    PipelineConfig(
        "tiny-t2i",
        autoencoder="tiny-f32c32-sana",
        denoiser="tiny-sana",
        text_encoder="tiny-gemma-2",
        height=64,
        width=64,
        steps=4,
        guidance_scale=4.5,
        description="tiny text-to-image pipeline for tests: tiny DC-AE + tiny SANA DiT + tiny Gemma-2",
    )
)
register(
    PipelineConfig(
        "sana-600m-tiny-gemma",
        autoencoder="f32c32-sana",
        denoiser="sana-600m",
        text_encoder="tiny-gemma-2-2304",
        height=256,
        width=256,
        steps=2,
        guidance_scale=4.5,
        flow_shift=3.0,
        description="real-size DC-AE f32c32-sana + SANA-600M with a tiny Gemma-2: end-to-end checks against diffusers",
    )
)
register(
    PipelineConfig(
        "sana-600m-t2i",
        autoencoder="f32c32-sana",
        denoiser="sana-600m",
        text_encoder="gemma-2-2b-it",
        height=1024,
        width=1024,
        steps=20,
        guidance_scale=4.5,
        flow_shift=3.0,
        description="SANA 0.6B text-to-image (Sana_600M_1024px): DC-AE f32c32-sana + SANA-600M + Gemma-2-2B-IT",
    )
)
register(
    PipelineConfig(
        "sana-1600m-t2i",
        autoencoder="f32c32-sana",
        denoiser="sana-1600m",
        text_encoder="gemma-2-2b-it",
        height=1024,
        width=1024,
        steps=20,
        guidance_scale=4.5,
        flow_shift=3.0,
        description="SANA 1.6B text-to-image (Sana_1600M_1024px): DC-AE f32c32-sana + SANA-1600M + Gemma-2-2B-IT",
    )
)
