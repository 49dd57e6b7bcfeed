"""Expected 1024px latency and memory of SANA-600M text-to-image on an 8 GB RTX laptop GPU, from counted work.

::

    python benchmarks/laptop_estimate.py                       # RTX 4060 Laptop defaults, table on stdout
    python benchmarks/laptop_estimate.py --tflops 29.1 --bandwidth 256 --memory-gb 8 --out benchmarks/results/laptop

Nothing runs on a GPU: every model is built on PyTorch's ``meta`` device (no weights, no arithmetic) and run
once at full size in fp16 under ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs of convolutions,
matmuls and attention, 2 per multiply-add) and under a dispatch mode that counts bytes:

* ``weights``: parameter count x 2 bytes (fp16);
* ``traffic``: weights + 2 x (bytes written by the heavy ops: conv, matmul, attention) -- elementwise ops are
  assumed fused into them, as TensorRT and torch.compile do (the unfused total is reported too);
* ``live peak``: the largest sum of live activations during the eager forward (tensors freed when Python
  drops them), scaled by a calibration factor so that the DC-AE decoder at 2048 px matches the measured
  7.7 GB peak of DESIGN.md's anchors (bf16 eager on an H100, weights included).

Latency per call = max(FLOPs / (peak TFLOP/s x compute efficiency), traffic / (bandwidth x 0.8)); the
compute efficiency per stage is what the H100 anchors show torch.compile reaching (decoder 8.37 TFLOP in
34.3 ms, transformer step 2.24 TFLOP in 11.4 ms, against ~790 TFLOP/s dense bf16), unless --efficiency
is given. Every assumption is printed with the table and stored in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from dcae_deploy.export.quantize import INT4_BLOCK_SIZE

GB = 1e9
HEAVY = ("convolution", "mm", "bmm", "addmm", "baddbmm", "linear", "scaled_dot_product", "_flash", "_efficient")

# measured anchors (shared/DESIGN.md, H100, torch.compile): what fraction of ~790 TFLOP/s real kernels reach
H100_TFLOPS = 790.0
ANCHOR_EFFICIENCY = {
    "decoder": 8.37 / 34.3e-3 / (H100_TFLOPS * 1e12) * 1e12,    # ~0.31
    "denoiser": 2.24 / 11.4e-3 / (H100_TFLOPS * 1e12) * 1e12,   # ~0.25
}
ANCHOR_DECODER_2048_PEAK_GB = 7.7  # bf16 eager, weights included


class ByteCounter(TorchDispatchMode):
    """Bytes written by every op (heavy ones apart) and the peak of live activation bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = self.heavy = 0
        self.live = self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__
        if getattr(func, "is_view", False) or name.endswith("_") or ".view" in name:
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                n = t.numel() * t.element_size()
                self.written += n
                if any(h in name for h in HEAVY):
                    self.heavy += n
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


def count(module: torch.nn.Module, inputs: tuple, calls: int = 1) -> dict:
    """FLOPs and bytes of ``calls`` forward passes of ``module`` (on meta) over ``inputs``."""
    params = sum(p.numel() for p in module.parameters())
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
    embedding = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Embedding))
    counter = ByteCounter()
    with torch.no_grad(), FlopCounterMode(display=False) as flops, counter:
        out = module(*inputs)
    del out
    return {"params": params, "linear_params": linear, "embedding_params": embedding,
            "flops": flops.get_total_flops() * calls, "weights_bytes": weights,
            "heavy_bytes": counter.heavy * calls, "written_bytes": counter.written * calls,
            "live_peak_bytes": counter.peak}


def build(kind: str, name: str) -> torch.nn.Module:
    """The variant's module on the meta device (no memory), through its model family."""
    from dcae_deploy.family import family_of
    from dcae_deploy.registry import get_variant

    config = get_variant(name, kind=kind)
    with torch.device("meta"):
        m = family_of(config).build_module(config)
    return m.half().eval()


def chi_tokens() -> int:
    """Estimated Gemma tokens of SANA's complex human instruction (about 1.25 tokens per English word)."""
    from dcae_deploy.tokenizer import SANA_INSTRUCTION

    return round(len(" ".join(SANA_INSTRUCTION).split()) * 1.25)


def meta(*shape, dtype=torch.float16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python benchmarks/laptop_estimate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", default="NVIDIA GeForce RTX 4060 Laptop GPU (AD107, 24 SMs, 8 GB GDDR6 128-bit)")
    p.add_argument("--tflops", type=float, default=29.1,
                   help="dense fp16 tensor TFLOP/s with fp32 accumulate (24 SMs x 512 FLOP/clk x 2.37 GHz boost; "
                   "fp16 accumulate doubles it, lower-TGP laptops boost lower)")
    p.add_argument("--bandwidth", type=float, default=256.0, help="memory bandwidth GB/s (16 Gbps x 128 bit)")
    p.add_argument("--bandwidth-efficiency", type=float, default=0.8)
    p.add_argument("--efficiency", type=float, default=None,
                   help="compute efficiency for every stage (default: per stage, from the H100 anchors; 0.35 for Gemma)")
    p.add_argument("--memory-gb", type=float, default=8.0)
    p.add_argument("--reserved-gb", type=float, default=0.6, help="held by the driver, CUDA context, display")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--tile", type=int, default=512, help="tile side for tiled decoding (px)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--chi-tokens", type=int, default=None, help="Gemma tokens of the instruction (default: estimated)")
    p.add_argument("--pipeline", default="sana-600m-t2i")
    p.add_argument("--out", default=None, help="folder for laptop_estimate.json and .md")
    p.add_argument("--weights-from", action="append", default=[], metavar="STAGE=PATH",
                   help="the real weight bytes of a stage (text_encoder, denoiser, decoder) instead of fp16 parameter "
                   "counts: an export folder (its manifest's files of that component: an int8 / fp8 Q/DQ graph, say), "
                   "an .onnx file (with its .data), or a TensorRT / TensorRT-RTX .plan (repeatable)")
    p.add_argument("--bytes-per-weight", action="append", default=[], metavar="STAGE=N",
                   help="counted weights at N bytes per parameter for a stage without a file (1: int8 / fp8; default "
                   "2, fp16), or int4: the layout of dcae_deploy's int4 weight-only export (Linear weights int4 with a "
                   "float32 scale per block of 32, embedding tables float16, other parameters float32)")
    return p.parse_args(argv)


STAGE_KEYS = {"text_encoder": ("text",), "denoiser": ("denoiser",), "decoder": ("decoder", "decoder_tiled")}


def _stage_values(items: list[str], what: str) -> dict[str, str]:
    values = {}
    for item in items:
        stage, sep, value = item.partition("=")
        if not sep or stage not in STAGE_KEYS:
            raise SystemExit(f"{what} {item!r}: expected STAGE=VALUE with STAGE one of {', '.join(STAGE_KEYS)}")
        values[stage] = value
    return values


def file_weight_bytes(stage: str, path: Path) -> tuple[int, str]:
    """(bytes, description) of the weights a stage would load from ``path``."""
    if not path.exists():
        raise SystemExit(f"--weights-from {stage}={path}: no such file or folder")
    if path.is_dir():
        manifest = json.loads((path / "manifest.json").read_text())
        component = manifest["components"].get(stage)
        if component is None:
            raise SystemExit(f"--weights-from {stage}={path}: the export has no {stage} component")
        files = [path / name for name in component["files"] if (path / name).suffix in (".onnx", ".data")
                 or name.endswith(".onnx.data")]
        return sum(f.stat().st_size for f in files), f"{manifest['precision']} export {path.name}"
    files = [path] + ([path.with_name(path.name + ".data")] if path.with_name(path.name + ".data").is_file() else [])
    return sum(f.stat().st_size for f in files), f"{path.suffix.lstrip('.')} file {path.name}"


INT4_BYTES = 0.5 + 4 / INT4_BLOCK_SIZE  # 4 bits a weight and a float32 scale per block


def _number(value: str, stage: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"--bytes-per-weight {stage}={value}: expected a number of bytes or int4") from None


def _counted_bytes(c: dict, per_weight) -> int:
    """Weight bytes of a counted stage at ``per_weight`` bytes a parameter, or in the int4 export's layout."""
    if per_weight != "int4":
        return int(c["params"] * per_weight)
    other = c["params"] - c["linear_params"] - c["embedding_params"]
    return int(c["linear_params"] * INT4_BYTES + c["embedding_params"] * 2 + other * 4)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dcae_deploy.variants import get_variant

    pipe = get_variant(args.pipeline, kind="pipeline")
    parts = pipe.parts()
    te_cfg, den_cfg, ae_cfg = parts["text_encoder"], parts["denoiser"], parts["autoencoder"]
    ratio = ae_cfg.spatial_compression_ratio
    side, lat = args.resolution, args.resolution // ratio
    chi = args.chi_tokens if args.chi_tokens is not None else chi_tokens()
    pos_tokens, neg_tokens = chi + te_cfg.max_length - 2, te_cfg.max_length

    te = build("text_encoder", te_cfg.name)
    ids = lambda n: (torch.zeros(1, n, dtype=torch.long, device="meta"), torch.ones(1, n, dtype=torch.long, device="meta"))  # noqa: E731
    text_pos, text_neg = count(te, ids(pos_tokens)), count(te, ids(neg_tokens))
    text = dict(text_pos, flops=text_pos["flops"] + text_neg["flops"],
                heavy_bytes=text_pos["heavy_bytes"] + text_neg["heavy_bytes"],
                written_bytes=text_pos["written_bytes"] + text_neg["written_bytes"],
                weights_traffic=2 * text_pos["weights_bytes"])
    del te
    den = build("denoiser", den_cfg.name)
    step = count(den, (meta(2, den_cfg.in_channels, lat, lat), meta(2, dtype=torch.float32),
                       meta(2, te_cfg.max_length, den_cfg.caption_channels), meta(2, te_cfg.max_length)))
    del den
    ae = build("autoencoder", ae_cfg.name)
    dec = count(ae.decoder, (meta(1, ae_cfg.latent_channels, lat, lat),))
    t_lat = args.tile // ratio
    dec_tile = count(ae.decoder, (meta(1, ae_cfg.latent_channels, t_lat, t_lat),))
    dec_2048 = count(ae.decoder, (meta(1, ae_cfg.latent_channels, 2048 // ratio, 2048 // ratio),))
    del ae
    # tiles as the runtime lays them out (overlap a quarter tile)
    from dcae_deploy.runtime.tiling import tile_starts

    n_tiles = len(tile_starts(lat, t_lat, max(1, t_lat // 4))) ** 2 if lat > t_lat else 1

    # calibration: simulated eager live peak vs the measured 7.7 GB at 2048 px (weights included)
    simulated_2048 = (dec_2048["live_peak_bytes"] + dec_2048["weights_bytes"]) / GB
    calib = ANCHOR_DECODER_2048_PEAK_GB / simulated_2048

    peak, bw = args.tflops * 1e12, args.bandwidth * GB * args.bandwidth_efficiency
    stages = [
        ("text encoder (Gemma-2-2B, prompt + negative)", "text", text, 1, 0.35),
        ("denoiser (SANA-600M) one CFG step, batch 2", "denoiser", step, 1, ANCHOR_EFFICIENCY["denoiser"]),
        (f"denoiser x {args.steps} steps", "denoiser", step, args.steps, ANCHOR_EFFICIENCY["denoiser"]),
        (f"decoder (DC-AE f32c32) {side}px, untiled", "decoder", dec, 1, ANCHOR_EFFICIENCY["decoder"]),
        (f"decoder {side}px, {n_tiles} tiles of {args.tile}px", "decoder_tiled", dec_tile, n_tiles, ANCHOR_EFFICIENCY["decoder"]),
    ]
    files = {stage: Path(v) for stage, v in _stage_values(args.weights_from, "--weights-from").items()}
    per_weight = {stage: v if v == "int4" else _number(v, stage)
                  for stage, v in _stage_values(args.bytes_per_weight, "--bytes-per-weight").items()}
    weight_source = {}
    for stage, keys in STAGE_KEYS.items():
        counted = {"text": text, "denoiser": step, "decoder": dec, "decoder_tiled": dec_tile}
        if stage in files:
            size, source = file_weight_bytes(stage, files[stage])
        elif per_weight.get(stage) == "int4":
            size, source = None, (f"int4 weight-only export layout (counted: Linear weights {INT4_BYTES:g} bytes, "
                                  "embedding tables 2, other parameters 4)")
        elif stage in per_weight:
            size, source = None, f"{per_weight[stage]:g} bytes per parameter (counted)"
        else:
            continue
        for key in keys:
            c = counted[key]
            new_size = size if size is not None else _counted_bytes(c, per_weight[stage])
            if "weights_traffic" in c:
                c["weights_traffic"] = c["weights_traffic"] * new_size / c["weights_bytes"]
            c["weights_bytes"] = new_size
        weight_source[stage] = source
    rows = []
    for label, key, c, calls, eff in stages:
        eff = args.efficiency or eff
        flops = c["flops"] * calls
        traffic = (c.get("weights_traffic", c["weights_bytes"]) + 2 * c["heavy_bytes"]) * calls
        t_compute, t_memory = flops / (peak * eff), traffic / bw
        activations = c["live_peak_bytes"] * calib
        rows.append({
            "stage": label, "key": key, "calls": calls, "tflop": flops / 1e12, "params_m": c["params"] / 1e6,
            "weights_gb": c["weights_bytes"] / GB, "traffic_gb": traffic / GB,
            "traffic_unfused_gb": (c.get("weights_traffic", c["weights_bytes"]) + 2 * c["written_bytes"]) * calls / GB,
            "compute_efficiency": eff, "compute_ms": t_compute * 1e3, "memory_ms": t_memory * 1e3,
            "expected_ms": max(t_compute, t_memory) * 1e3,
            "bound": "compute" if t_compute >= t_memory else "memory",
            "activations_gb": activations / GB, "peak_gb": (c["weights_bytes"] + activations) / GB,
        })
    te_row, den_row, dec_row, tiled_row = rows[0], rows[2], rows[3], rows[4]
    usable = args.memory_gb - args.reserved_gb
    weights_all = te_row["weights_gb"] + den_row["weights_gb"] + dec_row["weights_gb"]
    summary = {}
    for name, d in (("untiled", dec_row), ("tiled", tiled_row)):
        total_ms = te_row["expected_ms"] + den_row["expected_ms"] + d["expected_ms"]
        resident = weights_all + max(te_row["activations_gb"], den_row["activations_gb"], d["activations_gb"])
        low = max(te_row["peak_gb"], den_row["peak_gb"], d["peak_gb"])
        summary[name] = {"total_ms": total_ms, "all_resident_peak_gb": resident, "low_memory_peak_gb": low,
                         "fits_all_resident": resident <= usable, "fits_low_memory": low <= usable}
    assumptions = {
        "gpu": args.gpu, "fp16_dense_tflops": args.tflops, "bandwidth_gb_s": args.bandwidth,
        "bandwidth_efficiency": args.bandwidth_efficiency, "memory_gb": args.memory_gb, "reserved_gb": args.reserved_gb,
        "precision": "fp16 weights and activations (TensorRT fp16 engines), except the weights named below; FLOPs and "
                     "activation bytes are counted in fp16 for every stage (int8 / fp8 kernels would run faster)",
        "compute_efficiency": "per stage from H100 torch.compile anchors (decoder %.2f, denoiser %.2f), Gemma 0.35 "
                              "(assumed)" % (ANCHOR_EFFICIENCY["decoder"], ANCHOR_EFFICIENCY["denoiser"])
                              if args.efficiency is None else args.efficiency,
        "text_tokens": {"prompt_with_instruction": pos_tokens, "negative": neg_tokens, "instruction_estimated": chi},
        "activation_calibration": f"x{calib:.2f}: simulated eager live peak of the decoder at 2048px "
                                  f"({simulated_2048:.2f} GB with weights) scaled to the measured {ANCHOR_DECODER_2048_PEAK_GB} GB",
        "not_included": "weight loading from disk/PCIe (low-memory mode reloads each stage: ~5.2 GB Gemma at "
                        "~3-6 GB/s from NVMe), tokenizer, host<->device copies, scheduler arithmetic",
        "weights": "fp16, parameter counts of the registered configs" + "".join(
            f"; {stage}: {source}" for stage, source in weight_source.items()),
    }
    md = render(args, rows, summary, assumptions, usable)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "laptop_estimate.json").write_text(json.dumps(
            {"assumptions": assumptions, "rows": rows, "summary": summary, "resolution": side}, indent=1))
        (out / "laptop_estimate.md").write_text(md)
    return 0


def render(args, rows, summary, assumptions, usable) -> str:
    lines = [f"# Expected {args.resolution}px latency and memory on {args.gpu}", "",
             "Estimates from counted FLOPs and bytes (meta-device forward passes), not measurements.", "",
             "| stage | TFLOP | params M | weights GB | traffic GB | compute ms | memory ms | expected ms | bound | "
             "activations GB | stage peak GB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['tflop']:.2f} | {r['params_m']:.0f} | {r['weights_gb']:.2f} | "
                     f"{r['traffic_gb']:.2f} | {r['compute_ms']:.1f} | {r['memory_ms']:.1f} | {r['expected_ms']:.1f} | "
                     f"{r['bound']} | {r['activations_gb']:.2f} | {r['peak_gb']:.2f} |")
    lines += ["", f"Usable GPU memory assumed: {usable:.1f} GB of {args.memory_gb:g} GB.", "",
              "| decoding | text + 20 steps + decode, ms | all stages resident, peak GB | low-memory mode peak GB |",
              "| --- | ---: | ---: | ---: |"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['total_ms']:.0f} | {s['all_resident_peak_gb']:.2f}"
                     f"{'' if s['fits_all_resident'] else ' (does not fit)'} | {s['low_memory_peak_gb']:.2f}"
                     f"{'' if s['fits_low_memory'] else ' (does not fit)'} |")
    lines += ["", "Assumptions:", ""] + [f"- {k}: {v}" for k, v in assumptions.items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
