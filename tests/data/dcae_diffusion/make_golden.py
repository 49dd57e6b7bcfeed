"""Regenerate the DC-AE-Diffusion (UViT / DiT) golden fixtures in this folder (not run by the tests).

Runs the ORIGINAL mit-han-lab/efficientvit denoisers (``efficientvit/diffusioncore/models/uvit.py`` and ``dit.py``,
unmodified) on CPU in fp32, imported from a checkout given on the command line (never copied into this
repository), with the real timm layers they import (``Mlp``, ``Attention``, ``PatchEmbed``, ``trunc_normal_``)
from an unpacked timm wheel, also given on the command line:

    git clone https://github.com/mit-han-lab/efficientvit /tmp/evit
    git -C /tmp/evit checkout de7d7733cc0329f391b33f1f459271562ec27bd5
    pip download --no-deps timm==1.0.31 einops==0.8.2 -d /tmp/wheels   # timm needs torchvision: never install it
    mkdir /tmp/refpkgs && cd /tmp/refpkgs && unzip -q /tmp/wheels/timm-*.whl && unzip -q /tmp/wheels/einops-*.whl
    python tests/data/dcae_diffusion/make_golden.py --efficientvit-src /tmp/evit --packages /tmp/refpkgs

(torchdiffeq, tqdm, diffusers, numpy: the project's test environment has them.) What stands in for what:

* The package ``__init__`` files of ``efficientvit``, ``efficientvit.apps(.utils)``, ``efficientvit.models(.utils)``,
  ``efficientvit.diffusioncore(.models)``, ``timm``, ``timm.layers`` and ``timm.models`` are not executed (they
  import SAM / segmentation code, onnxsim, torchvision); bare package modules pointing at the same directories
  stand in for them, so ``uvit.py``, ``dit.py``, their samplers, ``apps/utils/dist.py``, ``models/utils/*.py`` and
  timm's ``layers/{mlp,attention,patch_embed,weight_init}.py`` (and what they import) are the upstream files.
  ``timm.models.vision_transformer`` (a large file that imports timm.data -> torchvision) is a bare module holding
  those four names, which is where the reference imports them from (timm re-exports them there).
* UViTs are built with ``train_scheduler="SiTSampler", eval_scheduler="ODE_dopri5"`` whatever their objective: the
  DPM_Solver branch of ``UViT.__init__`` puts its schedule on ``cuda``. Schedulers are not modules (no weights)
  and ``forward_without_cfg`` does not read them.
* ``use_checkpoint=False`` (gradient checkpointing; the function is the same), ``RANK=0`` (``is_master``).

Outputs (see README.md): ``<case>/{model,io}.safetensors`` + ``<case>/config.json`` for four small random
configs, and ``keys-<variant>.txt`` + ``params.json`` for the registered full-size denoisers (built on meta).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent

# case -> (model, reference config kwargs, our variant name or our config kwargs, timesteps, labels)
CASES = {
    # the registered tiny-uvit / tiny-dit (dcae_deploy/variants.py), as the reference builds them
    "tiny-uvit": ("uvit", dict(input_size=4, patch_size=1, in_channels=32, hidden_size=64, depth=2, num_heads=2),
                  "tiny-uvit", [1.0, 437.25, 1000.0], [0, 917, 1000]),
    "tiny-dit": ("dit", dict(input_size=4, patch_size=1, in_channels=32, hidden_size=64, depth=2, num_heads=2),
                 "tiny-dit", [0, 250, 999], [0, 917, 1000]),
    # the other structural options: patch 2, MLP time embedding, qkv bias, SiLU, odd depth, 7 classes (USiT time)
    "uvit-p2": ("uvit", dict(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=3, num_heads=3,
                             mlp_ratio=2.0, mlp_time_embed=True, qkv_bias=True, act_layer="silu", num_classes=7),
                dict(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=3, num_heads=3, mlp_ratio=2.0,
                     mlp_time_embed=True, qkv_bias=True, act_layer="silu", num_classes=7, timestep_convention="sit"),
                [0.0, 0.37, 1.0], [6, 7, 2]),
    # patch 2, post-norm blocks, no learned sigma, no label dropout (no null row)
    "dit-p2-postnorm": ("dit", dict(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=2, num_heads=3,
                                    mlp_ratio=2.0, post_norm=True, learn_sigma=False, class_dropout_prob=0.0,
                                    num_classes=7),
                        dict(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=2, num_heads=3,
                             mlp_ratio=2.0, post_norm=True, learn_sigma=False, class_dropout_prob=0.0, num_classes=7),
                        [3, 500, 998], [6, 0, 3]),
}

# the registered full-size denoisers (dcae_deploy/variants.py) as efficientvit's builders configure them
FULL = {
    "uvit-s-f32c32": ("uvit", dict(depth=12, hidden_size=512, num_heads=8, in_channels=32, input_size=16)),
    "uvit-h-f32c32": ("uvit", dict(depth=28, hidden_size=1152, num_heads=16, in_channels=32, input_size=16)),
    "uvit-2b-f32c32": ("uvit", dict(depth=28, hidden_size=2048, num_heads=32, in_channels=32, input_size=16)),
    "uvit-h-f64c128": ("uvit", dict(depth=28, hidden_size=1152, num_heads=16, in_channels=128, input_size=8)),
    "uvit-2b-f64c128": ("uvit", dict(depth=28, hidden_size=2048, num_heads=32, in_channels=128, input_size=8)),
    "dit-xl-f32c32": ("dit", dict(depth=28, hidden_size=1152, num_heads=16, in_channels=32, input_size=16)),
}


def import_reference(src: Path, packages: Path):
    evit, timm = src / "efficientvit", packages / "timm"
    if not (evit / "diffusioncore" / "models" / "uvit.py").is_file():
        raise SystemExit(f"{src} is no efficientvit checkout (no efficientvit/diffusioncore/models/uvit.py)")
    if not (timm / "layers" / "mlp.py").is_file():
        raise SystemExit(f"{packages} holds no unpacked timm wheel (no timm/layers/mlp.py)")
    import diffusers  # noqa: F401  (dit.py imports it; imported first: it probes timm with find_spec)

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    sys.path[:0] = [str(src), str(packages)]
    for name, folder in [("timm", timm), ("timm.layers", timm / "layers"), ("timm.models", timm / "models"),
                         ("efficientvit", evit), ("efficientvit.apps", evit / "apps"),
                         ("efficientvit.apps.utils", evit / "apps" / "utils"), ("efficientvit.models", evit / "models"),
                         ("efficientvit.models.utils", evit / "models" / "utils"),
                         ("efficientvit.diffusioncore", evit / "diffusioncore"),
                         ("efficientvit.diffusioncore.models", evit / "diffusioncore" / "models")]:
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module
    from timm.layers.attention import Attention
    from timm.layers.mlp import Mlp
    from timm.layers.patch_embed import PatchEmbed
    from timm.layers.weight_init import trunc_normal_

    vit = types.ModuleType("timm.models.vision_transformer")
    vit.Attention, vit.Mlp, vit.PatchEmbed, vit.trunc_normal_ = Attention, Mlp, PatchEmbed, trunc_normal_
    sys.modules[vit.__name__] = vit
    import efficientvit.diffusioncore.models.dit as dit  # noqa: E402
    import efficientvit.diffusioncore.models.uvit as uvit  # noqa: E402

    return uvit, dit


def build(ref, kind: str, kwargs: dict):
    uvit, dit = ref
    if kind == "uvit":
        cfg = uvit.UViTConfig(use_checkpoint=False, train_scheduler="SiTSampler", eval_scheduler="ODE_dopri5",
                              **{"patch_size": 1, **kwargs})
        return uvit.UViT(cfg)
    cfg = dit.DiTConfig(use_checkpoint=False, **{"patch_size": 1, **kwargs})
    return dit.DiT(cfg)


def write_keys(path: Path, state: dict[str, torch.Tensor]) -> None:
    path.write_text("".join(f"{k}\t{json.dumps(list(v.shape))}\n" for k, v in sorted(state.items())))


def stats(t: torch.Tensor) -> str:
    t = t.float()
    return f"shape={tuple(t.shape)} mean={t.mean():+.4f} std={t.std():.4f} min={t.min():+.4f} max={t.max():+.4f}"


@torch.no_grad()
def make_case(ref, case: str, seed: int, out_root: Path) -> None:
    kind, kwargs, ours, timesteps, labels = CASES[case]
    torch.manual_seed(seed)
    model = build(ref, kind, kwargs).float().eval()
    io = {}
    if kind == "dit":
        io["pos_embed_init"] = model.pos_embed.detach().clone()  # the fixed sin-cos table, before randomising
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():  # every weight random and non-zero (DiT zero-inits its adaLN and final layer)
        p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    batch = len(labels)
    x = torch.randn(batch, kwargs["in_channels"], kwargs["input_size"], kwargs["input_size"], generator=gen)
    # UViT gets float times (the DPM / SiT samplers' continuous t); DiT the int64 steps ADM's timestep_map holds
    t = torch.tensor(timesteps, dtype=torch.float32 if kind == "uvit" else torch.int64)
    y = torch.tensor(labels, dtype=torch.int64)
    output = model.forward_without_cfg(x, t, y)
    io.update(latent=x, timestep=t, class_labels=y, output=output)
    for k, v in io.items():
        print(f"[{case}] {k:15s} {stats(v)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RuntimeError(f"{case}: non-finite values in {k}")
    out = out_root / case
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"source": "mit-han-lab/efficientvit", "case": case})
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "io.safetensors"))
    (out / "config.json").write_text(json.dumps({"model": kind, "reference": kwargs, "ours": ours}, indent=2) + "\n")


def make_full(ref, name: str, out_root: Path) -> dict:
    kind, kwargs = FULL[name]
    with torch.device("meta"):
        model = build(ref, kind, kwargs)
    write_keys(out_root / f"keys-{name}.txt", model.state_dict())
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[{name}] {len(model.state_dict())} keys, {total / 1e6:.2f} M parameters "
          f"({trainable / 1e6:.2f} M trainable)")
    return {"parameters": total, "trainable": trainable}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--efficientvit-src", type=Path, required=True, help="root of an efficientvit checkout")
    ap.add_argument("--packages", type=Path, required=True, help="folder holding the unpacked timm (and einops) wheel")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--efficientvit-commit", default=None,
                    help="commit sha to record if the source is not a git checkout")
    args = ap.parse_args()
    try:
        sha = subprocess.run(["git", "-C", str(args.efficientvit_src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
    except Exception:
        sha = args.efficientvit_commit or "unknown"
    ref = import_reference(args.efficientvit_src.resolve(), args.packages.resolve())
    import timm.version

    print("efficientvit commit:", sha, "| timm", timm.version.__version__, "| torch", torch.__version__)
    torch.set_grad_enabled(False)
    for i, case in enumerate(CASES):
        make_case(ref, case, 10 * i, args.out)
    params = {name: make_full(ref, name, args.out) for name in FULL}
    meta = {"efficientvit_commit": sha, "timm": timm.version.__version__, "torch": torch.__version__,
            "full_size": params}
    (args.out / "params.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
