"""Flow-matching samplers for the runtime, on numpy arrays (no torch).

The schedules and solver updates are those of :mod:`dcae_deploy.sampling`, which is written over
Python-float coefficients times arrays and imports only numpy: the same code that the torch tests
prove equal to diffusers drives float32 numpy arrays here (tests/runtime/test_schedulers.py checks
numpy == torch to 1e-6). Classifier-free guidance batches both branches, negative first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.sampling import (
    DPMSolverPP2M,
    FlowEuler,
    FlowSchedule,
    dpm_flow_schedule,
    euler_flow_schedule,
)

# manifest / PipelineConfig sampler name -> (schedule, solver)
SAMPLERS = {
    "dpm-solver++": (dpm_flow_schedule, DPMSolverPP2M),
    "euler": (euler_flow_schedule, FlowEuler),
}


@dataclass(frozen=True)
class SamplerConfig:
    name: str = "dpm-solver++"
    steps: int = 20
    flow_shift: float = 3.0
    guidance_scale: float = 4.5

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise DcaeDeployError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise DcaeDeployError(f"--steps must be at least 1, got {self.steps}")

    @property
    def uses_guidance(self) -> bool:
        """Guidance runs the doubled batch only when it changes the result (diffusers: scale > 1)."""
        return self.guidance_scale > 1.0

    def schedule(self) -> FlowSchedule:
        return SAMPLERS[self.name][0](self.steps, shift=self.flow_shift)


# velocity(latent batch, timestep) -> velocity batch; with guidance the batch is [negative, positive]
VelocityFn = Callable[[np.ndarray, float], np.ndarray]


def sample(
    velocity: VelocityFn,
    noise: np.ndarray,
    config: SamplerConfig,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Integrate float32 ``noise`` (at sigma ~1) to a clean latent; ``callback(step, velocity)`` after each step."""
    schedule = config.schedule()
    solver = SAMPLERS[config.name][1](schedule)
    x = np.asarray(noise, dtype=np.float32)
    g = float(config.guidance_scale)
    for i in range(schedule.num_steps):
        t = float(schedule.timesteps[i])
        if config.uses_guidance:
            v = velocity(np.concatenate([x, x], axis=0), t).astype(np.float32, copy=False)
            uncond, text = v[: len(x)], v[len(x):]
            v = uncond + g * (text - uncond)
        else:
            v = velocity(x, t).astype(np.float32, copy=False)
        x = solver.step(i, x, v).astype(np.float32, copy=False)
        if callback is not None:
            callback(i, v)
    return x
