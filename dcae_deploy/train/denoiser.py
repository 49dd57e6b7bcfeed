"""Rectified-flow training of the SANA denoiser on cached latents.

Per sample: ``sigma = shift(sigmoid(n))``, ``n ~ N(logit_mean, logit_std)``, with the resolution shift
``s * sigma / (1 + (s - 1) * sigma)``; ``x_t = (1 - sigma) x0 + sigma eps``; the model sees timestep
``sigma * 1000`` (times the config's ``timestep_scale``) and regresses the velocity ``eps - x0`` (MSE).
With probability ``caption_dropout`` a caption is replaced by the empty prompt's embedding (or zeros),
which is what classifier-free guidance uses as the negative branch at sampling time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.models.denoiser import SanaDenoiser, save_denoiser
from dcae_deploy.train.loop import OptimSpec

#: captions -> (embeddings (B, L, C), mask (B, L) with 1 = real token), on any device.
CaptionEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FlowMatchingConfig:
    """Denoiser training hyperparameters; ``batch_size`` is per process."""

    steps: int
    batch_size: int
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    caption_dropout: float = 0.1
    null_caption: Literal["empty_prompt", "zeros"] = "empty_prompt"

    def __post_init__(self) -> None:
        if self.shift <= 0 or self.logit_std <= 0:
            raise DcaeDeployError(f"shift and logit_std must be positive, got {self.shift} and {self.logit_std}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise DcaeDeployError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift: s * sigma / (1 + (s - 1) * sigma) (the same map the samplers use)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigmas(batch: int, cfg: FlowMatchingConfig, device: torch.device) -> torch.Tensor:
    """(B,) shifted logit-normal sigmas in (0, 1), from the global RNG."""
    n = torch.randn(batch, device=device) * cfg.logit_std + cfg.logit_mean
    return shift_sigma(torch.sigmoid(n), cfg.shift)


def _pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad axis 1 (tokens) to ``length``."""
    extra = length - x.shape[1]
    if extra <= 0:
        return x
    pad = [0, 0] * (x.ndim - 2) + [0, extra]
    return F.pad(x, pad)


def apply_caption_dropout(
    emb: torch.Tensor, mask: torch.Tensor, null_emb: torch.Tensor, null_mask: torch.Tensor, drop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace rows ``drop`` (B,) bool of (emb (B,L,C), mask (B,L)) by the null caption (1,L0,C)/(1,L0).

    Both are zero-padded (mask 0) to the longer token length.
    """
    length = max(emb.shape[1], null_emb.shape[1])
    emb, mask = _pad_tokens(emb, length), _pad_tokens(mask, length)
    null_emb = _pad_tokens(null_emb, length).to(emb.dtype)
    null_mask = _pad_tokens(null_mask, length).to(mask.dtype)
    d = drop.to(emb.device)
    return torch.where(d[:, None, None], null_emb, emb), torch.where(d[:, None], null_mask, mask)


class CaptionedDenoiser(nn.Module):
    """Denoiser + trainable text encoder as one module, so DDP, EMA and checkpoints treat them as one."""

    def __init__(self, denoiser: SanaDenoiser, text_encoder: nn.Module) -> None:
        super().__init__()
        self.denoiser, self.text_encoder = denoiser, text_encoder

    def forward(self, x_t, timestep, input_ids, attention_mask) -> torch.Tensor:
        states = self.text_encoder(input_ids, attention_mask)
        return self.denoiser(x_t, timestep, states, attention_mask.to(states.dtype))


class DenoiserTask:
    """Flow matching for :func:`dcae_deploy.train.loop.run_training` (batches ``{"latent", "caption"}``).

    Two ways to encode captions: a frozen ``encode_captions`` callable, or a trainable ``text_encoder``
    module with its ``tokenizer``, trained jointly with the denoiser (the demo model). In the joint case
    caption dropout replaces the caption by the empty prompt before tokenisation.
    """

    name = "denoiser"

    def __init__(self, model: SanaDenoiser, cfg: FlowMatchingConfig, encode_captions: CaptionEncoder | None = None,
                 encoder_name: str = "custom", *, text_encoder: nn.Module | None = None, tokenizer=None) -> None:
        if (encode_captions is None) == (text_encoder is None):
            raise ValueError("give either encode_captions (frozen) or text_encoder + tokenizer (trained jointly)")
        if text_encoder is not None and tokenizer is None:
            raise ValueError("a trainable text_encoder needs its tokenizer")
        self.model, self.cfg = model, cfg
        self.encode_captions = encode_captions
        self.encoder_name = encoder_name
        self.tokenizer = tokenizer
        self.joint = CaptionedDenoiser(model, text_encoder) if text_encoder is not None else None
        self._null: tuple[torch.Tensor, torch.Tensor] | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.joint if self.joint is not None else self.model}

    def optim_spec(self, module: str) -> OptimSpec:
        return OptimSpec(self.cfg.lr, self.cfg.betas, self.cfg.weight_decay)

    def describe(self) -> str:
        c, n = self.cfg, sum(p.numel() for p in self.model.parameters())
        return (
            f"flow matching: {self.model.config.name} ({n:,} params), lr {c.lr:g}, betas {c.betas}, wd {c.weight_decay:g}\n"
            f"sigma: logit-normal({c.logit_mean:g}, {c.logit_std:g}) shifted by {c.shift:g}; target eps - x0\n"
            f"caption dropout {c.caption_dropout:g} -> {c.null_caption}; text encoder: {self.encoder_name}"
            + (f" ({sum(p.numel() for p in self.joint.text_encoder.parameters()):,} params, trained jointly)"
               if self.joint is not None else " (frozen)")
        )

    def config_dict(self) -> dict[str, Any]:
        return {
            "variant": self.model.config.name,
            "model_config": self.model.config.to_dict(),
            "flow_matching": self.cfg.to_dict(),
            "text_encoder": self.encoder_name,
        }

    def _encode(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        emb, mask = self.encode_captions(list(captions))
        channels = self.model.config.caption_channels
        if emb.ndim != 3 or emb.shape[0] != len(captions) or emb.shape[2] != channels or mask.shape != emb.shape[:2]:
            raise DcaeDeployError(
                f"text encoder {self.encoder_name} returned embeddings {tuple(emb.shape)} and mask {tuple(mask.shape)}; "
                f"{self.model.config.name} needs ({len(captions)}, L, {channels}) and ({len(captions)}, L)"
            )
        return emb.to(device=device, dtype=torch.float32), mask.to(device=device, dtype=torch.float32)

    def null_caption(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (1, L0, C) embedding and (1, L0) mask that stand for "no caption"."""
        if self._null is None or self._null[0].device != device:
            if self.cfg.null_caption == "empty_prompt":
                self._null = self._encode([""], device)
            else:
                c = self.model.config.caption_channels
                self._null = (torch.zeros(1, 1, c, device=device), torch.zeros(1, 1, device=device))
        return self._null

    def losses(self, nets: Mapping[str, nn.Module], batch: dict[str, Any]):
        x0 = batch["latent"]
        device, b = x0.device, x0.shape[0]
        drop = torch.rand(b, device=device) < self.cfg.caption_dropout
        if self.joint is not None:
            captions = ["" if d else c for c, d in zip(batch["caption"], drop.tolist())]
            ids, mask = (torch.from_numpy(a).to(device) for a in self.tokenizer(captions))
            conditioning = (ids, mask)
        else:
            emb, mask = self._encode(batch["caption"], device)
            conditioning = apply_caption_dropout(emb, mask, *self.null_caption(device), drop)
        noise = torch.randn_like(x0)
        sigma = sample_sigmas(b, self.cfg, device)
        s = sigma.view(b, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        timestep = sigma * 1000.0 * self.model.config.timestep_scale
        pred = nets["model"](x_t, timestep, *conditioning)
        loss = F.mse_loss(pred.float(), (noise - x0).float())
        return {"model": loss}, {"loss": loss.item(), "sigma_mean": sigma.mean().item()}

    def save_final(self, folder: Path, model: nn.Module) -> None:
        """A diffusers-layout denoiser folder (:func:`dcae_deploy.models.denoiser.load_denoiser` reads it);
        when trained jointly, ``transformer/``, ``text_encoder/`` and ``tokenizer/`` sub-folders instead."""
        if isinstance(model, CaptionedDenoiser):
            from dcae_deploy.models.text_encoder import save_text_encoder

            save_denoiser(model.denoiser, folder / "transformer")
            save_text_encoder(model.text_encoder, folder / "text_encoder")
            self.tokenizer.save(folder / "tokenizer")
        else:
            save_denoiser(model, folder)
