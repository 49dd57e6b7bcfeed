"""The demo's own small text encoder: word embeddings + learned positions + a pre-norm transformer.

``forward(input_ids (B, L) int64, attention_mask (B, L)) -> (B, L, hidden_size)``: the same contract as
Gemma-2's last hidden state in SANA, so the denoiser does not care which encoder fed it. Attention is
written out with matmuls (no fused kernels), so the dynamo ONNX export is plain; padded keys are masked
with a large negative bias and padded positions are zeroed at the output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcae_deploy.checkpoints import read_state_dict, write_json, write_safetensors
from dcae_deploy.errors import CheckpointError
from dcae_deploy.tokenizer import WordTokenizer
from dcae_deploy.models.text_encoder_family import TextEncoderConfig
from dcae_deploy.registry import get_variant
from dcae_deploy.specs import ComponentSpec, Resolution, SpecContext, TensorSpec

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MASK_BIAS = -1e4


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, D)
        scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5 + key_bias
        y = scores.softmax(-1).to(v.dtype) @ v
        return self.out(y.transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ffn_ratio)
        self.norm1, self.attn = RMSNorm(dim), SelfAttention(dim, heads)
        self.norm2 = RMSNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_bias)
        return x + self.ffn(self.norm2(x))


class WordTextEncoder(nn.Module):
    """Token ids -> contextual caption states (B, L, hidden_size)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.family != "word":
            raise ValueError(f"{config.name} is a {config.family} text encoder, not a word encoder")
        self.config = config
        dim = config.hidden_size
        self.token_embedding = nn.Embedding(config.vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.randn(config.max_length, dim) * 0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, config.num_heads, config.ffn_ratio) for _ in range(config.num_layers)
        )
        self.norm = RMSNorm(dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding[:length]
        keep = attention_mask.to(x.dtype)
        key_bias = ((1 - keep.float()) * MASK_BIAS)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_bias)
        return self.norm(x) * keep[..., None]


# ---------------------------------------------------------------------------------------------
# Families: one entry per text-encoder implementation (the config's ``family`` picks it)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderImplementation:
    """How to build, load and save one family of text encoders and its tokenizer."""

    build: Callable[[TextEncoderConfig], nn.Module]
    load: Callable[[Path, TextEncoderConfig], nn.Module]
    save: Callable[[nn.Module, Path], None]
    default_tokenizer: Callable[[TextEncoderConfig], Any]
    load_tokenizer: Callable[[Path, TextEncoderConfig], Any]


IMPLEMENTATIONS: dict[str, TextEncoderImplementation] = {}


def _implementation(config: TextEncoderConfig) -> TextEncoderImplementation:
    if config.family not in IMPLEMENTATIONS:
        raise NotImplementedError(
            f"text encoder family {config.family!r} of {config.name} is not available; known: {', '.join(IMPLEMENTATIONS)}"
        )
    return IMPLEMENTATIONS[config.family]


def _config(config: TextEncoderConfig | str) -> TextEncoderConfig:
    return get_variant(config, kind="text_encoder") if isinstance(config, str) else config


def build_text_encoder(config: TextEncoderConfig | str) -> nn.Module:
    """A randomly initialised text encoder of a registered variant (name) or config."""
    config = _config(config)
    return _implementation(config).build(config)


def default_tokenizer(config: TextEncoderConfig | str):
    """The tokenizer a freshly built encoder of this variant uses (word family: the built-in vocabulary)."""
    config = _config(config)
    return _implementation(config).default_tokenizer(config)


def load_tokenizer(folder: str | Path, config: TextEncoderConfig | str):
    config = _config(config)
    return _implementation(config).load_tokenizer(Path(folder), config)


def tokenizer_for(config: TextEncoderConfig | str, folder: str | Path | None = None, search: bool = True):
    """The variant's built-in tokenizer when ``folder`` is None; with ``search=False`` exactly the tokenizer saved
    in ``folder`` (a pipeline folder's ``tokenizer/``); else the one saved with a bare text-encoder checkpoint
    ``folder`` (in it, in ``folder/tokenizer`` or in ``../tokenizer``), falling back to the built-in one."""
    import sys

    from dcae_deploy.tokenizer import TOKENIZER_FILES

    config = _config(config)
    if folder is None:
        return default_tokenizer(config)
    folder = Path(folder)
    if not search:
        return load_tokenizer(folder, config)
    for candidate in (folder, folder / "tokenizer", folder.parent / "tokenizer"):
        if any((candidate / name).is_file() for name in TOKENIZER_FILES):
            return load_tokenizer(candidate, config)
    print(f"[export] no tokenizer files next to {folder}; using the default tokenizer of {config.name}",
          file=sys.stderr, flush=True)
    return default_tokenizer(config)


def save_text_encoder(model: nn.Module, folder: str | Path) -> Path:
    folder = Path(folder)
    _implementation(model.config).save(model, folder)
    return folder


def load_text_encoder(folder: str | Path, variant: TextEncoderConfig | str | None = None) -> nn.Module:
    """Load a saved text encoder; ``variant`` names the config it must be (word family: optional)."""
    folder = Path(folder)
    if variant is None:
        return _load_word(folder, None)
    config = _config(variant)
    return _implementation(config).load(folder, config)


# --- word family -------------------------------------------------------------------------------


def _save_word(model: WordTextEncoder, folder: Path) -> None:
    write_safetensors(folder / WEIGHTS_FILE, {k: v.contiguous() for k, v in model.state_dict().items()})
    write_json(folder / CONFIG_FILE, model.config.to_dict())


def _load_word(folder: Path, expected: TextEncoderConfig | None) -> WordTextEncoder:
    """A word text encoder saved by :func:`save_text_encoder` (``model.safetensors`` + ``config.json``)."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}; expected a folder written by save_text_encoder")
    config = TextEncoderConfig.from_dict(json.loads(config_path.read_text()))
    if expected is not None and config.name != expected.name:
        raise CheckpointError(f"{folder} holds text encoder {config.name!r}, not {expected.name!r}")
    model = WordTextEncoder(config)
    state = read_state_dict(folder / WEIGHTS_FILE)
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: text encoder weights do not fit {config.name}: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.load_state_dict(state)
    return model.eval()


def _word_tokenizer(config: TextEncoderConfig) -> WordTokenizer:
    from dcae_deploy.variants import DEMO_VOCABULARY

    tokenizer = WordTokenizer(DEMO_VOCABULARY, config.max_length)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{config.name}: vocab_size {config.vocab_size} != built-in vocabulary {tokenizer.vocab_size}")
    return tokenizer


IMPLEMENTATIONS["word"] = TextEncoderImplementation(
    build=WordTextEncoder,
    load=_load_word,
    save=_save_word,
    default_tokenizer=_word_tokenizer,
    load_tokenizer=lambda folder, config: WordTokenizer.load(folder),
)




# --- gemma2 family: SANA's Gemma-2 through transformers (dcae_deploy/models/gemma.py) ------------


def _gemma_default_tokenizer(config: TextEncoderConfig):
    from dcae_deploy.tokenizer import tiny_gemma_tokenizer

    if not config.name.startswith("tiny-"):
        raise CheckpointError(
            f"{config.name} has no built-in tokenizer: load it with its tokenizer files (a SANA pipeline folder "
            "with text_encoder/ and tokenizer/, e.g. --checkpoint PIPELINE_FOLDER); nothing is downloaded"
        )
    return tiny_gemma_tokenizer(config.max_length)


def _gemma_implementation() -> TextEncoderImplementation:
    from dcae_deploy.models import gemma
    from dcae_deploy.tokenizer import GemmaTokenizer

    return TextEncoderImplementation(
        build=gemma.build_gemma,
        load=gemma.load_gemma,
        save=gemma.save_gemma,
        default_tokenizer=_gemma_default_tokenizer,
        load_tokenizer=lambda folder, config: GemmaTokenizer.from_pretrained(folder, config.max_length),
    )


IMPLEMENTATIONS["gemma2"] = _gemma_implementation()


# ---------------------------------------------------------------------------------------------
# Export spec and PyTorch call of the family's component (named in models/text_encoder_family.py)
# ---------------------------------------------------------------------------------------------


def token_encoder_spec(te_config, res: Resolution, input_tokens: tuple[int, int], vocab_size: int) -> ComponentSpec:
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


def text_encoder_spec(context: SpecContext) -> ComponentSpec:
    config, tokenizer = context.config, context.tokenizer
    lengths = getattr(tokenizer, "input_lengths", (config.max_length, config.max_length))
    return token_encoder_spec(config, context.res, tuple(lengths), tokenizer.vocab_size)


def text_encoder_call(encoder: nn.Module):
    return encoder, lambda x: encoder(x["input_ids"], x["attention_mask"])
