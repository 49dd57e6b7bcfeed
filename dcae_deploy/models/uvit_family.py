"""The class-conditional UViT denoiser family (DC-AE-Diffusion UViT and USiT): its typed config and declaration.

The model is :mod:`dcae_deploy.models.uvit` (efficientvit ``diffusioncore/models/uvit.py``, itself from U-ViT);
the field names and meanings are the reference's ``UViTConfig``. USiT is the same network trained with the SiT
(flow) objective: only its ``timestep_convention`` (and so its prediction) differs. Registered variants are in
:mod:`dcae_deploy.variants`. This module imports no torch.

What the shared pieces of the class-conditional families (UViT here, DiT in :mod:`dcae_deploy.models.dit_family`)
mean for the runtime -- the manifest's ``pipeline.denoiser`` facts:

=======================  ==================================================  =========================================
``timestep_convention``  what the graph's ``timestep`` input is              prediction (graph output ``prediction``)
=======================  ==================================================  =========================================
``uvit-dpm``             ``t_continuous * 1000``, t_continuous in [1e-3, 1]   ``eps`` (C channels)
                         (DPM-Solver's discrete VP schedule, fractional)
``sit``                  t in [0, 1]: 0 = noise, 1 = data (SiT linear path)   ``velocity`` ~ x_data - noise (C channels)
``adm``                  the original ADM step 0..999 as float32              ``eps+variance``: eps in the first C
                         (respaced samplers pass ``timestep_map`` values)     channels, the learned-range variance
                                                                              values in the last C (``learn_sigma``)
=======================  ==================================================  =========================================

``class_labels`` are int64 class ids in ``[0, num_classes)``; ``num_classes`` itself (1000 for ImageNet) is the
null class of classifier-free guidance, whose embedding row exists when ``class_dropout_prob > 0``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.family import ComponentDef, ModelFamily, register_family
from dcae_deploy.manifest import DenoiserFacts

#: timestep convention -> the largest timestep the graph sees (the parity gate samples U(0, this))
TIMESTEP_RANGES = {"uvit-dpm": 1000.0, "sit": 1.0, "adm": 999.0}
#: UViT's conventions -> what it predicts (the training objective decides both)
UVIT_PREDICTIONS = {"uvit-dpm": "eps", "sit": "velocity"}
UVIT_ACTIVATIONS = ("gelu", "silu")


class DenoiserConfigError(DcaeDeployError, ValueError):
    """A class-conditional denoiser config that cannot be built (the message names the field)."""


def check_common_fields(config: Any, conventions: tuple[str, ...]) -> None:
    """Checks shared by the UViT and DiT configs; raises :class:`DenoiserConfigError`."""
    name = config.name
    for field in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes",
                  "spatial_compression_ratio"):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise DenoiserConfigError(f"{name}: {field} must be a positive whole number, got {value!r}")
    if config.input_size % config.patch_size:
        raise DenoiserConfigError(
            f"{name}: input_size {config.input_size} (the latent side) must be a multiple of patch_size "
            f"{config.patch_size}"
        )
    if config.hidden_size % config.num_heads:
        raise DenoiserConfigError(
            f"{name}: hidden_size {config.hidden_size} must be a multiple of num_heads {config.num_heads}"
        )
    if not config.mlp_ratio > 0:
        raise DenoiserConfigError(f"{name}: mlp_ratio must be positive, got {config.mlp_ratio!r}")
    if not 0 <= config.class_dropout_prob < 1:
        raise DenoiserConfigError(f"{name}: class_dropout_prob must be in [0, 1), got {config.class_dropout_prob!r}")
    if config.timestep_convention not in conventions:
        raise DenoiserConfigError(
            f"{name}: timestep_convention {config.timestep_convention!r} is not one of {', '.join(conventions)}"
        )


class ClassDenoiserConfigMixin:
    """What the UViT and DiT configs share: the label table, the null class, the architecture fields."""

    name: str
    num_classes: int
    class_dropout_prob: float
    input_size: int
    patch_size: int

    @property
    def label_count(self) -> int:
        """Rows of the label embedding table: the classes, plus the null class when trained with label dropout."""
        return self.num_classes + (1 if self.class_dropout_prob > 0 else 0)

    @property
    def null_class(self) -> int | None:
        """The label of the unconditional branch of classifier-free guidance (None: the model has none)."""
        return self.num_classes if self.class_dropout_prob > 0 else None

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def architecture(self) -> dict[str, Any]:
        """Every field but name and description: what the weights' names, shapes and meaning depend on."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if f.name not in ("name", "description")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - fields)
        if unknown:
            raise DenoiserConfigError(
                f"unknown {cls.__name__} field(s) {', '.join(unknown)}; fields are {', '.join(sorted(fields))}"
            )
        return cls(**data)


@dataclass(frozen=True)
class UViTConfig(ClassDenoiserConfigMixin):
    """A UViT (or USiT) variant: the reference's ``UViTConfig`` fields that shape the network, plus its time
    convention and the autoencoder compression it works at.

    ``depth`` blocks split as the reference does: ``depth // 2`` in-blocks, one mid-block, ``depth // 2``
    out-blocks with long skips (so depth 28 has 29 blocks). ``input_size`` is the latent side: the learned
    position embedding fixes the token count, so the model (and its graph) takes only that spatial size.
    Gradient checkpointing (the reference's ``use_checkpoint``) is a training-only option and not modelled.
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
    mlp_time_embed: bool = False
    qkv_bias: bool = False
    act_layer: str = "gelu"  # exact (erf) GELU; "silu" also as in the reference
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    timestep_convention: str = "uvit-dpm"  # "uvit-dpm" (UViT) or "sit" (USiT)
    spatial_compression_ratio: int = 32  # image pixels per latent cell of the DC-AE it denoises
    description: str = ""

    def __post_init__(self) -> None:
        check_common_fields(self, tuple(UVIT_PREDICTIONS))
        if self.act_layer not in UVIT_ACTIVATIONS:
            raise DenoiserConfigError(
                f"{self.name}: act_layer {self.act_layer!r} is not one of {', '.join(UVIT_ACTIVATIONS)}"
            )

    @property
    def out_channels(self) -> int:
        return self.in_channels

    @property
    def prediction(self) -> str:
        """``eps`` (``uvit-dpm``) or ``velocity`` (``sit``)."""
        return UVIT_PREDICTIONS[self.timestep_convention]

    @property
    def extra_tokens(self) -> int:
        """Tokens before the patch tokens: the label token and the time token."""
        return 2


def class_denoiser_facts(config: Any, *_: Any) -> DenoiserFacts:
    """The manifest's ``pipeline.denoiser`` entry of a class-conditional denoiser (UViT, USiT, DiT)."""
    return DenoiserFacts(
        timestep_scale=1.0,  # the timestep input is in the convention's own units (the table above)
        in_channels=config.in_channels,
        timestep_convention=config.timestep_convention,
        prediction=config.prediction,
        num_classes=config.num_classes,
        null_class=config.null_class,
        latent_size=config.input_size,
    )


#: the one graph of a class-conditional denoiser (shared with the DiT family)
CLASS_DENOISER_COMPONENT = ComponentDef("denoiser", "dcae_deploy.models.uvit:class_denoiser_spec",
                                        "dcae_deploy.models.uvit:class_denoiser_call")

FAMILY = register_family(ModelFamily(
    "uvit", "denoiser", UViTConfig, module="dcae_deploy.models.uvit",
    build="build_uvit", load="load_uvit", save="save_uvit",
    components=(CLASS_DENOISER_COMPONENT,),
    facts=class_denoiser_facts,
    image_ratio=lambda config: config.spatial_compression_ratio,
))
