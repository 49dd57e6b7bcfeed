"""Per-component export specs: what a graph takes and returns, its dynamic axes and shape profile.

Like optimum's per-model ONNX configs, everything component-specific lives in one small declarative
object; the generic exporter and parity gate never name a model. Shapes are written with symbolic
names (``batch``, ``height``, ...) that the manifest keeps; the profile turns them into concrete
min/opt/max shapes for TensorRT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dcae_deploy.errors import DcaeDeployError


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
class ComponentSpec:
    """One exportable component of a model kind."""

    name: str
    input_name: str
    output_name: str
    input_is_image: bool  # True: (batch, 3, height, width) pixels; False: (batch, C, h, w) latents
    module: Callable[[nn.Module], nn.Module]  # picks the submodule to export from the loaded model

    def input_shape(self, cfg, batch: int, height: int, width: int) -> tuple[int, ...]:
        return _image_shape(cfg, batch, height, width) if self.input_is_image else _latent_shape(cfg, batch, height, width)

    def symbolic_shapes(self, cfg) -> tuple[tuple, tuple]:
        image = ("batch", cfg.in_channels, "height", "width")
        latent = ("batch", cfg.latent_channels, "latent_height", "latent_width")
        return (image, latent) if self.input_is_image else (latent, image)

    def dynamic_shapes(self, cfg, res: Resolution) -> tuple[dict, ...]:
        f = cfg.spatial_compression_ratio
        batch = torch.export.Dim("batch", min=1, max=max(res.max_batch, 2))
        lat_h = torch.export.Dim("latent_height", min=res.min_res // f, max=res.max_res // f)
        lat_w = torch.export.Dim("latent_width", min=res.min_res // f, max=res.max_res // f)
        if self.input_is_image:
            return ({0: batch, 2: f * lat_h, 3: f * lat_w},)
        return ({0: batch, 2: lat_h, 3: lat_w},)

    def sample_input(self, cfg, batch: int, height: int, width: int, seed: int) -> torch.Tensor:
        """Seeded fp32 input: uniform pixels in [-1, 1], or raw-scale latents (unit variance after scaling)."""
        gen = torch.Generator().manual_seed(seed)
        shape = self.input_shape(cfg, batch, height, width)
        if self.input_is_image:
            return torch.rand(shape, generator=gen) * 2 - 1
        return torch.randn(shape, generator=gen) / cfg.scaling_factor

    def profile(self, cfg, res: Resolution) -> dict[str, tuple[tuple[int, ...], ...]]:
        shapes = [
            self.input_shape(cfg, 1, res.min_res, res.min_res),
            self.input_shape(cfg, 1, res.opt_res, res.opt_res),
            self.input_shape(cfg, res.max_batch, res.max_res, res.max_res),
        ]
        return {self.input_name: tuple(shapes)}


def _image_shape(cfg, batch, height, width):
    return (batch, cfg.in_channels, height, width)


def _latent_shape(cfg, batch, height, width):
    return (batch, *cfg.latent_shape(height, width))


class _Wrapped(nn.Module):
    """Gives the exported graph a plain ``forward(x)`` over one submodule."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


ENCODER = ComponentSpec("encoder", "image", "latent", True, lambda model: _Wrapped(model.encoder))
DECODER = ComponentSpec("decoder", "latent", "image", False, lambda model: _Wrapped(model.decoder))

# The components each model kind can export, in export order.
COMPONENTS: dict[str, dict[str, ComponentSpec]] = {
    "autoencoder": {"encoder": ENCODER, "decoder": DECODER},
}


def component_specs(kind: str, variant: str, names: list[str] | None) -> list[ComponentSpec]:
    available = COMPONENTS.get(kind)
    if available is None:
        raise DcaeDeployError(
            f"ONNX export of {kind} variants such as {variant!r} is not available yet; "
            f"exportable kinds: {', '.join(COMPONENTS)}"
        )
    if names is None:
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DcaeDeployError(
            f"{variant!r} is a {kind} with components {', '.join(available)}; it has no "
            f"{', '.join(repr(n) for n in unknown)}"
        )
    return [available[n] for n in names]
