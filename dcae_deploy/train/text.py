"""Caption encoders for denoiser training: a placeholder, or any ``module:callable`` the user names.

The denoiser trainer accepts any callable ``captions -> (embeddings (B, L, C), mask (B, L))``. The
demo's real (small) text encoder plugs in there. :class:`HashWordEncoder` is only a stand-in for
smoke runs: every lower-cased word maps to a fixed pseudo-random vector; it knows no language.
"""

from __future__ import annotations

import hashlib
import importlib
import re

import torch

from dcae_deploy.errors import DcaeDeployError


class HashWordEncoder:
    """Words -> fixed unit-variance random vectors (seeded by the word's hash), padded to ``max_length``."""

    def __init__(self, channels: int, max_length: int = 16) -> None:
        self.channels, self.max_length = channels, max_length
        self._cache: dict[str, torch.Tensor] = {}

    def _vector(self, word: str) -> torch.Tensor:
        if word not in self._cache:
            seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") >> 1
            self._cache[word] = torch.randn(self.channels, generator=torch.Generator().manual_seed(seed))
        return self._cache[word]

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.zeros(len(captions), self.max_length, self.channels)
        mask = torch.zeros(len(captions), self.max_length)
        for i, caption in enumerate(captions):
            words = re.findall(r"[a-z0-9]+", caption.lower())[: self.max_length]
            for j, w in enumerate(words):
                emb[i, j] = self._vector(w)
                mask[i, j] = 1.0
        return emb, mask


def load_caption_encoder(spec: str, channels: int):
    """``"hash"`` (the placeholder) or ``"package.module:factory"``; the factory is called with
    ``channels`` and must return a caption encoder callable."""
    if spec == "hash":
        return HashWordEncoder(channels)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DcaeDeployError(f"text encoder {spec!r}: expected 'hash' or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise DcaeDeployError(f"cannot import text encoder {spec!r}: {exc}") from exc
    return factory(channels)
