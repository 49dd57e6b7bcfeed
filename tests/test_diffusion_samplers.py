"""The class-conditional samplers (dcae_deploy/diffusion_samplers.py) against efficientvit's own samplers.

``tests/data/dcae_diffusion_samplers/goldens.npz`` holds what the reference code (efficientvit de7d773:
UViT.generate + DPM_Solver, DiT.generate + ADM p_sample_loop, ddim_sample_loop, SiT sample_ode + torchdiffeq
0.2.5) did on the CPU with a toy model: every model call (t, batch, labels, input latent) and the output;
``generate_goldens.py`` beside it regenerates it from a fetched copy of the reference. Here the same toy model,
written over numpy, drives our samplers, and the calls and outputs are compared.

Measured (numpy toy vs the reference's torch toy; float32 ``sin`` / ``tanh`` / ``exp`` / ``log`` / ``linspace``
differ by an ulp between the two), max |ours - ref| / max |ref| of the output:
DPM-Solver++ 3.7e-7 (model t identical or 1 float32 ulp: <= 6.1e-5 on the 1..1000 scale), ADM 2.0e-7 (t
identical), DDIM 3.6e-7, Euler 2.2e-7, Heun 5.0e-7 (t <= 6e-8), dopri5 1.4e-6 with the same NFE and the same
accepted / rejected steps (92 = 7 accepted + 8 rejected; 32 = 4 + 1), but call times up to 3e-4 apart: its step
sizes come from an error estimate that cancels in float32, and the reference itself moves its call times by
1.5e-4 and its output by 1.2e-6 when its input noise moves by one ulp. Tolerances are set a few times above
those numbers.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dcae_deploy import diffusion_samplers as ds
from dcae_deploy.errors import DcaeDeployError

GOLDENS = Path(__file__).parent / "data" / "dcae_diffusion_samplers" / "goldens.npz"
C = 4


@pytest.fixture(scope="module")
def goldens():
    with np.load(GOLDENS) as data:
        return {key: data[key] for key in data.files}


def toy_params(goldens, family: str) -> dict:
    return {key.split("/", 1)[1]: value for key, value in goldens.items() if key.startswith(f"toy_{family}/")}


def toy_model(p: dict):
    """The numpy twin of generate_goldens.toy_model (same operations, same order, float32)."""
    weight, embedding = p["weight"], p["embedding"]
    t_scale, bump = np.float32(p["t_scale"]), np.float32(p["bump"])

    def raw(x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        tn = t.astype(np.float32) / t_scale
        a = np.float32(1.0) + np.float32(0.5) * np.sin(np.float32(3.0) * tn)
        u = (tn - np.float32(0.6)) / np.float32(0.05)
        b = np.cos(np.float32(2.0) * tn) + bump * np.exp(-(u * u))
        outs = []
        for o in range(weight.shape[0]):
            h = weight[o, 0] * x[:, 0]
            for c in range(1, x.shape[1]):
                h = h + weight[o, c] * x[:, c]
            h = h * a[:, None, None] + b[:, None, None] * embedding[y, o][:, None, None]
            h = h + np.float32(0.1) * np.tanh(x[:, o % C])
            if o >= x.shape[1]:
                h = np.tanh(h)
            outs.append(h)
        return np.stack(outs, axis=1)

    return raw


class Recording:
    """A raw model that logs every call (a real function of its inputs: the toy model)."""

    def __init__(self, raw):
        self.raw = raw
        self.t: list[np.ndarray] = []
        self.x: list[np.ndarray] = []
        self.y: list[np.ndarray] = []

    def __call__(self, x, t, y):
        assert x.dtype == np.float32 and t.dtype == np.float32 and y.dtype == np.int64
        assert x.ndim == 4 and t.shape == (x.shape[0],) and y.shape == (x.shape[0],)
        self.t.append(t.copy())
        self.x.append(x.copy())
        self.y.append(y.copy())
        return self.raw(x, t, y)

    @property
    def batches(self) -> list[int]:
        return [len(t) for t in self.t]


def relative(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())


def test_numpy_toy_model_matches_the_reference_toy(goldens):
    labels = np.array([3, 7, 1], dtype=np.int64)
    for family in ("uvit", "dit", "usit"):
        p = toy_params(goldens, family)
        out = toy_model(p)(p["probe_x"], p["probe_t"], labels)
        np.testing.assert_allclose(out, p["probe_out"], rtol=0, atol=1e-6, err_msg=family)


def test_uvit_schedule_matches_reference(goldens):
    """Knots within an ulp of torch's CPU linspace; log alpha within 2.4e-7 (torch's float32 log differs from a
    correctly rounded one by an ulp; a float32 cumsum, as on CUDA, would be 1.4e-6 away)."""
    schedule = ds.DiscreteVPSchedule.scaled_linear()
    t_ref, log_alpha_ref = goldens["uvit_schedule/t_discrete"], goldens["uvit_schedule/log_alpha_discrete"]
    assert np.abs(schedule.t_knots - t_ref).max() <= np.spacing(np.float32(1.0))
    assert np.abs(schedule.log_alpha_knots - log_alpha_ref).max() <= 3e-7


@pytest.mark.parametrize("steps", [250, 50, 25, 10, 1000])
def test_adm_tables_equal_reference(goldens, steps):
    diffusion = ds.RespacedDiffusion.linear(steps)
    prefix = f"adm_schedule_{steps}/"
    for key in (k for k in goldens if k.startswith(prefix)):
        np.testing.assert_array_equal(getattr(diffusion, key[len(prefix):]), goldens[key], err_msg=key)


# name in CLASS_SAMPLERS, toy family, tolerances: output (relative), model t (absolute), call latents (relative)
CASES = {
    "dpm": ("dpm-solver++-uvit", "uvit", 2e-6, 1.3e-4, 3e-6),
    "adm": ("adm", "dit", 2e-6, 0.0, None),
    "ddim": ("ddim", "dit", 2e-6, 0.0, None),
    "euler": ("sit-euler", "usit", 2e-6, 1.2e-7, None),
    "heun": ("sit-heun", "usit", 3e-6, 1.2e-7, None),
    "dopri5": ("sit-dopri5", "usit", 1e-5, 2e-3, 2e-3),
}
GOLDEN_CASES = [
    "dpm_s30_g1.5", "dpm_s30_g1", "dpm_s10_g6", "dpm_s20_g1.5", "dpm_s2_g1.5", "dpm_s1_g1.5",
    "adm_s250_g1.5", "adm_s250_g1", "adm_s25_g4", "ddim_s50_g1.5", "ddim_s10_g1",
    "dopri5_g1.5", "dopri5_g1", "heun_s249_g1.5", "heun_s20_g1", "euler_s50_g1.5",
]


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_sampler_matches_reference(goldens, case):
    name, family, out_tol, t_tol, x_tol = CASES[case.split("_")[0]]
    g = {key.split("/", 1)[1]: value for key, value in goldens.items() if key.startswith(f"{case}/")}
    model = Recording(toy_model(toy_params(goldens, family)))
    steps = None if name == "sit-dopri5" else int(g["steps"])
    extra = {}
    if name == "adm":
        step_noise = g["step_noise"]
        extra["step_noise"] = lambda step, shape: step_noise[step]
    out = ds.sample_class_conditional(name, model, g["noise"], g["labels"], float(g["guidance"]), steps, **extra)

    # the same calls: count, batch sizes, labels (cond first / [y, null] batches), times, latents
    assert model.batches == g["call_batch"].tolist()
    for t in model.t:
        assert (t == t[0]).all()
    assert [y.tolist() for y in model.y] == [[v for v in row if v >= 0] for row in g["call_y"].tolist()]
    times = np.array([t[0] for t in model.t], dtype=np.float64)
    assert np.abs(times - g["call_t"]).max() <= t_tol
    if x_tol is not None:
        assert relative(np.stack([x[: len(g["labels"])] for x in model.x]), g["call_x"]) <= x_tol
    assert out.dtype == np.float32
    assert relative(out, g["output"]) <= out_tol


def test_dopri5_steps_and_cost_match_reference(goldens):
    """Same NFE as the reference, with both accepted and rejected steps exercised."""
    p = toy_params(goldens, "usit")
    costs = {}
    for case in ("dopri5_g1", "dopri5_g1.5"):
        fn = ds.guide_batched(toy_model(p), goldens[f"{case}/labels"], float(goldens[f"{case}/guidance"]))
        _, stats = ds.sit_dopri5_sample(fn, goldens[f"{case}/noise"])
        assert stats.nfe == len(goldens[f"{case}/call_t"]) == 2 + 6 * (stats.accepted + stats.rejected)
        costs[case] = (stats.accepted, stats.rejected)
    assert costs == {"dopri5_g1": (7, 8), "dopri5_g1.5": (4, 1)}


# ---------------------------------------------------------------------------------------------
# Independent checks: Gaussian data, where the exact model and the exact ODE solution are known
# ---------------------------------------------------------------------------------------------

MEAN, STD = 0.7, 0.5


def _gaussian_noise(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((batch, C, 2, 2)).astype(np.float32)


@pytest.mark.parametrize(("name", "steps", "tol"), [("sit-dopri5", None, 5e-3), ("sit-heun", 20, 1e-3),
                                                    ("sit-euler", 200, 2e-2)])
def test_sit_solvers_solve_the_flow_ode(name, steps, tol):
    """Data N(m, s^2): the exact velocity of the linear path maps noise z to m + s z at t = 1."""

    def velocity(x, t, y):
        t = t[:, None, None, None].astype(np.float64)
        var = t * t * STD**2 + (1 - t) ** 2
        return (MEAN + (t * STD**2 - (1 - t)) / var * (x - t * MEAN)).astype(np.float32)

    noise = _gaussian_noise()
    out = ds.sample_class_conditional(name, velocity, noise, [1, 2], 1.0, steps)
    assert np.abs(out - (MEAN + STD * noise)).max() < tol


def test_dpm_solver_solves_the_probability_flow_ode():
    """Data N(m, s^2) under the UViT schedule: x_t = alpha_t m + sqrt(alpha_t^2 s^2 + sigma_t^2) z exactly."""
    schedule = ds.DiscreteVPSchedule.scaled_linear()

    def alpha_sigma(t):
        t = np.asarray(t, dtype=np.float32).reshape(1)
        return float(schedule.alpha(t)[0]), float(schedule.sigma(t)[0])

    def eps(x, t, y):
        a, s = alpha_sigma(t[0] / 1000)
        return (s * (x - a * MEAN) / (a * a * STD**2 + s * s)).astype(np.float32)

    noise = _gaussian_noise()
    (a1, s1), (a0, s0) = alpha_sigma(1.0), alpha_sigma(1e-3)
    z = (noise - a1 * MEAN) / math.sqrt(a1 * a1 * STD**2 + s1 * s1)
    exact = a0 * MEAN + math.sqrt(a0 * a0 * STD**2 + s0 * s0) * z
    errors = [np.abs(ds.sample_class_conditional("dpm-solver++-uvit", eps, noise, [1, 2], 1.0, n) - exact).max()
              for n in (30, 100, 300)]
    # measured 0.039, 0.0067, 0.0018: the time-uniform grid ends in one first-order step over a wide lambda range
    assert errors[0] > errors[1] > errors[2] and errors[0] < 0.06 and errors[2] < 3e-3


def _adm_gaussian_model(variance_value: float):
    diffusion = ds.RespacedDiffusion.linear(1000)  # all original steps: alphas_cumprod by original index

    def raw(x, t, y):
        abar = diffusion.alphas_cumprod[t.astype(np.int64)][:, None, None, None]
        eps = np.sqrt(1 - abar) * (x - np.sqrt(abar) * MEAN) / (abar * STD**2 + 1 - abar)
        return np.concatenate([eps, np.full_like(x, variance_value)], axis=1).astype(np.float32)

    return raw


@pytest.mark.parametrize("variance_value", [-1.0, 1.0])
def test_adm_reaches_the_data_distribution(variance_value):
    """With the exact eps of N(m, s^2) data, 8192 samples have the data's mean and spread (ADM: at either end
    of the learned variance range; measured std 0.488 with the posterior variance, 0.507 with beta)."""
    noise = np.random.default_rng(8).standard_normal((8192, 1, 1, 1)).astype(np.float32)
    out = ds.sample_class_conditional("adm", _adm_gaussian_model(variance_value), noise, np.zeros(8192, np.int64),
                                      1.0, steps=250, rng=np.random.default_rng(9))
    assert abs(out.mean() - MEAN) < 0.025 and abs(out.std() - STD) < 0.025


def test_ddim_converges_to_the_probability_flow_map():
    """With the exact eps of N(m, s^2) data, DDIM maps x_T to m + s (x_T - sqrt(abar_T) m) / std(x_T) as the
    steps grow, at first order (measured max errors 0.108, 0.022, 0.0058 at 50, 250, 1000 steps)."""
    noise = np.random.default_rng(8).standard_normal((256, 1, 1, 1)).astype(np.float32)
    abar_t = ds.RespacedDiffusion.linear(1000).alphas_cumprod[-1]
    exact = MEAN + STD * (noise - np.sqrt(abar_t) * MEAN) / np.sqrt(abar_t * STD**2 + 1 - abar_t)
    errors = [np.abs(ds.sample_class_conditional("ddim", _adm_gaussian_model(0.0), noise, np.zeros(256, np.int64),
                                                 1.0, steps=n) - exact).max() for n in (50, 250, 1000)]
    assert errors[0] > 3 * errors[1] > 9 * errors[2] and errors[2] < 0.01


def test_ddim_is_deterministic_and_adm_is_reproducible_from_its_generator():
    raw, noise, labels = _adm_gaussian_model(0.0), _gaussian_noise(), [3, 4]
    first = ds.sample_class_conditional("adm", raw, noise, labels, 1.0, 20, rng=np.random.default_rng(1))
    again = ds.sample_class_conditional("adm", raw, noise, labels, 1.0, 20, rng=np.random.default_rng(1))
    other = ds.sample_class_conditional("adm", raw, noise, labels, 1.0, 20, rng=np.random.default_rng(2))
    assert np.array_equal(first, again) and not np.allclose(first, other)
    draws = []
    ds.sample_class_conditional("adm", raw, noise, labels, 1.0, 20,
                                step_noise=lambda step, shape: draws.append((step, shape)) or np.zeros(shape))
    assert draws == [(k, noise.shape) for k in range(19)]  # every step but the last
    ddim = [ds.sample_class_conditional("ddim", raw, noise, labels, 1.0, 20, rng=np.random.default_rng(s))
            for s in (1, 2)]
    assert np.array_equal(*ddim)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance forms: algebra and batching
# ---------------------------------------------------------------------------------------------


def _cfg_model(out_channels: int = C):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((out_channels, C)).astype(np.float32)
    embedding = rng.standard_normal((1100, out_channels)).astype(np.float32)

    def raw(x, t, y):
        mixed = np.einsum("oc,bchw->bohw", weight, x)
        return (mixed * (1 + t[:, None, None, None] / 1000) + embedding[y][:, :, None, None]).astype(np.float32)

    return Recording(raw)


def _x_t(batch: int = 2):
    x = np.random.default_rng(4).standard_normal((batch, C, 3, 3)).astype(np.float32)
    return x, np.full((batch,), 250.0, dtype=np.float32)


def test_two_call_guidance_is_uvits_form():
    model, (x, t) = _cfg_model(), _x_t()
    labels = np.array([5, 9], dtype=np.int64)
    guided = ds.guide_two_calls(model, labels, 3.0)(x, t)
    assert model.batches == [2, 2] and [y.tolist() for y in model.y] == [[5, 9], [1000, 1000]]
    cond, uncond = model.raw(x, t, labels), model.raw(x, t, np.array([1000, 1000]))
    np.testing.assert_allclose(guided, cond + 2.0 * (cond - uncond), rtol=1e-6)
    np.testing.assert_allclose(guided, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)  # the same algebra

    model = _cfg_model()
    np.testing.assert_array_equal(ds.guide_two_calls(model, labels, 1.0)(x, t), model.raw(x, t, labels))
    assert model.batches == [2] and model.y[0].tolist() == [5, 9]


@pytest.mark.parametrize("out_channels", [C, 2 * C])
def test_batched_guidance_is_dit_and_usit_form(out_channels):
    model, (x, t) = _cfg_model(out_channels), _x_t()
    labels = np.array([5, 9], dtype=np.int64)
    guided = ds.guide_batched(model, labels, 4.0, null_label=1099)(x, t)
    assert model.batches == [4]
    np.testing.assert_array_equal(model.x[0], np.concatenate([x, x]))
    np.testing.assert_array_equal(model.t[0], np.concatenate([t, t]))
    assert model.y[0].tolist() == [5, 9, 1099, 1099]
    cond, uncond = model.raw(x, t, labels), model.raw(x, t, np.array([1099, 1099]))
    assert guided.shape == (2, out_channels, 3, 3)
    np.testing.assert_allclose(guided[:, :C], uncond[:, :C] + 4.0 * (cond[:, :C] - uncond[:, :C]), rtol=1e-6)
    np.testing.assert_array_equal(guided[:, C:], cond[:, C:])  # DiT's variance channels: the conditional half

    model = _cfg_model(out_channels)
    np.testing.assert_array_equal(ds.guide_batched(model, labels, 1.0)(x, t), model.raw(x, t, labels))
    assert model.batches == [2]


@pytest.mark.parametrize("name", list(ds.CLASS_SAMPLERS))
@pytest.mark.parametrize("guidance", [1.0, 1.5])
def test_each_sampler_calls_the_model_as_its_reference_does(name, guidance):
    sampler = ds.CLASS_SAMPLERS[name]
    model = _cfg_model(2 * C if name == "adm" else C)
    raw = model.raw  # tamed: a small learned part around a stable field, so that every sampler stays finite
    if sampler.family == "usit":
        model.raw = lambda x, t, y: 0.05 * raw(x, t, y) - 0.5 * x
    elif name == "adm":
        model.raw = lambda x, t, y: np.concatenate([0.05 * raw(x, t, y)[:, :C] + x, np.tanh(raw(x, t, y)[:, C:])], 1)
    else:
        model.raw = lambda x, t, y: 0.05 * raw(x, t, y) + x
    x, _ = _x_t()
    steps = {"sit-dopri5": None, "sit-heun": 5, "sit-euler": 7}.get(name, 6)
    progress = []
    out = ds.sample_class_conditional(name, model, x, [1, 2], guidance, steps, rng=np.random.default_rng(0),
                                      callback=lambda done, expected: progress.append((done, expected)))
    assert out.shape == x.shape and out.dtype == np.float32 and np.isfinite(out).all()
    nfe = len(progress)
    expected = sampler.nfe(steps)
    assert progress == [(i + 1, expected) for i in range(nfe)]
    if expected is not None:
        assert nfe == expected
    two_calls = sampler.guide is ds.guide_two_calls
    if guidance == 1.0:
        assert model.batches == [2] * nfe
    else:
        assert model.batches == ([2] * 2 * nfe if two_calls else [4] * nfe)
    low, high = {"uvit": (1.0, 1000.0), "dit": (0.0, 999.0), "usit": (0.0, 1.0 + 1e-6)}[sampler.family]
    times = np.concatenate(model.t)
    if name == "sit-dopri5":
        high = np.inf  # its last step may evaluate past t = 1
        assert times.max() > 1.0 and (times < 1.0).sum() > 6  # it does here
    assert times.min() >= low and times.max() <= high


def test_registry_documents_its_conventions():
    assert ds.CLASS_SAMPLERS["dpm-solver++-uvit"].default_steps == 30
    assert ds.CLASS_SAMPLERS["adm"].default_steps == 250 and ds.CLASS_SAMPLERS["adm"].stochastic
    assert ds.CLASS_SAMPLERS["sit-dopri5"].default_steps is None
    for sampler in ds.CLASS_SAMPLERS.values():
        assert sampler.family in {"uvit", "dit", "usit"} and sampler.model_time and sampler.prediction
    assert ds.dpm_solver_fast_orders(30) == [3] * 9 + [2, 1]
    assert ds.dpm_solver_fast_orders(10) == [3] * 3 + [1] and ds.dpm_solver_fast_orders(20) == [3] * 6 + [2]
    assert all(sum(ds.dpm_solver_fast_orders(n)) == n for n in range(1, 100))
    kept = ds.space_timesteps(1000, 250)
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999


# ---------------------------------------------------------------------------------------------
# Import and argument errors
# ---------------------------------------------------------------------------------------------


def test_module_imports_numpy_only():
    code = (
        "import sys; import dcae_deploy.diffusion_samplers as m; "
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'scipy', 'torchdiffeq', 'diffusers')); "
        "assert not bad, bad; print('numpy only')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "numpy only" in out.stdout, out.stderr


def _call(**overrides):
    args = dict(name="ddim", raw_model=_cfg_model(2 * C), noise=_x_t()[0], labels=[1, 2], guidance=1.5, steps=3)
    args.update(overrides)
    return ds.sample_class_conditional(**args)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(name="dpm"), "unknown class-conditional sampler 'dpm'; choose one of dpm-solver++-uvit, adm, ddim"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(steps=-3), "steps must be an integer >= 1"),
        (dict(steps=2.5), "steps must be an integer >= 1"),
        (dict(steps=True), "steps must be an integer >= 1"),
        (dict(steps=1001), "ddim takes at most 1000 steps"),
        (dict(name="sit-dopri5", steps=10), "sit-dopri5 is adaptive"),
        (dict(guidance=float("nan")), "guidance nan is not usable"),
        (dict(guidance=float("inf")), "guidance inf is not usable"),
        (dict(guidance=-0.5), "guidance -0.5 is not usable"),
        (dict(guidance="6"), "guidance must be a number"),
        (dict(name="adm"), "the adm sampler adds noise at every step: pass rng"),
        (dict(name="adm", rng=np.random.RandomState(0)), "rng must be a numpy.random.Generator"),
        (dict(labels=[1, 2, 3]), "labels must be 2 integer class ids"),
        (dict(labels=[1.0, 2.0]), "labels must be 2 integer class ids"),
        (dict(labels=[-1, 2]), "labels must be >= 0"),
        (dict(noise=np.zeros((2, C, 3))), "noise must be a float array [B, C, H, W]"),
        (dict(name="adm", raw_model=_cfg_model(C), rng=np.random.default_rng(0)), "the ADM sampler needs 8"),
        (dict(raw_model=lambda x, t, y: x[:1]), "the diffusion model returned shape (1, 4, 3, 3)"),
    ],
)
def test_argument_errors(overrides, message):
    with pytest.raises(DcaeDeployError) as info:
        _call(**overrides)
    assert message in str(info.value)
