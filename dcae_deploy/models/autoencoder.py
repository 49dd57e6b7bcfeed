"""DC-AE: the deep compression autoencoder (arXiv 2410.10733), one self-contained, export-first file.

Design choices for deployment:

* ``forward`` has no data-dependent control flow. The reference implementations switch to a quadratic
  attention when a stage has at most ``head_dim`` tokens; the two forms compute the same function
  (``sum_j v_j (k_j.q) / (sum_j k_j.q + eps)``), so this file always uses the linear form and the graph
  is the same at every resolution.
* fp32 islands: the linear-attention matmuls and normaliser division, and the RMSNorm statistics, run in
  float32 whatever the model dtype; results are cast back to the working dtype.
* Channel shortcuts are written as reshape/expand/mean, which export to plain ONNX ops.

State-dict names follow diffusers' ``AutoencoderDC`` except inside the attention, where the three q/k/v
linears are one 1x1 convolution ``to_qkv`` and ``to_out`` is a 1x1 convolution (no layout transposes).
Checkpoint conversion lives in :mod:`dcae_deploy.models.autoencoder_io`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from dcae_deploy.errors import InputShapeError
from dcae_deploy.manifest import SPLIT_DECODER
from dcae_deploy.models.autoencoder_family import AutoencoderConfig, DecoderConfig, EncoderConfig
from dcae_deploy.registry import get_variant
from dcae_deploy.specs import ComponentSpec, MethodGraph, Resolution, SpecContext, TensorSpec, Wrapped, spatial_dims, spatial_points

# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


class RMSNorm2d(nn.Module):
    """RMS normalisation over channels at every pixel, with weight and bias; statistics in fp32."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=1, keepdim=True) + self.eps)
        normed = normed.to(x.dtype)
        return normed * self.weight[:, None, None].to(x.dtype) + self.bias[:, None, None].to(x.dtype)


_NORMS = {"rms_norm": RMSNorm2d, "batch_norm": nn.BatchNorm2d}
_ACTS = {"silu": nn.SiLU, "relu": nn.ReLU}


def build_norm(kind: str, channels: int) -> nn.Module:
    return _NORMS[kind](channels)


def build_act(kind: str) -> nn.Module:
    return _ACTS[kind]()


def average_channel_groups(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Average consecutive groups of channels down to ``out_channels`` (the encoder's residual shortcut)."""
    return x.unflatten(1, (out_channels, -1)).mean(dim=2)


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling as expand + reshape: no Resize op (TensorRT has no bf16 Resize). One
    reshape straight to (B, C, 2H, 2W), so the ONNX graph's Expand -> Reshape is the whole upsampling."""
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(-1, -1, -1, 2, -1, 2).reshape(b, c, 2 * h, 2 * w)


def duplicate_channels(x: torch.Tensor, repeats: int) -> torch.Tensor:
    """Repeat each channel ``repeats`` times consecutively (``repeat_interleave`` on dim 1, export-friendly)."""
    if repeats == 1:
        return x
    return x.unsqueeze(2).expand(-1, -1, repeats, -1, -1).flatten(1, 2)


class ResBlock(nn.Module):
    """``x + norm(conv3x3_nobias(act(conv3x3(x))))``."""

    def __init__(self, channels: int, norm: str, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.nonlinearity = build_act(act)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm = build_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(self.nonlinearity(self.conv1(x))))


class MultiscaleProjection(nn.Module):
    """Depthwise kxk then grouped 1x1 conv over the qkv channels (one group per q/k/v slice of a head)."""

    def __init__(self, channels: int, heads: int, kernel_size: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=3 * heads, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(x))


def relu_linear_attention(qkv: torch.Tensor, head_dim: int, eps: float) -> torch.Tensor:
    """ReLU linear attention over head-interleaved ``[q_h, k_h, v_h]`` channels, computed in fp32.

    ``qkv`` is (B, heads * 3 * head_dim, H, W); returns (B, heads * head_dim, H, W) in qkv's dtype.
    A row of ones appended to v makes the same matmul produce the normaliser ``sum_j k_j . q``.
    """
    batch, _, height, width = qkv.shape
    x = qkv.float().reshape(batch, -1, 3 * head_dim, height * width)
    q, k, v = x.chunk(3, dim=2)
    q, k = F.relu(q), F.relu(k)
    v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)
    vk = torch.matmul(v, k.transpose(-1, -2))  # (B, h, d+1, d)
    out = torch.matmul(vk, q)  # (B, h, d+1, N)
    out = out[:, :, :-1] / (out[:, :, -1:] + eps)
    return out.reshape(batch, -1, height, width).to(qkv.dtype)


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention with a post-norm residual: ``x + norm(proj(attn(qkv(x))))``."""

    def __init__(self, channels: int, head_dim: int, multiscales: tuple[int, ...], norm: str, eps: float = 1e-15):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention width {channels} must be a multiple of head_dim {head_dim}")
        heads = channels // head_dim
        self.head_dim = head_dim
        self.eps = eps
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.to_qkv_multiscale = nn.ModuleList(MultiscaleProjection(3 * channels, heads, k) for k in multiscales)
        self.to_out = nn.Conv2d(channels * (1 + len(multiscales)), channels, 1, bias=False)
        self.norm_out = build_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.to_qkv(x)
        if len(self.to_qkv_multiscale):
            qkv = torch.cat([qkv, *(proj(qkv) for proj in self.to_qkv_multiscale)], dim=1)
        out = relu_linear_attention(qkv, self.head_dim, self.eps)
        return x + self.norm_out(self.to_out(out))


class GLUMBConv(nn.Module):
    """Gated inverted bottleneck: 1x1 expand (x8) -> act -> depthwise 3x3 -> a * act(g) -> 1x1 -> norm, residual."""

    def __init__(self, channels: int, act: str, expand_ratio: int = 4) -> None:
        super().__init__()
        hidden = channels * expand_ratio
        self.conv_inverted = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, 1, 1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, channels, 1, bias=False)
        self.nonlinearity = build_act(act)
        self.norm = RMSNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_depth(self.nonlinearity(self.conv_inverted(x)))
        a, gate = h.chunk(2, dim=1)
        return x + self.norm(self.conv_point(a * self.nonlinearity(gate)))


class EfficientViTBlock(nn.Module):
    """Global context (multi-scale linear attention) then local mixing (GLUMBConv), both residual."""

    def __init__(self, channels: int, head_dim: int, multiscales: tuple[int, ...], norm: str, act: str) -> None:
        super().__init__()
        self.attn = LiteMLA(channels, head_dim, multiscales, norm)
        self.conv_out = GLUMBConv(channels, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.attn(x))


class DownBlock(nn.Module):
    """Halve the resolution: conv + pixel-unshuffle (or a stride-2 conv), plus the space-to-channel averaging shortcut."""

    def __init__(self, in_channels: int, out_channels: int, pixel_unshuffle: bool, shortcut: bool) -> None:
        super().__init__()
        self.pixel_unshuffle = pixel_unshuffle
        if pixel_unshuffle:
            self.conv = nn.Conv2d(in_channels, out_channels // 4, 3, 1, 1)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.out_channels = out_channels
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.pixel_unshuffle:
            y = F.pixel_unshuffle(y, 2)
        if self.shortcut:
            y = y + average_channel_groups(F.pixel_unshuffle(x, 2), self.out_channels)
        return y


class UpBlock(nn.Module):
    """Double the resolution: nearest-upsample + conv (or conv + pixel-shuffle), plus the duplicating shortcut."""

    def __init__(self, in_channels: int, out_channels: int, interpolate: bool, shortcut: bool) -> None:
        super().__init__()
        self.interpolate = interpolate
        self.conv = nn.Conv2d(in_channels, out_channels if interpolate else 4 * out_channels, 3, 1, 1)
        self.repeats = 4 * out_channels // in_channels
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interpolate:
            y = self.conv(upsample_nearest_2x(x))
        else:
            y = F.pixel_shuffle(self.conv(x), 2)
        if self.shortcut:
            y = y + F.pixel_shuffle(duplicate_channels(x, self.repeats), 2)
        return y


def build_block(block_type: str, channels: int, head_dim: int, multiscales, norm: str, act: str) -> nn.Module:
    if block_type == "ResBlock":
        return ResBlock(channels, norm, act)
    if block_type == "EfficientViTBlock":
        return EfficientViTBlock(channels, head_dim, multiscales, norm, act)
    raise ValueError(f"unknown block type {block_type!r}; expected 'ResBlock' or 'EfficientViTBlock'")


# ---------------------------------------------------------------------------------------------
# Encoder / decoder
# ---------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> latent (B, C, H/f, W/f). Encoder blocks always use RMSNorm + SiLU."""

    def __init__(self, cfg: EncoderConfig, in_channels: int, latent_channels: int, head_dim: int) -> None:
        super().__init__()
        widths, depths = cfg.widths, cfg.depths
        pixel_unshuffle = cfg.downsample == "pixel_unshuffle"
        if depths[0] > 0:
            self.conv_in = nn.Conv2d(in_channels, widths[0], 3, 1, 1)
        else:  # an empty first stage: the input projection itself halves the resolution
            self.conv_in = DownBlock(in_channels, widths[1], pixel_unshuffle, shortcut=False)
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [
                build_block(cfg.block_types[i], width, head_dim, cfg.qkv_multiscales[i], "rms_norm", "silu")
                for _ in range(depth)
            ]
            if i < len(widths) - 1 and depth > 0:
                blocks.append(DownBlock(width, widths[i + 1], pixel_unshuffle, shortcut=True))
            stages.append(nn.Sequential(*blocks))
        self.down_blocks = nn.ModuleList(stages)
        self.conv_out = nn.Conv2d(widths[-1], latent_channels, 3, 1, 1)
        self.out_shortcut = cfg.out_shortcut
        self.latent_channels = latent_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        out = self.conv_out(x)
        if self.out_shortcut:
            out = out + average_channel_groups(x, self.latent_channels)
        return out


class Decoder(nn.Module):
    """Latent (B, C, h, w) -> image (B, 3, h*f, w*f), roughly in [-1, 1]."""

    def __init__(self, cfg: DecoderConfig, out_channels: int, latent_channels: int, head_dim: int) -> None:
        super().__init__()
        widths, depths = cfg.widths, cfg.depths
        interpolate = cfg.upsample == "interpolate"
        self.conv_in = nn.Conv2d(latent_channels, widths[-1], 3, 1, 1)
        self.in_shortcut = cfg.in_shortcut
        self.in_repeats = widths[-1] // latent_channels
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            if i < len(widths) - 1 and depth > 0:
                blocks.append(UpBlock(widths[i + 1], width, interpolate, shortcut=True))
            blocks += [
                build_block(cfg.block_types[i], width, head_dim, cfg.qkv_multiscales[i], cfg.norms[i], cfg.acts[i])
                for _ in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
        self.up_blocks = nn.ModuleList(stages)  # index i = stage i; run from the deepest stage up
        head_channels = widths[0] if depths[0] > 0 else widths[1]
        self.norm_out = RMSNorm2d(head_channels)
        self.conv_act = build_act(cfg.out_act)
        if depths[0] > 0:
            self.conv_out = nn.Conv2d(head_channels, out_channels, 3, 1, 1)
        else:  # an empty first stage: the output projection itself doubles the resolution
            self.conv_out = UpBlock(head_channels, out_channels, interpolate, shortcut=False)

        # Stages 0..local_stages-1 hold only convolutions and per-pixel norms: every output pixel depends
        # on a bounded neighbourhood of their input, so that part decodes in tiles exactly (decode_local).
        self.local_stages = next((i for i, t in enumerate(cfg.block_types) if t != "ResBlock" and depths[i] > 0),
                                 len(widths))
        self.global_width = widths[self.local_stages] if self.local_stages < len(widths) else widths[-1]
        # image pixels per feature cell: stage i works at 1 / 2**i of the image (the deepest at the latent's)
        self.local_ratio = 2 ** min(self.local_stages, len(widths) - 1)

    def decode_global(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> the features entering the local stages (``global_width`` channels, ``local_ratio`` times
        coarser than the image): the stages with global (linear) attention, cheap at low resolution."""
        x = self.conv_in(z)
        if self.in_shortcut:
            x = x + duplicate_channels(z, self.in_repeats)
        for stage in reversed(self.up_blocks[self.local_stages:]):
            x = stage(x)
        return x

    def decode_local(self, x: torch.Tensor) -> torch.Tensor:
        """Features from :meth:`decode_global` -> image: the high-resolution, purely local stages."""
        for stage in reversed(self.up_blocks[: self.local_stages]):
            x = stage(x)
        return self.conv_out(self.conv_act(self.norm_out(x)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_local(self.decode_global(z))


# ---------------------------------------------------------------------------------------------
# The autoencoder and its user-facing API
# ---------------------------------------------------------------------------------------------


class DCAE(nn.Module):
    """A DC-AE variant: ``encoder`` and ``decoder`` modules plus checked ``encode`` / ``decode``.

    Latent scaling is explicit: ``encode(x)`` returns the raw latent and ``encode(x, scaled=True)`` the
    latent multiplied by ``config.scaling_factor`` (what diffusion models consume);
    ``decode(z, scaled=True)`` divides by it first.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        head_dim = config.attention_head_dim
        self.encoder = Encoder(config.encoder, config.in_channels, config.latent_channels, head_dim)
        self.decoder = Decoder(config.decoder, config.in_channels, config.latent_channels, head_dim)

    @property
    def spatial_compression_ratio(self) -> int:
        return self.config.spatial_compression_ratio

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def encode(self, images: torch.Tensor, *, scaled: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1], H and W multiples of the compression ratio -> latents."""
        self.check_images(images)
        latents = self.encoder(images)
        return latents * self.config.scaling_factor if scaled else latents

    def decode(self, latents: torch.Tensor, *, scaled: bool = False) -> torch.Tensor:
        """Latents (B, C, h, w) -> images in about [-1, 1]; ``scaled=True`` if they were multiplied by the factor."""
        self.check_latents(latents)
        if scaled:
            latents = latents / self.config.scaling_factor
        return self.decoder(latents)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction: ``decode(encode(images))``."""
        return self.decoder(self.encoder(images))

    def check_images(self, images: torch.Tensor) -> None:
        f, c = self.spatial_compression_ratio, self.config.in_channels
        if images.ndim != 4:
            raise InputShapeError(f"images must be a 4-D (batch, channels, height, width) tensor, got shape {tuple(images.shape)}")
        if images.shape[1] != c:
            raise InputShapeError(
                f"{self.config.name} expects {c}-channel images, got {images.shape[1]} channels "
                f"(shape {tuple(images.shape)}); convert to RGB in channels-first layout"
            )
        h, w = images.shape[-2:]
        if h % f or w % f or h == 0 or w == 0:
            raise InputShapeError(
                f"{self.config.name} compresses by {f}: image height and width must be positive multiples of {f}, "
                f"got {h}x{w}; crop or pad to {max(f, h // f * f)}x{max(f, w // f * f)}"
            )

    def check_latents(self, latents: torch.Tensor) -> None:
        c = self.config.latent_channels
        if latents.ndim != 4 or latents.shape[1] != c:
            raise InputShapeError(
                f"{self.config.name} expects latents of shape (batch, {c}, height, width), got {tuple(latents.shape)}"
            )


def build_autoencoder(variant: str | AutoencoderConfig, *, device: torch.device | str | None = None) -> DCAE:
    """A randomly initialised DC-AE of a registered variant (name) or an explicit config, in eval mode."""
    config = get_variant(variant, kind="autoencoder") if isinstance(variant, str) else variant
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = DCAE(config)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Export specs and PyTorch calls of the family's components (named in models/autoencoder_family.py)
# ---------------------------------------------------------------------------------------------


def autoencoder_spec(name: str, ae_config, res: Resolution) -> ComponentSpec:
    """``encoder`` (image -> latent) or ``decoder`` (latent -> image) of a DC-AE config."""
    f = ae_config.spatial_compression_ratio
    image = TensorSpec("image", ("batch", ae_config.in_channels, "height", "width"), sample="uniform")
    latent = TensorSpec(
        "latent",
        ("batch", ae_config.latent_channels, "latent_height", "latent_width"),
        scale=1.0 / ae_config.scaling_factor,  # raw-scale latents: unit variance after scaling
    )
    dims = {"batch": (1, 1, res.max_batch), **spatial_dims(res, f)}
    points = tuple(
        {"batch": b, **p} for (b, _, _), p in zip(res.parity_shapes(), spatial_points(res, f))
    )
    if name == "encoder":
        return ComponentSpec(
            "encoder", (image,), (latent,), dims, points, lambda parts: Wrapped(parts.autoencoder.encoder),
            derived={"height": ("latent_height", f), "width": ("latent_width", f)},
        )
    return ComponentSpec(
        "decoder", (latent,), (image,), dims, points, lambda parts: Wrapped(parts.autoencoder.decoder),
        image_output=True,
    )


def decoder_split_spec(name: str, ae_config, decoder: nn.Module, res: Resolution) -> ComponentSpec:
    """The decoder in two graphs, for exact tiled decoding (``dcae_deploy.runtime.tiling``):
    ``decoder_global`` (latent -> features: the low-resolution stages with global linear attention, run on
    the whole latent) and ``decoder_local`` (features -> image: the high-resolution stages, only
    convolutions and per-pixel norms, run tile by tile). Features are ``decoder.local_ratio`` times
    coarser than the image."""
    f, r = ae_config.spatial_compression_ratio, decoder.local_ratio
    latent = TensorSpec(
        "latent", ("batch", ae_config.latent_channels, "latent_height", "latent_width"), scale=1.0 / ae_config.scaling_factor
    )
    features = TensorSpec("features", ("batch", decoder.global_width, "feature_height", "feature_width"))
    image = TensorSpec("image", ("batch", ae_config.in_channels, "height", "width"), sample="uniform")
    feat = (res.min_res // r, res.opt_res // r, res.max_res // r)
    dims = {"batch": (1, 1, res.max_batch), **spatial_dims(res, f), "feature_height": feat, "feature_width": feat}
    points = tuple(
        {"batch": b, **p, "feature_height": p["height"] // r, "feature_width": p["width"] // r}
        for (b, _, _), p in zip(res.parity_shapes(), spatial_points(res, f))
    )
    if name == SPLIT_DECODER[0]:
        return ComponentSpec(name, (latent,), (features,), dims, points,
                             lambda parts: MethodGraph(parts.autoencoder.decoder, "decode_global"))
    return ComponentSpec(name, (features,), (image,), dims, points,
                         lambda parts: MethodGraph(parts.autoencoder.decoder, "decode_local"), image_output=True)


def encoder_spec(context: SpecContext) -> ComponentSpec:
    return autoencoder_spec("encoder", context.config, context.res)


def decoder_spec(context: SpecContext) -> ComponentSpec:
    return autoencoder_spec("decoder", context.config, context.res)


def decoder_global_spec(context: SpecContext) -> ComponentSpec:
    return decoder_split_spec(SPLIT_DECODER[0], context.config, context.module("autoencoder").decoder, context.res)


def decoder_local_spec(context: SpecContext) -> ComponentSpec:
    return decoder_split_spec(SPLIT_DECODER[1], context.config, context.module("autoencoder").decoder, context.res)


def encoder_call(ae: DCAE):
    m = ae.encoder
    return m, lambda x: m(x["image"])


def decoder_call(ae: DCAE):
    m = ae.decoder
    return m, lambda x: m(x["latent"])


def decoder_global_call(ae: DCAE):
    m = ae.decoder
    return m, lambda x: m.decode_global(x["latent"])


def decoder_local_call(ae: DCAE):
    m = ae.decoder
    return m, lambda x: m.decode_local(x["features"])
