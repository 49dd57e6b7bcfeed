"""Shared fixtures: reference checkpoints written by diffusers. Plain helpers live in helpers.py."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_


@pytest.fixture(scope="session")
def diffusers_autoencoder(tmp_path_factory):
    """``make(variant) -> (diffusers AutoencoderDC, folder written by save_pretrained)``, cached per variant."""
    diffusers = pytest.importorskip("diffusers")
    from dcae_deploy.variants import get_variant

    cache: dict[str, tuple] = {}

    def make(variant: str):
        if variant not in cache:
            torch.manual_seed(0)
            ref = diffusers.AutoencoderDC(**get_variant(variant).to_diffusers_config())
            randomize_(ref).eval()
            folder = tmp_path_factory.mktemp(f"diffusers-{variant}")
            ref.save_pretrained(folder)
            cache[variant] = (ref, folder)
        return cache[variant]

    return make
