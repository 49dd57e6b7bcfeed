"""Our DiT (DC-AE-Diffusion DiT-XL) computes the reference's ``forward_without_cfg`` and reads its checkpoints.

Reference data: ``tests/data/dcae_diffusion/`` (the original efficientvit ``dit.py`` with timm's layers; see its
README.md). The reference was fed the int64 ADM steps its sampler passes; ours gets the same values as float32.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import DATA, max_relative_error
from safetensors.torch import load_file, save_file

from dcae_deploy.errors import CheckpointError
from dcae_deploy.family import family_of
from dcae_deploy.models.dit import build_dit, load_dit, save_dit, sincos_pos_embed_2d
from dcae_deploy.models.dit_family import DiTConfig
from dcae_deploy.models.pipeline import load_pipeline
from dcae_deploy.models.uvit_family import DenoiserConfigError
from dcae_deploy.variants import get_variant

GOLDEN = DATA / "dcae_diffusion"
AE_GOLDEN = DATA / "efficientvit" / "tiny-f32c32-in"
TOL = 1e-6  # measured: 0.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def golden(case: str):
    meta = json.loads((GOLDEN / case / "config.json").read_text())
    ours = meta["ours"]
    config = get_variant(ours, kind="denoiser") if isinstance(ours, str) else DiTConfig(name=case, **ours)
    return load_file(GOLDEN / case / "model.safetensors"), load_file(GOLDEN / case / "io.safetensors"), config


def run(model, io) -> torch.Tensor:
    assert io["timestep"].dtype == torch.int64  # what the reference got
    with torch.no_grad():
        return model(io["latent"], io["timestep"].float(), io["class_labels"])


@pytest.mark.parametrize("case", ["tiny-dit", "dit-p2-postnorm"])
def test_forward_matches_the_reference(case):
    _, io, config = golden(case)
    model = load_dit(GOLDEN / case / "model.safetensors", config)
    out = run(model, io)
    assert out.shape == io["output"].shape and out.shape[1] == config.out_channels
    assert max_relative_error(out, io["output"]) <= TOL


@pytest.mark.parametrize("case", ["tiny-dit", "dit-p2-postnorm"])
def test_fixed_position_embedding_is_the_reference_table(case):
    _, io, config = golden(case)
    built = build_dit(config).pos_embed
    assert not built.requires_grad
    assert torch.equal(built, io["pos_embed_init"])  # the reference's numpy float64 table, rounded to float32
    assert torch.equal(sincos_pos_embed_2d(config.hidden_size, config.input_size // config.patch_size)[None],
                       io["pos_embed_init"])


def test_full_size_keys_shapes_and_parameters_equal_the_reference():
    ours = build_dit("dit-xl-f32c32", device="meta")
    expected = dict(line.split("\t") for line in (GOLDEN / "keys-dit-xl-f32c32.txt").read_text().splitlines())
    assert {k: json.dumps(list(v.shape)) for k, v in ours.state_dict().items()} == expected
    params = json.loads((GOLDEN / "params.json").read_text())["full_size"]["dit-xl-f32c32"]
    trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert sum(p.numel() for p in ours.parameters()) == params["parameters"]
    assert trainable == params["trainable"] and round(trainable / 1e6, 2) == 674.89  # the release's count
    assert ours.pos_embed.numel() == params["parameters"] - trainable  # the fixed sin-cos table


def test_reference_init_is_adaln_zero_and_the_default_is_not():
    torch.manual_seed(0)
    x, t, y = torch.randn(2, 32, 4, 4), torch.tensor([10.0, 900.0]), torch.tensor([3, 1000])
    with torch.no_grad():
        assert torch.count_nonzero(build_dit("tiny-dit", reference_init=True)(x, t, y)) == 0
        assert build_dit("tiny-dit")(x, t, y).abs().mean() > 1e-2  # a random export's gate compares something


def test_training_checkpoint_and_hub_bundle(tmp_path):
    state, io, _ = golden("tiny-dit")
    path = tmp_path / "ckpt.pt"
    torch.save({"ema": {"0.9999": {f"dit.{k}": v for k, v in state.items()}}, "step": 7}, path)
    assert max_relative_error(run(load_dit(path), io), io["output"]) <= TOL
    hub = tmp_path / "hub"
    hub.mkdir()
    bundle = {f"diffusion_model.{k}": v for k, v in state.items()}
    bundle.update({f"autoencoder.{k}": v for k, v in load_file(AE_GOLDEN / "model.safetensors").items()})
    save_file(bundle, str(hub / "model.safetensors"))
    (hub / "config.json").write_text(json.dumps({"model_name": "tiny-dit-c2i"}))
    models = load_pipeline(hub, "tiny-dit-c2i")
    assert max_relative_error(run(models.denoiser, io), io["output"]) <= TOL
    assert models.autoencoder.config.name == "tiny-f32c32-in"
    save_dit(models.denoiser, tmp_path / "ours")
    assert max_relative_error(run(load_dit(tmp_path / "ours"), io), io["output"]) <= TOL


def test_a_uvit_checkpoint_is_refused_with_what_it_is(tmp_path):
    uvit_state = load_file(GOLDEN / "tiny-uvit" / "model.safetensors")
    path = tmp_path / "uvit.pt"
    torch.save({"ema": {"0.9999": {f"uvit.{k}": v for k, v in uvit_state.items()}}}, path)
    with pytest.raises(CheckpointError, match=r"does not fit variant 'tiny-dit'.*weights fit variant 'tiny-usit' / 'tiny-uvit'"):
        load_dit(path, "tiny-dit")
    with pytest.raises(CheckpointError, match="fits no registered DiT"):
        load_dit(path)


@pytest.mark.parametrize("changes, message", [
    (dict(hidden_size=66, num_heads=3), "hidden_size 66 must be a multiple of 4"),
    (dict(timestep_convention="sit"), "timestep_convention 'sit' is not one of adm"),
    (dict(patch_size=3), "must be a multiple of patch_size 3"),
])
def test_invalid_configs_name_the_field(changes, message):
    with pytest.raises(DenoiserConfigError, match=message):
        dataclasses.replace(get_variant("tiny-dit"), **changes)


def test_config_facts():
    config = get_variant("dit-xl-f32c32")
    assert DiTConfig.from_dict(config.to_dict()) == config
    assert (config.out_channels, config.prediction) == (64, "eps+variance")
    assert (config.label_count, config.null_class) == (1001, 1000)
    facts = family_of(config).facts(config)
    assert (facts.timestep_convention, facts.prediction) == ("adm", "eps+variance")
    assert (facts.latent_size, facts.in_channels, facts.null_class) == (16, 32, 1000)
    no_dropout = dataclasses.replace(config, class_dropout_prob=0.0, learn_sigma=False)
    assert (no_dropout.null_class, no_dropout.label_count, no_dropout.prediction, no_dropout.out_channels) == (
        None, 1000, "eps", 32)
