"""Loop pieces: EMA, the resumable step-indexed batch sampler, frozen-norm train mode, logs and plot."""

from __future__ import annotations

import itertools

import torch
from PIL import Image
from torch import nn

from dcae_deploy.train.distributed import DistInfo
from dcae_deploy.train.logs import LossLog, plot_losses
from dcae_deploy.train.loop import EMA, StepBatchSampler, set_train_mode

CPU = torch.device("cpu")


def test_ema_tracks_trained_parameters_only():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    m[1].weight.requires_grad_(False)
    ema = EMA(m, decay=0.75)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        m[0].weight.add_(4.0)
        m[1].running_mean.fill_(3.0)
    ema.update(m, step=1000)
    assert torch.allclose(ema.shadow["0.weight"], start["0.weight"] + 1.0)  # 0.25 of the 4.0 step
    ema.update(m, step=0)  # warm-up: decay min(0.75, 1/10)
    assert torch.allclose(ema.shadow["0.weight"], start["0.weight"] + 1.0 + 0.9 * 3.0)
    assert torch.equal(ema.shadow["1.running_mean"], torch.full((2,), 3.0))
    assert torch.equal(ema.shadow["1.weight"], start["1.weight"])


def test_batch_sampler_resumes_mid_epoch_and_shards_ranks():
    data = list(range(10))
    one = StepBatchSampler(data, DistInfo(0, 1, 0, CPU), batch_size=3, seed=7, start_step=0)
    first7 = list(itertools.islice(iter(one), 7))
    later = StepBatchSampler(data, DistInfo(0, 1, 0, CPU), batch_size=3, seed=7, start_step=4)
    assert list(itertools.islice(iter(later), 3)) == first7[4:7]
    assert len({i for b in first7[:3] for i, _ in b}) == 9  # an epoch: 3 full batches, no repeats
    assert first7[0] != first7[3]  # epochs reshuffle
    r0 = next(iter(StepBatchSampler(data, DistInfo(0, 2, 0, CPU), 2, 7, 0)))
    r1 = next(iter(StepBatchSampler(data, DistInfo(1, 2, 0, CPU), 2, 7, 0)))
    assert not {i for i, _ in r0} & {i for i, _ in r1}


def test_frozen_batchnorm_stays_in_eval():
    m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.BatchNorm2d(2))
    m[2].requires_grad_(False)
    set_train_mode(m)
    assert m.training and m[1].training and not m[2].training


def test_loss_log_truncates_on_resume_and_plot(tmp_path):
    log = LossLog(tmp_path / "log.csv")
    for step in range(4):
        log.append(step, {"l1": 1.0 / (step + 1), "grad_norm_model": 3.0}, 1e-4, float(step))
    resumed = LossLog(tmp_path / "log.csv", start_step=2)
    assert [r["step"] for r in resumed.rows] == [0, 1]
    resumed.append(2, {"l1": 0.3, "grad_norm_model": 2.0, "d_hinge": 0.9}, 1e-4, 5.0)  # a new column
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "step,l1,grad_norm_model,lr,time,d_hinge" and len(lines) == 4
    plot_losses(resumed.rows, tmp_path / "curve.png")
    assert Image.open(tmp_path / "curve.png").size == (900, 500)
    plot_losses([], tmp_path / "empty.png")


def test_learning_rate_schedules():
    import math

    import pytest

    from dcae_deploy.errors import DcaeDeployError
    from dcae_deploy.train.loop import LoopConfig, lr_multiplier

    warm = [lr_multiplier(s, 10, 4, "cosine") for s in range(4)]
    assert warm == [0.25, 0.5, 0.75, 1.0]
    cosine = [lr_multiplier(s, 10, 4, "cosine") for s in range(4, 10)]
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] > 0
    assert math.isclose(lr_multiplier(7, 10, 4, "cosine"), 0.5)  # half way through the decay
    assert [lr_multiplier(s, 10, 0, "constant") for s in (0, 9)] == [1.0, 1.0]
    with pytest.raises(DcaeDeployError, match="lr_schedule must be one of"):
        LoopConfig(steps=10, batch_size=1, lr_schedule="linear")
