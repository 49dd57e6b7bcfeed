"""SANA's text encoder: Gemma-2 (``transformers.Gemma2Model``, local files only) + SANA's token selection.

``GemmaTextEncoder.forward(input_ids (B, L) int64, attention_mask (B, L)) -> (B, max_length, hidden)``:
the last hidden state of Gemma-2 at BOS and at the last ``max_length - 1`` positions, exactly what
``diffusers.SanaPipeline.encode_prompt`` keeps (``select_index = [0] + range(-max_length + 1, 0)``).

Where each step lives (the runtime is torch-free):

- prompt formatting (lower-case, strip, complex human instruction prefix), tokenisation, truncation and
  right padding to ``len(tokens(CHI)) + max_length - 2``: :class:`dcae_deploy.tokenizer.GemmaTokenizer`
  (the ``tokenizers`` library only);
- the selection of the ``max_length`` output positions: in this module's ``forward``, hence in the ONNX
  graph (Gemma is causal, so the kept positions depend on the whole prompt: it cannot move into the
  tokenizer). The graph's input length is dynamic in ``[max_length, len(tokens(CHI)) + max_length - 2]``;
  at ``L == max_length`` (the negative prompt, encoded without the instruction) the selection is the identity;
- the matching selection of the attention mask for the denoiser: ``dcae_deploy.tokenizer.select_positions``.

Nothing is downloaded: weights load with ``local_files_only=True``. Attention is the eager
implementation (Gemma-2's logit soft-capping), which also exports cleanly with the dynamo exporter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dcae_deploy.errors import CheckpointError
from dcae_deploy.models.text_encoder_family import TextEncoderConfig

__all__ = ["GemmaTextEncoder", "build_gemma", "encode_prompts", "gemma2_config", "load_gemma", "save_gemma"]


class GemmaTextEncoder(nn.Module):
    """Gemma-2 decoder stack -> (B, max_length, hidden) caption states at SANA's selected positions."""

    def __init__(self, model: nn.Module, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.max_length < 2:
            raise ValueError(f"{config.name}: max_length must be at least 2, got {config.max_length}")
        self.model = model
        self.config = config

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``/``attention_mask`` (B, L >= max_length), right-padded -> (B, max_length, hidden)."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = self.config.max_length - 1
        return torch.cat([hidden[:, :1], hidden[:, -keep:]], dim=1)


def gemma2_config(config: TextEncoderConfig):
    """``transformers.Gemma2Config`` of a registered variant (``arch`` holds its keyword arguments)."""
    from transformers import Gemma2Config

    kwargs = {"hidden_size": config.hidden_size, **config.arch}
    return Gemma2Config(**kwargs, attn_implementation="eager")


def build_gemma(config: TextEncoderConfig) -> GemmaTextEncoder:
    """A randomly initialised Gemma-2 text encoder (structure and parity checks only)."""
    from transformers import Gemma2Model

    return GemmaTextEncoder(Gemma2Model(gemma2_config(config)).eval(), config).eval()


def load_gemma(folder: str | os.PathLike, config: TextEncoderConfig, dtype: torch.dtype = torch.float32) -> GemmaTextEncoder:
    """Gemma-2 from a local folder (``config.json`` + safetensors, e.g. a SANA pipeline's ``text_encoder/``).

    A ``Gemma2ForCausalLM`` checkpoint (``Efficient-Large-Model/gemma-2-2b-it``) loads too: its decoder
    stack is what SANA uses (``get_decoder()``). Never downloads.

    Raises:
        CheckpointError: no such folder, not a Gemma-2 checkpoint, or a hidden size other than the variant's.
    """
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} has no config.json: expected a local Gemma-2 folder (a SANA pipeline's text_encoder/); "
            "nothing is downloaded"
        )
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the Gemma-2 config in {folder}: {exc}") from exc
    if hf_config.model_type != "gemma2":
        raise CheckpointError(f"{folder} holds a {hf_config.model_type!r} model, not Gemma-2 ({config.name})")
    if hf_config.hidden_size != config.hidden_size:
        raise CheckpointError(
            f"{folder}: hidden size {hf_config.hidden_size} does not fit {config.name} ({config.hidden_size})"
        )
    try:
        model = AutoModel.from_pretrained(
            str(folder), local_files_only=True, attn_implementation="eager", dtype=dtype
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load Gemma-2 weights from {folder}: {exc}") from exc
    if hasattr(model, "get_decoder") and type(model).__name__.endswith("ForCausalLM"):
        model = model.get_decoder()
    return GemmaTextEncoder(model.eval(), config).eval()


def save_gemma(encoder: GemmaTextEncoder, folder: str | os.PathLike) -> None:
    """Write the Gemma-2 stack in the Hugging Face layout (``config.json`` + ``model.safetensors``)."""
    encoder.model.save_pretrained(str(folder))


def encode_prompts(
    encoder: nn.Module, tokenizer, prompts: list[str], instruction: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The text-encoder stage in PyTorch: prompts -> (states (B, max_length, hidden), mask (B, max_length)).

    With ``instruction`` as SANA encodes prompts; without it as SANA encodes the negative prompt.
    """
    from dcae_deploy.tokenizer import select_positions

    ids, mask = tokenizer(prompts, instruction=instruction)
    with torch.no_grad():
        states = encoder(torch.from_numpy(ids), torch.from_numpy(mask))
    return states, torch.from_numpy(select_positions(mask, states.shape[1]).astype(np.int64))
