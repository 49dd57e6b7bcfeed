"""Per-component export specs: the graph's named inputs and outputs, dynamic axes, profile, parity points.

Like optimum's per-model ONNX configs, everything component-specific lives in one small declarative
object; the generic exporter and parity gate never name a model. Shapes are written with symbolic
names (``batch``, ``latent_height``, ``tokens``, ...) that the manifest keeps; ``dims`` gives each name
its concrete min/opt/max, which become the TensorRT optimisation profile of every input that uses it.

Components and their tensors (the contract with the runtime, see ``notes/contract.md``):

============  =====================================================================  ==========================
component     inputs                                                                 output
============  =====================================================================  ==========================
encoder       image (batch, 3, height, width) [P]                                    latent [P]
decoder       latent (batch, C, latent_height, latent_width) [P]                     image [P]
denoiser      latent [P], timestep (batch,) float32, encoder_hidden_states            velocity (like latent) [P]
              (batch, T, caption_channels) [P], encoder_attention_mask (batch, T) int64
text_encoder  input_ids (batch, tokens) int64, attention_mask (batch, tokens) int64  text_embeddings
                                                                                     (batch, T, hidden) [P]
decoder_      latent [P] (``decoder_global``) / features (batch, F, feature_height,   features [P] / image [P]
global/local  feature_width) [P] (``decoder_local``): the decoder split for exact tiling
============  =====================================================================  ==========================

``[P]`` is the export precision. The denoiser's and text encoder's batch goes to ``2 * max_batch``
(classifier-free guidance runs both branches in one batch). ``T`` is static: the text encoder's
``max_length`` (300 for SANA's Gemma-2, whose graph selects BOS + the last 299 of ``tokens`` positions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.manifest import SPLIT_DECODER

SANA_CAPTION_TOKENS = 300  # caption length of a bare SANA denoiser export (SanaPipeline's max_sequence_length)
SANA_LATENT_RATIO = 32  # image pixels per latent pixel for a bare denoiser export (DC-AE f32)

Dtype = Literal["float", "float32", "int64"]  # "float": the export precision
Sample = Literal["uniform", "normal", "timestep", "ids", "mask"]


@dataclass(frozen=True)
class Resolution:
    """Image-space export profile: square sides in pixels (multiples of the compression ratio) and batch."""

    min_res: int
    opt_res: int
    max_res: int
    max_batch: int = 1

    def validate(self, ratio: int) -> None:
        sides = {"--min-res": self.min_res, "--opt-res": self.opt_res, "--max-res": self.max_res}
        for flag, value in sides.items():
            if value <= 0 or value % ratio:
                raise DcaeDeployError(f"{flag} {value} must be a positive multiple of the compression ratio {ratio}")
        if not self.min_res <= self.opt_res <= self.max_res:
            raise DcaeDeployError(
                f"profile out of order: need --min-res <= --opt-res <= --max-res, got "
                f"{self.min_res} / {self.opt_res} / {self.max_res}"
            )
        if not 1 <= self.max_batch <= 64:
            raise DcaeDeployError(f"--max-batch must be between 1 and 64, got {self.max_batch}")

    def parity_shapes(self) -> list[tuple[int, int, int]]:
        """Two (batch, height, width) points inside the profile: the optimum, and a small non-square one."""
        step = self.min_res if self.max_res >= 2 * self.min_res else 0
        small = (min(2, self.max_batch), self.min_res, self.min_res + step)
        return [(1, self.opt_res, self.opt_res), small]


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (ints and symbolic names), dtype role, sample distribution.

    ``sample``/``scale`` say how the parity gate fills an input: ``uniform`` U(-1, 1) * scale,
    ``normal`` N(0, 1) * scale, ``timestep`` U(0, scale), ``ids`` integers in [0, scale), ``mask``
    right-padded 1/0 rows with at least one 1.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: Dtype = "float"
    sample: Sample = "normal"
    scale: float = 1.0

    def concrete(self, point: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else point[d] for d in self.shape)

    def make(self, point: dict[str, int], gen: torch.Generator) -> torch.Tensor:
        """A seeded sample (float32 or int64) of this tensor at ``point``."""
        shape = self.concrete(point)
        if self.sample == "uniform":
            return (torch.rand(shape, generator=gen) * 2 - 1) * self.scale
        if self.sample == "normal":
            return torch.randn(shape, generator=gen) * self.scale
        if self.sample == "timestep":
            return torch.rand(shape, generator=gen) * self.scale
        if self.sample == "ids":
            return torch.randint(0, int(self.scale), shape, generator=gen)
        if self.sample == "mask":
            lengths = torch.randint(1, shape[-1] + 1, shape[:-1], generator=gen)
            lengths.view(-1)[0] = shape[-1]  # one row without padding
            return (torch.arange(shape[-1]) < lengths[..., None]).long()
        raise ValueError(f"unknown sample kind {self.sample!r}")


@dataclass(frozen=True)
class ComponentSpec:
    """One exportable component, made concrete for a model config and a shape profile.

    Attributes:
        dims: symbolic dimension -> (min, opt, max); a name with min == max is still symbolic in the
            manifest but static in the graph.
        derived: dimension -> (base dimension, factor): ``height = 32 * latent_height`` keeps the
            exporter's shape guards (strided convolutions) satisfied.
        points: two parity points (symbolic dimension -> value) inside the profile.
        module: picks the ``nn.Module`` to export from the loaded parts; its ``forward`` takes the
            inputs in order.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: dict[str, tuple[int, int, int]]
    points: tuple[dict[str, int], ...]
    module: Callable[[Any], nn.Module]
    image_output: bool = False
    derived: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def example_point(self) -> dict[str, int]:
        """The shape the graph is traced at: the optimum, with batch 2 (size-1 axes would be specialised)."""
        return {name: (max(opt, 2) if name == "batch" else opt) for name, (_, opt, _) in self.dims.items()}

    def sample_inputs(self, point: dict[str, int], seed: int) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(seed)
        return tuple(t.make(point, gen) for t in self.inputs)

    def dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """``torch.export.Dim`` per dynamic axis of every input (shared by name across inputs)."""
        made: dict[str, Any] = {}

        def dim(name: str):
            if name not in made:
                if name in self.derived:
                    base, factor = self.derived[name]
                    base_dim = dim(base)
                    made[name] = None if base_dim is None else factor * base_dim  # static base: static too
                else:
                    lo, _, hi = self.dims[name]
                    hi = max(hi, 2) if name == "batch" else hi  # the trace uses batch 2
                    made[name] = torch.export.Dim(name, min=lo, max=hi) if lo < hi else None
            return made[name]

        return tuple(
            {axis: d for axis, d in ((a, dim(s)) for a, s in enumerate(t.shape) if isinstance(s, str)) if d is not None}
            for t in self.inputs
        )

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min, opt, max) concrete shapes, for every input with a symbolic axis."""
        points = [{name: v[i] for name, v in self.dims.items()} for i in range(3)]
        return {
            t.name: tuple(t.concrete(p) for p in points)  # type: ignore[misc]
            for t in self.inputs
            if any(isinstance(d, str) for d in t.shape)
        }


# ---------------------------------------------------------------------------------------------
# Graph wrappers: a plain forward over the named inputs
# ---------------------------------------------------------------------------------------------


class _Wrapped(nn.Module):
    """Gives the exported graph a plain ``forward(x)`` over one submodule."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class _Method(nn.Module):
    """Gives the exported graph a plain ``forward(x)`` calling one method of a submodule."""

    def __init__(self, inner: nn.Module, method: str) -> None:
        super().__init__()
        self.inner, self.method = inner, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.inner, self.method)(x)


class _DenoiserGraph(nn.Module):
    """``forward(latent, timestep, encoder_hidden_states, encoder_attention_mask)`` -> velocity."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, latent, timestep, encoder_hidden_states, encoder_attention_mask):
        return self.denoiser(latent, timestep, encoder_hidden_states, encoder_attention_mask)


# ---------------------------------------------------------------------------------------------
# Component factories
# ---------------------------------------------------------------------------------------------


def _spatial_dims(res: Resolution, ratio: int) -> dict[str, tuple[int, int, int]]:
    lat = (res.min_res // ratio, res.opt_res // ratio, res.max_res // ratio)
    px = (res.min_res, res.opt_res, res.max_res)
    return {"latent_height": lat, "latent_width": lat, "height": px, "width": px}


def _spatial_points(res: Resolution, ratio: int) -> list[dict[str, int]]:
    points = []
    for _, h, w in res.parity_shapes():
        points.append({"height": h, "width": w, "latent_height": h // ratio, "latent_width": w // ratio})
    return points


def autoencoder_spec(name: str, ae_config, res: Resolution) -> ComponentSpec:
    """``encoder`` (image -> latent) or ``decoder`` (latent -> image) of a DC-AE config."""
    f = ae_config.spatial_compression_ratio
    image = TensorSpec("image", ("batch", ae_config.in_channels, "height", "width"), sample="uniform")
    latent = TensorSpec(
        "latent",
        ("batch", ae_config.latent_channels, "latent_height", "latent_width"),
        scale=1.0 / ae_config.scaling_factor,  # raw-scale latents: unit variance after scaling
    )
    dims = {"batch": (1, 1, res.max_batch), **_spatial_dims(res, f)}
    points = tuple(
        {"batch": b, **p} for (b, _, _), p in zip(res.parity_shapes(), _spatial_points(res, f))
    )
    if name == "encoder":
        return ComponentSpec(
            "encoder", (image,), (latent,), dims, points, lambda parts: _Wrapped(parts.autoencoder.encoder),
            derived={"height": ("latent_height", f), "width": ("latent_width", f)},
        )
    return ComponentSpec(
        "decoder", (latent,), (image,), dims, points, lambda parts: _Wrapped(parts.autoencoder.decoder),
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
    dims = {"batch": (1, 1, res.max_batch), **_spatial_dims(res, f), "feature_height": feat, "feature_width": feat}
    points = tuple(
        {"batch": b, **p, "feature_height": p["height"] // r, "feature_width": p["width"] // r}
        for (b, _, _), p in zip(res.parity_shapes(), _spatial_points(res, f))
    )
    if name == SPLIT_DECODER[0]:
        return ComponentSpec(name, (latent,), (features,), dims, points,
                             lambda parts: _Method(parts.autoencoder.decoder, "decode_global"))
    return ComponentSpec(name, (features,), (image,), dims, points,
                         lambda parts: _Method(parts.autoencoder.decoder, "decode_local"), image_output=True)


def denoiser_spec(den_config, res: Resolution, ratio: int, caption_tokens: int) -> ComponentSpec:
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
    dims = {"batch": (1, 2, 2 * res.max_batch), **_spatial_dims(res, ratio)}
    dims = {k: v for k, v in dims.items() if k in ("batch", "latent_height", "latent_width")}
    points = tuple(
        {"batch": b, "latent_height": p["latent_height"], "latent_width": p["latent_width"]}
        for b, p in zip((2, 1), _spatial_points(res, ratio))
    )
    return ComponentSpec("denoiser", inputs, outputs, dims, points, lambda parts: _DenoiserGraph(parts.denoiser))


def text_encoder_spec(te_config, res: Resolution, input_tokens: tuple[int, int], vocab_size: int) -> ComponentSpec:
    """Token ids + mask (batch, tokens) -> caption states (batch, max_length, hidden).

    ``input_tokens`` is the (shortest, longest) tokenised prompt: equal to ``max_length`` for the word
    encoder; for Gemma-2 with SANA's instruction prefix the prompt is longer and the graph keeps BOS +
    the last ``max_length - 1`` positions.
    """
    lo, hi = input_tokens
    length = "tokens" if lo < hi else lo
    inputs = (
        TensorSpec("input_ids", ("batch", length), "int64", "ids", float(vocab_size)),
        TensorSpec("attention_mask", ("batch", length), "int64", "mask"),
    )
    outputs = (TensorSpec("text_embeddings", ("batch", te_config.max_length, te_config.hidden_size)),)
    dims = {"batch": (1, 1, 2 * res.max_batch)}
    if lo < hi:
        dims["tokens"] = (lo, hi, hi)
    points = ({"batch": 1, "tokens": hi}, {"batch": min(2, 2 * res.max_batch), "tokens": lo})
    points = tuple({k: v for k, v in p.items() if k in dims} for p in points)
    return ComponentSpec("text_encoder", inputs, outputs, dims, points, lambda parts: parts.text_encoder)


# The components each model kind can export, in export order; the second set is the default.
COMPONENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "autoencoder": (("encoder", "decoder", *SPLIT_DECODER), ("encoder", "decoder")),
    "denoiser": (("denoiser",), ("denoiser",)),
    "text_encoder": (("text_encoder",), ("text_encoder",)),
    "pipeline": (
        ("text_encoder", "denoiser", "decoder", "encoder", *SPLIT_DECODER),
        ("text_encoder", "denoiser", "decoder"),
    ),
}


def component_names(kind: str, variant: str, names: list[str] | None) -> list[str]:
    """Validated component names for a variant of ``kind`` (its defaults when ``names`` is None), export order."""
    if kind not in COMPONENTS:
        raise DcaeDeployError(
            f"ONNX export of {kind} variants such as {variant!r} is not available; "
            f"exportable kinds: {', '.join(COMPONENTS)}"
        )
    available, default = COMPONENTS[kind]
    if names is None:
        return list(default)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DcaeDeployError(
            f"{variant!r} is a {kind} with components {', '.join(available)}; it has no "
            f"{', '.join(repr(n) for n in unknown)}"
        )
    if not names:
        raise DcaeDeployError(f"no components given; {variant!r} has {', '.join(available)}")
    return [n for n in available if n in names]
