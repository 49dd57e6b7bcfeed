"""The runtime's numpy sampling loop equals the torch loop of dcae_deploy.sampling (to 1e-6), guidance included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcae_deploy.runtime.schedulers import SAMPLERS, SamplerConfig, sample
from dcae_deploy.sampling import guided, sample_flow


def velocity(x, t):
    """A nonlinear toy field whose two CFG halves differ (the second half is shifted by 0.5)."""
    is_torch = isinstance(x, torch.Tensor)
    sin = torch.sin if is_torch else np.sin
    v = sin(x) * (1 + t / 1000) + 0.3 * x - 0.2
    if x.shape[0] % 2 == 0:
        branch = torch.zeros_like(x) if is_torch else np.zeros_like(x)
        branch[x.shape[0] // 2:] = 0.5
        v = v + branch * x
    return v


def _noise():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("steps", (2, 5, 20))
@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("guidance", (4.5, 1.0))
def test_numpy_loop_equals_torch_loop(name, steps, guidance):
    config = SamplerConfig(name, steps, flow_shift=3.0, guidance_scale=guidance)
    fn = guided(velocity, guidance) if guidance > 1 else velocity
    expected = sample_flow(fn, _noise(), config.schedule(), solver=name).double()
    actual = sample(velocity, _noise().numpy(), config)
    assert actual.dtype == np.float32 and actual.shape == (2, 4, 8, 8)
    err = (torch.from_numpy(actual).double() - expected).abs().max() / expected.abs().max()
    assert err <= 1e-6, f"{name}, {steps} steps, guidance {guidance}: max relative error {err:.3g}"


def test_guidance_doubles_the_batch_negative_first():
    seen = []

    def fn(x, t):
        seen.append(x.shape[0])
        return np.concatenate([np.zeros_like(x[:2]), np.ones_like(x[2:])]) if x.shape[0] == 4 else np.ones_like(x)

    steps = []
    sample(fn, np.zeros((2, 1, 2, 2), np.float32), SamplerConfig("euler", 3, guidance_scale=3.0),
           callback=lambda i, v: steps.append(float(v.mean())))
    assert seen == [4, 4, 4] and steps == [3.0, 3.0, 3.0]  # uncond 0 + 3 * (1 - 0)
    seen.clear()
    sample(fn, np.zeros((2, 1, 2, 2), np.float32), SamplerConfig("euler", 3, guidance_scale=1.0))
    assert seen == [2, 2, 2]


def test_bad_sampler_settings_are_user_errors():
    from dcae_deploy.errors import DcaeDeployError

    with pytest.raises(DcaeDeployError, match="unknown sampler"):
        SamplerConfig("ddim")
    with pytest.raises(DcaeDeployError, match="--steps"):
        SamplerConfig(steps=0)
