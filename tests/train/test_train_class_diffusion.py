"""Class-conditional DC-AE-Diffusion training (issue 14): latent caching of a class-labelled image folder (alone and
under torchrun), the UViT eps / USiT velocity / DiT ADM-hybrid objectives against the samplers' tables and an
independent computation of the reference's formulas, class dropout, learning, exact resume, and the end-to-end
cache -> train -> pipeline folder -> export parity gate."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcae_deploy.checkpoints import read_state_dict
from dcae_deploy.cli import run_cli
from dcae_deploy.diffusion_samplers import DiscreteVPSchedule, RespacedDiffusion, sit_euler_sample
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.models.autoencoder import build_autoencoder
from dcae_deploy.models.autoencoder_io import load_autoencoder, save_autoencoder
from dcae_deploy.models.dit import build_dit
from dcae_deploy.models.pipeline import load_parts, load_pipeline
from dcae_deploy.models.uvit import build_uvit, load_uvit
from dcae_deploy.registry import get_variant
from dcae_deploy.train import class_diffusion as cd
from dcae_deploy.train.__main__ import main
from dcae_deploy.train.data import ClassImageFolder, LatentDataset, adm_center_crop, cache_class_latents
from dcae_deploy.train.loop import LoopConfig, run_training, seed_everything

REPO = Path(__file__).resolve().parents[2]
TINY_USIT = dataclasses.replace(get_variant("tiny-uvit"), name="tiny-usit", timestep_convention="sit",
                                description="tiny-uvit trained with the SiT objective (tests)")
CONFIGS = {"uvit": get_variant("tiny-uvit"), "usit": TINY_USIT, "dit": get_variant("tiny-dit")}


def _images(root: Path, classes=("cat", "dog", "fox"), per_class: int = 2) -> Path:
    """Random-pixel PNGs of assorted sizes (crop paths: already square, smaller, much larger) in class folders."""
    rng = np.random.default_rng(0)
    sizes = [(200, 150), (128, 128), (300, 520)]
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _autoencoder(folder: Path, variant: str = "tiny-f32c32-in") -> Path:
    torch.manual_seed(0)
    save_autoencoder(build_autoencoder(variant), folder)
    return folder


def _latents(n: int = 8, seed: int = 0) -> LatentDataset:
    """A fixed tiny class-labelled latent set: two classes with different means (a signal the label carries)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    latents = torch.randn(n, 32, 4, 4, generator=gen) * 0.5 + (labels.float() * 2 - 1).view(-1, 1, 1, 1)
    return LatentDataset(latents, labels=labels)


# ---------------------------------------------------------------------------------------------
# Noising formulas against the samplers' schedule tables
# ---------------------------------------------------------------------------------------------


def test_uvit_noising_uses_the_dpm_sampler_schedule():
    mean, std = cd.uvit_schedule()
    schedule = DiscreteVPSchedule.scaled_linear()
    n = np.arange(1, 1001)
    # the sampler's knot n sits at t = n / 1000 and the model sees 1000 t: the training step n itself
    assert np.allclose(schedule.t_knots * 1000, n, rtol=0, atol=1e-4)
    alpha = np.array([schedule.alpha(np.array([t], np.float32))[0] for t in schedule.t_knots])
    sigma = np.array([schedule.sigma(np.array([t], np.float32))[0] for t in schedule.t_knots])
    assert np.allclose(mean[1:], alpha, rtol=3e-6, atol=0) and np.allclose(std[1:], sigma, rtol=2e-4, atol=1e-6)
    assert mean[0] == 1 and std[0] == 0 and np.allclose(mean**2 + std**2, 1, atol=1e-12)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # independent: abar_n = prod (1 - beta)
    assert np.allclose(mean[1:] ** 2, np.cumprod(1 - betas), rtol=1e-12)
    x0, eps, steps = torch.randn(3, 32, 4, 4), torch.randn(3, 32, 4, 4), torch.tensor([1, 500, 1000])
    x_n = cd.uvit_noise(x0, steps, eps)
    for i, s in enumerate(steps.tolist()):
        expected = np.sqrt(np.prod(1 - betas[:s])) * x0[i] + np.sqrt(1 - np.prod(1 - betas[:s])) * eps[i]
        assert torch.allclose(x_n[i], expected.float(), atol=1e-6)


def _adm_tables() -> dict[str, np.ndarray]:
    """ADM's training tables computed here from the definition (linear betas 1e-4..0.02, float64)."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    return {"betas": betas, "abar": abar, "coef1": betas * np.sqrt(abar_prev) / (1 - abar),
            "coef2": (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar),
            "post_log_var": np.log(np.append(post_var[1], post_var[1:]))}


def test_adm_noising_matches_its_tables_and_the_respaced_sampler():
    tables = _adm_tables()
    x0, eps, t = torch.randn(4, 32, 4, 4), torch.randn(4, 32, 4, 4), torch.tensor([0, 1, 500, 999])
    x_t = cd.adm_noise(x0, t, eps)
    for i, s in enumerate(t.tolist()):
        expected = np.sqrt(tables["abar"][s]) * x0[i].double() + np.sqrt(1 - tables["abar"][s]) * eps[i].double()
        assert torch.allclose(x_t[i].double(), expected, atol=1e-6)
    # the sampler's 250 kept steps: the model sees timestep_map[i], whose abar is the training abar of that step
    respaced = RespacedDiffusion.linear(250)
    assert np.allclose(respaced.alphas_cumprod, tables["abar"][respaced.timestep_map], rtol=1e-12)
    assert respaced.timestep_map[0] == 0 and respaced.timestep_map[-1] == 999


def test_sit_path_runs_the_way_the_sampler_integrates():
    x1, x0 = torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4)
    start, target = cd.sit_path(x1, torch.zeros(2), x0)
    end, _ = cd.sit_path(x1, torch.ones(2), x0)
    assert torch.equal(start, x0) and torch.equal(end, x1) and torch.equal(target, x1 - x0)
    half, _ = cd.sit_path(x1, torch.full((2,), 0.25), x0)
    assert torch.allclose(half, 0.25 * x1 + 0.75 * x0)

    # The velocity the objective regresses, for a one-point data set {x1}: solve x_t = t x1 + (1 - t) x0 for the
    # noise and take the target. The sampler (t from 0 = noise to 1 = data) must carry noise to x1.
    def velocity(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        tt, xt = torch.from_numpy(t), torch.from_numpy(x)
        noise = (xt - tt.view(-1, 1, 1, 1) * x1) / (1 - tt.view(-1, 1, 1, 1))
        return cd.sit_path(x1, tt, noise)[1].numpy()

    out = sit_euler_sample(velocity, x0.numpy(), steps=20)
    assert np.allclose(out, x1.numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Losses of one batch against an independent computation of the reference's formulas
# ---------------------------------------------------------------------------------------------


def _approx_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _reference_hybrid(out: np.ndarray, x0: np.ndarray, noise: np.ndarray,
                      t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """improved-DDPM / ADM ``training_losses`` (MSE + VB of the learned range) per sample, in float64 numpy, from
    the definitions: ``(mse, vb)``, the loss being ``mean(mse + vb)``."""
    tb = _adm_tables()
    c = x0.shape[1]
    col = lambda name: tb[name][t][:, None, None, None]  # noqa: E731
    abar = col("abar")
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
    eps, v = out[:, :c], out[:, c:]
    mse = ((noise - eps) ** 2).mean(axis=(1, 2, 3))
    true_mean = col("coef1") * x0 + col("coef2") * x_t
    true_log_var = col("post_log_var")
    pred_x0 = np.sqrt(1 / abar) * x_t - np.sqrt(1 / abar - 1) * eps
    model_mean = col("coef1") * pred_x0 + col("coef2") * x_t
    frac = (v + 1) / 2
    log_var = frac * np.log(col("betas")) + (1 - frac) * true_log_var
    kl = 0.5 * (-1 + log_var - true_log_var + np.exp(true_log_var - log_var)
                + (true_mean - model_mean) ** 2 * np.exp(-log_var))
    kl = kl.mean(axis=(1, 2, 3)) / np.log(2)
    inv = np.exp(-0.5 * log_var)
    plus, minus = _approx_cdf(inv * (x0 - model_mean + 1 / 255)), _approx_cdf(inv * (x0 - model_mean - 1 / 255))
    log = lambda x: np.log(np.maximum(x, 1e-12))  # noqa: E731
    log_prob = np.where(x0 < -0.999, log(plus), np.where(x0 > 0.999, log(1 - minus), log(plus - minus)))
    nll = -log_prob.mean(axis=(1, 2, 3)) / np.log(2)
    return mse, np.where(t == 0, nll, kl)


def test_dit_hybrid_loss_matches_the_reference_formula():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 32, 4, 4, generator=gen) * 2.2 - 1.1  # some beyond [-1, 1]: the decoder NLL's edge bins
    noise, labels = torch.randn(5, 32, 4, 4, generator=gen), torch.tensor([0, 3, 999, 1000, 7])
    t = torch.tensor([0, 1, 2, 500, 999])  # t = 0: the decoder NLL; else the KL
    as_numpy = lambda *ts: [x.double().numpy() for x in ts]  # noqa: E731

    # the formula, for a given output (eps near the noise, variance values across [-1, 1])
    out = torch.cat([noise + 0.05 * torch.randn(5, 32, 4, 4, generator=gen),
                     torch.rand(5, 32, 4, 4, generator=gen) * 2 - 1], dim=1)
    loss, terms = cd.adm_hybrid_loss(lambda *_: out, x0, labels, t, noise)
    mse, vb = _reference_hybrid(*as_numpy(out, x0, noise), t.numpy())
    assert abs(loss.item() - (mse + vb).mean()) < 1e-5 * (mse + vb).mean(), (loss.item(), (mse + vb).mean())
    assert abs(terms["vb"].item() - vb.mean()) < 1e-5 * vb.mean() and terms["vb"].item() > 0.1 * loss.item()
    x_t = cd.adm_noise(x0, t, noise)
    assert np.allclose(cd.adm_vb_term(out[:, :32], out[:, 32:], x0, x_t, t).numpy(), vb, rtol=1e-5)

    # a real DiT: the noised input and the float timestep reach it (the t = 0 decoder NLL of an untrained model sits
    # in the float32 tail of the CDF difference, so it is compared above only)
    torch.manual_seed(0)
    model = build_dit("tiny-dit").eval()
    with torch.no_grad():
        loss, terms = cd.adm_hybrid_loss(model, x0, labels, t, noise)
        out = model(x_t, t.float(), labels)
    mse, vb = _reference_hybrid(*as_numpy(out, x0, noise), t.numpy())
    assert abs(terms["mse"].item() - mse.mean()) < 1e-5 * mse.mean()
    assert np.allclose(cd.adm_vb_term(out[:, :32], out[:, 32:], x0, x_t, t).numpy()[1:], vb[1:], rtol=1e-4)

    # the VB term trains only the variance: the eps channels get the MSE gradient alone
    output = out.clone().requires_grad_(True)
    loss, _ = cd.adm_hybrid_loss(lambda *_: output, x0, labels, t, noise)
    loss.backward()
    mse_grad = -2 * (noise - out[:, :32]) / (32 * 16) / 5
    assert torch.allclose(output.grad[:, :32], mse_grad, atol=1e-7)
    assert output.grad[:, 32:].abs().sum() > 0


def test_uvit_and_sit_losses_match_their_formulas():
    torch.manual_seed(0)
    x0, noise, labels = torch.randn(4, 32, 4, 4), torch.randn(4, 32, 4, 4), torch.tensor([1, 2, 3, 1000])
    uvit = build_uvit("tiny-uvit").eval()
    n = torch.tensor([1, 10, 500, 1000])
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    abar = torch.tensor([np.prod(1 - betas[:s]) for s in n.tolist()]).view(-1, 1, 1, 1)
    with torch.no_grad():
        loss, _ = cd.uvit_eps_loss(uvit, x0, labels, n, noise)
        x_n = (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).float()
        expected = ((noise - uvit(x_n, n.float(), labels)) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)

    usit = build_uvit(TINY_USIT).eval()
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    with torch.no_grad():
        loss, _ = cd.sit_velocity_loss(usit, x0, labels, t, noise)
        s = t.view(-1, 1, 1, 1)
        expected = ((usit(s * x0 + (1 - s) * noise, t, labels) - (x0 - noise)) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-6)


def test_objective_table_and_release_settings():
    assert {c: cd.objective_for(config).name for c, config in CONFIGS.items()} == {
        "uvit": "uvit-eps", "usit": "sit-velocity", "dit": "adm-hybrid"}
    uvit = cd.ClassDiffusionConfig.release(CONFIGS["uvit"])
    assert (uvit.lr, uvit.weight_decay, uvit.betas, uvit.class_dropout) == (2e-4, 0.03, (0.99, 0.99), 0.1)
    dit = cd.ClassDiffusionConfig.release(CONFIGS["dit"], lr=3e-4, batch_size=4)
    assert (dit.lr, dit.weight_decay, dit.betas, dit.batch_size) == (3e-4, 0.0, (0.9, 0.999), 4)
    assert cd.OBJECTIVES["adm"].recipe.amp == "float16" and cd.OBJECTIVES["sit"].recipe.warmup_steps == 5000
    with pytest.raises(DcaeDeployError, match="not a class-conditional denoiser"):
        cd.objective_for(get_variant("tiny-sana"))


def test_class_dropout_rate():
    labels = torch.randint(0, 1000, (50_000,))
    gen = torch.Generator().manual_seed(0)
    dropped = cd.drop_labels(labels, 0.1, 1000, generator=gen)
    null = dropped == 1000
    assert abs(null.float().mean().item() - 0.1) < 0.006  # 4.5 standard deviations
    assert torch.equal(dropped[~null], labels[~null])
    assert torch.equal(cd.drop_labels(labels, 0.0, 1000), labels)

    # the task drops with the model's class_dropout_prob before the model sees the labels
    seen = []
    model = build_uvit("tiny-uvit")
    task = cd.ClassDiffusionTask(model, cd.ClassDiffusionConfig.release(model.config, steps=1, batch_size=4000))

    def recording(x, t, y):
        seen.append(y.clone())
        return model(x, t, y)

    torch.manual_seed(1)
    batch = {"latent": torch.randn(4000, 32, 4, 4), "label": torch.randint(0, 1000, (4000,))}
    with torch.no_grad():
        task.losses({"model": recording}, batch)
    rate = (seen[0] == 1000).float().mean().item()
    assert abs(rate - 0.1) < 0.02 and not (batch["label"] == 1000).any()
    no_null = dataclasses.replace(get_variant("tiny-uvit"), name="tiny-uvit-no-null", class_dropout_prob=0.0)
    with pytest.raises(DcaeDeployError, match="no null class"):
        cd.ClassDiffusionTask(build_uvit(no_null), cd.ClassDiffusionConfig.release(get_variant("tiny-uvit")))


# ---------------------------------------------------------------------------------------------
# Training: learning, exact resume
# ---------------------------------------------------------------------------------------------


def _fixed_draw_loss(objective: cd.Objective, model, data: LatentDataset) -> float:
    """The objective's loss at fixed times and noise (several draws): a noise-free measure of progress."""
    gen = torch.Generator().manual_seed(123)
    total = 0.0
    x0, labels = data.latents, data.labels
    with torch.no_grad():
        for _ in range(4):
            state = torch.get_rng_state()
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
            times, noise = objective.draw(x0)
            torch.set_rng_state(state)
            total += objective.loss(model, x0, labels, times, noise)[0].item()
    return total / 4


@pytest.mark.parametrize("kind", ["uvit", "usit", "dit"])
def test_each_objective_learns_the_tiny_latent_set(tmp_path, kind):
    seed_everything(0)
    config = CONFIGS[kind]
    model = cd.build_for_training(config)
    data = _latents()
    objective = cd.objective_for(config)
    before = _fixed_draw_loss(objective, model.eval(), data)
    cfg = cd.ClassDiffusionConfig.release(config, steps=40, batch_size=8, lr=3e-3, weight_decay=0.0)
    task = cd.ClassDiffusionTask(model, cfg)
    result = run_training(task, data, LoopConfig(steps=40, batch_size=8, ema_decay=0.9, log_every=100, device="cpu"),
                          tmp_path)
    losses = torch.tensor([r["loss"] for r in result.history])
    assert torch.isfinite(losses).all()
    after = _fixed_draw_loss(objective, model.eval(), data)
    assert after < 0.8 * before, (kind, before, after)
    if kind == "dit":
        assert {"mse", "vb"} <= result.history[0].keys()
    # final/ and final/ema/ in our format: load_parts (export's loader) and load_uvit read them
    for folder in (tmp_path / "final", tmp_path / "final" / "ema"):
        loaded = (load_uvit(folder) if kind == "usit" else load_parts(config, folder).denoiser)
        assert loaded.config == config
    trained = load_parts(config, tmp_path / "final").denoiser if kind != "usit" else load_uvit(tmp_path / "final")
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), model.state_dict().values()))


N = 3  # checkpoint after N steps (mid-epoch: 4 batches per epoch), then one more step


@pytest.mark.parametrize("kind", ["uvit", "usit", "dit"])
def test_resume_is_exact(tmp_path, kind):
    def make(init_seed: int):
        seed_everything(init_seed)
        model = cd.build_for_training(CONFIGS[kind])
        cfg = cd.ClassDiffusionConfig.release(CONFIGS[kind], steps=N + 1, batch_size=2, lr=1e-3)
        return cd.ClassDiffusionTask(model, cfg), _latents()

    cfg = LoopConfig(steps=N + 1, batch_size=2, ema_decay=0.5, checkpoint_every=N, log_every=100, device="cpu")
    full = run_training(*make(0), cfg, tmp_path / "full")
    resumed = run_training(*make(123), cfg, tmp_path / "resumed",
                           resume=tmp_path / "full" / "checkpoints" / f"step-{N:07d}")
    assert [r["step"] for r in resumed.history] == [N]
    assert resumed.history[0]["loss"] == full.history[N]["loss"]  # bit for bit
    a, b = (tmp_path / run / "checkpoints" / f"step-{N + 1:07d}" for run in ("full", "resumed"))
    for name in ("model.safetensors", "ema.safetensors"):
        sa, sb = read_state_dict(a / name), read_state_dict(b / name)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name


# ---------------------------------------------------------------------------------------------
# Latent caching and the command line
# ---------------------------------------------------------------------------------------------


def test_class_image_folder_labels_crop_and_errors(tmp_path):
    root = _images(tmp_path / "images")
    (root / "stray.png").write_bytes((root / "cat" / "0.png").read_bytes())
    images = ClassImageFolder(root, 128)
    assert images.classes == ["cat", "dog", "fox"] and images.labels == [0, 0, 1, 1, 2, 2]
    assert [p.name for p in images.skipped] == ["stray.png"]
    item = images[3]
    assert item["image"].shape == (3, 128, 128) and item["label"] == 1
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    with Image.open(root / "dog" / "1.png") as im:  # 128 x 128 already: no resampling at all
        assert torch.equal(item["image"], torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 * 2 - 1)
    big = Image.new("RGB", (600, 300))
    big.paste((255, 0, 0), (0, 0, 120, 300))  # red at the left edge: cut away by the center crop
    assert np.array(adm_center_crop(big, 128))[:, :, 0].max() == 0 and adm_center_crop(big, 128).size == (128, 128)

    labels = tmp_path / "labels.txt"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    labels.write_text("# file label\n" + "".join(f"{f} {i * 7}\n" for i, f in enumerate(files)))
    listed = ClassImageFolder(root, 64, labels)
    assert listed.classes is None and listed.labels == [i * 7 for i in range(len(files))] and listed.num_labels == 43

    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes((root / "cat" / "0.png").read_bytes())
    with pytest.raises(DcaeDeployError, match="class labels are missing.*no class sub-folders.*--labels"):
        ClassImageFolder(flat, 128)
    (root / "empty").mkdir()
    with pytest.raises(DcaeDeployError, match="hold no images \\(empty"):
        ClassImageFolder(root, 128)
    labels.write_text(f"{files[0]} 1\n")
    with pytest.raises(DcaeDeployError, match="class labels are missing for 6 of the 7 images"):
        ClassImageFolder(root, 128, labels)
    labels.write_text(f"{files[0]} one\n")
    with pytest.raises(DcaeDeployError, match="labels.txt:1: expected"):
        ClassImageFolder(root, 128, labels)
    labels.write_text("nope.png 1\n")
    with pytest.raises(DcaeDeployError, match="'nope.png' is not an image under"):
        ClassImageFolder(root, 128, labels)


def test_cache_and_train_commands_and_their_user_errors(tmp_path, capsys):
    root, ae = _images(tmp_path / "images"), _autoencoder(tmp_path / "ae")
    lat = tmp_path / "lat"
    args = ["cache-latents", "--autoencoder", str(ae), "--data", f"folder:{root}", "--resolution", "128",
            "--out", str(lat), "--batch-size", "4", "--device", "cpu"]
    assert run_cli(main, args) == 0
    assert "caching latents of 6 images (3 class folders) at 128px" in capsys.readouterr().out
    cache = LatentDataset.load(lat)
    assert cache.latents.shape == (6, 32, 4, 4) and cache.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert cache.captions is None and cache[(5, 0)]["label"] == 2
    meta = cache.metadata
    assert (meta["scaling_factor"], meta["resolution"], meta["crop"], meta["classes"]) == (
        0.3189, 128, "adm-center", ["cat", "dog", "fox"])
    assert meta["files"][2] == "dog/0.png" and not (lat / ".partial").exists()
    assert run_cli(main, args) == 1 and "already holds a latent cache" in capsys.readouterr().err

    # user errors, each with its own message
    errors = {
        "not a multiple of tiny-f32c32-in's spatial compression 32": [
            "cache-latents", "--autoencoder", str(ae), "--data", f"folder:{root}", "--resolution", "100", "--out",
            str(tmp_path / "x"), "--device", "cpu"],
        "neither a checkpoint": ["cache-latents", "--autoencoder", "no-such-ae", "--data", f"folder:{root}", "--out",
                                 str(tmp_path / "x"), "--device", "cpu"],
    }
    small = tmp_path / "lat64"  # 64 px: 2 x 2 latents, not tiny-uvit's 4 x 4
    assert run_cli(main, [*args[:5], "--resolution", "64", "--out", str(small), "--device", "cpu"]) == 0
    wide = tmp_path / "lat128ch"  # a 128-channel autoencoder
    assert run_cli(main, ["cache-latents", "--autoencoder", "tiny-f64c128-mix", "--data", f"folder:{root}",
                          "--resolution", "128", "--out", str(wide), "--device", "cpu"]) == 0
    captions = tmp_path / "captions"
    LatentDataset(torch.randn(4, 32, 4, 4), ["a", "b", "c", "d"]).save(captions)
    train = ["class-diffusion", "--variant", "tiny-uvit", "--out", str(tmp_path / "run"), "--steps", "1",
             "--batch-size", "2", "--device", "cpu"]
    errors["cache them at --resolution 128 with a 32x autoencoder (autoencoder / latent size mismatch)"] = [
        *train, "--latents", str(small)]
    errors["have 128 channels (from tiny-f64c128-mix at 128 px); tiny-uvit denoises 32-channel"] = [
        *train, "--latents", str(wide)]
    errors["has no class labels (a caption cache)"] = [*train, "--latents", str(captions)]
    errors["holds class labels, not captions"] = ["denoiser", "--variant", "tiny-sana", "--latents", str(lat), "--out",
                                                  str(tmp_path / "x"), "--device", "cpu"]
    errors["is not a class-conditional denoiser"] = [*train, "--latents", str(lat), "--variant", "tiny-sana"]
    errors["is not a latent cache"] = [*train, "--latents", str(tmp_path / "nothing")]
    capsys.readouterr()
    for message, argv in errors.items():
        assert run_cli(main, argv) == 1, message
        assert message in capsys.readouterr().err, message

    # USiT from a JSON config (no tiny USiT is registered): the objective follows the config's convention
    spec = tmp_path / "tiny-usit.json"
    spec.write_text(json.dumps({"family": "uvit", "config": TINY_USIT.to_dict()}))
    run = tmp_path / "usit"
    assert run_cli(main, ["class-diffusion", "--variant", str(spec), "--latents", str(lat), "--out", str(run),
                          "--steps", "2", "--batch-size", "3", "--device", "cpu", "--log-every", "1"]) == 0
    out = capsys.readouterr().out
    assert "sit-velocity: tiny-usit" in out and "AdamW lr 0.0001, betas (0.99, 0.99), wd 0" in out
    saved = json.loads((run / "checkpoints" / "step-0000002" / "config.json").read_text())
    assert saved["loop_config"]["warmup_steps"] == 5000 and saved["loop_config"]["grad_clip"] == 0.0
    assert saved["loop_config"]["ema_decay"] == 0.9999 and saved["task_config"]["objective"] == "sit-velocity"
    assert load_uvit(run / "final" / "ema").config == TINY_USIT


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "-m", "dcae_deploy.train", *args, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_torchrun_caching_equals_one_process_and_trains(tmp_path):
    root, ae = _images(tmp_path / "images", per_class=3), _autoencoder(tmp_path / "ae")  # 9 images: shards 5 + 4
    one = cache_class_latents(load_autoencoder(ae), ClassImageFolder(root, 128), tmp_path / "one", batch_size=1,
                              progress=False)
    two = tmp_path / "two"
    proc = _torchrun(["cache-latents", "--autoencoder", str(ae), "--data", f"folder:{root}", "--resolution", "128",
                      "--batch-size", "1", "--out", str(two)])
    assert "on 2 process(es)" in proc.stdout and "wrote 9 latents" in proc.stdout
    a, b = LatentDataset.load(one), LatentDataset.load(two)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.labels, b.labels)  # same cache, same order
    assert a.metadata["files"] == b.metadata["files"] and not (two / ".partial").exists()

    run = tmp_path / "run"
    proc = _torchrun(["class-diffusion", "--variant", "tiny-dit", "--latents", str(two), "--out", str(run),
                      "--steps", "2", "--batch-size", "2", "--checkpoint-every", "2", "--log-every", "1"])
    assert "2 process(es)" in proc.stdout and "adm-hybrid: tiny-dit" in proc.stdout
    sums = [(run / "replicas" / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert sums[0] == sums[1]  # DDP kept the replicas identical
    assert (run / "checkpoints" / "step-0000002" / "rng-rank1.pt").is_file()
    assert load_parts(get_variant("tiny-dit"), run / "final" / "ema").denoiser.config.name == "tiny-dit"
    assert len((run / "loss_log.csv").read_text().splitlines()) == 1 + 2


def test_end_to_end_cache_train_assemble_export(tmp_path, capsys):
    from dcae_deploy.export.__main__ import main as export_main

    pytest.importorskip("onnxruntime")
    root, ae = _images(tmp_path / "images"), _autoencoder(tmp_path / "ae")
    lat, run, pipe, exported = (tmp_path / name for name in ("lat", "run", "pipeline", "export"))
    assert run_cli(main, ["cache-latents", "--autoencoder", str(ae), "--data", f"folder:{root}", "--resolution", "128",
                          "--out", str(lat), "--device", "cpu"]) == 0
    assert run_cli(main, ["class-diffusion", "--variant", "tiny-uvit", "--latents", str(lat), "--out", str(run),
                          "--steps", "3", "--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "0",
                          "--device", "cpu"]) == 0
    assert run_cli(main, ["class-pipeline", "--pipeline", "tiny-uvit-c2i", "--autoencoder", str(ae), "--denoiser",
                          str(run / "final" / "ema"), "--latents", str(lat), "--out", str(pipe)]) == 0
    models = load_pipeline(pipe)
    trained = load_uvit(run / "final" / "ema")
    assert models.config.name == "tiny-uvit-c2i"
    assert all(torch.equal(a, b) for a, b in zip(models.denoiser.state_dict().values(), trained.state_dict().values()))
    expected_ae = load_autoencoder(ae).state_dict()
    assert all(torch.equal(v, expected_ae[k]) for k, v in models.autoencoder.state_dict().items())
    capsys.readouterr()
    assert run_cli(export_main, ["--model", "tiny-uvit-c2i", "--checkpoint", str(pipe), "--components", "denoiser",
                                 "--min-res", "128", "--opt-res", "128", "--max-res", "128", "--max-batch", "1",
                                 "--output", str(exported)]) == 0
    parity = json.loads((exported / "parity.json").read_text())
    assert parity["passed"] and parity["records"] and all(r["passed"] for r in parity["records"])

    # the pipeline refuses parts of other variants, and a cache made at another size
    with pytest.raises(DcaeDeployError, match="'dcae_deploy.uvit' save, not a DiT"):
        cd.assemble_class_pipeline("tiny-dit-c2i", ae, run / "final" / "ema", tmp_path / "p2")
    small = tmp_path / "lat64"
    assert run_cli(main, ["cache-latents", "--autoencoder", str(ae), "--data", f"folder:{root}", "--resolution", "64",
                          "--out", str(small), "--device", "cpu"]) == 0
    with pytest.raises(DcaeDeployError, match="64 px images \\(the pipeline makes 128 px\\)"):
        cd.assemble_class_pipeline("tiny-uvit-c2i", ae, run / "final" / "ema", tmp_path / "p3", latents=small)
