"""The three DC-AE training phases: trainable sets, frozen parts, losses going down on a fixed batch."""

from __future__ import annotations

import pytest
import torch

from dcae_deploy.errors import CheckpointError, DcaeDeployError
from dcae_deploy.models.autoencoder import build_autoencoder
from dcae_deploy.train.autoencoder import (
    PHASES,
    AutoencoderTask,
    freeze_for_phase,
    phase_config,
    trainable_parameters,
    trainable_prefixes,
)
from dcae_deploy.train.data import ShapesImages
from dcae_deploy.train.loop import (
    LoopConfig,
    run_training,
    seed_everything,
    set_train_mode,
)
from dcae_deploy.train.perceptual import LPIPS

RESOLUTION = {"low_res_full": 32, "high_res_latent_adaptation": 64, "low_res_local_refinement": 32}


def _train(tmp_path, phase_name: str, steps: int, variant: str = "tiny-f32c32-sana"):
    seed_everything(0)
    model = build_autoencoder(variant)
    phase = phase_config(phase_name, resolution=RESOLUTION[phase_name], steps=steps, batch_size=2, lr=2e-3,
                         disc_lr=2e-3, disc_channels=8, disc_layers=2)
    task = AutoencoderTask(model, phase)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = ShapesImages(2, phase.resolution)  # one fixed batch: the loss must go down
    cfg = LoopConfig(steps=steps, batch_size=2, ema_decay=0.9, log_every=1, device="cpu")
    result = run_training(task, data, cfg, tmp_path)
    return model, before, result


@pytest.mark.parametrize("phase_name", PHASES)
def test_phase_trains_only_its_parameters(tmp_path, capsys, phase_name):
    model, before, result = _train(tmp_path, phase_name, steps=8)
    out = capsys.readouterr().out

    # The phase announces its trainable set (counts and prefixes).
    assert f"trainable parameters ({phase_name})" in out
    for prefix in trainable_prefixes(model, phase_name):
        assert prefix in out
    if phase_name == "low_res_full":
        assert "perceptual loss: off (no local weights)" in out

    # Finite, decreasing reconstruction loss on the fixed batch.
    l1 = [row["l1"] for row in result.history]
    assert len(l1) == 8 and all(torch.isfinite(torch.tensor(l1)))
    assert l1[-1] < l1[0]
    if phase_name == "low_res_local_refinement":
        assert all(torch.isfinite(torch.tensor([r["d_hinge"] for r in result.history])))

    # Exactly the intended tensors changed; every intended prefix moved.
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    intended = set(trainable_parameters(model, phase_name))
    assert changed and changed <= intended, sorted(changed - intended)[:5]
    for prefix in trainable_prefixes(model, phase_name):
        if any(k.startswith(prefix) for k in intended):
            assert any(k.startswith(prefix) for k in changed), prefix
    assert (tmp_path / "loss_curve.png").is_file() and (tmp_path / "final" / "ema" / "model.safetensors").is_file()


def test_frozen_batchnorm_keeps_statistics(tmp_path):
    """tiny-f32c32-in has BatchNorm in decoder stages 1-2: frozen in phase 2, eval mode, stats untouched."""
    model, before, _ = _train(tmp_path, "high_res_latent_adaptation", steps=2, variant="tiny-f32c32-in")
    after = model.state_dict()
    bn_keys = [k for k in after if "running_mean" in k or "running_var" in k]
    assert bn_keys
    assert all(torch.equal(after[k], before[k]) for k in bn_keys)
    set_train_mode(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)


def test_phase_sets_are_explicit():
    model = build_autoencoder("tiny-f32c32-sana")
    names = [n for n, _ in model.named_parameters()]
    full = trainable_parameters(model, "low_res_full")
    mid = trainable_parameters(model, "high_res_latent_adaptation")
    head = trainable_parameters(model, "low_res_local_refinement")
    assert set(full) == set(names)
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in mid} == {
        "encoder.down_blocks", "encoder.conv_out", "decoder.conv_in", "decoder.up_blocks"}
    assert all(n.startswith(("encoder.down_blocks.5.", "encoder.conv_out.", "decoder.conv_in.", "decoder.up_blocks.5."))
               for n in mid)
    assert all(n.startswith(("decoder.up_blocks.0.", "decoder.norm_out.", "decoder.conv_out.")) for n in head)
    assert not set(mid) & set(head)
    summary = freeze_for_phase(model, "low_res_local_refinement")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(head)
    assert "decoder.conv_out." in summary


def test_bad_phase_and_resolution():
    model = build_autoencoder("tiny-f32c32-sana")
    with pytest.raises(DcaeDeployError, match="unknown phase"):
        trainable_parameters(model, "phase4")
    with pytest.raises(DcaeDeployError, match="multiple of"):
        AutoencoderTask(model, phase_config("low_res_full", resolution=48))


def test_lpips_from_local_files(tmp_path):
    """Wiring only: weights here are random test tensors written to a file (real runs need real files)."""
    from dcae_deploy.checkpoints import write_safetensors

    torch.manual_seed(0)
    ref = LPIPS()
    state = {f"features.{k}": v for k, v in ref.features.state_dict().items()}
    state.update({f"lin{i}.model.1.weight": lin.weight.abs() for i, lin in enumerate(ref.lins)})
    path = tmp_path / "lpips.safetensors"
    write_safetensors(path, state)
    lpips = LPIPS.from_files([path])
    assert not any(p.requires_grad for p in lpips.parameters())
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2))
    assert (lpips(x, y) > 0).all()

    task = AutoencoderTask(build_autoencoder("tiny-f32c32-sana"), phase_config("low_res_full", resolution=32),
                           lpips, str(path))
    assert "perceptual loss: LPIPS-VGG16" in task.describe()
    losses, terms = task.losses({"model": task.model}, {"image": x})
    assert "perceptual" in terms and torch.isfinite(losses["model"])

    write_safetensors(tmp_path / "partial.safetensors", {"lin0.model.1.weight": state["lin0.model.1.weight"]})
    with pytest.raises(CheckpointError, match="lack"):
        LPIPS.from_files([tmp_path / "partial.safetensors"])
