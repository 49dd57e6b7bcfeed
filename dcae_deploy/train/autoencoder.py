"""DC-AE training with decoupled high-resolution adaptation (arXiv 2410.10733): three named phases.

1. ``low_res_full``: every parameter, reconstruction loss (L1 + perceptual) at low resolution.
2. ``high_res_latent_adaptation``: only the layers around the latent (encoder's deepest stage and
   ``encoder.conv_out``; ``decoder.conv_in`` and the decoder's deepest stage), reconstruction loss,
   at high resolution.
3. ``low_res_local_refinement``: only the decoder head (full-resolution decoder stage, ``norm_out``,
   ``conv_out``) with L1 + a PatchGAN hinge loss, at low resolution.

The phase structure is the paper's; the exact layer sets and hyperparameters were never published
(see shared/reference/dcae-and-sana-reference.md section 2.1). Defaults follow a third-party
reproduction (lr, betas, weight decay, resolutions) and are unverified; steps and batch sizes are
demo-scale placeholders.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dcae_deploy.errors import CheckpointError, DcaeDeployError
from dcae_deploy.models.autoencoder import DCAE
from dcae_deploy.models.autoencoder_io import save_autoencoder
from dcae_deploy.train.discriminator import (
    PatchDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
)
from dcae_deploy.train.loop import OptimSpec
from dcae_deploy.train.perceptual import LPIPS

PhaseName = Literal["low_res_full", "high_res_latent_adaptation", "low_res_local_refinement"]
PHASES: tuple[str, ...] = ("low_res_full", "high_res_latent_adaptation", "low_res_local_refinement")


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase. ``batch_size`` is per process; ``disc_*`` only matter when ``gan_weight > 0``."""

    name: PhaseName
    resolution: int
    lr: float
    steps: int
    batch_size: int
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    l1_weight: float = 1.0
    perceptual_weight: float = 0.0  # used only when local LPIPS weights are given
    gan_weight: float = 0.0
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.5, 0.9)
    disc_weight_decay: float = 0.0
    disc_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self) -> None:
        if self.name not in PHASES:
            raise DcaeDeployError(f"unknown phase {self.name!r}; phases: {', '.join(PHASES)}")
        if self.resolution < 1 or self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise DcaeDeployError(f"phase {self.name}: resolution, steps, batch_size and lr must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_PHASES: dict[str, PhaseConfig] = {
    "low_res_full": PhaseConfig(
        "low_res_full", resolution=256, lr=6.4e-5, steps=20_000, batch_size=16,
        betas=(0.9, 0.999), weight_decay=0.1, perceptual_weight=0.25,
    ),
    "high_res_latent_adaptation": PhaseConfig(
        "high_res_latent_adaptation", resolution=512, lr=1.6e-5, steps=5_000, batch_size=4,
        betas=(0.9, 0.999), weight_decay=1e-3, perceptual_weight=0.25,
    ),
    "low_res_local_refinement": PhaseConfig(
        "low_res_local_refinement", resolution=256, lr=5.4e-5, steps=5_000, batch_size=16,
        betas=(0.5, 0.9), weight_decay=0.0, gan_weight=0.5, disc_lr=5.4e-5, disc_betas=(0.5, 0.9),
    ),
}


def phase_config(name: str, **overrides: Any) -> PhaseConfig:
    """The default config of phase ``name`` with some fields replaced (None values are ignored)."""
    if name not in DEFAULT_PHASES:
        raise DcaeDeployError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
    return dataclasses.replace(DEFAULT_PHASES[name], **{k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# Which parameters train in each phase
# ---------------------------------------------------------------------------------------------


def trainable_prefixes(model: DCAE, phase: str) -> tuple[str, ...]:
    """State-dict prefixes of the parameters phase ``phase`` trains; everything else is frozen.

    Encoder stage i runs at 1/2**i resolution; ``down_blocks[-1]`` / ``up_blocks[-1]`` are the deepest
    stages (next to the latent) and ``up_blocks[0]`` the full-resolution decoder stage.
    """
    deepest = len(model.encoder.down_blocks) - 1
    if phase == "low_res_full":
        return ("encoder.", "decoder.")
    if phase == "high_res_latent_adaptation":
        return (
            f"encoder.down_blocks.{deepest}.",
            "encoder.conv_out.",
            "decoder.conv_in.",
            f"decoder.up_blocks.{deepest}.",
        )
    if phase == "low_res_local_refinement":
        return ("decoder.up_blocks.0.", "decoder.norm_out.", "decoder.conv_out.")
    raise DcaeDeployError(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")


def trainable_parameters(model: DCAE, phase: str) -> dict[str, nn.Parameter]:
    """The parameters (by name) that phase ``phase`` trains, per :func:`trainable_prefixes`."""
    prefixes = trainable_prefixes(model, phase)
    return {n: p for n, p in model.named_parameters() if n.startswith(prefixes)}


def freeze_for_phase(model: DCAE, phase: str) -> str:
    """Set ``requires_grad`` for ``phase`` (its parameters on, the rest off); returns a summary to print."""
    chosen = trainable_parameters(model, phase)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in chosen.values())
    lines = [f"trainable parameters ({phase}): {n_train:,} of {total:,} in {len(chosen)} tensors; frozen: {total - n_train:,}"]
    for prefix in trainable_prefixes(model, phase):
        params = [p for n, p in chosen.items() if n.startswith(prefix)]
        lines.append(f"  {prefix:<28} {sum(p.numel() for p in params):>12,} params in {len(params)} tensors")
    return "\n".join(lines)


@contextlib.contextmanager
def _no_param_grads(module: nn.Module):
    """Run ``module`` as a fixed function: its parameters get no gradient (and fire no DDP hooks)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------


class AutoencoderTask:
    """One DC-AE phase for :func:`dcae_deploy.train.loop.run_training` (batches ``{"image": (B,3,R,R)}``)."""

    name = "autoencoder"

    def __init__(self, model: DCAE, phase: PhaseConfig, perceptual: LPIPS | None = None, perceptual_source: str = "") -> None:
        f = model.spatial_compression_ratio
        if phase.resolution % f:
            raise DcaeDeployError(
                f"phase {phase.name}: resolution {phase.resolution} must be a multiple of {model.config.name}'s "
                f"compression ratio {f}"
            )
        self.model, self.phase = model, phase
        self.summary = freeze_for_phase(model, phase.name)
        self.perceptual = perceptual if phase.perceptual_weight > 0 else None
        self.perceptual_source = perceptual_source
        self.discriminator: PatchDiscriminator | None = None
        if phase.gan_weight > 0:
            self.discriminator = PatchDiscriminator(model.config.in_channels, phase.disc_channels, phase.disc_layers)

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"model": self.model}
        if self.discriminator is not None:
            mods["discriminator"] = self.discriminator
        return mods

    def optim_spec(self, module: str) -> OptimSpec:
        p = self.phase
        if module == "discriminator":
            return OptimSpec(p.disc_lr, p.disc_betas, p.disc_weight_decay)
        return OptimSpec(p.lr, p.betas, p.weight_decay)

    def describe(self) -> str:
        p = self.phase
        header = (
            f"phase {p.name}: {self.model.config.name} at {p.resolution}px, lr {p.lr:g}, betas {p.betas}, "
            f"weight decay {p.weight_decay:g}"
        )
        lines = [header, self.summary, f"L1 loss: weight {p.l1_weight:g}"]
        if p.perceptual_weight <= 0:
            lines.append("perceptual loss: off (not used in this phase)")
        elif self.perceptual is None:
            lines.append("perceptual loss: off (no local weights)")
        else:
            lines.append(f"perceptual loss: LPIPS-VGG16 from {self.perceptual_source}, weight {p.perceptual_weight:g}")
        if self.discriminator is not None:
            n = sum(q.numel() for q in self.discriminator.parameters())
            lines.append(f"GAN loss: PatchGAN hinge, weight {p.gan_weight:g}, discriminator {n:,} params, "
                         f"lr {p.disc_lr:g}, betas {p.disc_betas}")
        else:
            lines.append("GAN loss: off")
        return "\n".join(lines)

    def config_dict(self) -> dict[str, Any]:
        return {
            "variant": self.model.config.name,
            "model_config": self.model.config.to_dict(),
            "phase": self.phase.to_dict(),
            "perceptual": self.perceptual_source if self.perceptual is not None else None,
        }

    def check_resume(self, saved: Mapping[str, Any], folder: Path) -> None:
        """A resume continues one phase: a checkpoint of another phase trains other parameters (and maybe
        a discriminator), so its optimizer states cannot continue this one."""
        saved_phase = (saved.get("phase") or {}).get("name")
        if saved_phase is None or saved_phase == self.phase.name:
            return
        run = folder.parent.parent if folder.parent.name == "checkpoints" else folder.parent
        raise CheckpointError(
            f"checkpoint {folder} is from phase {saved_phase!r}, but --phase {self.phase.name} was asked. "
            f"--resume only continues the same phase: run with --phase {saved_phase} to finish it, or start phase "
            f"{self.phase.name} from its weights with --init {run / 'final'} (a finished run) or --init "
            f"{folder / 'model.safetensors'} instead of --resume"
        )

    def losses(self, nets: Mapping[str, nn.Module], batch: dict[str, Any]):
        p = self.phase
        images = batch["image"]
        if self.perceptual is not None and self.perceptual.shift.device != images.device:
            self.perceptual.to(images.device)
        recon = nets["model"](images)
        l1 = (recon.float() - images.float()).abs().mean()
        loss = p.l1_weight * l1
        terms = {"l1": l1.item()}
        if self.perceptual is not None:
            perceptual = self.perceptual(recon, images).mean()
            loss = loss + p.perceptual_weight * perceptual
            terms["perceptual"] = perceptual.item()
        losses = {"model": loss}
        if self.discriminator is not None:
            with _no_param_grads(self.discriminator):
                g_loss = hinge_g_loss(self.discriminator(recon))
            loss = loss + p.gan_weight * g_loss
            both = nets["discriminator"](torch.cat([images, recon.detach()]))
            real, fake = both.chunk(2)
            d_loss = hinge_d_loss(real, fake)
            losses = {"model": loss, "discriminator": d_loss}
            terms.update(g_adv=g_loss.item(), d_hinge=d_loss.item())
        terms["loss"] = loss.item()
        return losses, terms

    def save_final(self, folder: Path, model: nn.Module) -> None:
        save_autoencoder(model, folder)  # type: ignore[arg-type]
