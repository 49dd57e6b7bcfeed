"""A custom DC-AE from the reference's override syntax: trained a few steps, exported, run through ONNX Runtime
with parity, its saved config rebuilding the same model (issue 15)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dcae_deploy.cli import run_cli

# a 32x32-sprite DC-AE: f8, 16 latent channels, ResBlock stages then EfficientViT stages, bn2d/relu then trms2d/silu
SPRITE = ("latent_channels=16 encoder.width_list=[16,32,64,64] encoder.depth_list=[0,1,1,1] "
          "encoder.block_type=[ResBlock,ResBlock,EViT_GLU,EViT_GLU] decoder.width_list=[16,32,64,64] "
          "decoder.depth_list=[0,1,1,1] decoder.block_type=[ResBlock,ResBlock,EViT_GLU,EViT_GLU] "
          "decoder.norm=[bn2d,bn2d,trms2d,trms2d] decoder.act=[relu,relu,silu,silu] scaling_factor=1.0")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3 training steps of the sprite DC-AE on 32x32 crops of random images, through the real CLI."""
    root = tmp_path_factory.mktemp("sprite")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
    run = subprocess.run(
        [sys.executable, "-m", "dcae_deploy.train", "autoencoder", "--phase", "low_res_full",
         "--variant", "tiny-f32c32-in", "--override", SPRITE, "--data", f"folder:{images}", "--resolution", "32",
         "--batch-size", "2", "--steps", "3", "--device", "cpu", "--out", str(root / "run")],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return root / "run" / "final"


def test_the_trained_checkpoint_carries_its_resolved_config(trained):
    from dcae_deploy.models.autoencoder import build_autoencoder
    from dcae_deploy.models.autoencoder_io import load_autoencoder
    from dcae_deploy.models.autoencoder_overrides import resolve_autoencoder_config

    expected = resolve_autoencoder_config("tiny-f32c32-in", SPRITE)
    model = load_autoencoder(trained)  # no variant, no override: the checkpoint's config.json says it all
    assert model.config == expected and model.spatial_compression_ratio == 8
    rebuilt = build_autoencoder(resolve_autoencoder_config(str(trained / "config.json")), device=torch.device("meta"))
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_args", [["--model", "{ckpt}/config.json"],
                                        ["--model", "tiny-f32c32-in", "--override", SPRITE]])
def test_custom_autoencoder_exports_and_runs_on_onnxruntime_with_parity(trained, tmp_path, model_args):
    from dcae_deploy.export.__main__ import main as export_main
    from dcae_deploy.runtime import open_component

    out = tmp_path / "export"
    argv = [a.format(ckpt=trained) for a in model_args] + [
        "--checkpoint", str(trained), "--components", "encoder,decoder", "--min-res", "32", "--opt-res", "32",
        "--max-res", "64", "--max-batch", "2", "--output", str(out)]
    assert run_cli(export_main, argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variant"] == "tiny-f32c32-in+custom" and manifest["latent_channels"] == 16
    assert manifest["model_config"]["family"] == "dc-ae"
    assert all(r["passed"] for r in json.loads((out / "parity.json").read_text())["records"])

    # the export alone (no override, no registry entry) runs on both backends, and they agree
    image = np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 64)).astype(np.float32)
    results = {}
    for backend in ("torch", "onnxruntime"):
        with open_component(out, "encoder", backend=backend) as enc, open_component(out, "decoder", backend=backend) as dec:
            latent = enc.infer({"image": image})["latent"]
            results[backend] = (latent, dec.infer({"latent": latent})["image"])
    for ref, got in zip(results["torch"], results["onnxruntime"]):
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-4


def test_an_override_that_breaks_the_architecture_is_refused_before_export(tmp_path, capsys):
    from dcae_deploy.export.__main__ import main as export_main

    argv = ["--model", "tiny-f32c32-in", "--override", "latent_channels=24", "--output", str(tmp_path / "x")]
    assert run_cli(export_main, argv) == 1
    assert "must be a multiple of latent_channels=24" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
