"""Our DC-AE computes the same function as the reference implementations, from their own checkpoints."""

from __future__ import annotations

import pytest
import torch
from helpers import DATA, max_relative_error, randomize_
from safetensors.torch import load_file

from dcae_deploy import build_autoencoder, load_autoencoder, save_autoencoder
from dcae_deploy.models.autoencoder_io import (
    efficientvit_key_map,
    to_efficientvit_state_dict,
)
from dcae_deploy.variants import get_variant, list_variants

TOLERANCE = 1e-5  # DESIGN.md: our fp32 model vs the reference fp32, same weights
TINY = ["tiny-f32c32-sana", "tiny-f32c32-in", "tiny-f64c128-mix", "tiny-f128c512-in"]
FULL = list_variants("autoencoder", include_tiny=False)


def test_f32c32_sana_parameter_count_matches_reference():
    model = build_autoencoder("f32c32-sana", device="meta")
    assert sum(p.numel() for p in model.parameters()) == 312_250_275


@pytest.mark.parametrize("variant", FULL + TINY)
def test_parameter_count_matches_diffusers(variant):
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ref = diffusers.AutoencoderDC(**get_variant(variant).to_diffusers_config())
    ours = build_autoencoder(variant, device="meta")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("variant", TINY)
def test_matches_diffusers_from_save_pretrained(variant, diffusers_autoencoder):
    ref, folder = diffusers_autoencoder(variant)
    ours = load_autoencoder(folder, variant)
    f = ours.spatial_compression_ratio
    gen = torch.Generator().manual_seed(1)
    # Two shapes: at the smaller one the deepest stages have <= 32 tokens, where diffusers takes its
    # quadratic attention path; ours always runs the linear form of the same function.
    for height, width in [(2 * f, 2 * f), (8 * f, 6 * f)]:
        images = torch.rand(2, 3, height, width, generator=gen) * 2 - 1
        with torch.no_grad():
            ref_latent = ref.encode(images).latent
            ref_image = ref.decode(ref_latent).sample
            latent = ours.encode(images)
            image = ours.decode(ref_latent)
        assert max_relative_error(latent, ref_latent) <= TOLERANCE
        assert max_relative_error(image, ref_image) <= TOLERANCE


def test_scaling_factor_is_applied_explicitly(diffusers_autoencoder):
    _, folder = diffusers_autoencoder("tiny-f32c32-in")
    ours = load_autoencoder(folder)
    assert ours.config.name == "tiny-f32c32-in" and ours.scaling_factor == pytest.approx(0.3189)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        raw = ours.encode(images)
        scaled = ours.encode(images, scaled=True)
        torch.testing.assert_close(scaled, raw * 0.3189)
        torch.testing.assert_close(ours.decode(scaled, scaled=True), ours.decode(raw), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_full_f32c32_sana_matches_diffusers(tmp_path):
    """The real-size SANA autoencoder (312 M parameters) at 64x64, random weights saved by diffusers."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderDC(**get_variant("f32c32-sana").to_diffusers_config()).eval()
    with torch.no_grad():  # norms start at weight 1 / bias 0: move them so their mapping is tested too
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(tmp_path)
    ours = load_autoencoder(tmp_path, "f32c32-sana")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ref_latent = ref.encode(images).latent
        ref_image = ref.decode(ref_latent).sample
        assert max_relative_error(ours.encode(images), ref_latent) <= TOLERANCE
        assert max_relative_error(ours.decode(ref_latent), ref_image) <= TOLERANCE


# --- the original efficientvit layout -----------------------------------------------------------


@pytest.mark.parametrize("variant", ["tiny-f32c32-sana", "tiny-f32c32-in"])
def test_matches_efficientvit_golden_outputs(variant):
    """Weights and outputs produced by running mit-han-lab/efficientvit itself (tests/data/efficientvit/README.md)."""
    folder = DATA / "efficientvit" / variant
    io = load_file(folder / "io.safetensors")
    model = load_autoencoder(folder / "model.safetensors", variant)
    with torch.no_grad():
        assert max_relative_error(model.encode(io["image"]), io["latent"]) <= TOLERANCE
        assert max_relative_error(model.decode(io["latent"]), io["reconstruction"]) <= TOLERANCE
        assert max_relative_error(model.decode(io["latent2"]), io["decoded2"]) <= TOLERANCE


def test_efficientvit_pt_with_state_dict_wrapper_loads(tmp_path):
    folder = DATA / "efficientvit" / "tiny-f32c32-sana"
    torch.save({"state_dict": load_file(folder / "model.safetensors")}, tmp_path / "model.pt")
    model = load_autoencoder(tmp_path / "model.pt")  # variant found from the tensor shapes
    io = load_file(folder / "io.safetensors")
    with torch.no_grad():
        assert max_relative_error(model.encode(io["image"]), io["latent"]) <= TOLERANCE


@pytest.mark.parametrize("variant", ["f32c32-sana", "f32c32-in", "f64c128-in", "f128c512-in"])
def test_efficientvit_key_names_and_shapes_match_the_original(variant):
    """Key list dumped from efficientvit's own full-size models: every name and shape must correspond."""
    lines = (DATA / "efficientvit" / f"keys-{variant}.txt").read_text().splitlines()
    theirs = dict(line.split("\t") for line in lines)
    model = build_autoencoder(variant, device="meta")
    mapping = efficientvit_key_map(model)
    assert sorted(mapping.values()) == sorted(theirs)
    for ours, key in mapping.items():
        assert str(list(model.state_dict()[ours].shape)) == theirs[key], key


@pytest.mark.parametrize("variant", ["tiny-f32c32-in", "tiny-f64c128-mix"])
def test_efficientvit_layout_round_trip(variant, tmp_path, diffusers_autoencoder):
    from dcae_deploy.checkpoints import write_safetensors

    _, folder = diffusers_autoencoder(variant)
    model = load_autoencoder(folder, variant)
    write_safetensors(tmp_path / "model.safetensors", to_efficientvit_state_dict(model))
    again = load_autoencoder(tmp_path / "model.safetensors", variant)
    images = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(again(images), model(images), rtol=0, atol=0)


def test_own_format_round_trip(tmp_path):
    model = randomize_(build_autoencoder("tiny-f32c32-sana"), seed=3)
    save_autoencoder(model, tmp_path / "ae")
    assert sorted(p.name for p in (tmp_path / "ae").iterdir()) == ["config.json", "model.safetensors"]
    again = load_autoencoder(tmp_path / "ae")
    assert again.config == model.config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)


def test_low_precision_keeps_attention_and_norm_statistics_in_fp32():
    model = randomize_(build_autoencoder("tiny-f32c32-sana"), seed=4)
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        reference = model(images)
        low = model.to(torch.bfloat16)(images.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    rel_l2 = ((low.float() - reference).norm() / reference.norm()).item()
    assert rel_l2 < 2e-2, rel_l2
