"""Flow-matching samplers for SANA: schedules, DPM-Solver++(2M), Euler, classifier-free guidance.

:data:`SAMPLERS` is the one table of sampler names (those of the manifest and the command lines,
``dpm-solver++`` and ``euler``) -> schedule and solver, and :func:`flow_steps` the one integration loop:
:func:`sample_flow` here and the runtime's guided ``sample`` (``dcae_deploy/runtime/schedulers.py``) both run it.

Convention (rectified flow): ``x_sigma = (1 - sigma) * x0 + sigma * noise``; the model predicts the
velocity ``v = noise - x0``, so ``x0 = x_sigma - sigma * v``. Sampling runs sigma from ~1 down to 0.

Schedules are computed once on the host in numpy, as diffusers computes them
(``DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")``
and ``FlowMatchEulerDiscreteScheduler(shift=...)``). A solver step is a linear combination of
arrays with Python-float coefficients, so the same code drives torch tensors and numpy arrays.

>>> schedule = dpm_flow_schedule(20)
>>> x = sample_flow(velocity_fn, noise, schedule)  # velocity_fn(x, t) with t = schedule.timesteps[i]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

__all__ = [
    "DEFAULT_SAMPLER",
    "SAMPLERS",
    "DPMSolverPP2M",
    "FlowEuler",
    "FlowSchedule",
    "Sampler",
    "SamplerName",
    "Solver",
    "cfg_batch",
    "cfg_combine",
    "dpm_flow_schedule",
    "euler_flow_schedule",
    "flow_steps",
    "guided",
    "sample_flow",
]

Array = Any  # a torch.Tensor or a numpy.ndarray
VelocityFn = Callable[[Array, float], Array]


@dataclass(frozen=True, eq=False)
class FlowSchedule:
    """sigmas: (N+1,) float32, descending, ending in 0. timesteps: (N,) float32, the model's timestep input."""

    sigmas: np.ndarray
    timesteps: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def _shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Resolution shift of flow sigmas: s * sigma / (1 + (s - 1) * sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def dpm_flow_schedule(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> FlowSchedule:
    """Flow sigmas of diffusers' DPM-Solver (``use_flow_sigmas``): N shifted sigmas from ~1, then 0.

    Timesteps are ``int(sigma * 1000)`` (diffusers truncates them to int64; the pipeline feeds those).
    """
    _check_steps(num_steps)
    sigmas = 1.0 - np.linspace(1, 1 / num_train_timesteps, num_steps + 1)
    sigmas = np.flip(_shift(sigmas, shift))[:-1]
    timesteps = (sigmas * num_train_timesteps).astype(np.int64).astype(np.float32)
    return FlowSchedule(np.append(sigmas, 0.0).astype(np.float32), timesteps)


def euler_flow_schedule(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> FlowSchedule:
    """Sigmas of diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift)`` (static shifting).

    As diffusers does, the end points are the *already shifted* training sigmas (1 and shift(1/1000)),
    and the linear ramp between them is shifted again.
    """
    _check_steps(num_steps)
    train_sigmas = np.array([num_train_timesteps, 1], dtype=np.float32) / np.float32(num_train_timesteps)
    sigma_max, sigma_min = (float(s) for s in _shift(train_sigmas, np.float32(shift)))
    ramp = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
    sigmas = _shift(ramp / num_train_timesteps, shift).astype(np.float32)
    timesteps = sigmas * np.float32(num_train_timesteps)
    return FlowSchedule(np.append(sigmas, np.float32(0.0)), timesteps)


def _check_steps(num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


# ---------------------------------------------------------------------------------------------
# Solvers: one step = a few Python-float coefficients times arrays
# ---------------------------------------------------------------------------------------------


def _log_snr(sigma: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma."""
    return math.log(1.0 - sigma) - math.log(sigma)


class DPMSolverPP2M:
    """Multistep DPM-Solver++ (2M, midpoint) on the data prediction x0, for flow velocities.

    The first and the final step are first order (the final one lands on sigma = 0, i.e. returns x0),
    the others second order, as diffusers does with ``lower_order_final`` and ``final_sigmas_type="zero"``.
    """

    def __init__(self, schedule: FlowSchedule) -> None:
        self.sigmas = [float(s) for s in schedule.sigmas]
        self.num_steps = schedule.num_steps
        self._prev_x0: Array | None = None

    def step(self, i: int, sample: Array, velocity: Array) -> Array:
        """Advance ``sample`` from sigmas[i] to sigmas[i+1] given the model's velocity at sigmas[i]."""
        s0, t = self.sigmas[i], self.sigmas[i + 1]
        x0 = sample - s0 * velocity
        prev_x0, self._prev_x0 = self._prev_x0, x0
        # exp(-h) * alpha_t, with h = lambda_t - lambda_s0, written without logs: alpha_s0 * sigma_t / sigma_s0
        a, b = t / s0, (1.0 - t) - (1.0 - s0) * t / s0
        if i == 0 or i == self.num_steps - 1 or prev_x0 is None:
            return a * sample + b * x0
        h = _log_snr(t) - _log_snr(s0)
        h_prev = _log_snr(s0) - _log_snr(self.sigmas[i - 1])
        c = 0.5 * b * h / h_prev  # midpoint: 0.5 * b * D1 with D1 = (x0 - prev_x0) / r0, r0 = h_prev / h
        return a * sample + b * x0 + c * (x0 - prev_x0)


class FlowEuler:
    """Explicit Euler on the flow ODE: x <- x + (sigma_next - sigma) * v."""

    def __init__(self, schedule: FlowSchedule) -> None:
        sigmas = schedule.sigmas
        self.dts = [float(sigmas[i + 1] - sigmas[i]) for i in range(schedule.num_steps)]  # float32 differences

    def step(self, i: int, sample: Array, velocity: Array) -> Array:
        return sample + self.dts[i] * velocity


# ---------------------------------------------------------------------------------------------
# Samplers: name -> schedule + solver, and the one integration loop
# ---------------------------------------------------------------------------------------------


class Solver(Protocol):
    """One step from sigmas[i] to sigmas[i + 1], given the model's velocity at sigmas[i]."""

    def step(self, i: int, sample: Array, velocity: Array) -> Array: ...


@dataclass(frozen=True)
class Sampler:
    """A schedule (``schedule(num_steps, shift=...)``) and the solver that integrates over it."""

    schedule: Callable[..., FlowSchedule]
    solver: Callable[[FlowSchedule], Solver]


SamplerName = Literal["dpm-solver++", "euler"]
SAMPLERS: dict[str, Sampler] = {
    "dpm-solver++": Sampler(dpm_flow_schedule, DPMSolverPP2M),
    "euler": Sampler(euler_flow_schedule, FlowEuler),
}
DEFAULT_SAMPLER: SamplerName = "dpm-solver++"


def flow_steps(
    velocity_fn: VelocityFn, sample: Array, schedule: FlowSchedule, solver: SamplerName = DEFAULT_SAMPLER
) -> Iterator[tuple[int, Array, Array]]:
    """Integrate from ``sample`` (noise at sigmas[0]) to sigma = 0 with the solver of ``SAMPLERS[solver]``,
    yielding ``(step, velocity, new sample)`` after each step; ``velocity_fn(x, timestep)``."""
    stepper = SAMPLERS[solver].solver(schedule)
    for i in range(schedule.num_steps):
        velocity = velocity_fn(sample, float(schedule.timesteps[i]))
        sample = stepper.step(i, sample, velocity)
        yield i, velocity, sample


def sample_flow(
    velocity_fn: VelocityFn,
    sample: Array,
    schedule: FlowSchedule,
    solver: SamplerName = DEFAULT_SAMPLER,
    callback: Callable[[int, Array], None] | None = None,
) -> Array:
    """Integrate from ``sample`` (noise at sigmas[0]) to sigma = 0; ``velocity_fn(x, timestep)``;
    ``callback(step, sample)`` after each step."""
    for i, _, sample in flow_steps(velocity_fn, sample, schedule, solver):
        if callback is not None:
            callback(i, sample)
    return sample


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance: the batch is [negative, positive]
# ---------------------------------------------------------------------------------------------


def cfg_batch(sample: Array) -> Array:
    """[sample, sample] along the batch axis (negative branch first)."""
    if isinstance(sample, np.ndarray):
        return np.concatenate([sample, sample], axis=0)
    import torch

    return torch.cat([sample, sample], dim=0)


def cfg_combine(velocity: Array, guidance_scale: float) -> Array:
    """uncond + g * (text - uncond), from a [negative, positive] batch of predictions."""
    half = velocity.shape[0] // 2
    uncond, text = velocity[:half], velocity[half:]
    return uncond + guidance_scale * (text - uncond)


def guided(velocity_fn: VelocityFn, guidance_scale: float) -> VelocityFn:
    """A guided velocity function from one that predicts a doubled [negative, positive] batch.

    Guidance is always applied; diffusers skips it (and halves the batch) when ``guidance_scale <= 1``,
    a choice left to the pipeline.
    """
    return lambda sample, timestep: cfg_combine(velocity_fn(cfg_batch(sample), timestep), guidance_scale)
