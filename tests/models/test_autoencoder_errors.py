"""Every mistake a user can make with an autoencoder gets an error that names the problem."""

from __future__ import annotations

import pytest
import torch
from helpers import DATA

from dcae_deploy import (
    CheckpointError,
    InputShapeError,
    UnknownVariantError,
    build_autoencoder,
    load_autoencoder,
)


def test_wrong_checkpoint_for_variant_lists_keys_and_the_variant_it_fits():
    path = DATA / "efficientvit" / "tiny-f32c32-in" / "model.safetensors"
    with pytest.raises(CheckpointError) as info:
        load_autoencoder(path, "tiny-f32c32-sana")
    message = str(info.value)
    assert "does not fit variant 'tiny-f32c32-sana'" in message
    assert "missing keys" in message and "unexpected keys" in message
    assert "fit variant 'tiny-f32c32-in'" in message


def test_diffusers_config_of_another_architecture_is_refused(diffusers_autoencoder):
    _, folder = diffusers_autoencoder("tiny-f32c32-in")
    with pytest.raises(CheckpointError, match="different architecture .*tiny-f32c32-in.* 'tiny-f32c32-sana'"):
        load_autoencoder(folder, "tiny-f32c32-sana")


def test_mis_shaped_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(DATA / "efficientvit" / "tiny-f32c32-sana" / "model.safetensors")
    state["decoder.project_in.main.conv.bias"] = torch.zeros(7)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"wrong shape: decoder.conv_in.bias \(7,\) \(expected \(64,\)\)"):
        load_autoencoder(tmp_path / "model.safetensors", "tiny-f32c32-sana")


def test_corrupt_safetensors_is_reported(tmp_path):
    good = (DATA / "efficientvit" / "tiny-f32c32-sana" / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cannot read safetensors file .*corrupt or truncated"):
        load_autoencoder(tmp_path / "model.safetensors", "tiny-f32c32-sana")


def test_missing_checkpoint_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_autoencoder(tmp_path / "nope", "tiny-f32c32-sana")
    with pytest.raises(CheckpointError, match="no DC-AE weights in folder"):
        load_autoencoder(tmp_path, "tiny-f32c32-sana")


class NotATensor:
    """Unpickling this needs the class's code, which weights_only loading refuses."""


def test_pickle_that_needs_code_is_refused(tmp_path):
    torch.save({"state_dict": {"w": NotATensor()}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_autoencoder(tmp_path / "evil.pt")


def test_state_dict_of_something_else_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"transformer_blocks.0.attn1.to_q.weight": torch.zeros(2, 2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not a DC-AE checkpoint"):
        load_autoencoder(tmp_path / "x.safetensors")


def test_unknown_variant_lists_valid_names():
    with pytest.raises(UnknownVariantError, match="unknown autoencoder variant 'f32c33'; valid names: .*f32c32-sana"):
        build_autoencoder("f32c33")


def test_image_size_must_be_a_multiple_of_the_compression_ratio():
    model = build_autoencoder("tiny-f32c32-sana")
    with pytest.raises(InputShapeError, match="multiples of 32, got 64x48; crop or pad to 64x32"):
        model.encode(torch.zeros(1, 3, 64, 48))


def test_wrong_channel_count_and_rank():
    model = build_autoencoder("tiny-f32c32-sana")
    with pytest.raises(InputShapeError, match="expects 3-channel images, got 4 channels"):
        model.encode(torch.zeros(1, 4, 64, 64))
    with pytest.raises(InputShapeError, match="4-D"):
        model.encode(torch.zeros(3, 64, 64))
    with pytest.raises(InputShapeError, match=r"latents of shape \(batch, 32, height, width\)"):
        model.decode(torch.zeros(1, 16, 2, 2))
