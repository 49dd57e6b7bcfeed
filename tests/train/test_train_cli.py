"""``python -m dcae_deploy.train``: phases chain through their outputs; the denoiser caches latents."""

from __future__ import annotations

import torch
from PIL import Image

from dcae_deploy.cli import run_cli
from dcae_deploy.models.autoencoder_io import load_autoencoder
from dcae_deploy.models.denoiser import load_denoiser
from dcae_deploy.train.__main__ import main

COMMON = ["--variant", "tiny-f32c32-sana", "--data", "shapes", "--num-images", "4", "--batch-size", "2",
          "--steps", "2", "--device", "cpu", "--log-every", "1"]


def test_autoencoder_phases_then_denoiser(tmp_path, capsys):
    p1, p2, dit = tmp_path / "p1", tmp_path / "p2", tmp_path / "dit"
    assert run_cli(main, ["autoencoder", "--phase", "low_res_full", "--resolution", "32", "--out", str(p1), *COMMON]) == 0
    out = capsys.readouterr().out
    assert "perceptual loss: off (no local weights)" in out and "trainable parameters (low_res_full)" in out
    for name in ("loss_log.csv", "loss_curve.png", "final/model.safetensors", "final/ema/config.json"):
        assert (p1 / name).is_file(), name
    assert Image.open(p1 / "loss_curve.png").size == (900, 500)
    first = load_autoencoder(p1 / "final")

    args = ["autoencoder", "--phase", "high_res_latent_adaptation", "--resolution", "64", "--init", str(p1 / "final"),
            "--out", str(p2), *COMMON]
    assert run_cli(main, args) == 0
    assert "trainable parameters (high_res_latent_adaptation)" in capsys.readouterr().out
    second = load_autoencoder(p2 / "final")
    a, b = first.state_dict(), second.state_dict()
    assert torch.equal(a["decoder.conv_out.weight"], b["decoder.conv_out.weight"])  # frozen in phase 2
    assert not torch.equal(a["encoder.conv_out.weight"], b["encoder.conv_out.weight"])  # trained in phase 2

    args = ["denoiser", "--variant", "tiny-sana", "--autoencoder", str(p2 / "final" / "ema"), "--data", "shapes",
            "--num-images", "4", "--resolution", "64", "--batch-size", "2", "--steps", "2", "--device", "cpu",
            "--out", str(dit)]
    assert run_cli(main, args) == 0
    assert "caching latents of 4 images at 64px" in capsys.readouterr().out
    assert load_denoiser(dit / "final").config.in_channels == 32


def test_user_errors_exit_with_status_1(tmp_path, capsys):
    args = ["autoencoder", "--phase", "low_res_full", "--out", str(tmp_path), *COMMON[:2], "--data", "imagenet"]
    assert run_cli(main, args) == 1
    assert "unknown data source" in capsys.readouterr().err
    args = ["autoencoder", "--phase", "low_res_full", "--out", str(tmp_path), *COMMON, "--resolution", "48"]
    assert run_cli(main, args) == 1
    assert "multiple of" in capsys.readouterr().err
    args = ["denoiser", "--variant", "tiny-sana", "--out", str(tmp_path), "--device", "cpu"]
    assert run_cli(main, args) == 1
    assert "--latents" in capsys.readouterr().err
