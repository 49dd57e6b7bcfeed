"""Flow-matching training of the SANA denoiser: noising math, caption dropout, a short overfit run."""

from __future__ import annotations

import torch

from dcae_deploy.models.denoiser import build_denoiser, load_denoiser
from dcae_deploy.sampling import _shift
from dcae_deploy.train.data import LatentDataset
from dcae_deploy.train.denoiser import (
    DenoiserTask,
    FlowMatchingConfig,
    apply_caption_dropout,
    sample_sigmas,
    shift_sigma,
)
from dcae_deploy.train.loop import LoopConfig, run_training, seed_everything
from dcae_deploy.train.text import HashWordEncoder


def test_shift_matches_sampler_and_sigmas_in_range():
    s = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(shift_sigma(s, 3.0), torch.from_numpy(_shift(s.numpy(), 3.0)))
    torch.manual_seed(0)
    sig = sample_sigmas(4096, FlowMatchingConfig(steps=1, batch_size=1, shift=1.0), torch.device("cpu"))
    assert 0 < sig.min() and sig.max() < 1 and abs(sig.median().item() - 0.5) < 0.03  # logit-normal(0, 1)
    shifted = sample_sigmas(4096, FlowMatchingConfig(steps=1, batch_size=1, shift=3.0), torch.device("cpu"))
    assert shifted.median() > 0.7  # shift 3 moves the median to 0.75


def test_caption_dropout_uses_null_caption():
    emb, mask = torch.randn(3, 5, 4), torch.ones(3, 5)
    null_emb, null_mask = torch.randn(1, 7, 4), torch.tensor([[1.0, 0, 0, 0, 0, 0, 0]])
    out, out_mask = apply_caption_dropout(emb, mask, null_emb, null_mask, torch.tensor([True, False, True]))
    assert out.shape == (3, 7, 4) and out_mask.shape == (3, 7)
    assert torch.equal(out[0], null_emb[0]) and torch.equal(out[2], null_emb[0])
    assert torch.equal(out[1, :5], emb[1]) and not out[1, 5:].any() and out_mask[1].tolist() == [1] * 5 + [0, 0]

    model = build_denoiser("tiny-sana")
    task = DenoiserTask(model, FlowMatchingConfig(steps=1, batch_size=1, null_caption="zeros"), HashWordEncoder(64))
    z, zm = task.null_caption(torch.device("cpu"))
    assert not z.any() and not zm.any()


def _fixed_noise_loss(model, latents, emb, mask) -> float:
    """Flow-matching loss at fixed noise and sigmas (0.1 ... 0.9): a noise-free measure of progress."""
    gen = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for sigma in torch.linspace(0.1, 0.9, 5):
            noise = torch.randn(latents.shape, generator=gen)
            x_t = (1 - sigma) * latents + sigma * noise
            t = torch.full((latents.shape[0],), float(sigma) * 1000)
            total += torch.mean((model(x_t, t, emb, mask) - (noise - latents)) ** 2).item()
    return total / 5


def test_flow_matching_overfits_random_latents(tmp_path):
    seed_everything(0)
    model = build_denoiser("tiny-sana")
    latents = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    captions = ["a red circle on a blue background", "a green star on a white background"]
    encoder = HashWordEncoder(64)
    before = _fixed_noise_loss(model, latents, *encoder(captions))
    cfg = FlowMatchingConfig(steps=60, batch_size=2, lr=5e-3, caption_dropout=0.1)
    task = DenoiserTask(model, cfg, encoder, encoder_name="hash")
    result = run_training(task, LatentDataset(latents, captions), LoopConfig(steps=60, batch_size=2, log_every=20, device="cpu"), tmp_path)
    losses = torch.tensor([r["loss"] for r in result.history])
    assert torch.isfinite(losses).all()
    assert losses[-10:].mean() < losses[:10].mean(), losses  # noisy (random sigma and noise per step)
    after = _fixed_noise_loss(model.eval(), latents, *encoder(captions))
    assert after < 0.75 * before, (before, after)
    loaded = load_denoiser(tmp_path / "final", "tiny-sana")  # diffusers-layout output
    assert torch.equal(loaded.proj_out.weight, model.proj_out.weight)
    assert (tmp_path / "final" / "ema" / "diffusion_pytorch_model.safetensors").is_file()


def test_joint_text_encoder_training_updates_both_and_saves_a_pipeline_part(tmp_path):
    """demo-text trained together with the denoiser: both change, caption dropout tokenises the empty prompt."""
    from dcae_deploy.models.text_encoder import build_text_encoder, default_tokenizer, load_text_encoder
    from dcae_deploy.tokenizer import WordTokenizer

    seed_everything(0)
    text_encoder = build_text_encoder("demo-text")
    model = build_denoiser("demo-denoiser")
    before_te = text_encoder.token_embedding.weight.detach().clone()
    before_dn = model.proj_out.weight.detach().clone()
    latents = torch.randn(4, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    captions = ["a red circle on a blue background", "a green star on a white background"] * 2
    cfg = FlowMatchingConfig(steps=4, batch_size=4, lr=1e-3, caption_dropout=0.5)
    task = DenoiserTask(model, cfg, encoder_name="demo-text", text_encoder=text_encoder,
                        tokenizer=default_tokenizer("demo-text"))
    assert "trained jointly" in task.describe()
    result = run_training(task, LatentDataset(latents, captions), LoopConfig(steps=4, batch_size=4, log_every=1, device="cpu"), tmp_path)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    assert not torch.equal(text_encoder.token_embedding.weight, before_te)
    assert not torch.equal(model.proj_out.weight, before_dn)
    final = tmp_path / "final"
    loaded_te = load_text_encoder(final / "text_encoder", "demo-text")
    assert torch.equal(loaded_te.token_embedding.weight, text_encoder.token_embedding.weight)
    assert torch.equal(load_denoiser(final / "transformer", "demo-denoiser").proj_out.weight, model.proj_out.weight)
    assert WordTokenizer.load(final / "tokenizer").vocab == default_tokenizer("demo-text").vocab
    assert (final / "ema" / "text_encoder" / "model.safetensors").is_file()
