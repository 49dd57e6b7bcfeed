"""Our UViT (DC-AE-Diffusion UViT / USiT) computes the reference's ``forward_without_cfg`` and reads its checkpoints.

The reference outputs, state dicts and full-size key lists in ``tests/data/dcae_diffusion/`` come from the original
mit-han-lab/efficientvit ``uvit.py`` (see its README.md and make_golden.py). The checkpoints these tests write are
the real layouts filled with those reference state dicts: the hub bundle (``diffusion_model.`` + ``autoencoder.``
keys, the DC-AE being efficientvit's own golden tiny-f32c32-in), the training ``.pt`` (``ema`` -> ``uvit.`` keys)
and our own save.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import DATA, max_relative_error
from safetensors.torch import load_file, save_file

from dcae_deploy.errors import CheckpointError, DcaeDeployError, InputShapeError
from dcae_deploy.family import family_of
from dcae_deploy.models.pipeline import build_pipeline, load_parts, load_pipeline, save_pipeline
from dcae_deploy.models.uvit import build_uvit, check_inputs, load_uvit, save_uvit
from dcae_deploy.models.uvit_family import DenoiserConfigError, UViTConfig
from dcae_deploy.variants import ClassPipelineConfig, get_variant, list_variants

GOLDEN = DATA / "dcae_diffusion"
AE_GOLDEN = DATA / "efficientvit" / "tiny-f32c32-in"
TOL = 1e-6  # measured: 0.0 (the same float32 arithmetic as the reference)
FULL = ["uvit-s-f32c32", "uvit-h-f32c32", "uvit-2b-f32c32", "uvit-h-f64c128", "uvit-2b-f64c128"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def golden(case: str):
    """(reference state dict, reference inputs/outputs, our config) of a golden case."""
    meta = json.loads((GOLDEN / case / "config.json").read_text())
    ours = meta["ours"]
    config = get_variant(ours, kind="denoiser") if isinstance(ours, str) else UViTConfig(name=case, **ours)
    return load_file(GOLDEN / case / "model.safetensors"), load_file(GOLDEN / case / "io.safetensors"), config


def run(model, io) -> torch.Tensor:
    with torch.no_grad():
        return model(io["latent"], io["timestep"].float(), io["class_labels"])


def write_bundle(folder, model_name: str, denoiser: dict, autoencoder: dict | None = None):
    """The DC-AE-Diffusion hub folder: what ``DCAE_Diffusion_HF.save_pretrained`` writes (PyTorchModelHubMixin:
    the init kwargs as config.json, the module's state dict, i.e. its two submodules' keys prefixed)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"diffusion_model.{k}": v for k, v in denoiser.items()}
    state.update({f"autoencoder.{k}": v for k, v in (autoencoder or {}).items()})
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_name": model_name}))
    return folder


# --- the function -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["tiny-uvit", "uvit-p2"])
def test_forward_matches_the_reference(case):
    state, io, config = golden(case)
    model = load_uvit(GOLDEN / case / "model.safetensors", config)  # the reference's own key names
    out = run(model, io)
    assert out.shape == io["output"].shape
    assert max_relative_error(out, io["output"]) <= TOL
    assert max_relative_error(model.forward_without_cfg(io["latent"], io["timestep"], io["class_labels"]),
                              io["output"]) <= TOL


def test_labels_and_time_change_the_output():
    _, io, config = golden("tiny-uvit")
    model = load_uvit(GOLDEN / "tiny-uvit" / "model.safetensors", config)
    base = run(model, io)
    null = run(model, {**io, "class_labels": torch.full_like(io["class_labels"], config.null_class)})
    later = run(model, {**io, "timestep": io["timestep"] * 0.5})
    assert (null - base).abs().amax(dim=(1, 2, 3))[:2].min() > 1e-3  # the rows that were not null already
    assert max_relative_error(later, base) > 1e-3


@pytest.mark.parametrize("name", FULL)
def test_full_size_keys_shapes_and_parameters_equal_the_reference(name):
    ours = build_uvit(name, device="meta")
    expected = dict(line.split("\t") for line in (GOLDEN / f"keys-{name}.txt").read_text().splitlines())
    assert {k: json.dumps(list(v.shape)) for k, v in ours.state_dict().items()} == expected
    params = json.loads((GOLDEN / "params.json").read_text())["full_size"][name]
    assert sum(p.numel() for p in ours.parameters()) == params["parameters"] == params["trainable"]


@pytest.mark.parametrize("name, published", [("uvit-s-f32c32", 44.79), ("uvit-h-f32c32", 500.87),
                                             ("uvit-2b-f32c32", 1580.40), ("uvit-h-f64c128", 500.87),
                                             ("usit-h-f32c32", 500.87), ("usit-2b-f32c32", 1580.40)])
def test_parameter_counts_match_the_release(name, published):
    count = sum(p.numel() for p in build_uvit(name, device="meta").parameters())
    assert round(count / 1e6, 2) == published  # efficientvit applications/dc_ae/README.md


# --- checkpoint layouts -----------------------------------------------------------------------------------------


def test_hub_bundle_folder_loads_by_name(tmp_path):
    state, io, _ = golden("tiny-uvit")
    folder = write_bundle(tmp_path / "hub", "tiny-uvit-c2i", state, load_file(AE_GOLDEN / "model.safetensors"))
    model = load_uvit(folder)  # config.json names the pipeline, whose denoiser is tiny-uvit
    assert model.config == get_variant("tiny-uvit")
    assert max_relative_error(run(model, io), io["output"]) <= TOL
    assert max_relative_error(run(load_uvit(folder / "model.safetensors", "tiny-uvit"), io), io["output"]) <= TOL


def test_training_checkpoint_ema_entry_with_uvit_prefix(tmp_path):
    state, io, _ = golden("tiny-uvit")
    path = tmp_path / "step_1000.pt"
    torch.save({"ema": {"0.9999": {f"uvit.{k}": v for k, v in state.items()}},
                "optimizer": {"lr": torch.tensor(1e-4)}, "epoch": 3}, path)
    # no config in the file, and tiny-uvit / tiny-usit share the architecture (as uvit-h / usit-h do): say which
    with pytest.raises(CheckpointError, match=r"fits several UViT variants .*tiny-usit, tiny-uvit.*pass the variant"):
        load_uvit(path)
    model = load_uvit(path, "tiny-uvit")
    assert model.config.name == "tiny-uvit"
    assert max_relative_error(run(model, io), io["output"]) <= TOL
    plain = tmp_path / "plain.pt"  # U-ViT's own "ema" layout: the state dict itself
    torch.save({"ema": state}, plain)
    assert max_relative_error(run(load_uvit(plain, "tiny-uvit"), io), io["output"]) <= TOL


def test_own_format_round_trip_keeps_a_custom_config(tmp_path):
    _, io, config = golden("uvit-p2")
    model = load_uvit(GOLDEN / "uvit-p2" / "model.safetensors", config)
    save_uvit(model, tmp_path / "ours")
    again = load_uvit(tmp_path / "ours")
    assert again.config == config and again.config.timestep_convention == "sit"
    assert max_relative_error(run(again, io), io["output"]) <= TOL


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state, _, _ = golden("tiny-uvit")
    broken = {k: v for k, v in state.items() if k != "out_blocks.0.skip_linear.weight"}
    broken["stray.weight"] = torch.zeros(3)
    folder = write_bundle(tmp_path / "hub", "tiny-uvit-c2i", broken)
    with pytest.raises(CheckpointError) as info:
        load_uvit(folder, "tiny-uvit")
    message = str(info.value)
    assert "does not fit variant 'tiny-uvit'" in message
    assert "1 missing keys: out_blocks.0.skip_linear.weight" in message
    assert "1 unexpected keys: stray.weight" in message


def test_weights_of_another_variant_say_which_they_fit(tmp_path):
    path = tmp_path / "dit.safetensors"
    save_file(load_file(GOLDEN / "tiny-dit" / "model.safetensors"), str(path))
    with pytest.raises(CheckpointError, match=r"These weights fit variant 'tiny-dit'"):
        load_uvit(path, "tiny-uvit")
    state, _, _ = golden("uvit-p2")
    path = tmp_path / "p2.safetensors"
    save_file(state, str(path))
    wrong = r"wrong shape: .*decoder_pred\.weight \(16, 48\) \(expected \(32, 64\)\)"
    with pytest.raises(CheckpointError, match=wrong):
        load_uvit(path, "tiny-uvit")
    with pytest.raises(CheckpointError, match="fits no registered UViT; pass the variant"):
        load_uvit(path)


def test_a_checkpoint_that_names_another_model_is_refused(tmp_path):
    _, _, config = golden("uvit-p2")
    save_uvit(load_uvit(GOLDEN / "uvit-p2" / "model.safetensors", config), tmp_path / "ours")
    with pytest.raises(CheckpointError, match=r"does not hold variant 'tiny-uvit' \(input_size: checkpoint 8"):
        load_uvit(tmp_path / "ours", "tiny-uvit")
    usit = dataclasses.replace(get_variant("tiny-uvit"), name="tiny-usit", timestep_convention="sit")
    save_uvit(load_uvit(GOLDEN / "tiny-uvit" / "model.safetensors", usit), tmp_path / "usit")
    with pytest.raises(CheckpointError, match="timestep_convention: checkpoint 'sit', variant 'uvit-dpm'"):
        load_uvit(tmp_path / "usit", "tiny-uvit")  # same tensors, another objective: refused
    folder = write_bundle(tmp_path / "hub", "tiny-dit-c2i", load_file(GOLDEN / "tiny-dit" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="denoiser 'tiny-dit' is a dit, not a UViT"):
        load_uvit(folder)
    with pytest.raises(DcaeDeployError, match="'tiny-dit' is a dit denoiser, not a UViT"):
        load_uvit(GOLDEN / "tiny-uvit" / "model.safetensors", "tiny-dit")


def test_unreadable_checkpoints_say_why(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no denoiser weights in folder"):
        load_uvit(tmp_path / "empty", "tiny-uvit")
    truncated = tmp_path / "cut.pt"
    state, _, _ = golden("tiny-uvit")
    torch.save({"ema": {"0.9999": state}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_uvit(truncated, "tiny-uvit")
    odd = tmp_path / "odd.pt"
    torch.save({"ema": {"0.9999": [1, 2]}}, odd)
    with pytest.raises(CheckpointError, match="'ema' entry that holds no state dict"):
        load_uvit(odd, "tiny-uvit")
    with pytest.raises(CheckpointError, match="not found"):
        load_uvit(tmp_path / "nowhere", "tiny-uvit")


# --- the class-conditional pipeline -----------------------------------------------------------------------------


def test_pipeline_reads_both_parts_of_the_hub_bundle(tmp_path):
    state, io, _ = golden("tiny-uvit")
    folder = write_bundle(tmp_path / "hub", "tiny-uvit-c2i", state, load_file(AE_GOLDEN / "model.safetensors"))
    models = load_pipeline(folder, "tiny-uvit-c2i")
    assert models.text_encoder is None and models.tokenizer is None
    assert max_relative_error(run(models.denoiser, io), io["output"]) <= TOL
    ae_io = load_file(AE_GOLDEN / "io.safetensors")  # efficientvit's own DC-AE on the same weights
    with torch.no_grad():
        assert max_relative_error(models.autoencoder.decoder(ae_io["latent2"]), ae_io["decoded2"]) <= 1e-5
    alone = load_parts(get_variant("tiny-uvit-c2i"), folder, roles=["denoiser"])
    assert alone.autoencoder is None and max_relative_error(run(alone.denoiser, io), io["output"]) <= TOL


def test_pipeline_bundle_errors(tmp_path):
    state, _, _ = golden("tiny-uvit")
    ae = load_file(AE_GOLDEN / "model.safetensors")
    other = write_bundle(tmp_path / "other", "tiny-dit-c2i", state, ae)
    with pytest.raises(CheckpointError, match="holds 'tiny-dit-c2i' .*not 'tiny-uvit-c2i'"):
        load_pipeline(other, "tiny-uvit-c2i")
    training = tmp_path / "train.pt"
    torch.save({"ema": {"0.9999": {f"uvit.{k}": v for k, v in state.items()}}}, training)
    assert load_pipeline(training, "tiny-uvit-c2i", parts=["denoiser"]).denoiser is not None
    with pytest.raises(CheckpointError, match=r"holds no autoencoder\.\* weights .*--components denoiser"):
        load_pipeline(training, "tiny-uvit-c2i")
    key = next(k for k in ae if k.startswith("decoder.stages") and k.endswith(".weight"))
    broken = write_bundle(tmp_path / "broken", "tiny-uvit-c2i", state, {k: v for k, v in ae.items() if k != key})
    with pytest.raises(CheckpointError, match=r"\(autoencoder\.\*\) does not fit variant 'tiny-f32c32-in'; 1 missing"):
        load_pipeline(broken, "tiny-uvit-c2i")
    with pytest.raises(CheckpointError, match=r"does not fit variant 'tiny-f32c32-in'"):
        load_pipeline(broken)  # no variant given: the hub folder's config.json names its model
    named = write_bundle(tmp_path / "named", "mit-han-lab/tiny-uvit-c2i", state, ae)
    assert load_pipeline(named).config.name == "tiny-uvit-c2i"
    unnamed = write_bundle(tmp_path / "unnamed", "not-a-registered-model", state, ae)
    with pytest.raises(CheckpointError, match="pass the pipeline variant"):
        load_pipeline(unnamed)


def test_pipeline_folder_round_trip(tmp_path):
    models = build_pipeline("tiny-uvit-c2i", seed=3)
    assert models.text_encoder is None and models.tokenizer is None
    save_pipeline(models, tmp_path / "pipe")
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == ["pipeline.json", "transformer", "vae"]
    again = load_pipeline(tmp_path / "pipe")
    for role in ("autoencoder", "denoiser"):
        ours, theirs = getattr(models, role).state_dict(), getattr(again, role).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# --- configs, variants and inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    (dict(hidden_size=30, num_heads=4), "hidden_size 30 must be a multiple of num_heads 4"),
    (dict(input_size=5, patch_size=2), "input_size 5 .* must be a multiple of patch_size 2"),
    (dict(act_layer="relu"), "act_layer 'relu' is not one of gelu, silu"),
    (dict(timestep_convention="adm"), "timestep_convention 'adm' is not one of uvit-dpm, sit"),
    (dict(num_classes=0), "num_classes must be a positive whole number"),
    (dict(class_dropout_prob=1.0), r"class_dropout_prob must be in \[0, 1\)"),
])
def test_invalid_configs_name_the_field(changes, message):
    with pytest.raises(DenoiserConfigError, match=message) as info:
        dataclasses.replace(get_variant("tiny-uvit"), **changes)
    assert isinstance(info.value, ValueError)


def test_config_round_trip_and_facts():
    config = get_variant("usit-h-f32c32")
    assert UViTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(DenoiserConfigError, match="unknown UViTConfig field.*use_checkpoint"):
        UViTConfig.from_dict({**config.to_dict(), "use_checkpoint": True})
    facts = family_of(config).facts(config)
    assert (facts.timestep_convention, facts.prediction, facts.num_classes, facts.null_class, facts.latent_size) == (
        "sit", "velocity", 1000, 1000, 16)
    assert get_variant("uvit-h-f64c128").prediction == "eps" and get_variant("uvit-h-f64c128").input_size == 8


OFFICIAL = {
    "dc-ae-f32c32-in-1.0-dit-xl-in-512px": ("dit-xl-f32c32", "adm", 250, 1.3),
    "dc-ae-f32c32-in-1.0-dit-xl-in-512px-trainbs1024": ("dit-xl-f32c32", "adm", 250, 1.3),
    "dc-ae-f32c32-in-1.0-uvit-s-in-512px": ("uvit-s-f32c32", "dpm-solver++-uvit", 30, 1.5),
    "dc-ae-f32c32-in-1.0-uvit-h-in-512px": ("uvit-h-f32c32", "dpm-solver++-uvit", 30, 1.5),
    "dc-ae-f32c32-in-1.0-uvit-2b-in-512px": ("uvit-2b-f32c32", "dpm-solver++-uvit", 30, 1.5),
    "dc-ae-f32c32-in-1.0-usit-h-in-512px": ("usit-h-f32c32", "sit-dopri5", 250, 1.2),
    "dc-ae-f32c32-in-1.0-usit-2b-in-512px": ("usit-2b-f32c32", "sit-dopri5", 250, 1.15),
    "dc-ae-f64c128-in-1.0-uvit-h-in-512px": ("uvit-h-f64c128", "dpm-solver++-uvit", 30, 1.5),
    "dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k": ("uvit-h-f64c128", "dpm-solver++-uvit", 30, 1.5),
    "dc-ae-f64c128-in-1.0-uvit-2b-in-512px": ("uvit-2b-f64c128", "dpm-solver++-uvit", 30, 1.5),
    "dc-ae-f64c128-in-1.0-uvit-2b-in-512px-train2000k": ("uvit-2b-f64c128", "dpm-solver++-uvit", 30, 1.5),
}


def test_official_pipelines_pair_fitting_parts():
    class_pipelines = [n for n in list_variants("pipeline") if isinstance(get_variant(n), ClassPipelineConfig)]
    assert sorted(class_pipelines) == sorted([*OFFICIAL, "tiny-uvit-c2i", "tiny-dit-c2i", "tiny-usit-c2i"])
    for name in class_pipelines:
        pipe = get_variant(name, kind="pipeline")
        ae, den = pipe.parts()["autoencoder"], pipe.parts()["denoiser"]
        assert pipe.conditioning == "class" and den.in_channels == ae.latent_channels
        assert den.spatial_compression_ratio == ae.spatial_compression_ratio
        assert pipe.sampling.height == pipe.sampling.width == den.input_size * ae.spatial_compression_ratio
        if name in OFFICIAL:
            denoiser, sampler, steps, guidance = OFFICIAL[name]
            s = pipe.sampling
            assert (den.name, s.sampler, s.steps, s.guidance_scale) == (denoiser, sampler, steps, guidance)
            assert s.height == s.width == 512
            assert ae.name == ("f32c32-in" if "f32c32" in name else "f64c128-in")
            assert ae.scaling_factor == (0.3189 if "f32c32" in name else 0.2889)


def test_check_inputs_names_the_problem():
    config = get_variant("tiny-uvit")
    x, t, y = torch.zeros(2, 32, 4, 4), torch.zeros(2), torch.tensor([0, 1000])
    check_inputs(config, x, t, y)  # the null class is a valid label
    with pytest.raises(InputShapeError, match="latent must be .*position embedding fixes the side"):
        check_inputs(config, torch.zeros(2, 32, 8, 8), t, y)
    with pytest.raises(InputShapeError, match=r"class_labels must be in \[0, 1001\) \(1000 is the null class\)"):
        check_inputs(config, x, t, torch.tensor([0, 1001]))
    with pytest.raises(InputShapeError, match="timestep must be float"):
        check_inputs(config, x, torch.zeros(2, dtype=torch.long), y)
