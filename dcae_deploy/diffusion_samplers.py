"""Class-conditional samplers of the DC-AE-Diffusion models (efficientvit UViT, DiT, USiT), torch-free.

Everything here is numpy (no torch, no scipy): the runtime calls its models through numpy, and PyTorch
evaluation wraps a torch model in the same numpy callback. The model is always reached through one raw,
batched call ``raw(x: float32 [B, C, H, W], t: float32 [B], y: int64 [B]) -> np.ndarray``; a classifier-free
guidance wrapper (:func:`guide_two_calls`, :func:`guide_batched`) turns it into the guided function
``fn(x, t) -> prediction`` that a sampler integrates. :data:`CLASS_SAMPLERS` is the one table of sampler
names, and :func:`sample_class_conditional` the one entry point.

Reference: mit-han-lab/efficientvit at de7d7733cc0329f391b33f1f459271562ec27bd5,
``efficientvit/diffusioncore/models/{uvit,dit}.py`` and their ``uvit_sampler/``, ``dit_sampler/`` and
``sit_sampler/`` packages (torchdiffeq 0.2.5 for the SiT ODE). The code below is written from that reading,
and ``tests/test_diffusion_samplers.py`` checks it against golden outputs of the reference run on a CPU
(``tests/data/dcae_diffusion_samplers/generate_goldens.py``).

``dpm-solver++-uvit`` (UViT; the model returns eps)
    DPM-Solver++ (data prediction, ``solver_type="dpm_solver"``) in the reference's "fast" singlestep form
    with order 3 over the discrete VP schedule ``beta = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2``,
    ``log alpha = 0.5 * cumsum(log(1 - beta))`` (float32) on the knots ``t = linspace(1/1000, 1, 1000)``;
    ``log alpha(t)`` and its inverse ``t(lambda)`` are piecewise-linear interpolations between the knots
    (straight-line extension outside). The order list is that of ``K = steps // 3 + 1``
    (``[3] * (K - 2) + [2, 1]`` when ``steps % 3 == 0``, ``[3] * (K - 1) + [1]`` when ``== 1``,
    ``[3] * (K - 1) + [2]`` when ``== 2``; the orders sum to ``steps``), but the time grid is built with
    ``N = steps``: ``linspace(1, 1/1000, steps + 1)`` (uniform in time), and an order-k step spans k grid
    intervals; its intermediate points are placed at the lambda ratios ``r1, r2`` of the neighbouring grid
    points, then mapped back to times through ``inverse_lambda``. NFE = ``steps`` (30 by default), each one
    model call at ``t = t_continuous * 1000`` (float, in ``[1, 1000]``, fractional at intermediate points).

    How this differs from upstream DPM-Solver (LuChengTHU/dpm-solver, the "fast" / ``"singlestep"`` method
    with the same order list): upstream builds its grid with ``K`` intervals (one interval per order-k step)
    and uses fixed ratios ``r1 = 1/3, r2 = 2/3`` (order 2: ``r1 = 1/2``), and its discrete-time model wrapper
    feeds ``1000 * (t - 1/N)`` in ``[0, 999]``; here the grid has ``steps`` intervals, the ratios come from
    the grid, and the model sees ``1000 * t``. diffusers'
    ``DPMSolverSinglestepScheduler`` works on integer timesteps and the ``alphas_cumprod`` table itself
    (no piecewise-linear ``log alpha`` / ``inverse_lambda``), evaluates the model only at grid timesteps,
    and has its own order list and final-step rules; none of them reproduce the numbers of this sampler.

``adm`` (DiT; the model returns eps in the first C channels and learned-range variance values in the next C)
    ADM ancestral sampling (``create_diffusion("250")``): linear beta from 1e-4 to 0.02 over 1000 steps,
    float64 tables, respaced to ``steps`` kept timesteps (one section, fractional stride with Python
    rounding; the respaced betas are ``1 - alphas_cumprod[i] / alphas_cumprod[previous kept]``); the model
    sees the original index (0..999) as a float. Log-variance ``frac * log(beta_t) + (1 - frac) *
    log(posterior variance, clipped)`` with ``frac = (v + 1) / 2``; ``clip_denoised=False``; no noise at the
    last step. Per-step noise comes from the numpy Generator the caller passes (float32 standard normals,
    drawn for every step but the last) or from a ``step_noise(step, shape)`` provider; the reference draws
    it with ``torch.randn_like`` from torch's *global* RNG over the doubled CFG batch, so our noise stream
    differs from the reference's and parity is tested by injecting the same noise into both.

``ddim`` (DiT; ours, not a sampler efficientvit uses for its released models)
    Deterministic DDIM (eta = 0) over the same respaced schedule, from the eps channels only
    (``x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps``, ``x <- sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps``);
    it equals the reference's ``ddim_sample_loop(eta=0)`` to float32 rounding. 50 steps by default.

``sit-dopri5``, ``sit-heun``, ``sit-euler`` (USiT; the model returns the velocity ``x_data - noise``)
    SiT's linear path ``x_t = t * x_data + (1 - t) * noise``, integrated from t = 0 (noise) to 1 (data); the
    model sees t in [0, 1]. ``sit-dopri5`` is torchdiffeq's adaptive Dormand-Prince 5(4) with the
    reference's ``atol=1e-6, rtol=1e-3`` (float32 state, float64 time and error control, initial step by
    Hairer's rule, RMS error norm over the whole batch, safety 0.9, growth at most 10x, shrink at least 0.2x,
    the stages at a step's end evaluated one float32 ulp below it, the last step allowed to pass t = 1 and
    the result interpolated at t = 1 with the 4th-order dense output). Its NFE is data dependent
    (2 + 6 per attempted step); the reference's ``num_steps=250`` is only an output grid that does not
    change the result, so it takes no ``steps``. Because step sizes are shared by the batch, a sample depends
    on its batch mates, as in the reference. ``sit-heun`` / ``sit-euler`` are torchdiffeq's fixed-grid
    ``heun2`` / ``euler`` on ``linspace(0, 1, steps + 1)``: the reference's ``sample_ode(num_steps=N)`` is
    ``steps = N - 1`` here (the default, 249, is ``ODE_heun2`` with 250 points; Heun costs 2 NFE a step).

Classifier-free guidance, as the reference (the null label is 1000 by default). UViT: two B-sized calls,
conditional then unconditional, ``eps = cond + (s - 1) * (cond - uncond)``. DiT and USiT: one 2B call on
``[x, x]`` with labels ``[y, null]``, ``uncond + s * (cond - uncond)`` on the first C channels, and the
remaining (variance) channels of the conditional half. With ``s == 1`` exactly, one un-guided B-sized
call with the real labels (any other scale, including values below 1, guides).

Float32 arithmetic follows the reference's order of operations. What cannot be reproduced bit for bit is
said where it happens: float32 ``log`` / ``exp`` / ``expm1`` / ``sin`` differ by an ulp between numpy, torch
CPU and CUDA, torch's float32 ``linspace`` differs by an ulp between CPU (vectorised) and CUDA (per element)
where ours is the float64 grid rounded to float32, and torch accumulates the float32 ``cumsum`` in double on
the CPU but in float32 on CUDA (ours: double, then rounded). The golden tests state the errors this leaves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import numpy as np

from dcae_deploy.errors import DcaeDeployError

__all__ = [
    "CLASS_SAMPLERS",
    "NULL_LABEL",
    "ClassSampler",
    "DiscreteVPSchedule",
    "Dopri5Stats",
    "GuidedFn",
    "Progress",
    "RawModel",
    "RespacedDiffusion",
    "StepNoise",
    "adm_sample",
    "ddim_sample",
    "dpm_solver_fast_orders",
    "dpm_solver_pp_sample",
    "guide_batched",
    "guide_two_calls",
    "sample_class_conditional",
    "sit_dopri5_sample",
    "sit_euler_sample",
    "sit_heun_sample",
    "space_timesteps",
]

RawModel = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``raw(x float32 [B, C, H, W], t float32 [B], y int64 [B]) -> prediction [B, C', H, W]``."""
GuidedFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``fn(x float32 [B, C, H, W], t float32 [B]) -> prediction``: a raw model with its labels and guidance bound."""
StepNoise = Callable[[int, tuple[int, ...]], np.ndarray]
"""``step_noise(step, shape) -> float32 noise``: the ancestral noise added after sampling step ``step``
(0 = the first, noisiest step; never called for the last step)."""
Progress = Callable[[int, "int | None"], None]
"""``callback(evaluations_done, evaluations_expected)`` after each guided model evaluation (None when the
count is data dependent: ``sit-dopri5``)."""

NULL_LABEL = 1000
_F32 = np.float32


def _f32(value: Any) -> np.ndarray:
    """A float32 array of shape (1,): schedule scalars stay float32 under NumPy 1 and 2 promotion rules."""
    return np.asarray(value, dtype=np.float32).reshape(1)


def _linspace32(start: float, end: float, num: int) -> np.ndarray:
    """A float32 grid: the float64 ``linspace`` rounded (torch's float32 linspace can differ by an ulp)."""
    return np.linspace(start, end, num, dtype=np.float64).astype(np.float32)


def _full_t(value: np.ndarray, batch: int) -> np.ndarray:
    return np.full((batch,), np.asarray(value, dtype=np.float32).reshape(-1)[0], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance: raw batched model -> guided function
# ---------------------------------------------------------------------------------------------


def _call(raw: RawModel, x: np.ndarray, t: np.ndarray, y: np.ndarray, min_channels: int) -> np.ndarray:
    out = np.asarray(raw(x, t, y))
    if out.ndim != 4 or out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:] or out.shape[1] < min_channels:
        raise DcaeDeployError(
            f"the diffusion model returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}: "
            f"expected [{x.shape[0]}, >= {min_channels}, {x.shape[2]}, {x.shape[3]}]"
        )
    return out.astype(np.float32, copy=False)


def _null_labels(labels: np.ndarray, null_label: int) -> np.ndarray:
    return np.full(labels.shape, null_label, dtype=np.int64)


def guide_two_calls(
    raw: RawModel, labels: np.ndarray, guidance: float, null_label: int = NULL_LABEL
) -> GuidedFn:
    """UViT's guidance: a conditional and then an unconditional B-sized call,
    ``cond + (s - 1) * (cond - uncond)``; with ``s == 1`` one conditional call."""
    labels = np.asarray(labels, dtype=np.int64)
    null = _null_labels(labels, null_label)
    scale_m1 = _F32(float(guidance) - 1.0)

    def fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        channels = x.shape[1]
        cond = _call(raw, x, t, labels, channels)
        if guidance == 1.0:
            return cond
        uncond = _call(raw, x, t, null, channels)
        return cond + scale_m1 * (cond - uncond)

    return fn


def guide_batched(raw: RawModel, labels: np.ndarray, guidance: float, null_label: int = NULL_LABEL) -> GuidedFn:
    """DiT's and USiT's guidance: one 2B call on ``[x, x]`` with labels ``[y, null]``;
    ``uncond + s * (cond - uncond)`` on the first C channels (C = the latent's channels), the remaining
    channels (DiT's variance values) from the conditional half; with ``s == 1`` one conditional call."""
    labels = np.asarray(labels, dtype=np.int64)
    both = np.concatenate([labels, _null_labels(labels, null_label)])
    scale = _F32(guidance)

    def fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        batch, channels = x.shape[:2]
        if guidance == 1.0:
            return _call(raw, x, t, labels, channels)
        out = _call(raw, np.concatenate([x, x]), np.concatenate([t, t]), both, channels)
        cond, uncond = out[:batch, :channels], out[batch:, :channels]
        guided = uncond + scale * (cond - uncond)
        if out.shape[1] == channels:
            return guided
        return np.concatenate([guided, out[:batch, channels:]], axis=1)

    return fn


# ---------------------------------------------------------------------------------------------
# UViT: DPM-Solver++ "fast" (order 3, time-uniform) over the discrete VP schedule
# ---------------------------------------------------------------------------------------------


def _interp(x: np.ndarray, xp: np.ndarray, yp: np.ndarray) -> np.ndarray:
    """The reference's piecewise-linear ``interpolate_fn`` (ascending knots ``xp``), float32.

    The segment is the one whose right knot is the first knot >= x (ties: x sorts before an equal knot, as
    torch's stable CPU sort does), the first segment below the knots and the last above them.
    """
    k = int(np.searchsorted(xp, x[0], side="left"))
    lo = 0 if k == 0 else (len(xp) - 2 if k == len(xp) else k - 1)
    sx, ex, sy, ey = xp[lo : lo + 1], xp[lo + 1 : lo + 2], yp[lo : lo + 1], yp[lo + 1 : lo + 2]
    return sy + (x - sx) * (ey - sy) / (ex - sx)


@dataclass(frozen=True, eq=False)
class DiscreteVPSchedule:
    """The reference's ``NoiseScheduleVP("discrete", betas=float32)``: knots ``t_k = linspace(1/N, 1, N)``,
    ``log alpha_k = 0.5 * cumsum(log(1 - beta))``; all functions take and return float32 arrays of shape (1,)."""

    t_knots: np.ndarray
    log_alpha_knots: np.ndarray

    @classmethod
    def scaled_linear(cls, num: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> DiscreteVPSchedule:
        betas = (np.linspace(beta_start**0.5, beta_end**0.5, num, dtype=np.float64) ** 2).astype(np.float32)
        # float32 log(1 - beta) (rounded from float64: torch's float32 log differs from numpy's by an ulp),
        # summed in double and rounded, as torch's CPU cumsum does (CUDA sums in float32)
        log_one_minus = np.log((np.float32(1.0) - betas).astype(np.float64)).astype(np.float32)
        log_alpha = np.float32(0.5) * np.cumsum(log_one_minus.astype(np.float64)).astype(np.float32)
        return cls(_linspace32(1.0 / num, 1.0, num), log_alpha)

    @cached_property
    def _inverse_knots(self) -> tuple[np.ndarray, np.ndarray]:
        return self.log_alpha_knots[::-1].copy(), self.t_knots[::-1].copy()

    def log_alpha(self, t: np.ndarray) -> np.ndarray:
        return _interp(t, self.t_knots, self.log_alpha_knots)

    def alpha(self, t: np.ndarray) -> np.ndarray:
        return np.exp(self.log_alpha(t))

    def sigma(self, t: np.ndarray) -> np.ndarray:
        return np.sqrt(_F32(1.0) - np.exp(_F32(2.0) * self.log_alpha(t)))

    def lam(self, t: np.ndarray) -> np.ndarray:
        """Half log-SNR ``log alpha - log sigma``."""
        log_alpha = self.log_alpha(t)
        return log_alpha - _F32(0.5) * np.log(_F32(1.0) - np.exp(_F32(2.0) * log_alpha))

    def inverse_lambda(self, lam: np.ndarray) -> np.ndarray:
        log_alpha = _F32(-0.5) * np.logaddexp(_f32(0.0), _F32(-2.0) * lam)
        xp, yp = self._inverse_knots
        return _interp(log_alpha, xp, yp)


UVIT_SCHEDULE_STEPS = 1000


@dataclass(frozen=True)
class _Scalar:
    """One time point of the schedule: t, alpha, sigma (float32, shape (1,))."""

    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray


def dpm_solver_fast_orders(steps: int) -> list[int]:
    """The reference's order list for order 3: that of ``K = steps // 3 + 1``; the orders sum to ``steps``."""
    k = steps // 3 + 1
    tail = {0: [2, 1], 1: [1], 2: [2]}[steps % 3]
    return [3] * (k - len(tail)) + tail


def dpm_solver_pp_sample(
    eps_fn: GuidedFn,
    noise: np.ndarray,
    steps: int = 30,
    schedule: DiscreteVPSchedule | None = None,
    callback: Progress | None = None,
) -> np.ndarray:
    """UViT's DPM-Solver++ (see the module docstring) from ``noise`` at t = 1 to t = 1/1000.

    ``eps_fn(x, t_model)`` with ``t_model = 1000 * t`` (float32 [B]) returns eps; NFE = ``steps``.
    """
    _check_steps(steps)
    ns = schedule or _uvit_schedule()
    total_n = _F32(len(ns.t_knots))
    x = np.array(noise, dtype=np.float32)
    batch = x.shape[0]
    nfe = 0

    def point(t: np.ndarray) -> _Scalar:
        return _Scalar(t, ns.alpha(t), ns.sigma(t))

    def data_prediction(sample: np.ndarray, p: _Scalar) -> np.ndarray:
        nonlocal nfe
        eps = eps_fn(sample, _full_t(p.t * total_n, batch))
        nfe += 1
        if callback is not None:
            callback(nfe, steps)
        return (sample - p.sigma[0] * eps) / p.alpha[0]

    grid = _linspace32(1.0, 1.0 / len(ns.t_knots), steps + 1)
    i = 0
    for order in dpm_solver_fast_orders(steps):
        s, t = _f32(grid[i]), _f32(grid[i + order])
        lam_s, lam_t = ns.lam(s), ns.lam(t)
        h = lam_t - lam_s
        ps, pt = point(s), point(t)
        x0_s = data_prediction(x, ps)
        if order == 1:
            phi_1 = (np.exp(-h) - _F32(1.0)) / _F32(-1.0)
            x = (pt.sigma / ps.sigma)[0] * x + (pt.alpha * phi_1)[0] * x0_s
        elif order == 2:
            r1 = (ns.lam(_f32(grid[i + 1])) - lam_s) / h
            p1 = point(ns.inverse_lambda(lam_s + r1 * h))
            phi_11, phi_1 = np.expm1(-r1 * h), np.expm1(-h)
            x_s1 = (p1.sigma / ps.sigma)[0] * x - (p1.alpha * phi_11)[0] * x0_s
            x0_s1 = data_prediction(x_s1, p1)
            x = (
                (pt.sigma / ps.sigma)[0] * x
                - (pt.alpha * phi_1)[0] * x0_s
                - ((_F32(0.5) / r1) * (pt.alpha * phi_1))[0] * (x0_s1 - x0_s)
            )
        else:
            r1 = (ns.lam(_f32(grid[i + 1])) - lam_s) / h
            r2 = (ns.lam(_f32(grid[i + 2])) - lam_s) / h
            p1 = point(ns.inverse_lambda(lam_s + r1 * h))
            p2 = point(ns.inverse_lambda(lam_s + r2 * h))
            phi_11, phi_12, phi_1 = np.expm1(-r1 * h), np.expm1(-r2 * h), np.expm1(-h)
            phi_22 = np.expm1(-r2 * h) / (r2 * h) + _F32(1.0)
            phi_2 = phi_1 / h + _F32(1.0)
            x_s1 = (p1.sigma / ps.sigma)[0] * x - (p1.alpha * phi_11)[0] * x0_s
            x0_s1 = data_prediction(x_s1, p1)
            x_s2 = (
                (p2.sigma / ps.sigma)[0] * x
                - (p2.alpha * phi_12)[0] * x0_s
                + (r2 / r1 * (p2.alpha * phi_22))[0] * (x0_s1 - x0_s)
            )
            x0_s2 = data_prediction(x_s2, p2)
            x = (
                (pt.sigma / ps.sigma)[0] * x
                - (pt.alpha * phi_1)[0] * x0_s
                + ((_F32(1.0) / r2) * (pt.alpha * phi_2))[0] * (x0_s2 - x0_s)
            )
        i += order
    return x


@cache
def _uvit_schedule() -> DiscreteVPSchedule:
    return DiscreteVPSchedule.scaled_linear(UVIT_SCHEDULE_STEPS)


# ---------------------------------------------------------------------------------------------
# DiT: ADM ancestral sampling (learned-range variance) and DDIM, respaced
# ---------------------------------------------------------------------------------------------


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The kept timesteps of ADM's respacing with one section of ``count`` steps (ascending)."""
    if not 1 <= count <= num_timesteps:
        raise DcaeDeployError(f"cannot respace {num_timesteps} diffusion steps into {count}: give 1..{num_timesteps}")
    stride = 1.0 if count <= 1 else (num_timesteps - 1) / (count - 1)
    position, kept = 0.0, set()
    for _ in range(count):
        kept.add(round(position))
        position += stride
    return sorted(kept)


@dataclass(frozen=True, eq=False)
class RespacedDiffusion:
    """ADM's float64 tables for the kept timesteps (index i = the i-th kept step, ``timestep_map[i]`` its
    original index)."""

    timestep_map: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    log_betas: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray

    @classmethod
    def linear(cls, steps: int, num_timesteps: int = 1000) -> RespacedDiffusion:
        scale = 1000 / num_timesteps
        base_betas = np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
        base_cumprod = np.cumprod(1.0 - base_betas, axis=0)
        kept = space_timesteps(num_timesteps, steps)
        betas, last = [], 1.0
        for index in kept:
            betas.append(1 - base_cumprod[index] / last)
            last = base_cumprod[index]
        betas = np.array(betas, dtype=np.float64)
        alphas = 1.0 - betas
        cumprod = np.cumprod(alphas, axis=0)
        cumprod_prev = np.append(1.0, cumprod[:-1])
        posterior_variance = betas * (1.0 - cumprod_prev) / (1.0 - cumprod)
        # clipped at the start of the chain, where the posterior variance is 0 (unused with one step)
        clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:])) if len(betas) > 1 else np.zeros(1)
        return cls(
            timestep_map=np.array(kept, dtype=np.int64),
            alphas_cumprod=cumprod,
            alphas_cumprod_prev=cumprod_prev,
            log_betas=np.log(betas),
            posterior_log_variance_clipped=clipped,
            posterior_mean_coef1=betas * np.sqrt(cumprod_prev) / (1.0 - cumprod),
            posterior_mean_coef2=(1.0 - cumprod_prev) * np.sqrt(alphas) / (1.0 - cumprod),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / cumprod),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / cumprod - 1),
        )

    @property
    def num_steps(self) -> int:
        return len(self.timestep_map)


def _eps_and_x0(fn: GuidedFn, x: np.ndarray, diffusion: RespacedDiffusion, i: int, min_channels: int):
    out = fn(x, np.full((x.shape[0],), diffusion.timestep_map[i], dtype=np.float32))
    channels = x.shape[1]
    if out.shape[1] < min_channels:
        raise DcaeDeployError(
            f"the DiT model returned {out.shape[1]} channels for a {channels}-channel latent: the ADM sampler "
            f"needs {min_channels} (eps, then the learned-range variance values)"
        )
    eps = out[:, :channels]
    x0 = _F32(diffusion.sqrt_recip_alphas_cumprod[i]) * x - _F32(diffusion.sqrt_recipm1_alphas_cumprod[i]) * eps
    return out, eps, x0


def adm_sample(
    fn: GuidedFn,
    noise: np.ndarray,
    steps: int = 250,
    step_noise: StepNoise | None = None,
    rng: np.random.Generator | None = None,
    callback: Progress | None = None,
) -> np.ndarray:
    """DiT's ADM ancestral sampler (see the module docstring); ``fn(x, t_original_index) -> [B, 2C, H, W]``.

    The noise after step ``k`` (all but the last) is ``step_noise(k, shape)`` or, without a provider,
    ``rng.standard_normal(shape, dtype=float32)``.
    """
    _check_steps(steps)
    draw = _noise_source(step_noise, rng)
    diffusion = _respaced(steps)
    x = np.array(noise, dtype=np.float32)
    channels = x.shape[1]
    for k, i in enumerate(reversed(range(diffusion.num_steps))):
        out, _, x0 = _eps_and_x0(fn, x, diffusion, i, 2 * channels)
        if callback is not None:
            callback(k + 1, diffusion.num_steps)
        mean = _F32(diffusion.posterior_mean_coef1[i]) * x0 + _F32(diffusion.posterior_mean_coef2[i]) * x
        if i == 0:
            x = mean
            break
        frac = (out[:, channels : 2 * channels] + _F32(1.0)) / _F32(2.0)
        log_variance = frac * _F32(diffusion.log_betas[i]) + (_F32(1.0) - frac) * _F32(
            diffusion.posterior_log_variance_clipped[i]
        )
        x = mean + np.exp(_F32(0.5) * log_variance) * _step_noise(draw, k, x.shape)
    return x


def ddim_sample(
    fn: GuidedFn, noise: np.ndarray, steps: int = 50, callback: Progress | None = None
) -> np.ndarray:
    """Deterministic DDIM (eta = 0) over ADM's respaced linear schedule, from the first C (eps) channels."""
    _check_steps(steps)
    diffusion = _respaced(steps)
    x = np.array(noise, dtype=np.float32)
    for k, i in enumerate(reversed(range(diffusion.num_steps))):
        _, eps, x0 = _eps_and_x0(fn, x, diffusion, i, x.shape[1])
        if callback is not None:
            callback(k + 1, diffusion.num_steps)
        abar_prev = _f32(diffusion.alphas_cumprod_prev[i])
        x = x0 * np.sqrt(abar_prev)[0] + np.sqrt(_F32(1.0) - abar_prev)[0] * eps
    return x


@cache
def _respaced(steps: int) -> RespacedDiffusion:
    return RespacedDiffusion.linear(int(steps))


def _noise_source(step_noise: StepNoise | None, rng: np.random.Generator | None) -> StepNoise:
    if step_noise is not None:
        return step_noise
    if rng is None:
        raise DcaeDeployError("the adm sampler adds noise at every step: pass rng (a numpy Generator) or step_noise")
    if not isinstance(rng, np.random.Generator):
        raise DcaeDeployError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")
    return lambda step, shape: rng.standard_normal(shape, dtype=np.float32)


def _step_noise(draw: StepNoise, step: int, shape: tuple[int, ...]) -> np.ndarray:
    value = np.asarray(draw(step, shape), dtype=np.float32)
    if value.shape != shape:
        raise DcaeDeployError(f"step_noise({step}, {shape}) returned shape {value.shape}")
    return value


# ---------------------------------------------------------------------------------------------
# USiT: SiT linear-path velocity ODE, t from 0 (noise) to 1 (data)
# ---------------------------------------------------------------------------------------------


def sit_euler_sample(
    velocity_fn: GuidedFn, noise: np.ndarray, steps: int = 249, callback: Progress | None = None
) -> np.ndarray:
    """torchdiffeq's fixed-grid ``euler`` on ``linspace(0, 1, steps + 1)``; NFE = ``steps``."""
    _check_steps(steps)
    grid = _linspace32(0.0, 1.0, steps + 1)
    x = np.array(noise, dtype=np.float32)
    for k in range(steps):
        dt = grid[k + 1] - grid[k]
        x = x + dt * _velocity(velocity_fn, x, grid[k])
        if callback is not None:
            callback(k + 1, steps)
    return x


def sit_heun_sample(
    velocity_fn: GuidedFn, noise: np.ndarray, steps: int = 249, callback: Progress | None = None
) -> np.ndarray:
    """torchdiffeq's fixed-grid ``heun2`` (explicit trapezoid) on ``linspace(0, 1, steps + 1)``; NFE = 2 steps."""
    _check_steps(steps)
    grid = _linspace32(0.0, 1.0, steps + 1)
    x = np.array(noise, dtype=np.float32)
    for k in range(steps):
        t0 = grid[k]
        dt = grid[k + 1] - t0
        k1 = _velocity(velocity_fn, x, t0)
        if callback is not None:
            callback(2 * k + 1, 2 * steps)
        k2 = _velocity(velocity_fn, x + dt * k1, t0 + dt)
        if callback is not None:
            callback(2 * k + 2, 2 * steps)
        x = x + dt * (k1 * _F32(0.5) + k2 * _F32(0.5))
    return x


def _velocity(fn: GuidedFn, x: np.ndarray, t: np.floating) -> np.ndarray:
    v = fn(x, np.full((x.shape[0],), t, dtype=np.float32))
    if v.shape != x.shape:
        raise DcaeDeployError(f"the SiT model returned shape {tuple(v.shape)} for a latent of shape {tuple(x.shape)}")
    return v


# Dormand-Prince 5(4) as torchdiffeq 0.2.5 writes it (float64 constants, cast to the state's float32)
_DP_C = np.array([1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0], dtype=np.float64).astype(np.float32)
_DP_A = [
    np.array(row, dtype=np.float64).astype(np.float32)
    for row in (
        [1 / 5],
        [3 / 40, 9 / 40],
        [44 / 45, -56 / 15, 32 / 9],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
        [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
    )
]
_DP_E = np.array(
    [
        35 / 384 - 1951 / 21600,
        0,
        500 / 1113 - 22642 / 50085,
        125 / 192 - 451 / 720,
        -2187 / 6784 - -12231 / 42400,
        11 / 84 - 649 / 6300,
        -1.0 / 60.0,
    ],
    dtype=np.float64,
).astype(np.float32)
_DP_MID = np.array(
    [
        6025192743 / 30085553152 / 2,
        0,
        51252292925 / 65400821598 / 2,
        -2691868925 / 45128329728 / 2,
        187940372067 / 1594534317056 / 2,
        -1776094331 / 19743644256 / 2,
        11237099 / 235043384 / 2,
    ],
    dtype=np.float64,
).astype(np.float32)


@dataclass(frozen=True)
class Dopri5Stats:
    """What an adaptive run cost: model evaluations, accepted and rejected steps."""

    nfe: int
    accepted: int
    rejected: int


def _combine(k: Sequence[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
    """sum_j k_j * c_j, accumulated left to right in float32 (torchdiffeq's ``sum(k * c, dim=-1)``)."""
    total = k[0] * coefficients[0]
    for kj, cj in zip(k[1:], coefficients[1:]):
        total = total + kj * cj
    return total


def _rms(value: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(value))))


def sit_dopri5_sample(
    velocity_fn: GuidedFn,
    noise: np.ndarray,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    callback: Progress | None = None,
    max_steps: int = 100_000,
) -> tuple[np.ndarray, Dopri5Stats]:
    """torchdiffeq's adaptive ``dopri5`` from t = 0 to 1 (see the module docstring); returns the latent at
    t = 1 and what it cost (NFE is data dependent)."""
    y = np.array(noise, dtype=np.float32)
    atol64, rtol64 = float(atol), float(rtol)
    nfe = 0

    def f(t: np.floating, state: np.ndarray) -> np.ndarray:
        nonlocal nfe
        v = _velocity(velocity_fn, state, np.float32(t))
        nfe += 1
        if callback is not None:
            callback(nfe, None)
        return v

    # initial step (Hairer, Norsett & Wanner II.4), as torchdiffeq's _select_initial_step with order 4
    t0 = 0.0
    f0 = f(np.float32(t0), y)
    scale = atol64 + np.abs(y).astype(np.float64) * rtol64
    d0, d1 = _rms(y / scale), _rms(f0 / scale)
    h0 = float(np.float32(1e-6)) if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = f(np.float32(t0 + h0), y + np.float32(h0) * f0)
    d2 = abs(_rms((f1 - f0) / scale) / h0)
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(float(np.float32(1e-6)), h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / 5.0)
    dt = min(100 * h0, h1)

    accepted = rejected = 0
    t_start, t_end = t0, t0  # the last accepted step: [t_start, t_end]
    coefficients: list[np.ndarray] | None = None
    while 1.0 > t_end:
        if accepted + rejected >= max_steps:
            raise DcaeDeployError(f"sit-dopri5 did not reach t = 1 in {max_steps} steps (at t = {t_end})")
        if not math.isfinite(dt):
            dt = 0.0
        dt = max(dt, 0.0)
        if not t_end + dt > t_end:
            raise DcaeDeployError(f"sit-dopri5: step size underflow at t = {t_end} (dt = {dt})")
        if not np.isfinite(y).all():
            raise DcaeDeployError(f"sit-dopri5: non-finite values in the latent at t = {t_end}")
        t1 = t_end + dt
        t0_32, dt_32, t1_32 = np.float32(t_end), np.float32(dt), np.float32(t1)
        k = [f0]
        stage_y = y
        for alpha_i, beta_i in zip(_DP_C, _DP_A):
            if alpha_i == 1.0:  # stages at the step's end: one float32 ulp before it (torchdiffeq's Perturb.PREV)
                ti = np.nextafter(t1_32, t1_32 - np.float32(1.0))
            else:
                ti = t0_32 + alpha_i * dt_32
            stage_y = y + _combine(k, beta_i * dt_32)
            k.append(f(ti, stage_y))
        y1, f1 = stage_y, k[-1]
        error = _combine(k, dt_32 * _DP_E)
        tolerance = atol64 + rtol64 * np.maximum(np.abs(y), np.abs(y1)).astype(np.float64)
        ratio = _rms(error / tolerance)
        if ratio <= 1:
            accepted += 1
            y_mid = y + _combine(k, dt_32 * _DP_MID)
            coefficients = _dense_output(y, y1, y_mid, k[0], f1, dt_32)
            t_start, t_end = t_end, t1
            y, f0 = y1, f1
        else:
            rejected += 1
        if ratio == 0:
            dt = dt * 10.0
        else:
            shrink = 1.0 if ratio < 1 else 0.2
            dt = dt * min(10.0, max(0.9 / ratio ** (1.0 / 5.0), shrink))
    assert coefficients is not None
    x = np.float32((1.0 - t_start) / (t_end - t_start))
    total, power = coefficients[0] + x * coefficients[1], x
    for c in coefficients[2:]:
        power = power * x
        total = total + power * c
    return total, Dopri5Stats(nfe, accepted, rejected)


def _dense_output(y0, y1, y_mid, f0, f1, dt) -> list[np.ndarray]:
    """torchdiffeq's 4th-order interpolating polynomial on [t0, t1], coefficients of x^0 .. x^4."""
    a = _F32(2.0) * dt * (f1 - f0) - _F32(8.0) * (y1 + y0) + _F32(16.0) * y_mid
    b = dt * (_F32(5.0) * f0 - _F32(3.0) * f1) + _F32(18.0) * y0 + _F32(14.0) * y1 - _F32(32.0) * y_mid
    c = dt * (f1 - _F32(4.0) * f0) - _F32(11.0) * y0 - _F32(5.0) * y1 + _F32(16.0) * y_mid
    return [y0, dt * f0, c, b, a]


# ---------------------------------------------------------------------------------------------
# The sampler table and the one entry point
# ---------------------------------------------------------------------------------------------


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise DcaeDeployError(f"steps must be an integer >= 1, got {steps!r}")


@dataclass(frozen=True)
class ClassSampler:
    """One class-conditional sampler: which model family it serves, its defaults and conventions."""

    family: str  # the efficientvit model family whose reference sampler this is: uvit, dit, usit
    description: str
    default_steps: int | None  # None: adaptive, takes no steps
    max_steps: int | None
    model_time: str  # the t the raw model is called with
    prediction: str  # what the raw model must return
    guide: Callable[[RawModel, np.ndarray, float, int], GuidedFn]  # the reference's CFG form
    run: Callable[[GuidedFn, np.ndarray, int | None, StepNoise | None, Progress | None], np.ndarray]
    nfe: Callable[[int | None], int | None]  # guided evaluations for a step count (None: data dependent)
    stochastic: bool = False


def _run_dpm(fn, noise, steps, draw, callback):
    return dpm_solver_pp_sample(fn, noise, steps, callback=callback)


def _run_adm(fn, noise, steps, draw, callback):
    return adm_sample(fn, noise, steps, step_noise=draw, callback=callback)


def _run_ddim(fn, noise, steps, draw, callback):
    return ddim_sample(fn, noise, steps, callback=callback)


def _run_dopri5(fn, noise, steps, draw, callback):
    return sit_dopri5_sample(fn, noise, callback=callback)[0]


def _run_heun(fn, noise, steps, draw, callback):
    return sit_heun_sample(fn, noise, steps, callback=callback)


def _run_euler(fn, noise, steps, draw, callback):
    return sit_euler_sample(fn, noise, steps, callback=callback)


_UVIT_TIME = "1000 * t_continuous, float in [1, 1000] (fractional at intermediate points)"
_ADM_TIME = "the original ADM index 0..999 of the kept step, as a float"
_SIT_TIME = "flow time in [0, 1] (0 = noise, 1 = data)"

CLASS_SAMPLERS: dict[str, ClassSampler] = {
    "dpm-solver++-uvit": ClassSampler(
        "uvit", "UViT: DPM-Solver++ fast (order 3, time-uniform), discrete scaled-linear VP schedule",
        30, None, _UVIT_TIME, "eps [B, C]", guide_two_calls, _run_dpm, lambda steps: steps,
    ),
    "adm": ClassSampler(
        "dit", "DiT: ADM ancestral sampling, learned-range variance, linear betas respaced",
        250, 1000, _ADM_TIME, "eps + variance values [B, 2C]", guide_batched, _run_adm, lambda steps: steps,
        stochastic=True,
    ),
    "ddim": ClassSampler(
        "dit", "DiT: deterministic DDIM (eta 0) on the respaced ADM schedule, eps channels only (ours)",
        50, 1000, _ADM_TIME, "eps [B, C] (extra channels ignored)", guide_batched, _run_ddim, lambda steps: steps,
    ),
    "sit-dopri5": ClassSampler(
        "usit", "USiT: SiT linear-path velocity ODE, adaptive dopri5 (atol 1e-6, rtol 1e-3)",
        None, None, _SIT_TIME + "; the last step may evaluate past 1", "velocity [B, C]", guide_batched,
        _run_dopri5, lambda steps: None,
    ),
    "sit-heun": ClassSampler(
        "usit", "USiT: SiT linear-path velocity ODE, fixed-grid Heun (torchdiffeq heun2)",
        249, None, _SIT_TIME, "velocity [B, C]", guide_batched, _run_heun, lambda steps: 2 * steps,
    ),
    "sit-euler": ClassSampler(
        "usit", "USiT: SiT linear-path velocity ODE, fixed-grid Euler",
        249, None, _SIT_TIME, "velocity [B, C]", guide_batched, _run_euler, lambda steps: steps,
    ),
}


def sample_class_conditional(
    name: str,
    raw_model: RawModel,
    noise: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    guidance: float,
    steps: int | None = None,
    rng: np.random.Generator | None = None,
    callback: Progress | None = None,
    *,
    null_label: int = NULL_LABEL,
    step_noise: StepNoise | None = None,
) -> np.ndarray:
    """Sample class-conditional latents with ``CLASS_SAMPLERS[name]``.

    ``raw_model(x float32 [B, C, H, W], t float32 [B], y int64 [B])`` is the un-guided model (batch 2B under
    DiT/USiT guidance); ``noise`` the float32 starting latent [B, C, H, W] (the reference draws it with
    ``torch.randn`` and a generator; here the caller does); ``labels`` B class ids;
    ``guidance`` the CFG scale (1 = un-guided); ``steps`` None for the sampler's default; ``rng`` (or
    ``step_noise``) the per-step noise of ``adm``; ``callback(evaluations_done, expected or None)`` after each
    guided model evaluation. Returns the float32 latent (still multiplied by the autoencoder's scaling factor).
    """
    sampler = CLASS_SAMPLERS.get(name) if isinstance(name, str) else None
    if sampler is None:
        raise DcaeDeployError(f"unknown class-conditional sampler {name!r}; choose one of {', '.join(CLASS_SAMPLERS)}")
    if sampler.default_steps is None:
        if steps is not None:
            raise DcaeDeployError(f"{name} is adaptive (its step count depends on the data): pass steps=None")
    else:
        steps = sampler.default_steps if steps is None else steps
        _check_steps(steps)
        if sampler.max_steps is not None and steps > sampler.max_steps:
            raise DcaeDeployError(f"{name} takes at most {sampler.max_steps} steps, got {steps}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.integer, np.floating)):
        raise DcaeDeployError(f"guidance must be a number, got {guidance!r}")
    if not math.isfinite(guidance) or guidance < 0:
        raise DcaeDeployError(f"guidance {guidance} is not usable: give a finite number >= 0 (1 = no guidance)")
    noise = np.asarray(noise)
    if noise.ndim != 4 or not np.issubdtype(noise.dtype, np.floating):
        raise DcaeDeployError(f"noise must be a float array [B, C, H, W], got {noise.dtype} {tuple(noise.shape)}")
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or len(label_array) != noise.shape[0] or not np.issubdtype(label_array.dtype, np.integer):
        raise DcaeDeployError(
            f"labels must be {noise.shape[0]} integer class ids (one per latent), got {label_array.dtype} "
            f"{tuple(label_array.shape)}"
        )
    if (label_array < 0).any():
        raise DcaeDeployError(f"labels must be >= 0, got {label_array.tolist()}")
    if callback is not None and not callable(callback):
        raise DcaeDeployError(f"callback must be callable, got {callback!r}")
    draw = _noise_source(step_noise, rng) if sampler.stochastic else None
    fn = sampler.guide(raw_model, label_array.astype(np.int64), float(guidance), int(null_label))
    return sampler.run(fn, noise.astype(np.float32), steps, draw, callback)
