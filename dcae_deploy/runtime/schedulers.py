"""Flow-matching samplers for the runtime, on numpy arrays (no torch).

The sampler names, schedules, solver updates and the integration loop are those of
:mod:`dcae_deploy.sampling` (:data:`~dcae_deploy.sampling.SAMPLERS`, :func:`~dcae_deploy.sampling.flow_steps`),
which is written over Python-float coefficients times arrays and imports only numpy: the same code that the
torch tests prove equal to diffusers drives float32 numpy arrays here (tests/runtime/test_schedulers.py
checks numpy == torch to 1e-6). Classifier-free guidance batches both branches, negative first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.sampling import DEFAULT_SAMPLER, SAMPLERS, FlowSchedule, flow_steps, guided

__all__ = ["SAMPLERS", "SamplerConfig", "VelocityFn", "check_guidance", "guidance_note", "sample"]


@dataclass(frozen=True)
class SamplerConfig:
    name: str = DEFAULT_SAMPLER  # a key of SAMPLERS
    steps: int = 20
    flow_shift: float = 3.0
    guidance_scale: float = 4.5

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise DcaeDeployError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise DcaeDeployError(f"--steps must be at least 1, got {self.steps}")
        check_guidance(self.guidance_scale)

    @property
    def uses_guidance(self) -> bool:
        """Guidance runs the doubled batch only when it changes the result (diffusers: scale > 1)."""
        return self.guidance_scale > 1.0

    def schedule(self) -> FlowSchedule:
        return SAMPLERS[self.name].schedule(self.steps, shift=self.flow_shift)


def check_guidance(scale: float) -> bool:
    """Refuse a guidance scale that is not a finite number >= 0; return whether it guides (scale > 1).

    Scales in [0, 1] are accepted and run the prompt's prediction alone (no classifier-free guidance), as
    diffusers does; callers that take the scale from a user say so (``guidance_note``).
    """
    if not math.isfinite(scale) or scale < 0:
        raise DcaeDeployError(
            f"--guidance {scale} is not a usable guidance scale: give a finite number >= 0 (typical: 2 to 8; "
            "a value <= 1 turns classifier-free guidance off)"
        )
    return scale > 1.0


def guidance_note(scale: float | None) -> str | None:
    """The line to print when a user's scale turns guidance off (None when it guides or is the default)."""
    if scale is None or check_guidance(scale):
        return None
    return (f"--guidance {scale:g} <= 1: classifier-free guidance is off (the prompt's prediction alone, "
            "no negative-prompt branch); use a scale above 1 to guide")


# velocity(latent batch, timestep) -> velocity batch; with guidance the batch is [negative, positive]
VelocityFn = Callable[[np.ndarray, float], np.ndarray]


def sample(
    velocity: VelocityFn,
    noise: np.ndarray,
    config: SamplerConfig,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Integrate float32 ``noise`` (at sigma ~1) to a clean latent; ``callback(step, velocity)`` after each step."""

    def model(x: np.ndarray, t: float) -> np.ndarray:
        return velocity(x, t).astype(np.float32, copy=False)

    guided_model = guided(model, float(config.guidance_scale)) if config.uses_guidance else model
    latent = np.asarray(noise, dtype=np.float32)
    for i, v, latent in flow_steps(guided_model, latent, config.schedule(), config.name):
        if callback is not None:
            callback(i, v)
    return latent
