"""Regenerate the efficientvit DC-AE golden fixtures in this folder (not run by the tests).

Runs the ORIGINAL mit-han-lab/efficientvit DC-AE code, imported from a checkout given on the
command line (never copied into this repository), on CPU in fp32:

    git clone https://github.com/mit-han-lab/efficientvit /tmp/evit   # or any checkout/export
    pip install --target /tmp/evit_deps omegaconf                       # dc_ae.py imports omegaconf
    PYTHONPATH=/tmp/evit_deps python tests/data/efficientvit/make_golden.py --efficientvit-src /tmp/evit

Two things are substituted so the code runs without CUDA/Triton:

* ``efficientvit.models.nn.triton_rms_norm`` (imports triton, allocates on "cuda") is replaced by a
  module whose ``TritonRMSNorm2dFunc.apply(x, w, b, eps)`` is the exact pure-torch equivalent of the
  Triton forward kernel: per pixel, over channels, in fp32,
  ``y = x * rsqrt(mean_c(x^2) + eps) * w[c] + b[c]``, stored in x's dtype.
* The package ``__init__`` files of ``efficientvit``, ``efficientvit.models``,
  ``efficientvit.models.efficientvit`` and ``efficientvit.models.nn`` are not executed (they import
  SAM/segmentation code with extra dependencies); bare package modules pointing at the same
  directories stand in for them, so ``dc_ae.py``, ``ops.py``, ``norm.py``, ``act.py`` and
  ``models/utils`` are the unmodified upstream files.

Outputs (see README.md): ``<variant>/{model,io}.safetensors``, ``<variant>/keys.txt`` for the two
tiny variants, and ``keys-<name>.txt`` for four full-size released configs (built on the meta device).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent

# The tiny test variants (must match dcae_deploy/variants.py): widths/depths replace those of the
# released config they are derived from; every other setting comes from efficientvit's own config.
TINY_WIDTHS = [8, 16, 32, 32, 64, 64]
TINY = {
    "tiny-f32c32-sana": dict(base="dc-ae-f32c32-sana-1.0", enc_depths=[1] * 6, dec_depths=[1] * 6),
    "tiny-f32c32-in": dict(base="dc-ae-f32c32-in-1.0", enc_depths=[0, 1, 2, 1, 1, 1], dec_depths=[0, 1, 2, 1, 1, 1]),
}
FULL = {
    "f32c32-sana": "dc-ae-f32c32-sana-1.0",
    "f32c32-in": "dc-ae-f32c32-in-1.0",
    "f64c128-in": "dc-ae-f64c128-in-1.0",
    "f128c512-in": "dc-ae-f128c512-in-1.0",
}


class TorchRMSNorm2dFunc:
    """Drop-in for efficientvit's ``TritonRMSNorm2dFunc`` (forward only), same arithmetic in torch."""

    @staticmethod
    def apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        rrms = torch.rsqrt(xf.pow(2).mean(dim=1, keepdim=True) + eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = xf * rrms * weight.float().view(shape) + bias.float().view(shape)
        return y.to(x.dtype)


def import_dc_ae(src: Path):
    pkg = src / "efficientvit"
    if not (pkg / "models" / "efficientvit" / "dc_ae.py").is_file():
        raise SystemExit(f"{src} does not look like an efficientvit checkout (no efficientvit/models/efficientvit/dc_ae.py)")
    sys.path.insert(0, str(src))
    for name, sub in [
        ("efficientvit", pkg),
        ("efficientvit.models", pkg / "models"),
        ("efficientvit.models.efficientvit", pkg / "models" / "efficientvit"),
        ("efficientvit.models.nn", pkg / "models" / "nn"),
    ]:
        mod = types.ModuleType(name)
        mod.__path__ = [str(sub)]
        sys.modules[name] = mod
    trms = types.ModuleType("efficientvit.models.nn.triton_rms_norm")
    trms.TritonRMSNorm2dFunc = TorchRMSNorm2dFunc
    sys.modules[trms.__name__] = trms
    import efficientvit.models.efficientvit.dc_ae as dc_ae  # noqa: E402

    return dc_ae


def released_config(dc_ae, name: str):
    if name.startswith("dc-ae-f32c32"):
        return dc_ae.dc_ae_f32c32(name, None)
    if name.startswith("dc-ae-f64c128"):
        return dc_ae.dc_ae_f64c128(name, None)
    if name.startswith("dc-ae-f128c512"):
        return dc_ae.dc_ae_f128c512(name, None)
    raise ValueError(name)


def shape_str(t: torch.Tensor) -> str:
    return json.dumps(list(t.shape))


def write_keys(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    lines = [f"{k}\t{shape_str(v)}" for k, v in sorted(state_dict.items())]
    path.write_text("\n".join(lines) + "\n")


@torch.no_grad()
def init_seeded(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and float buffer gets distinct seeded random values (see README.md)."""
    g = torch.Generator().manual_seed(seed)

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=t.dtype)

    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, torch.nn.Conv2d) and pname == "weight":
                fan_in = p[0].numel()
                p.copy_(randn(p) / math.sqrt(fan_in))
            elif isinstance(module, torch.nn.Conv2d) and pname == "bias":
                p.copy_(0.1 * randn(p))
            elif pname == "weight":  # norm scale (BatchNorm2d / RMSNorm)
                p.copy_(1.0 + 0.1 * randn(p))
            elif pname == "bias":  # norm shift
                p.copy_(0.1 * randn(p))
            else:
                raise RuntimeError(f"unexpected parameter {name}.{pname}")
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * randn(module.running_mean))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
            module.num_batches_tracked.fill_(0)


def stats(t: torch.Tensor) -> str:
    return f"shape={tuple(t.shape)} mean={t.mean():+.4f} std={t.std():.4f} min={t.min():+.4f} max={t.max():+.4f}"


def make_tiny(dc_ae, variant: str, spec: dict, out_root: Path, seed: int) -> None:
    cfg = released_config(dc_ae, spec["base"])
    cfg.encoder.width_list = list(TINY_WIDTHS)
    cfg.decoder.width_list = list(TINY_WIDTHS)
    cfg.encoder.depth_list = list(spec["enc_depths"])
    cfg.decoder.depth_list = list(spec["dec_depths"])
    print(f"[{variant}] config:", cfg)

    torch.manual_seed(seed)
    model = dc_ae.DCAE(cfg).float().eval()
    init_seeded(model, seed)

    g = torch.Generator().manual_seed(seed + 1)
    image = torch.rand((1, 3, 64, 64), generator=g) * 2 - 1
    latent2 = torch.randn((1, cfg.latent_channels, 4, 4), generator=g)
    with torch.no_grad():
        latent = model.encoder(image)
        reconstruction = model.decoder(latent)
        decoded2 = model.decoder(latent2)
    io = dict(image=image, latent=latent, reconstruction=reconstruction, latent2=latent2, decoded2=decoded2)
    for k, v in io.items():
        if not torch.isfinite(v).all():
            raise RuntimeError(f"{variant}: non-finite values in {k}")
        print(f"[{variant}] {k:15s} {stats(v)}")

    out = out_root / variant
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"source": "mit-han-lab/efficientvit", "variant": variant})
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "io.safetensors"))
    write_keys(out / "keys.txt", sd)


def make_full_keys(dc_ae, short: str, name: str, out_root: Path) -> None:
    cfg = released_config(dc_ae, name)
    with torch.device("meta"):
        model = dc_ae.DCAE(cfg)
    sd = model.state_dict()
    write_keys(out_root / f"keys-{short}.txt", sd)
    n = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    print(f"[{short}] {len(sd)} keys, {n / 1e6:.2f} M parameters")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--efficientvit-src", type=Path, required=True, help="root of an efficientvit checkout")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--efficientvit-commit", default=None, help="commit sha to record if the source is not a git checkout")
    args = ap.parse_args()

    try:
        sha = subprocess.run(
            ["git", "-C", str(args.efficientvit_src), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        sha = args.efficientvit_commit or "unknown"
    print("efficientvit commit:", sha)

    dc_ae = import_dc_ae(args.efficientvit_src.resolve())
    torch.set_grad_enabled(False)
    for i, (variant, spec) in enumerate(TINY.items()):
        make_tiny(dc_ae, variant, spec, args.out, args.seed + 100 * i)
    for short, name in FULL.items():
        make_full_keys(dc_ae, short, name, args.out)


if __name__ == "__main__":
    main()
