"""The variant registry: named, frozen, typed configs of every model family and pipeline.

>>> from dcae_deploy.registry import get_variant
>>> get_variant("f32c32-sana", kind="autoencoder").latent_channels
32

Configs are registered by :mod:`dcae_deploy.variants` (data only); callers look them up by name and
optionally by kind (``"autoencoder"``, ``"denoiser"``, ``"text_encoder"``, ``"pipeline"``). Unknown names
fail with the list of valid ones. Names prefixed ``tiny-`` are narrow test variants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Union, overload

from dcae_deploy.errors import UnknownVariantError

if TYPE_CHECKING:
    from dcae_deploy.models.autoencoder_family import AutoencoderConfig
    from dcae_deploy.models.denoiser_family import DenoiserConfig
    from dcae_deploy.models.pipeline_config import PipelineConfig
    from dcae_deploy.models.text_encoder_family import TextEncoderConfig

    VariantConfig = Union[AutoencoderConfig, DenoiserConfig, TextEncoderConfig, PipelineConfig]

__all__ = ["get_variant", "is_registered", "list_variants", "register"]

_REGISTRY: dict[str, Any] = {}
_ALIASES: dict[str, str] = {}


def register(config: Any, *aliases: str) -> Any:
    """Add a config (a frozen dataclass with ``name`` and a class-level ``kind``) under its name and aliases."""
    for key in (config.name, *aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"variant name {key!r} is already registered")
    _REGISTRY[config.name] = config
    for alias in aliases:
        _ALIASES[alias] = config.name
    return config


def _loaded() -> dict[str, Any]:
    import dcae_deploy.variants  # noqa: F401  (registers everything on first import)

    return _REGISTRY


def list_variants(kind: str | None = None, include_tiny: bool = True) -> list[str]:
    """Registered names (aliases excluded), optionally of one kind only."""
    return sorted(
        name
        for name, cfg in _loaded().items()
        if (kind is None or cfg.kind == kind) and (include_tiny or not name.startswith("tiny-"))
    )


def is_registered(config: Any) -> bool:
    """Whether ``config`` is exactly the config registered under its name (not a custom or changed one)."""
    return _loaded().get(config.name) == config


@overload
def get_variant(name: str, kind: Literal["autoencoder"]) -> AutoencoderConfig: ...
@overload
def get_variant(name: str, kind: Literal["denoiser"]) -> DenoiserConfig: ...
@overload
def get_variant(name: str, kind: Literal["text_encoder"]) -> TextEncoderConfig: ...
@overload
def get_variant(name: str, kind: Literal["pipeline"]) -> PipelineConfig: ...
@overload
def get_variant(name: str, kind: None = None) -> VariantConfig: ...


def get_variant(name: str, kind: str | None = None) -> VariantConfig:
    """The config registered under ``name`` (or one of its aliases).

    Raises:
        UnknownVariantError: the name is unknown, or names a variant of another kind.
    """
    canonical = _ALIASES.get(name, name)
    config = _loaded().get(canonical)
    if config is None or (kind is not None and config.kind != kind):
        valid = list_variants(kind)
        what = f"{kind} variant" if kind else "variant"
        raise UnknownVariantError(f"unknown {what} {name!r}; valid names: {', '.join(valid)}")
    return config
