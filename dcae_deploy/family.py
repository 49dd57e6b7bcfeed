"""Model families: what every stage needs to know about a kind of model, declared once per family.

A family (the DC-AE autoencoders, the SANA denoiser, the text encoders) is one :class:`ModelFamily` next to
its model file (``dcae_deploy/models/<family>_family.py``) and one line in :data:`FAMILIES`. It names its
config dataclass, how to build / load / save the PyTorch module, the graphs it exports (each a
:class:`ComponentDef`: the export spec and how PyTorch calls the module), and the facts it contributes to
the manifest. Export, the torch runner, the eager runtime, ``evaluate``, ``parity`` and the benchmarks look
a family up by its config (:func:`family_of`) instead of branching on kinds or component names.

A *pipeline* variant composes families: its config's ``parts()`` maps roles (``autoencoder``, ``denoiser``,
``text_encoder``) to part configs; a bare family variant is a pipeline of one part (:func:`parts_of`).

This module imports no torch: the PyTorch functions are named as ``"module:attribute"`` strings and
imported on first use (:func:`resolve`), so ``import dcae_deploy`` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dcae_deploy.errors import DcaeDeployError

#: Roles in the order data flows through a generation (and the order of a pipeline's components).
ROLES = ("text_encoder", "denoiser", "autoencoder")


def resolve(reference: str, module: str = "") -> Any:
    """``"package.module:attribute"`` (or a bare ``attribute`` of ``module``) -> the attribute, imported now."""
    where, _, attribute = reference.rpartition(":")
    return getattr(importlib.import_module(where or module), attribute)


@dataclass(frozen=True)
class ComponentDef:
    """One exportable graph of a family.

    Attributes:
        name: the component's name in the manifest (``decoder``, ``denoiser``, ...).
        spec: a function of the family's module, ``spec(SpecContext) -> ComponentSpec`` (:mod:`dcae_deploy.specs`).
        call: a function of the family's module, ``call(part module) -> (nn.Module, fn)`` where ``fn`` takes the
            graph's inputs as a dict of named torch tensors and returns its output: how the torch runner
            and the benchmarks run the component in PyTorch.
        default: exported when ``--components`` is not given.
        in_pipeline: also a default of a pipeline export (the encoder is not: generation never encodes).
    """

    name: str
    spec: str
    call: str
    default: bool = True
    in_pipeline: bool = True

    def is_default(self, composite: bool) -> bool:
        return self.default and (self.in_pipeline or not composite)


@dataclass(frozen=True)
class ModelFamily:
    """Everything the stages need about one family (see the module docstring).

    ``module`` is the family's PyTorch module; ``build(config)``, ``load(path, variant_name)``, ``save(module,
    path)``, ``tokenizer`` and the components' ``spec`` and ``call`` name functions of it (or
    ``"other.module:function"``); :meth:`function` imports one. ``facts(config, tokenizer, tokenizer_file)`` gives this part's entry of the manifest's
    ``pipeline`` section (a dataclass of :mod:`dcae_deploy.manifest`); ``image_ratio(config)`` is how many
    image pixels one cell of the component's spatial input covers (1 for a text encoder);
    ``tokenizer(config, folder_or_None, search)``, for families that read text, gives the tokenizer saved in
    ``folder`` or, with None, the variant's built-in one (:meth:`load_tokenizer`).
    """

    name: str
    role: str
    config: type
    module: str
    build: str
    load: str
    save: str
    components: tuple[ComponentDef, ...]
    facts: Callable[..., Any]
    image_ratio: Callable[[Any], int]
    tokenizer: str | None = None

    def function(self, reference: str) -> Callable[..., Any]:
        """One of the family's functions (``build``, ``load``, ``save``, a component's ``spec`` / ``call``)."""
        return resolve(reference, self.module)

    def build_module(self, config: Any) -> Any:
        """A randomly initialised PyTorch module of ``config``."""
        return self.function(self.build)(config)

    def load_module(self, path: Any, variant: Any) -> Any:
        """The module saved at ``path`` (any layout the family reads), checked to be ``variant`` (a registered
        name or a config)."""
        return self.function(self.load)(path, variant)

    def save_module(self, module: Any, path: Any) -> Any:
        return self.function(self.save)(module, path)

    def load_tokenizer(self, config: Any, folder: Any = None, search: bool = True) -> Any:
        """The tokenizer saved in ``folder`` (None: the variant's built-in one; ``search``: also look beside a
        bare checkpoint, else fall back to the built-in one); None if the family reads no text."""
        return self.function(self.tokenizer)(config, folder, search) if self.tokenizer else None


FAMILIES: dict[type, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    if family.config in FAMILIES:
        raise ValueError(f"a family for {family.config.__name__} is already registered")
    FAMILIES[family.config] = family
    return family


def family_of(config: Any) -> ModelFamily:
    """The family of a part config (raises for a pipeline config, which has parts instead)."""
    _load_families()
    family = FAMILIES.get(type(config))
    if family is None:
        raise DcaeDeployError(f"{getattr(config, 'name', config)!r} ({type(config).__name__}) belongs to no model family")
    return family


def family_named(name: str) -> ModelFamily:
    """The registered family called ``name`` (``"dc-ae"``, ...)."""
    _load_families()
    for family in FAMILIES.values():
        if family.name == name:
            return family
    raise DcaeDeployError(f"no model family {name!r}; families: {', '.join(f.name for f in FAMILIES.values())}")


def describe_config(config: Any) -> dict[str, Any] | None:
    """What a manifest records of a variant that is not registered (a custom architecture), so that later stages
    rebuild it without the registry: ``{"family": ..., "config": ...}``; None for a registered variant."""
    from dcae_deploy.registry import is_registered

    if is_composite(config) or is_registered(config):
        return None
    return {"family": family_of(config).name, "config": config.to_dict()}


def config_from_record(variant: str, record: dict[str, Any] | None) -> Any:
    """The config of a manifest's variant: rebuilt from its ``model_config`` record, else the registered one."""
    if record is None:
        from dcae_deploy.registry import get_variant

        return get_variant(variant)
    return family_named(record["family"]).config.from_dict(record["config"])


def is_composite(config: Any) -> bool:
    """A pipeline config (parts of several families) rather than one family's config."""
    return callable(getattr(config, "parts", None))


def parts_of(config: Any) -> dict[str, Any]:
    """Role -> part config, in :data:`ROLES` order: a pipeline's registered parts, or the one part itself."""
    parts = config.parts() if is_composite(config) else {family_of(config).role: config}
    return {role: parts[role] for role in ROLES if role in parts}


def component_defs(config: Any) -> dict[str, tuple[str, ComponentDef]]:
    """Component name -> (role, definition) over every part of ``config``."""
    return {c.name: (role, c) for role, part in parts_of(config).items() for c in family_of(part).components}


def component_names(config: Any, requested: list[str] | None = None) -> list[str]:
    """Validated component names of ``config`` in export order (its defaults when ``requested`` is None).

    Export order: the default components in data-flow order, then the optional ones.
    """
    composite = is_composite(config)
    defs = [c for _, c in component_defs(config).values()]
    available = [c.name for c in defs if c.is_default(composite)] + [c.name for c in defs if not c.is_default(composite)]
    if not available:
        raise DcaeDeployError(f"{config.name!r} has no exportable components")
    if requested is None:
        return [c.name for c in defs if c.is_default(composite)]
    kind = config.kind
    unknown = [n for n in requested if n not in available]
    if unknown:
        raise DcaeDeployError(
            f"{config.name!r} is a {kind} with components {', '.join(available)}; it has no "
            f"{', '.join(repr(n) for n in unknown)}"
        )
    if not requested:
        raise DcaeDeployError(f"no components given; {config.name!r} has {', '.join(available)}")
    return [n for n in available if n in requested]


def roles_for(config: Any, components: list[str]) -> list[str]:
    """The roles (parts) that the given components need, in :data:`ROLES` order."""
    defs = component_defs(config)
    needed = {defs[name][0] for name in components}
    return [role for role in parts_of(config) if role in needed]


def text_components(config: Any, components: list[str]) -> list[str]:
    """The components among ``components`` whose part reads text (its family has a tokenizer): the export
    ships the tokenizer with them."""
    defs, parts = component_defs(config), parts_of(config)
    return [name for name in components if family_of(parts[defs[name][0]]).tokenizer is not None]


def image_ratio(config: Any) -> int:
    """Image pixels per latent cell of a variant: the autoencoder's when it has one, else its only part's."""
    parts = parts_of(config)
    part = parts.get("autoencoder") or next(iter(parts.values()))
    return family_of(part).image_ratio(part)


def _load_families() -> None:
    """Import the family declarations (torch-free modules) so that :data:`FAMILIES` is complete."""
    import dcae_deploy.variants  # noqa: F401  (the variants module imports every family it registers)
