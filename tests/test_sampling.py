"""Our flow samplers reproduce diffusers' schedules and solver loops exactly (schedules) or to 1e-6 (loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import max_relative_error

from dcae_deploy.sampling import (
    cfg_batch,
    cfg_combine,
    dpm_flow_schedule,
    euler_flow_schedule,
    guided,
    sample_flow,
)

diffusers = pytest.importorskip("diffusers")

STEPS = (2, 5, 20)
# diffusers' DPM scheduler builds an unused numpy array from a tensor; NumPy 2 warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _dpm(num_steps: int):
    scheduler = diffusers.DPMSolverMultistepScheduler(
        flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction"
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


def _euler(num_steps: int):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(num_steps)
    return scheduler


def velocity(x, t):
    """A fixed, nonlinear toy velocity field (works on torch tensors and numpy arrays)."""
    sin = torch.sin if isinstance(x, torch.Tensor) else np.sin
    return sin(x) * (1 + t / 1000) + 0.3 * x - 0.2


def _noise():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def _diffusers_loop(scheduler, x):
    for t in scheduler.timesteps:
        x = scheduler.step(velocity(x, float(t)), t, x).prev_sample
    return x


@pytest.mark.parametrize("num_steps", STEPS)
def test_dpm_schedule_equals_diffusers(num_steps):
    ours, ref = dpm_flow_schedule(num_steps), _dpm(num_steps)
    assert np.array_equal(ours.sigmas, ref.sigmas.numpy())
    assert np.array_equal(ours.timesteps, ref.timesteps.numpy().astype(np.float32))
    assert ours.sigmas.dtype == np.float32 and ours.sigmas[-1] == 0


@pytest.mark.parametrize("num_steps", STEPS)
def test_euler_schedule_equals_diffusers(num_steps):
    ours, ref = euler_flow_schedule(num_steps), _euler(num_steps)
    assert np.array_equal(ours.sigmas, ref.sigmas.numpy())
    assert np.array_equal(ours.timesteps, ref.timesteps.numpy())


@pytest.mark.parametrize("num_steps", STEPS)
def test_dpm_solver_loop_matches_diffusers(num_steps):
    expected = _diffusers_loop(_dpm(num_steps), _noise())
    actual = sample_flow(velocity, _noise(), dpm_flow_schedule(num_steps), solver="dpm-solver++")
    assert max_relative_error(actual, expected) <= 1e-6


@pytest.mark.parametrize("num_steps", STEPS)
def test_euler_loop_matches_diffusers(num_steps):
    expected = _diffusers_loop(_euler(num_steps), _noise())
    actual = sample_flow(velocity, _noise(), euler_flow_schedule(num_steps), solver="euler")
    assert max_relative_error(actual, expected) <= 1e-6


@pytest.mark.parametrize("solver, schedule", [("dpm-solver++", dpm_flow_schedule), ("euler", euler_flow_schedule)])
def test_numpy_arrays_give_the_torch_result(solver, schedule):
    as_torch = sample_flow(velocity, _noise(), schedule(20), solver=solver)
    as_numpy = sample_flow(velocity, _noise().numpy(), schedule(20), solver=solver)
    assert as_numpy.dtype == np.float32
    assert max_relative_error(torch.from_numpy(as_numpy), as_torch) <= 1e-6


def test_callback_sees_every_step():
    seen = []
    sample_flow(velocity, _noise(), dpm_flow_schedule(5), callback=lambda i, x: seen.append(i))
    assert seen == [0, 1, 2, 3, 4]


def test_zero_steps_is_an_error():
    with pytest.raises(ValueError, match="num_steps"):
        dpm_flow_schedule(0)


def test_classifier_free_guidance_batches_negative_then_positive():
    x = torch.randn(2, 3)
    assert torch.equal(cfg_batch(x), torch.cat([x, x]))
    uncond, text = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(cfg_combine(torch.cat([uncond, text]), 4.5), uncond + 4.5 * (text - uncond))
    as_numpy = cfg_combine(np.concatenate([uncond.numpy(), text.numpy()]), 4.5)
    assert np.allclose(as_numpy, (uncond + 4.5 * (text - uncond)).numpy())

    def branches(batch, t):  # negative half -> 1, positive half -> 3
        assert batch.shape[0] == 4 and t == 500.0
        return torch.cat([torch.ones(2, 3), torch.full((2, 3), 3.0)])

    assert torch.equal(guided(branches, 2.0)(x, 500.0), torch.full((2, 3), 5.0))
