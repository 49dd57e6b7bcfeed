"""Golden outputs of efficientvit's own class-conditional samplers, for tests/test_diffusion_samplers.py.

It runs the reference code itself (efficientvit at de7d7733cc0329f391b33f1f459271562ec27bd5: UViT.generate /
DiT.generate / forward_with_cfg, NoiseScheduleVP + DPM_Solver, create_diffusion + p_sample_loop /
ddim_sample_loop, SiT Sampler.sample_ode + torchdiffeq 0.2.5) on the CPU, with a small deterministic toy model
in place of the networks, and writes ``goldens.npz`` beside this file: per case the inputs (noise, labels,
guidance, steps, the injected ADM step noise), every model call (t, batch size, labels, input latent) and the
output. The fetched repository is never committed; this script is.

How to run it (torch on the CPU, torchdiffeq 0.2.5, diffusers; no timm / einops / CUDA needed: the network
modules those serve are not built, and stubs stand in for their imports)::

    git -C <efficientvit clone> archive de7d7733cc0329f391b33f1f459271562ec27bd5 efficientvit | tar -x -C /tmp/ref
    python tests/data/dcae_diffusion_samplers/generate_goldens.py --reference /tmp/ref

What is the reference's and what is ours: the samplers, schedules, CFG forms and the ``generate`` driver code
are the reference's, called as they are. Ours: the toy model (``toy_model`` below, mirrored in numpy by the
test), a stand-in ``self`` for UViT / DiT that carries the config, the eval scheduler built exactly as the
constructors build it (``torch.device("cuda")`` replaced by the CPU) and the toy as ``forward_without_cfg``;
``torch.randn_like`` replaced while DiT samples, to inject recorded step noise (the reference draws it from
torch's global RNG); the DDIM and Euler cases call the reference's ``ddim_sample_loop`` /
``sample_ode(sampling_method="euler")`` with the inputs ``generate`` would give them, since ``generate`` does
not offer them for these models.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
C, H, W, B = 4, 4, 4, 3
LABELS = np.array([3, 7, 1], dtype=np.int64)
NULL = 1000


# ---------------------------------------------------------------------------------------------
# The toy model (the test has the same function over numpy; parameters are saved with the goldens)
# ---------------------------------------------------------------------------------------------


def toy_params(seed: int, out_channels: int, t_scale: float, bump: float, diag: float, mix: float, emb: float):
    rng = np.random.default_rng(seed)
    weight = mix * rng.standard_normal((out_channels, C))
    weight[:C] += diag * np.eye(C)
    return {
        "weight": weight.astype(np.float32),
        "embedding": (emb * rng.standard_normal((NULL + 1, out_channels))).astype(np.float32),
        "t_scale": np.float32(t_scale),
        "bump": np.float32(bump),
        "variance": np.int64(out_channels > C),
    }


def toy_model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, p: dict) -> torch.Tensor:
    """out_o = (sum_c W[o,c] x_c) a(t) + b(t) E[y, o] + 0.1 tanh(x_{o mod C}); variance channels squashed."""
    weight, embedding = torch.from_numpy(p["weight"]), torch.from_numpy(p["embedding"])
    tn = t.float() / float(p["t_scale"])
    a = 1.0 + 0.5 * torch.sin(3.0 * tn)
    u = (tn - 0.6) / 0.05
    b = torch.cos(2.0 * tn) + float(p["bump"]) * torch.exp(-(u * u))
    outs = []
    for o in range(weight.shape[0]):
        h = weight[o, 0] * x[:, 0]
        for c in range(1, x.shape[1]):
            h = h + weight[o, c] * x[:, c]
        h = h * a[:, None, None] + b[:, None, None] * embedding[y, o][:, None, None] + 0.1 * torch.tanh(x[:, o % C])
        if o >= x.shape[1]:
            h = torch.tanh(h)
        outs.append(h)
    return torch.stack(outs, dim=1)


PARAMS = {
    "uvit": toy_params(1, C, 1000.0, 0.0, diag=1.0, mix=0.2, emb=0.3),
    "dit": toy_params(2, 2 * C, 1000.0, 0.0, diag=1.0, mix=0.2, emb=0.3),
    "usit": toy_params(3, C, 1.0, 3.0, diag=-0.2, mix=0.3, emb=1.0),
}


# ---------------------------------------------------------------------------------------------
# Importing the reference without its network dependencies
# ---------------------------------------------------------------------------------------------


def import_reference(root: Path):
    sys.path.insert(0, str(root))
    import diffusers  # noqa: F401  (dit.py imports it; it probes for timm, so before the stubs)

    stubs = {
        "timm": {},
        "timm.models": {},
        "timm.models.vision_transformer": {"Mlp": object, "Attention": object, "PatchEmbed": object,
                                           "trunc_normal_": lambda *a, **k: None},
        "einops": {},
        "efficientvit.apps": {},
        "efficientvit.apps.utils": {},
        "efficientvit.apps.utils.dist": {"is_master": lambda: True},
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__path__ = []  # a package, so that submodule stubs import
        module.__dict__.update(attrs)
        sys.modules[name] = module
    from efficientvit.diffusioncore.models import dit, uvit
    from efficientvit.diffusioncore.models.dit_sampler import create_diffusion
    from efficientvit.diffusioncore.models.sit_sampler import Sampler, create_transport
    from efficientvit.diffusioncore.models.uvit_sampler.dpm_solver_pp import NoiseScheduleVP

    return types.SimpleNamespace(uvit=uvit, dit=dit, create_diffusion=create_diffusion, Sampler=Sampler,
                                 create_transport=create_transport, NoiseScheduleVP=NoiseScheduleVP)


class Recorder:
    """forward_without_cfg of the stand-in models: the toy, with every call logged."""

    def __init__(self, params: dict):
        self.params = params
        self.t, self.batch, self.y, self.x = [], [], [], []

    def __call__(self, x, t, y=None):
        assert t.shape == (x.shape[0],) and bool((t == t[0]).all())
        self.t.append(np.float32(t[0].float().item()))
        self.batch.append(x.shape[0])
        self.y.append(y.numpy().astype(np.int64).copy())
        self.x.append(x.numpy().astype(np.float32).copy())
        return toy_model(x, t, y, self.params)


class Stand:
    """The `self` the reference's generate / forward_with_cfg read: cfg, eval_scheduler, forward_without_cfg."""

    def __init__(self, cfg, eval_scheduler, recorder):
        self.cfg, self.eval_scheduler, self.forward_without_cfg = cfg, eval_scheduler, recorder

    def parameters(self):
        return iter([torch.zeros(1)])


def initial_noise(seed: int) -> tuple[np.ndarray, torch.Generator]:
    """The latent generate() draws with `generator`, and a generator in the same state to pass it."""
    noise = torch.randn((B, C, H, W), generator=torch.Generator().manual_seed(seed))
    return noise.numpy(), torch.Generator().manual_seed(seed)


def store(out: dict, case: str, rec: Recorder, noise, guidance, steps, output, keep_x: bool, **extra):
    out[f"{case}/noise"] = noise
    out[f"{case}/labels"] = LABELS
    out[f"{case}/guidance"] = np.float64(guidance)
    out[f"{case}/steps"] = np.int64(steps)
    out[f"{case}/output"] = output.astype(np.float32)
    out[f"{case}/call_t"] = np.array(rec.t, dtype=np.float32)
    out[f"{case}/call_batch"] = np.array(rec.batch, dtype=np.int64)
    out[f"{case}/call_y"] = np.stack([np.pad(y, (0, 2 * B - len(y)), constant_values=-1) for y in rec.y])
    if keep_x:  # the first B latents of each call (the second CFG half repeats them)
        out[f"{case}/call_x"] = np.stack([x[:B] for x in rec.x])
    for key, value in extra.items():
        out[f"{case}/{key}"] = value
    print(f"{case}: {len(rec.t)} model calls, |output| max {np.abs(output).max():.3f}")


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------


def schedules(ref, out: dict) -> None:
    """The reference's tables: UViT's discrete VP knots, ADM's respaced float64 tables."""
    betas = (torch.linspace(0.00085**0.5, 0.0120**0.5, 1000, dtype=torch.float64) ** 2).numpy()
    schedule = ref.NoiseScheduleVP(schedule="discrete", betas=torch.tensor(betas).float())
    out["uvit_schedule/t_discrete"] = schedule.t_discrete.reshape(-1).numpy()
    out["uvit_schedule/log_alpha_discrete"] = schedule.log_alpha_discrete.reshape(-1).numpy()
    for steps in (250, 50, 25, 10, 1000):
        diffusion = ref.create_diffusion(str(steps))
        out[f"adm_schedule_{steps}/timestep_map"] = np.array(diffusion.timestep_map, dtype=np.int64)
        for name in ("alphas_cumprod", "alphas_cumprod_prev", "posterior_log_variance_clipped",
                     "posterior_mean_coef1", "posterior_mean_coef2", "sqrt_recip_alphas_cumprod",
                     "sqrt_recipm1_alphas_cumprod"):
            out[f"adm_schedule_{steps}/{name}"] = getattr(diffusion, name)
        out[f"adm_schedule_{steps}/log_betas"] = np.log(diffusion.betas)  # as p_mean_variance takes it


def uvit_dpm(ref, out: dict) -> None:
    betas = (torch.linspace(0.00085**0.5, 0.0120**0.5, 1000, dtype=torch.float64) ** 2).numpy()
    for case, steps, guidance, seed in [("dpm_s30_g1.5", 30, 1.5, 10), ("dpm_s30_g1", 30, 1.0, 11),
                                        ("dpm_s10_g6", 10, 6.0, 12), ("dpm_s20_g1.5", 20, 1.5, 13),
                                        ("dpm_s2_g1.5", 2, 1.5, 14), ("dpm_s1_g1.5", 1, 1.5, 15)]:
        # as UViT.__init__ builds it, on the CPU instead of torch.device("cuda")
        schedule = ref.NoiseScheduleVP(schedule="discrete", betas=torch.tensor(betas).float())
        cfg = ref.uvit.UViTConfig(in_channels=C, input_size=H, num_inference_steps=steps, eval_scheduler="DPM_Solver")
        rec = Recorder(PARAMS["uvit"])
        stand = Stand(cfg, schedule, rec)
        noise, generator = initial_noise(seed)
        output = ref.uvit.UViT.generate(stand, torch.from_numpy(LABELS), torch.full((B,), NULL), guidance, generator)
        store(out, case, rec, noise, guidance, steps, output.numpy(), keep_x=True)


def dit_adm(ref, out: dict) -> None:
    step_noise = {n: np.random.default_rng(100 + n).standard_normal((n, 2 * B, C, H, W)).astype(np.float32)
                  for n in (250, 25)}
    for case, steps, guidance, seed in [("adm_s250_g1.5", 250, 1.5, 20), ("adm_s250_g1", 250, 1.0, 21),
                                        ("adm_s25_g4", 25, 4.0, 22)]:
        cfg = ref.dit.DiTConfig(in_channels=C, input_size=H, eval_scheduler="GaussianDiffusion")
        rec = Recorder(PARAMS["dit"])
        stand = Stand(cfg, ref.create_diffusion(str(steps)), rec)
        stand.forward_with_cfg = lambda *a, _s=stand, **k: ref.dit.DiT.forward_with_cfg(_s, *a, **k)
        noise, generator = initial_noise(seed)
        queue = list(torch.from_numpy(step_noise[steps]))
        batch = 2 * B if guidance != 1.0 else B
        randn_like = torch.randn_like
        torch.randn_like = lambda x: queue.pop(0)[:batch].clone()  # the reference's global-RNG noise, injected
        try:
            output = ref.dit.DiT.generate(stand, torch.from_numpy(LABELS), torch.full((B,), NULL), guidance, generator)
        finally:
            torch.randn_like = randn_like
        assert not queue  # one draw per step, the last one unused (no noise at t = 0)
        store(out, case, rec, noise, guidance, steps, output.numpy(), keep_x=False,
              step_noise=step_noise[steps][: steps - 1, :B])


def dit_ddim(ref, out: dict) -> None:
    for case, steps, guidance, seed in [("ddim_s50_g1.5", 50, 1.5, 30), ("ddim_s10_g1", 10, 1.0, 31)]:
        cfg = ref.dit.DiTConfig(in_channels=C, input_size=H)
        rec = Recorder(PARAMS["dit"])
        stand = Stand(cfg, ref.create_diffusion(str(steps)), rec)
        noise, _ = initial_noise(seed)
        samples, labels = torch.from_numpy(noise), torch.from_numpy(LABELS)
        with torch.no_grad():
            if guidance != 1.0:  # what DiT.generate sets up for its samplers
                samples = torch.cat([samples, samples])
                kwargs = dict(y=torch.cat([labels, torch.full((B,), NULL)]), cfg_scale=guidance)
                model = lambda *a, **k: ref.dit.DiT.forward_with_cfg(stand, *a, **k)  # noqa: E731
            else:
                kwargs, model = dict(y=labels), rec
            output = stand.eval_scheduler.ddim_sample_loop(model, samples.shape, samples, clip_denoised=False,
                                                           model_kwargs=kwargs, device=torch.device("cpu"), eta=0.0)
        store(out, case, rec, noise, guidance, steps, output[:B].numpy(), keep_x=False)


def usit_ode(ref, out: dict) -> None:
    cases = [("dopri5_g1.5", "dopri5", 250, 1.5, 40), ("dopri5_g1", "dopri5", 250, 1.0, 41),
             ("heun_s249_g1.5", "heun2", 250, 1.5, 42), ("heun_s20_g1", "heun2", 21, 1.0, 43),
             ("euler_s50_g1.5", "euler", 51, 1.5, 44)]
    for case, method, points, guidance, seed in cases:
        cfg = ref.uvit.UViTConfig(in_channels=C, input_size=H, num_inference_steps=points,
                                  train_scheduler="SiTSampler", eval_scheduler="ODE_dopri5")
        # as UViT.__init__ builds it (its "ODE_heun2" branch; euler through the same sample_ode)
        transport = ref.create_transport("Linear", "velocity", None, None, None)
        solver = ref.Sampler(transport).sample_ode(sampling_method=method, num_steps=points, atol=1e-6, rtol=0.001,
                                                   reverse=False)
        rec = Recorder(PARAMS["usit"])
        stand = Stand(cfg, solver, rec)
        stand.forward_with_cfg = lambda *a, _s=stand, **k: ref.uvit.UViT.forward_with_cfg(_s, *a, **k)
        noise, generator = initial_noise(seed)
        output = ref.uvit.UViT.generate(stand, torch.from_numpy(LABELS), torch.full((B,), NULL), guidance, generator)
        steps = 0 if method == "dopri5" else points - 1  # dopri5: adaptive (the 250 points are an output grid)
        store(out, case, rec, noise, guidance, steps, output.numpy(), keep_x=method == "dopri5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="folder holding efficientvit/ (git archive)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ref = import_reference(args.reference.resolve())
    out: dict[str, np.ndarray] = {}
    for family, params in PARAMS.items():
        for key, value in params.items():
            out[f"toy_{family}/{key}"] = np.asarray(value)
        # the toy on a probe input, so the test can check its numpy twin
        probe_x = np.random.default_rng(7).standard_normal((B, C, H, W)).astype(np.float32)
        probe_t = np.array([0.0, 0.37, 1.0], dtype=np.float32) * params["t_scale"]
        out[f"toy_{family}/probe_x"], out[f"toy_{family}/probe_t"] = probe_x, probe_t
        out[f"toy_{family}/probe_out"] = toy_model(torch.from_numpy(probe_x), torch.from_numpy(probe_t),
                                                   torch.from_numpy(LABELS), params).numpy()
    schedules(ref, out)
    uvit_dpm(ref, out)
    dit_adm(ref, out)
    dit_ddim(ref, out)
    usit_ode(ref, out)
    np.savez_compressed(HERE / "goldens.npz", **out)
    print(f"wrote {HERE / 'goldens.npz'} ({(HERE / 'goldens.npz').stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
