"""The class-conditional DiT denoiser family (DC-AE-Diffusion DiT-XL): its typed config and declaration.

The model is :mod:`dcae_deploy.models.dit` (efficientvit ``diffusioncore/models/dit.py``, itself from
facebookresearch/DiT); the field names and meanings are the reference's ``DiTConfig``. The timestep is the
original ADM step (``"adm"``) and, with ``learn_sigma``, the output holds eps and the learned-range variance
values (2 * in_channels channels); see :mod:`dcae_deploy.models.uvit_family` for the conventions. Registered
variants are in :mod:`dcae_deploy.variants`. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcae_deploy.family import ModelFamily, register_family
from dcae_deploy.models.uvit_family import (
    CLASS_DENOISER_COMPONENT,
    ClassDenoiserConfigMixin,
    DenoiserConfigError,
    check_common_fields,
    class_denoiser_facts,
)

DIT_CONVENTIONS = ("adm",)


@dataclass(frozen=True)
class DiTConfig(ClassDenoiserConfigMixin):
    """A DiT variant: adaLN-Zero blocks, a fixed 2-D sin-cos position embedding (stored as a parameter, at
    ``input_size``: the model takes only that latent size), qkv bias, tanh-GELU MLPs, and with ``learn_sigma``
    2 * in_channels output channels. ``post_norm`` is the reference's alternative block (norm after attention/MLP,
    4 modulation vectors). The reference's ``unconditional`` option (no label embedder) and gradient checkpointing
    are not modelled.
    """

    kind = "denoiser"

    name: str
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    post_norm: bool = False
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    timestep_convention: str = "adm"
    spatial_compression_ratio: int = 32  # image pixels per latent cell of the DC-AE it denoises
    description: str = ""

    def __post_init__(self) -> None:
        check_common_fields(self, DIT_CONVENTIONS)
        if self.hidden_size % 4:
            raise DenoiserConfigError(
                f"{self.name}: hidden_size {self.hidden_size} must be a multiple of 4 (the 2-D sin-cos position "
                "embedding gives each axis half the channels, as sin and cos halves)"
            )

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def prediction(self) -> str:
        return "eps+variance" if self.learn_sigma else "eps"


FAMILY = register_family(ModelFamily(
    "dit", "denoiser", DiTConfig, module="dcae_deploy.models.dit",
    build="build_dit", load="load_dit", save="save_dit",
    components=(CLASS_DENOISER_COMPONENT,),
    facts=class_denoiser_facts,
    image_ratio=lambda config: config.spatial_compression_ratio,
))
