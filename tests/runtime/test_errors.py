"""User errors of the runtime: each a DcaeDeployError that says what was wrong and what to do."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.manifest import sha256_file
from dcae_deploy.runtime import ArtifactsError, GenerationConfig, NonFiniteError, TextToImage, load_artifacts, open_backend


def _t2i(artifacts):
    return TextToImage(artifacts, open_backend("onnxruntime", artifacts), progress=False)


def test_missing_artifacts_folder(tmp_path):
    with pytest.raises(ArtifactsError, match="does not exist.*python -m dcae_deploy.export"):
        load_artifacts(tmp_path / "nowhere")


def test_folder_without_manifest(tmp_path):
    with pytest.raises(ArtifactsError, match="has no manifest.json"):
        load_artifacts(tmp_path)


def test_manifest_of_another_variant(artifacts_dir):
    with pytest.raises(ArtifactsError, match="export of 'demo', not of 'sana-600m-t2i'"):
        load_artifacts(artifacts_dir, variant="sana-600m-t2i")


def test_autoencoder_export_is_not_a_pipeline(artifacts_dir, tmp_path):
    data = json.loads((artifacts_dir / "manifest.json").read_text())
    data.update(kind="autoencoder", variant="demo-f32c32", pipeline=None)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactsError, match="'autoencoder' export of 'demo-f32c32', not a text-to-image pipeline"):
        load_artifacts(tmp_path, verify=False)


@pytest.mark.parametrize(
    "size, message",
    [
        (dict(height=256), r"--height 256 is outside this export's profile of demo: 64 to 128 pixels in steps of 32"),
        (dict(width=32), r"--width 32 is outside .* 64 to 128 pixels"),
        (dict(height=80), r"--height 80 must be a positive multiple of the compression ratio 32"),
    ],
)
def test_resolution_outside_the_profile(artifacts, size, message):
    with _t2i(artifacts) as t2i, pytest.raises(DcaeDeployError, match=message):
        t2i.generate(GenerationConfig(prompts=("a red circle",), steps=1, **size))


@pytest.mark.parametrize("prompts", [("",), ("   ",), ("a red circle", "")])
def test_empty_prompt(artifacts, prompts):
    with _t2i(artifacts) as t2i, pytest.raises(DcaeDeployError, match="the prompt is empty"):
        t2i.generate(GenerationConfig(prompts=prompts, steps=1))


def test_tile_size_outside_the_decoder_profile(artifacts):
    with _t2i(artifacts) as t2i, pytest.raises(DcaeDeployError, match="--tile-size 32 must be a multiple of 32 inside"):
        t2i.generate(GenerationConfig(prompts=("a red circle",), steps=1, tile_size=32))


def test_fp16_overflow_in_a_stage_is_an_error_not_a_black_image(artifacts_dir, recipe, tmp_path):
    """A real fp16 decoder graph whose output layer is scaled past fp16's range (65504): ORT returns inf."""
    from dcae_deploy.export.onnx_export import export_onnx
    from dcae_deploy.models.pipeline import build_pipeline

    decoder = build_pipeline(recipe.variant, seed=0).autoencoder.decoder
    with torch.no_grad():
        decoder.conv_out.weight.mul_(1e6)
        decoder.conv_out.bias.mul_(1e6)
        latent = torch.randn(1, 32, 2, 2)
        reference = decoder(latent)
    assert torch.isfinite(reference).all() and reference.abs().max() > 65504  # finite in fp32, not in fp16

    folder = tmp_path / "fp16-decoder"
    shutil.copytree(artifacts_dir, folder)
    export_onnx(decoder.half(), (latent.half(),), folder / "decoder.onnx", ["latent"], ["image"], None)
    manifest = json.loads((folder / "manifest.json").read_text())
    component = manifest["components"]["decoder"]
    component["files"] = {"decoder.onnx": sha256_file(folder / "decoder.onnx")}
    for tensor in component["inputs"] + component["outputs"]:
        tensor["dtype"] = "float16"
    (folder / "manifest.json").write_text(json.dumps(manifest))

    artifacts = load_artifacts(folder)
    with _t2i(artifacts) as t2i, pytest.raises(NonFiniteError, match="stage 'decoder' on backend 'onnxruntime'") as info:
        t2i.generate(GenerationConfig(prompts=("a red circle",), steps=1, height=64, width=64))
    assert info.value.stage == "decoder" and "fp16 overflow" in str(info.value)


def test_changed_graph_is_refused(artifacts_dir, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(artifacts_dir, folder)
    with open(folder / "denoiser.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DcaeDeployError, match="denoiser.onnx changed after export"):
        load_artifacts(folder)


def test_wrong_input_names_are_refused(artifacts):
    from dcae_deploy.runtime import BackendError

    with open_backend("onnxruntime", artifacts).runner("decoder") as runner, pytest.raises(BackendError, match="latent"):
        runner.infer({"latents": np.zeros((1, 32, 2, 2), np.float32)})
