"""A checkpoint holding NaN through every command line: an error naming NaN and the bad tensors, never a
black image with exit 0 (issue 17, item 2), and damaged checkpoint files named for what they are (item 11)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

PROMPT = ["--prompt", "a red circle on a blue background"]


@pytest.fixture(scope="module")
def nan_autoencoder(tmp_path_factory):
    from dcae_deploy import build_autoencoder, save_autoencoder
    from dcae_deploy.variants import get_variant

    model = build_autoencoder(get_variant("tiny-f32c32-sana"))
    with torch.no_grad():
        model.decoder.conv_in.weight.fill_(float("nan"))
    folder = tmp_path_factory.mktemp("nan-ae")
    save_autoencoder(model, folder)
    return folder


@pytest.fixture(scope="module")
def nan_pipeline(tmp_path_factory):
    """The ``demo`` pipeline (random weights) with one denoiser tensor set to NaN."""
    from dcae_deploy.models.pipeline import build_pipeline, save_pipeline

    models = build_pipeline("demo", seed=0)
    with torch.no_grad():
        models.denoiser.scale_shift_table.fill_(float("nan"))
    folder = tmp_path_factory.mktemp("nan-pipeline")
    save_pipeline(models, folder)
    return folder


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(path)
    return path


def assert_nan_error(result, *names):
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "NaN" in result.stderr and "fp16 overflow" not in result.stderr
    for name in names:
        assert name in result.stderr, result.stderr[-2000:]


def test_reconstruct_refuses_a_nan_checkpoint(nan_autoencoder, image, tmp_path, run):
    out = tmp_path / "r.png"
    result = run("dcae_deploy", "reconstruct", "--checkpoint", nan_autoencoder, "--image", image, "--output", out)
    assert_nan_error(result, "decoder.conv_in.weight", "no image was written")
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_generate_refuses_a_nan_checkpoint(nan_pipeline, tmp_path, run):
    out = tmp_path / "x.png"
    result = run("dcae_deploy.generate", *PROMPT, "--backend", "torch", "--device", "cpu", "--checkpoint", nan_pipeline,
                 "--steps", "2", "--output", out)
    assert_nan_error(result, "stage 'denoiser'", "denoiser.scale_shift_table")
    assert not out.exists()


@pytest.mark.parametrize("which", ["adherence", "reconstruction"])
def test_evaluate_refuses_a_nan_checkpoint(which, nan_pipeline, nan_autoencoder, tmp_path, run):
    from dcae_deploy.models.pipeline import build_pipeline, save_pipeline

    weights = nan_pipeline
    if which == "reconstruction":  # a pipeline whose autoencoder is the NaN one
        models = build_pipeline("demo", seed=0)
        with torch.no_grad():
            models.autoencoder.decoder.conv_in.weight.fill_(float("nan"))
        weights = tmp_path / "weights"
        save_pipeline(models, weights)
    counts = ["--num-prompts", "2", "--reconstruction-images", "0"] if which == "adherence" else \
        ["--num-prompts", "0", "--reconstruction-images", "2"]
    result = run("dcae_deploy.evaluate", "--checkpoint", weights, *counts, "--steps", "2",
                 "--json", tmp_path / "e.json")
    assert_nan_error(result, "decoder.conv_in.weight" if which == "reconstruction" else "denoiser.scale_shift_table")
    assert not (tmp_path / "e.json").exists()


def test_parity_refuses_a_nan_reference(nan_pipeline, tmp_path, run):
    """parity's torch reference on NaN weights (``--checkpoint``) over a sound export: an error, not a table."""
    from dcae_deploy.export import export_model
    from dcae_deploy.models.pipeline import build_pipeline, save_pipeline

    save_pipeline(build_pipeline("demo", seed=0), tmp_path / "good")
    export_model("demo", tmp_path / "export", checkpoint=tmp_path / "good", min_res=64, opt_res=64, max_res=64,
                 max_batch=1, components=["text_encoder", "denoiser", "decoder"])
    result = run("dcae_deploy.parity", "--artifacts", tmp_path / "export", "--checkpoint", nan_pipeline,
                 "--steps", "2", "--height", "64", "--width", "64", "--json", tmp_path / "p.json")
    assert_nan_error(result, "denoiser.scale_shift_table")
    assert not (tmp_path / "p.json").exists()


def test_nonfinite_hint_fits_the_precision():
    """The fp16-overflow hint only where fp16 can overflow; an fp32 run points at the weights."""
    from dcae_deploy.runtime.errors import NonFiniteError

    fp16 = str(NonFiniteError("decoder", "onnxruntime", "3 of 12 values", precision="fp16"))
    fp32 = str(NonFiniteError("decoder", "onnxruntime", "3 of 12 values", precision="fp32"))
    assert "fp16 overflow" in fp16 and "fp16 overflow" not in fp32
    assert "weights" in fp32 and "NaN/Inf" in fp32


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes)"),
    ("half", "is truncated or is not a PyTorch checkpoint"),
    (b"\x80\x02junk that is no pickle at all", "is truncated or is not a PyTorch checkpoint"),
])
def test_damaged_pickles_are_named_for_what_they_are(content, message, tmp_path, run):
    path = tmp_path / "model.pt"
    if content == "half":
        torch.save({"weight": torch.ones(64, 64)}, path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    result = run("dcae_deploy", "reconstruct", "--checkpoint", path, "--variant", "tiny-f32c32-sana",
                 "--image", tmp_path / "a.png", "--output", tmp_path / "r.png")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr and "never unpickles code" not in result.stderr
    assert not (tmp_path / "r.png").exists()


def test_a_pickle_that_needs_code_is_still_refused_as_such(tmp_path):
    from dcae_deploy.checkpoints import read_state_dict
    from dcae_deploy.errors import CheckpointError

    torch.save({"weight": torch.ones(2), "hook": _Hook()}, tmp_path / "object.pt")
    with pytest.raises(CheckpointError, match="never unpickles code"):
        read_state_dict(tmp_path / "object.pt")


class _Hook:
    pass
