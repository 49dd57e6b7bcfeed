from __future__ import annotations

import dataclasses

import pytest

from dcae_deploy.variants import AutoencoderConfig, get_variant, list_variants

EXPECTED_SCALING = {
    "f32c32-in": 0.3189,
    "f32c32-mix": 0.4552,
    "f64c128-in": 0.2889,
    "f64c128-mix": 0.4538,
    "f128c512-in": 0.4883,
    "f128c512-mix": 0.3620,
    "f32c32-sana": 0.41407,
    "f32c32-sana-1.1": 0.41407,
}


@pytest.mark.parametrize("name, factor", EXPECTED_SCALING.items())
def test_registered_variants_and_scaling_factors(name, factor):
    cfg = get_variant(name, kind="autoencoder")
    assert cfg.scaling_factor == factor
    ratio, channels = name.split("-")[0][1:].split("c")
    assert (cfg.spatial_compression_ratio, cfg.latent_channels) == (int(ratio), int(channels))


def test_aliases_resolve_to_the_same_config():
    assert get_variant("dc-ae-f32c32-sana-1.0") is get_variant("f32c32-sana-1.0") is get_variant("f32c32-sana")
    assert get_variant("dc-ae-f64c128-mix-1.0").name == "f64c128-mix"


def test_configs_are_frozen_and_round_trip():
    cfg = get_variant("f32c32-sana")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.scaling_factor = 1.0
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    again = AutoencoderConfig.from_diffusers_config(cfg.to_diffusers_config(), name=cfg.name)
    assert dataclasses.replace(again, description=cfg.description) == cfg


def test_tiny_variants_are_registered_for_every_family():
    tiny = list_variants("autoencoder")
    assert {"tiny-f32c32-sana", "tiny-f32c32-in", "tiny-f64c128-mix", "tiny-f128c512-in"} <= set(tiny)
    assert not any(n.startswith("tiny-") for n in list_variants("autoencoder", include_tiny=False))


def test_inconsistent_config_is_rejected():
    cfg = get_variant("tiny-f32c32-sana")
    with pytest.raises(ValueError, match="multiple of latent_channels"):
        dataclasses.replace(cfg, latent_channels=48)
