"""Class-conditional training of the DC-AE-Diffusion denoisers (UViT, USiT, DiT) on cached latents, as the release
trains them.

Reference: mit-han-lab/efficientvit at de7d7733cc0329f391b33f1f459271562ec27bd5 -- ``diffusioncore/models/uvit.py``
and ``dit.py`` (``forward(x, y)``: the training loss), ``dit_sampler/gaussian_diffusion.py`` (``training_losses``),
``sit_sampler/transport.py`` (``Transport.training_losses``), ``diffusioncore/trainer.py`` and the training commands
of ``applications/dc_ae/README.md``. Written from that reading.

The objective follows from the denoiser's ``timestep_convention`` (:data:`OBJECTIVES`, one row each):

``uvit-dpm`` (UViT, eps prediction)
    ``n ~ U{1..1000}``; ``x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps`` on the discrete VP schedule of scaled-linear
    betas ``linspace(sqrt(0.00085), sqrt(0.012), 1000)^2`` (float64, the reference's ``UViTSchedule``; to float32
    rounding, sqrt(abar_n) is the alpha of :class:`dcae_deploy.diffusion_samplers.DiscreteVPSchedule` at its knot
    ``t = n / 1000``); the model sees ``n`` as a float (the sampler's ``1000 * t``); loss ``mean((eps - model)^2)``.
``sit`` (USiT, velocity)
    ``t ~ U[0, 1]``; ``x_t = t x1 + (1 - t) x0`` with x1 the data and x0 the noise (SiT's linear path: 0 = noise,
    1 = data, as the ``sit-*`` samplers integrate it); target ``x1 - x0``; loss ``mean((model - target)^2)``.
``adm`` (DiT, eps + learned-range variance)
    ``t ~ U{0..999}``; ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` on ADM's linear betas 1e-4..0.02 (the tables
    of :class:`dcae_deploy.diffusion_samplers.RespacedDiffusion` with all 1000 steps, which is what the reference
    trains with); the "hybrid" loss of improved DDPM: ``mean_flat((eps - eps_pred)^2)`` plus, with ``learn_sigma``,
    the variational bound term of the learned variance in bits (``KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))``, the
    discretised decoder NLL at ``t = 0``) computed with the eps prediction detached, averaged over the batch.

Every objective replaces a label by the null class ``num_classes`` with probability ``class_dropout`` (the model's
``class_dropout_prob``, 0.1: what the reference's ``LabelEmbedder`` does in training; our models take the label as
given, so the task drops it). The random draws of a step come in the reference's order (times and noise as
``Objective.draw`` says, then the dropout) from the global torch RNG that the loop checkpoints, so a DiT or USiT
step on the CPU draws, and computes, what the reference's ``forward(x, y)`` does from the same torch seed (checked
bit for bit against efficientvit's code once; the tests compare with independent formulas); the reference draws
UViT's ``n`` from numpy's RNG instead (same distribution, another stream).

Optimiser and loop defaults are the release's README commands (:class:`ReleaseRecipe`): AdamW, UViT lr 2e-4, wd 0.03,
betas (0.99, 0.99); USiT lr 1e-4, wd 0, betas (0.99, 0.99); both 5000 warmup steps to a constant lr and bf16 AMP; DiT
lr 1e-4, wd 0, betas (0.9, 0.999), constant lr, fp16 AMP; EMA 0.9999, no gradient clipping; per-GPU batch 128 (UViT,
USiT) / 32 (DiT) on 8 GPUs. The loop's EMA warms its decay up as ``min(decay, (1 + s) / (10 + s))``; the release's as
``decay * (1 - exp(-s / 2000))``. On the CPU there is no AMP (fp32).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dcae_deploy.errors import CheckpointError, DcaeDeployError
from dcae_deploy.train.loop import OptimSpec

#: model(x_t (B, C, H, W), timestep float32 (B,), labels int64 (B,)) -> prediction
ClassModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: (model, x0, labels (after dropout), times, noise) -> (loss, {term: value})
LossFn = Callable[[ClassModel, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  tuple[torch.Tensor, dict[str, torch.Tensor]]]

UVIT_STEPS = 1000
ADM_STEPS = 1000


def _gather(table: np.ndarray, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table[index]`` as float32, shaped (B, 1, 1, 1) to broadcast over ``like`` (the reference's
    ``_extract_into_tensor`` / ``stp``: float64 tables, rounded to float32 after the lookup)."""
    values = torch.from_numpy(table).to(index.device)[index].float()
    return values.view(-1, *([1] * (like.ndim - 1)))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.ndim)))


# ---------------------------------------------------------------------------------------------
# UViT: eps prediction on the discrete VP schedule
# ---------------------------------------------------------------------------------------------


@functools.cache
def uvit_schedule() -> tuple[np.ndarray, np.ndarray]:
    """``(sqrt(abar_n), sqrt(1 - abar_n))`` for n = 0..1000 (float64; n = 0 is the clean data), computed as the
    reference's ``UViTSchedule``: ``cum_alphas`` a running product of ``1 - beta``, ``cum_betas`` the sum over s of
    ``beta_s * prod_{s < r <= n} alpha_r`` from s = n down (equal to ``1 - abar_n`` up to rounding)."""
    betas = np.append(0.0, (torch.linspace(0.00085**0.5, 0.012**0.5, UVIT_STEPS, dtype=torch.float64) ** 2).numpy())
    alphas = 1.0 - betas
    skip_alphas = np.ones((UVIT_STEPS + 1, UVIT_STEPS + 1))  # [s, n] = alphas[s + 1 .. n].prod(), left to right
    for s in range(UVIT_STEPS + 1):
        skip_alphas[s, s + 1 :] = alphas[s + 1 :].cumprod()
    cum_alphas = skip_alphas[0]
    cum_betas = np.zeros(UVIT_STEPS + 1)
    for n in range(1, UVIT_STEPS + 1):
        cum_betas[n] = np.cumsum((betas[1 : n + 1] * skip_alphas[1 : n + 1, n])[::-1])[-1]
    return np.sqrt(cum_alphas), np.sqrt(cum_betas)


def uvit_noise(x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps`` for integer steps ``n`` in 1..1000."""
    mean, std = uvit_schedule()
    return _gather(mean, n, x0) * x0 + _gather(std, n, x0) * noise


def draw_uvit(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, eps)``: steps uniform in 1..1000, then the noise (the reference draws ``n`` with numpy's RNG)."""
    n = torch.randint(1, UVIT_STEPS + 1, (x0.shape[0],), device=x0.device)
    return n, torch.randn_like(x0)


def uvit_eps_loss(model: ClassModel, x0, labels, n, noise):
    pred = model(uvit_noise(x0, n, noise), n.float(), labels).float()
    loss = (noise - pred).square().mean()
    return loss, {}


# ---------------------------------------------------------------------------------------------
# USiT: SiT velocity on the linear path
# ---------------------------------------------------------------------------------------------


def sit_path(x1: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SiT's linear path (``ICPlan``): ``x_t = t x1 + (1 - t) x0`` (x1 data, x0 noise) and its velocity ``x1 - x0``."""
    s = t.view(-1, *([1] * (x1.ndim - 1))).to(x1.dtype)
    return s * x1 + (1 - s) * x0, x1 - x0


def draw_sit(x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, x0)`` as ``Transport.sample`` draws them: the noise first, then ``t ~ U[0, 1)`` on the CPU."""
    x0 = torch.randn_like(x1)
    return torch.rand(x1.shape[0]).to(x1), x0


def sit_velocity_loss(model: ClassModel, x1, labels, t, noise):
    x_t, target = sit_path(x1, t, noise)
    pred = model(x_t, t.float(), labels).float()
    loss = mean_flat((pred - target) ** 2).mean()
    return loss, {}


# ---------------------------------------------------------------------------------------------
# DiT: ADM eps + learned-range variance (improved DDPM's hybrid loss)
# ---------------------------------------------------------------------------------------------


@functools.cache
def adm_diffusion():
    """ADM's 1000-step linear-beta tables (:class:`~dcae_deploy.diffusion_samplers.RespacedDiffusion` keeping every
    step: the reference's training ``create_diffusion(timestep_respacing="")``)."""
    from dcae_deploy.diffusion_samplers import RespacedDiffusion

    return RespacedDiffusion.linear(ADM_STEPS, ADM_STEPS)


def adm_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """ADM's ``q_sample``: ``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for steps ``t`` in 0..999."""
    d = adm_diffusion()
    return _gather(np.sqrt(d.alphas_cumprod), t, x0) * x0 + _gather(np.sqrt(1.0 - d.alphas_cumprod), t, x0) * noise


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """ADM's decoder log-likelihood of ``x`` under a Gaussian discretised to 8-bit bins of [-1, 1] (in nats)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def adm_vb_term(eps: torch.Tensor, var_values: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
    """(B,) the variational-bound term in bits of ADM's ``_vb_terms_bpd`` for the learned-range variance
    ``var_values`` in [-1, 1] (``frac = (v + 1) / 2`` between the clipped posterior and the beta log-variance), the
    mean from ``eps`` (pass it detached: only the variance learns from this term); the decoder NLL where t = 0."""
    d = adm_diffusion()
    coef1, coef2 = _gather(d.posterior_mean_coef1, t, x0), _gather(d.posterior_mean_coef2, t, x0)
    min_log = _gather(d.posterior_log_variance_clipped, t, x0)
    true_mean = coef1 * x0 + coef2 * x_t
    pred_x0 = _gather(d.sqrt_recip_alphas_cumprod, t, x0) * x_t - _gather(d.sqrt_recipm1_alphas_cumprod, t, x0) * eps
    model_mean = coef1 * pred_x0 + coef2 * x_t
    frac = (var_values + 1) / 2
    model_log_variance = frac * _gather(d.log_betas, t, x0) + (1 - frac) * min_log
    kl = mean_flat(normal_kl(true_mean, min_log, model_mean, model_log_variance)) / np.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    return torch.where(t == 0, mean_flat(nll) / np.log(2.0), kl)


def draw_adm(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, eps)``: steps uniform in 0..999 on the data's device, then the noise (``DiT.forward`` and
    ``training_losses``)."""
    t = torch.randint(0, ADM_STEPS, (x0.shape[0],), device=x0.device)
    return t, torch.randn_like(x0)


def adm_hybrid_loss(model: ClassModel, x0, labels, t, noise):
    x_t = adm_noise(x0, t, noise)
    out = model(x_t, t.float(), labels).float()
    channels = x0.shape[1]
    eps = out[:, :channels]
    mse = mean_flat((noise - eps) ** 2)
    if out.shape[1] == channels:  # learn_sigma=False: fixed variance, eps MSE only
        return mse.mean(), {"mse": mse.mean()}
    vb = adm_vb_term(eps.detach(), out[:, channels : 2 * channels], x0, x_t, t)
    return (mse + vb).mean(), {"mse": mse.mean(), "vb": vb.mean()}


# ---------------------------------------------------------------------------------------------
# The objective table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseRecipe:
    """One model kind's training command in the release's README (per-GPU batch on 8 GPUs; ``grad_clip`` 0: the
    release's ``clip_grad=None``)."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    amp: str
    batch_size: int
    steps: int
    ema_decay: float = 0.9999
    grad_clip: float = 0.0


@dataclass(frozen=True)
class Objective:
    """What a timestep convention trains: its random draws ``draw(x0) -> (times, noise)`` and its loss."""

    name: str
    summary: str
    draw: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    loss: LossFn
    recipe: ReleaseRecipe


OBJECTIVES: dict[str, Objective] = {
    "uvit-dpm": Objective(
        "uvit-eps", "eps prediction, n ~ U{1..1000} on the scaled-linear discrete VP schedule (0.00085..0.012)",
        draw_uvit, uvit_eps_loss,
        ReleaseRecipe(lr=2e-4, weight_decay=0.03, betas=(0.99, 0.99), warmup_steps=5000, amp="bfloat16",
                      batch_size=128, steps=500_000)),
    "sit": Objective(
        "sit-velocity", "SiT velocity x1 - x0 on the linear path x_t = t x1 + (1 - t) x0, t ~ U[0, 1]",
        draw_sit, sit_velocity_loss,
        ReleaseRecipe(lr=1e-4, weight_decay=0.0, betas=(0.99, 0.99), warmup_steps=5000, amp="bfloat16",
                      batch_size=128, steps=500_000)),
    "adm": Objective(
        "adm-hybrid", "ADM eps MSE + VLB of the learned-range variance, t ~ U{0..999}, linear betas 1e-4..0.02",
        draw_adm, adm_hybrid_loss,
        ReleaseRecipe(lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, amp="float16",
                      batch_size=32, steps=3_000_000)),
}


def objective_for(config: Any) -> Objective:
    """The objective of a class-conditional denoiser config (by its ``timestep_convention``).

    Raises:
        DcaeDeployError: the config is not a class-conditional denoiser (a SANA denoiser has no convention).
    """
    convention = getattr(config, "timestep_convention", None)
    if convention not in OBJECTIVES:
        raise DcaeDeployError(
            f"{getattr(config, 'name', config)!r} is not a class-conditional denoiser (UViT / USiT / DiT): "
            f"class-diffusion trains timestep conventions {', '.join(OBJECTIVES)}; train a SANA denoiser with the "
            "denoiser command"
        )
    return OBJECTIVES[convention]


def drop_labels(labels: torch.Tensor, prob: float, null_class: int | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Each label replaced by ``null_class`` with probability ``prob`` (the reference's
    ``LabelEmbedder.token_drop``)."""
    if prob <= 0:
        return labels
    drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


# ---------------------------------------------------------------------------------------------
# Configs and models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassDiffusionConfig:
    """Optimiser and conditioning settings; ``batch_size`` is per process. :meth:`release` fills the release's."""

    steps: int
    batch_size: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    class_dropout: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.class_dropout < 1.0:
            raise DcaeDeployError(f"class dropout must be in [0, 1), got {self.class_dropout}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise DcaeDeployError(f"lr must be positive and weight decay >= 0, got {self.lr} and {self.weight_decay}")

    @classmethod
    def release(cls, config: Any, **given: Any) -> ClassDiffusionConfig:
        """The release's settings for ``config``'s objective; ``given`` values (None: not given) override them.
        ``class_dropout`` defaults to the model's ``class_dropout_prob``."""
        recipe = objective_for(config).recipe
        defaults = {"steps": recipe.steps, "batch_size": recipe.batch_size, "lr": recipe.lr, "betas": recipe.betas,
                    "weight_decay": recipe.weight_decay, "class_dropout": config.class_dropout_prob}
        values = {k: (given[k] if given.get(k) is not None else v) for k, v in defaults.items()}
        values["betas"] = tuple(values["betas"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def denoiser_config(spec: str | Any) -> Any:
    """A class-conditional denoiser config: a registered name, a JSON file (a ``config.json`` of our save with its
    ``"format": "dcae_deploy.<family>"`` tag, or ``{"family": "uvit" | "dit", "config": {...}}``), or a config.

    Raises:
        DcaeDeployError: unknown name, unreadable file, or not a UViT / USiT / DiT.
    """
    from dcae_deploy.family import family_named
    from dcae_deploy.registry import get_variant

    if not isinstance(spec, str):
        config = spec
    elif spec.endswith(".json") or Path(spec).is_file():
        from dcae_deploy.checkpoints import read_json

        data = read_json(spec)
        family = data.get("family") or str(data.get("format", "")).removeprefix("dcae_deploy.")
        if family not in ("uvit", "dit") or not isinstance(data.get("config"), dict):
            raise DcaeDeployError(
                f"{spec} is not a UViT / DiT config: expected a config.json written by the training (\"format\": "
                "\"dcae_deploy.uvit\" or \"dcae_deploy.dit\", \"config\": {...}) or "
                "{\"family\": \"uvit\", \"config\": {...}}"
            )
        config = family_named(family).config.from_dict(data["config"])
    else:
        config = get_variant(spec, kind="denoiser")
    objective_for(config)
    return config


def build_for_training(config: Any) -> nn.Module:
    """A randomly initialised model to train from scratch (DiT with the reference's adaLN-Zero init: zero
    modulations and final layer)."""
    from dcae_deploy.family import family_of
    from dcae_deploy.models.dit import build_dit
    from dcae_deploy.models.uvit import build_uvit

    builders = {"uvit": build_uvit, "dit": functools.partial(build_dit, reference_init=True)}
    return builders[family_of(config).name](config)


def check_latents(dataset, config: Any, source: str | Path) -> None:
    """Raise a :class:`DcaeDeployError` when a latent cache cannot train ``config``: no class labels, latents of
    another shape (channels: another autoencoder; side: another resolution or compression), labels outside
    ``[0, num_classes)``."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise DcaeDeployError(
            f"the latent cache {source} has no class labels (a caption cache): cache class-labelled latents with "
            "`python -m dcae_deploy.train cache-latents --data folder:DIR` (class sub-folders or --labels FILE)"
        )
    meta = getattr(dataset, "metadata", {}) or {}
    made = (f" (from {meta.get('autoencoder_variant', 'an autoencoder')} at {meta['resolution']} px)"
            if "resolution" in meta else "")
    got = tuple(dataset.latents.shape[1:])
    side, ratio = config.input_size, config.spatial_compression_ratio
    want = (config.in_channels, side, side)
    if got[0] != want[0]:
        raise DcaeDeployError(
            f"the latents in {source} have {got[0]} channels{made}; {config.name} denoises {want[0]}-channel latents: "
            f"cache them with a {want[0]}-channel autoencoder (in_channels does not match)"
        )
    cached_ratio = meta.get("spatial_compression_ratio")
    if got != want or (cached_ratio is not None and cached_ratio != ratio):
        raise DcaeDeployError(
            f"the latents in {source} are {got}{made}; {config.name} denoises {want} latents of a {ratio}x "
            f"autoencoder ({side * ratio} px images): cache them at --resolution {side * ratio} with a {ratio}x "
            "autoencoder (autoencoder / latent size mismatch)"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= config.num_classes):
        raise DcaeDeployError(
            f"the class labels in {source} span {int(labels.min())}..{int(labels.max())}; {config.name} has "
            f"{config.num_classes} classes (labels 0..{config.num_classes - 1})"
        )


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------


class ClassDiffusionTask:
    """Class-conditional training for :func:`dcae_deploy.train.loop.run_training` (batches ``{"latent", "label"}``
    from a :class:`~dcae_deploy.train.data.LatentDataset` with labels)."""

    name = "class-diffusion"

    def __init__(self, model: nn.Module, cfg: ClassDiffusionConfig) -> None:
        self.model, self.cfg = model, cfg
        self.objective = objective_for(model.config)
        self.null_class = model.config.null_class
        if cfg.class_dropout > 0 and self.null_class is None:
            raise DcaeDeployError(
                f"{model.config.name} has no null class (class_dropout_prob 0: no label row for it), so labels cannot "
                "be dropped: train with class dropout 0"
            )

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optim_spec(self, module: str) -> OptimSpec:
        return OptimSpec(self.cfg.lr, self.cfg.betas, self.cfg.weight_decay)

    def describe(self) -> str:
        c, n = self.cfg, sum(p.numel() for p in self.model.parameters())
        return (
            f"{self.objective.name}: {self.model.config.name} ({n:,} params), {self.objective.summary}\n"
            f"AdamW lr {c.lr:g}, betas {c.betas}, wd {c.weight_decay:g}; class dropout {c.class_dropout:g} -> "
            f"label {self.null_class}"
        )

    def config_dict(self) -> dict[str, Any]:
        from dcae_deploy.family import family_of

        return {
            "variant": self.model.config.name,
            "family": family_of(self.model.config).name,
            "model_config": self.model.config.to_dict(),
            "objective": self.objective.name,
            "training": self.cfg.to_dict(),
        }

    def check_resume(self, saved: Mapping[str, Any], folder: Path) -> None:
        if saved.get("objective") not in (None, self.objective.name):
            raise CheckpointError(
                f"checkpoint {folder} trains the {saved['objective']} objective, not {self.objective.name}"
            )

    def losses(self, nets: Mapping[str, nn.Module], batch: dict[str, Any]):
        x0 = batch["latent"]
        times, noise = self.objective.draw(x0)
        labels = drop_labels(batch["label"].to(x0.device).long(), self.cfg.class_dropout, self.null_class)
        loss, terms = self.objective.loss(nets["model"], x0, labels, times, noise)
        values = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
        return {"model": loss}, values

    def save_final(self, folder: Path, model: nn.Module) -> None:
        """Our format (``config.json`` with the full config + ``model.safetensors``): ``load_uvit`` / ``load_dit``,
        ``load_parts`` and the exporter read it."""
        from dcae_deploy.family import family_of

        family_of(model.config).save_module(model, folder)


# ---------------------------------------------------------------------------------------------
# A pipeline folder from the trained parts
# ---------------------------------------------------------------------------------------------


def assemble_class_pipeline(pipeline: str, autoencoder: str | Path, denoiser: str | Path, out: str | Path, *,
                            latents: str | Path | None = None) -> Path:
    """Write a class-conditional pipeline folder (``pipeline.json``, ``vae/``, ``transformer/``) that
    :func:`dcae_deploy.models.pipeline.load_pipeline` and ``python -m dcae_deploy.export --model PIPELINE
    --checkpoint OUT`` read, from a DC-AE checkpoint and a trained denoiser (a run's ``final/`` or ``final/ema/``).

    ``latents``: the cache the denoiser was trained on, to check that it was made by this autoencoder's
    architecture and scaling factor at the pipeline's image size.

    Raises:
        DcaeDeployError: not a class pipeline; a part that is not the pipeline's variant (the message names both);
            a latent cache made otherwise.
    """
    from dcae_deploy.family import family_of
    from dcae_deploy.models.autoencoder_io import load_autoencoder
    from dcae_deploy.models.pipeline import PipelineModels, save_pipeline
    from dcae_deploy.registry import get_variant

    config = get_variant(pipeline, kind="pipeline")
    if getattr(config, "conditioning", None) != "class":
        raise DcaeDeployError(f"{config.name} is not a class-conditional pipeline (UViT / USiT / DiT + DC-AE)")
    parts = config.parts()
    ae = load_autoencoder(autoencoder, parts["autoencoder"])
    den = family_of(parts["denoiser"]).load_module(denoiser, parts["denoiser"])
    if latents is not None:
        _check_cache_fits_pipeline(Path(latents), config, ae.config)
    return save_pipeline(PipelineModels(config=config, autoencoder=ae, denoiser=den, text_encoder=None,
                                        tokenizer=None), out)


def _check_cache_fits_pipeline(folder: Path, config: Any, ae_config: Any) -> None:
    from dcae_deploy.checkpoints import read_json
    from dcae_deploy.train.data import LATENT_CAPTIONS_FILE

    index = read_json(folder / LATENT_CAPTIONS_FILE)
    problems = []
    if index.get("scaling_factor") is not None and index["scaling_factor"] != ae_config.scaling_factor:
        problems.append(f"scaling factor {index['scaling_factor']} (the pipeline's autoencoder: "
                        f"{ae_config.scaling_factor})")
    if index.get("resolution") is not None and index["resolution"] != config.image_size:
        problems.append(f"{index['resolution']} px images (the pipeline makes {config.image_size} px)")
    if index.get("latent_channels") is not None and index["latent_channels"] != ae_config.latent_channels:
        problems.append(f"{index['latent_channels']} latent channels (the pipeline's: {ae_config.latent_channels})")
    if problems:
        raise DcaeDeployError(f"the latent cache {folder} was made with {'; '.join(problems)}: the trained denoiser "
                              f"does not fit {config.name}'s autoencoder")

