"""Our SANA linear DiT computes the same function as diffusers' SanaTransformer2DModel, from its checkpoints."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from helpers import max_relative_error, randomize_

from dcae_deploy.errors import CheckpointError, InputShapeError
from dcae_deploy.models.denoiser import SanaDenoiser, check_inputs, load_denoiser
from dcae_deploy.variants import DenoiserConfig, get_variant

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # DESIGN.md: our fp32 model vs diffusers fp32, max |ours - ref| / max |ref|
TINY = get_variant("tiny-sana", kind="denoiser")
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _reference(config: DenoiserConfig, folder, **save_kwargs):
    torch.manual_seed(0)
    ref = diffusers.SanaTransformer2DModel(**config.to_diffusers_config())
    randomize_(ref).eval()
    ref.save_pretrained(folder, **save_kwargs)
    return ref


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusers-tiny-sana")
    return _reference(TINY, folder), folder


def _inputs(config: DenoiserConfig, batch: int, height: int, width: int, length: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, height, width, generator=gen)
    t = torch.tensor([999.0, 321.5, 12.0][:batch])
    caption = torch.randn(batch, length, config.caption_channels, generator=gen)
    return x, t, caption


def _compare(ref, ours, x, t, caption, mask) -> float:
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=caption, timestep=t, encoder_attention_mask=mask).sample
        actual = ours(x, t, caption, mask)
    return max_relative_error(actual, expected)


@pytest.mark.parametrize(
    "batch, height, width, mask_rows",
    [
        (2, 8, 6, [[1, 1, 1, 1, 1, 0, 0], [1] * 7]),  # right-padded caption, non-square latent
        (3, 4, 4, [[1] * 7, [1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]]),
        (1, 5, 7, None),
    ],
)
def test_forward_matches_diffusers(tiny_checkpoint, batch, height, width, mask_rows):
    ref, folder = tiny_checkpoint
    ours = load_denoiser(folder, "tiny-sana")
    x, t, caption = _inputs(TINY, batch, height, width, length=7)
    mask = None if mask_rows is None else torch.tensor(mask_rows)
    assert _compare(ref, ours, x, t, caption, mask) <= TOL


def test_padded_caption_tokens_are_ignored(tiny_checkpoint):
    _, folder = tiny_checkpoint
    ours = load_denoiser(folder)
    x, t, caption = _inputs(TINY, 1, 4, 4, length=6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    noisy = caption.clone()
    noisy[:, 4:] = 100 * torch.randn(1, 2, TINY.caption_channels)
    with torch.no_grad():
        assert max_relative_error(ours(x, t, noisy, mask), ours(x, t, caption, mask)) <= TOL
        assert max_relative_error(ours(x, t, noisy), ours(x, t, caption)) > 1e-3


def test_patch_size_2_and_sharded_checkpoint(tmp_path):
    config = dataclasses.replace(TINY, name="tiny-sana-p2", patch_size=2)
    ref = _reference(config, tmp_path, max_shard_size="40KB")
    assert (tmp_path / f"{WEIGHTS}.index.json").is_file()
    ours = load_denoiser(tmp_path)
    assert ours.config.patch_size == 2
    x, t, caption = _inputs(config, 2, 6, 8, length=5)
    assert _compare(ref, ours, x, t, caption, torch.tensor([[1, 1, 1, 0, 0], [1] * 5])) <= TOL


def test_bfloat16_load_stays_close_to_fp32(tiny_checkpoint):
    _, folder = tiny_checkpoint
    fp32, bf16 = load_denoiser(folder), load_denoiser(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    x, t, caption = _inputs(TINY, 2, 4, 4, length=7)
    with torch.no_grad():
        out = bf16(x.bfloat16(), t, caption.bfloat16())
        assert out.dtype == torch.bfloat16
        assert max_relative_error(out.float(), fp32(x, t, caption)) < 5e-2


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant, millions", [("sana-600m", 591.7), ("sana-1600m", 1604.5)])
def test_full_size_names_shapes_and_parameter_count_match_diffusers(variant, millions):
    config = get_variant(variant, kind="denoiser")
    with torch.device("meta"):
        ref = diffusers.SanaTransformer2DModel(**config.to_diffusers_config())
        ours = SanaDenoiser(config)
    assert _shapes(ours) == _shapes(ref)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    assert round(count / 1e6, 1) == millions


def test_diffusers_config_round_trip(tiny_checkpoint):
    ref, _ = tiny_checkpoint
    config = DenoiserConfig.from_diffusers_config(dict(ref.config), name="tiny-sana")
    assert config.architecture() == TINY.architecture()


@pytest.mark.parametrize(
    "override, what",
    [
        ({"interpolation_scale": 1.0}, "positional embedding"),
        ({"qk_norm": "rms_norm_across_heads"}, "qk-norm"),
        ({"guidance_embeds": True}, "guidance embedding"),
    ],
)
def test_unsupported_features_are_refused(override, what):
    with pytest.raises(NotImplementedError, match=what):
        DenoiserConfig.from_diffusers_config({**TINY.to_diffusers_config(), **override})


# ---------------------------------------------------------------------------------------------
# Bad checkpoints and inputs
# ---------------------------------------------------------------------------------------------


def _copy_with_state(src, dst, edit) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copy(src / "config.json", dst / "config.json")
    state = load_file(src / WEIGHTS)
    edit(state)
    save_file(state, dst / WEIGHTS)


def test_missing_and_unexpected_keys_are_listed(tiny_checkpoint, tmp_path):
    _, folder = tiny_checkpoint

    def edit(state):
        del state["transformer_blocks.1.attn1.to_q.weight"]
        state["pos_embed"] = torch.zeros(1)

    _copy_with_state(folder, tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        load_denoiser(tmp_path, "tiny-sana")
    message = str(info.value)
    assert "variant 'tiny-sana'" in message
    assert "missing keys: transformer_blocks.1.attn1.to_q.weight" in message
    assert "unexpected keys: pos_embed" in message


def test_mis_shaped_tensor_is_named(tiny_checkpoint, tmp_path):
    _, folder = tiny_checkpoint
    _copy_with_state(folder, tmp_path, lambda state: state.update({"proj_out.bias": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match=r"wrong shape: proj_out.bias: checkpoint \(7,\), variant \(32,\)"):
        load_denoiser(tmp_path)


def test_wrong_variant_is_refused(tiny_checkpoint, tmp_path):
    _, folder = tiny_checkpoint
    with pytest.raises(CheckpointError, match="does not describe variant 'sana-600m'.*num_attention_heads"):
        load_denoiser(folder, "sana-600m")
    shutil.copy(folder / WEIGHTS, tmp_path / WEIGHTS)  # no config.json: the keys decide
    with pytest.raises(CheckpointError, match="does not fit variant 'sana-600m'.*missing keys: transformer_blocks.10"):
        load_denoiser(tmp_path, "sana-600m")


def test_corrupt_safetensors_names_the_file(tiny_checkpoint, tmp_path):
    _, folder = tiny_checkpoint
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    data = (folder / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"cannot read safetensors file .*{WEIGHTS}"):
        load_denoiser(tmp_path)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="folder not found"):
        load_denoiser(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json; pass variant="):
        load_denoiser(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_diffusers_config()))
    with pytest.raises(CheckpointError, match="neither diffusion_pytorch_model.safetensors nor"):
        load_denoiser(tmp_path)


def test_check_inputs_names_the_bad_tensor():
    x, t, caption = _inputs(TINY, 2, 4, 4, length=7)
    check_inputs(TINY, x, t, caption, torch.ones(2, 7))
    with pytest.raises(InputShapeError, match=r"hidden_states must be \(B, 32, H, W\)"):
        check_inputs(TINY, x[:, :4], t, caption)
    with pytest.raises(InputShapeError, match=r"encoder_hidden_states must be \(2, L, 64\)"):
        check_inputs(TINY, x, t, caption[..., :10])
    with pytest.raises(InputShapeError, match="encoder_attention_mask"):
        check_inputs(TINY, x, t, caption, torch.ones(2, 5))
