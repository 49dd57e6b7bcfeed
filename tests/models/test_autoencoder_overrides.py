"""Custom DC-AE architectures in the reference's override syntax, and config files (issue 15)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dcae_deploy.models.autoencoder import build_autoencoder
from dcae_deploy.models.autoencoder_io import load_autoencoder, save_autoencoder
from dcae_deploy.models.autoencoder_overrides import (
    OverrideError,
    apply_overrides,
    parse_overrides,
    read_config_file,
    reference_view,
    resolve_autoencoder_config,
)
from dcae_deploy.registry import get_variant

# efficientvit's own dc_ae_f32c32 string for dc-ae-f32c32-in-1.0 (its builder adds nothing else)
F32C32_IN = (
    "latent_channels=32 "
    "encoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
    "encoder.width_list=[128,256,512,512,1024,1024] encoder.depth_list=[0,4,8,2,2,2] "
    "decoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
    "decoder.width_list=[128,256,512,512,1024,1024] decoder.depth_list=[0,5,10,2,2,2] "
    "decoder.norm=[bn2d,bn2d,bn2d,trms2d,trms2d,trms2d] decoder.act=[relu,relu,relu,silu,silu,silu]"
)
# a small 32x32-sprite DC-AE in the spirit of the issue: f8, 16 latent channels
SPRITE = ("latent_channels=16 encoder.width_list=[16,32,64,64] encoder.depth_list=[0,1,1,1] "
          "encoder.block_type=[ResBlock,ResBlock,EViT_GLU,EViT_GLU] decoder.width_list=[16,32,64,64] "
          "decoder.depth_list=[0,1,1,1] decoder.block_type=[ResBlock,ResBlock,EViT_GLU,EViT_GLU] "
          "decoder.norm=[bn2d,bn2d,trms2d,trms2d] decoder.act=[relu,relu,silu,silu] scaling_factor=1.0")


def count(config) -> int:
    return sum(p.numel() for p in build_autoencoder(config, device=torch.device("meta")).parameters())


def same_architecture(a, b) -> bool:
    strip = dict(name="", description="", scaling_factor=0.0)
    return dataclasses.replace(a, **strip) == dataclasses.replace(b, **strip)


def test_the_references_own_string_rebuilds_its_variant():
    """efficientvit's f32c32-in string on top of the sana variant (other blocks, resampling, norms) gives f32c32-in."""
    base = apply_overrides(get_variant("f32c32-sana"), F32C32_IN + " encoder.downsample_block_type=ConvPixelUnshuffle "
                           "decoder.upsample_block_type=ConvPixelShuffle")
    assert same_architecture(base, get_variant("f32c32-in"))
    assert count(base) == 323_356_460  # the README's parameter count of f32c32-in


def test_every_variant_round_trips_through_the_reference_view():
    from dcae_deploy.models.autoencoder_overrides import from_reference
    from dcae_deploy.registry import list_variants

    for name in list_variants("autoencoder"):
        config = get_variant(name)
        assert from_reference(reference_view(config), description=config.description) == config, name


def test_scalars_broadcast_where_the_reference_allows_them():
    config = apply_overrides(get_variant("tiny-f32c32-in"), "decoder.norm=trms2d decoder.act=silu encoder.block_type=ResBlock")
    assert set(config.decoder.norms) == {"rms_norm"} and set(config.decoder.acts) == {"silu"}
    assert set(config.encoder.block_types) == {"ResBlock"} and config.name == "tiny-f32c32-in+custom"
    with pytest.raises(OverrideError, match=r"encoder.depth_list=2 must be a list"):
        apply_overrides(get_variant("tiny-f32c32-in"), "encoder.depth_list=2")


def test_parse_accepts_spaces_inside_lists_and_yaml_scalars():
    assert parse_overrides("a=[1, 2 ,3] b=null c=true d=0.5 e=EViT_GLU") == {
        "a": [1, 2, 3], "b": None, "c": True, "d": 0.5, "e": "EViT_GLU"}


@pytest.mark.parametrize("override, message", [
    ("encoder.widths=[1,2]", "unknown override key(s) encoder.widths; allowed keys: name, in_channels"),
    ("decoder.norm=[bn2d,bn2d]", "decoder.norm has 2 entries but the autoencoder has 6 stages"),
    ("decoder.width_list=[8,16,32,32,64]", "decoder.depth_list has 6 entries but decoder.width_list has 5"),
    ("latent_channels=48", "must be a multiple of latent_channels=48"),
    ("encoder.block_type=[ResBlock,ResBlock,ResBlock,Attention,EViT_GLU,EViT_GLU]",
     "encoder.block_type: unknown Attention; allowed: ResBlock, EViT_GLU, EViTS5_GLU"),
    ("encoder.norm=bn2d", "encoder.norm='bn2d' is not supported: only 'trms2d'"),
    ("decoder.act=gelu", "decoder.act: unknown gelu; allowed: relu, silu"),
    ("encoder.depth_list=[0,1,2,1,1]", "encoder.depth_list has 5 entries but encoder.width_list has 6"),
    ("encoder.width_list=[8] decoder.width_list=[8]", "needs at least 2 stages"),
    ("latent_channels=0", "latent_channels=0 must be an integer >= 1"),
    ("encoder.width_list=[32,64,128", "unclosed '['"),
    ("encoder.width_list", "is not KEY=VALUE"),
])
def test_invalid_overrides_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises(OverrideError) as info:
        resolve_autoencoder_config("tiny-f32c32-in", override)
    assert message in str(info.value)


def test_widths_the_resampling_blocks_cannot_split_are_refused_before_any_work():
    """Widths 64 -> 100 pass the config checks but not DC-AE's pixel-(un)shuffle shortcuts: refused, naming them."""
    widths = "[64,100,256,256,512,512]"
    with pytest.raises(OverrideError, match="resampling blocks"):
        resolve_autoencoder_config("f32c32-in", f"encoder.width_list={widths} decoder.width_list={widths}")


def test_a_custom_config_round_trips_through_its_saved_files(tmp_path):
    """The saved config (checkpoint and config file alike) rebuilds the same parameter count and the same function."""
    config = resolve_autoencoder_config("tiny-f32c32-in", SPRITE)
    assert config.spatial_compression_ratio == 8 and config.latent_channels == 16
    torch.manual_seed(0)
    model = build_autoencoder(config).eval()
    save_autoencoder(model, tmp_path / "sprite")
    from_file = resolve_autoencoder_config(str(tmp_path / "sprite" / "config.json"))
    assert from_file == config and count(from_file) == count(config)
    loaded = load_autoencoder(tmp_path / "sprite")
    assert loaded.config == config
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(x)), model.decode(model.encode(x)))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(config.to_dict()))
    assert read_config_file(bare) == config


def test_a_diffusers_config_file_is_read(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "AutoencoderDC", **get_variant("tiny-f32c32-sana").to_diffusers_config()}))
    assert same_architecture(read_config_file(path), get_variant("tiny-f32c32-sana"))


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read the config file"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"widths": [1]}', "is not an autoencoder config"),
    ('{"config": {"name": "x"}}', "is not a valid autoencoder config"),
])
def test_bad_config_files_are_clear_errors(content, message, tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(content)
    with pytest.raises(OverrideError, match=message):
        resolve_autoencoder_config(str(path))
