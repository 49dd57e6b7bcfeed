"""Exact resume: the step after restoring a checkpoint equals the uninterrupted run's step, bit for bit."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dcae_deploy.checkpoints import read_state_dict
from dcae_deploy.errors import CheckpointError
from dcae_deploy.models.autoencoder import build_autoencoder
from dcae_deploy.models.denoiser import build_denoiser
from dcae_deploy.train.autoencoder import AutoencoderTask, phase_config
from dcae_deploy.train.data import ImageFolderDataset, LatentDataset
from dcae_deploy.train.denoiser import DenoiserTask, FlowMatchingConfig
from dcae_deploy.train.loop import LoopConfig, run_training, seed_everything
from dcae_deploy.train.text import HashWordEncoder

N = 4  # checkpoint after N steps (mid-epoch: 3 batches per epoch), then one more step


def _autoencoder_run(tmp_path, init_seed: int):
    folder = tmp_path / "images"
    if not folder.is_dir():
        folder.mkdir()
        gen = torch.Generator().manual_seed(0)
        for i in range(6):
            arr = (torch.rand(48, 40, 3, generator=gen) * 255).byte().numpy()
            Image.fromarray(arr).save(folder / f"{i}.png")
    seed_everything(init_seed)
    model = build_autoencoder("tiny-f32c32-sana")
    phase = phase_config("low_res_local_refinement", resolution=32, steps=N + 1, batch_size=2, lr=1e-3,
                         disc_channels=8, disc_layers=2)
    return AutoencoderTask(model, phase), ImageFolderDataset(folder, 32)  # random crops + GAN: 2 optimizers


def _denoiser_run(tmp_path, init_seed: int):
    seed_everything(init_seed)
    model = build_denoiser("tiny-sana")
    gen = torch.Generator().manual_seed(1)
    data = LatentDataset(torch.randn(6, 32, 2, 2, generator=gen), [f"a red circle {i}" for i in range(6)])
    cfg = FlowMatchingConfig(steps=N + 1, batch_size=2, lr=1e-3, caption_dropout=0.5)
    return DenoiserTask(model, cfg, HashWordEncoder(64)), data


@pytest.mark.parametrize("make", [_autoencoder_run, _denoiser_run], ids=["autoencoder-gan", "denoiser"])
def test_resume_is_exact(tmp_path, make):
    cfg = LoopConfig(steps=N + 1, batch_size=2, ema_decay=0.5, checkpoint_every=N, log_every=100, device="cpu")
    task, data = make(tmp_path, init_seed=0)
    full = run_training(task, data, cfg, tmp_path / "full")
    assert [r["step"] for r in full.history] == list(range(N + 1))

    task2, data2 = make(tmp_path, init_seed=123)  # different init: everything must come from the checkpoint
    resumed = run_training(task2, data2, cfg, tmp_path / "resumed", resume=tmp_path / "full" / "checkpoints" / f"step-{N:07d}")
    assert [r["step"] for r in resumed.history] == [N]
    assert resumed.history[0]["loss"] == full.history[N]["loss"]  # exact

    a, b = tmp_path / "full" / "checkpoints" / f"step-{N + 1:07d}", tmp_path / "resumed" / "checkpoints" / f"step-{N + 1:07d}"
    for name in [p.name for p in a.glob("*.safetensors")]:
        sa, sb = read_state_dict(a / name), read_state_dict(b / name)
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_resume_finds_latest_and_rejects_other_tasks(tmp_path):
    cfg = LoopConfig(steps=2, batch_size=2, checkpoint_every=1, log_every=100, device="cpu")
    task, data = _denoiser_run(tmp_path, 0)
    run_training(task, data, cfg, tmp_path / "run")
    longer = LoopConfig(steps=3, batch_size=2, log_every=100, device="cpu")
    task, data = _denoiser_run(tmp_path, 0)
    result = run_training(task, data, longer, tmp_path / "run", resume=tmp_path / "run")  # run folder -> latest
    assert [r["step"] for r in result.history] == [2]
    rows = (tmp_path / "run" / "loss_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    ae_task, ae_data = _autoencoder_run(tmp_path, 0)
    with pytest.raises(CheckpointError, match="task"):
        run_training(ae_task, ae_data, longer, tmp_path / "other", resume=tmp_path / "run")
    with pytest.raises(CheckpointError, match="no complete training checkpoint"):
        run_training(ae_task, ae_data, longer, tmp_path / "other", resume=tmp_path / "nothing")
