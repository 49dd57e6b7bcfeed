"""The text-encoder family (the demo's word encoder, Gemma-2): typed config and :class:`~dcae_deploy.family.ModelFamily`.

The models are :mod:`dcae_deploy.models.text_encoder` (build / load / save, one implementation per
``TextEncoderConfig.family``, export spec, PyTorch call) and :mod:`dcae_deploy.models.gemma`. Registered
variants are in :mod:`dcae_deploy.variants`. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from dcae_deploy.family import ComponentDef, ModelFamily, register_family
from dcae_deploy.manifest import TextEncoderFacts


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


def _facts(config: TextEncoderConfig, tokenizer: Any = None, tokenizer_file: str | None = None) -> TextEncoderFacts:
    lengths = getattr(tokenizer, "input_lengths", (config.max_length, config.max_length))
    return TextEncoderFacts(
        family=config.family,
        max_length=config.max_length,
        hidden_size=config.hidden_size,
        tokenizer=tokenizer_file,  # None when the text encoder was not exported
        input_tokens=tuple(int(n) for n in lengths),
        complex_human_instruction=bool(getattr(tokenizer, "instruction", None)),
    )


FAMILY = register_family(ModelFamily(
    "text-encoder", "text_encoder", TextEncoderConfig, module="dcae_deploy.models.text_encoder",
    build="build_text_encoder", load="load_text_encoder", save="save_text_encoder",
    components=(ComponentDef("text_encoder", "text_encoder_spec", "text_encoder_call"),),
    facts=_facts, image_ratio=lambda config: 1, tokenizer="tokenizer_for",
))
