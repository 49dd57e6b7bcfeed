"""``build_engines.sh``: the same engine builds as ``python -m dcae_deploy.engines build``, with NVIDIA's CLIs.

The script sits in the export folder and builds from the ONNX files next to it with ``trtexec``
(full TensorRT) or ``tensorrt_rtx`` (the TensorRT-RTX tool, same flag syntax), using the manifest's
min/opt/max shapes, so a user without Python can reproduce the engines on their own machine.

Precision flags are those of :mod:`dcae_deploy.engines.build`: ``--stronglyTyped`` for trtexec and nothing for
``tensorrt_rtx`` (strongly typed only) at every precision. A quantized export (int8 / fp8: Q/DQ graphs, explicit
quantization) gets no ``--int8`` / ``--fp8`` (weakly typed flags) and never ``--calib`` (the scales are in the
graph). An fp8 script refuses ``RTX_COMPUTE_CAPABILITIES`` below 8.9 and warns when trtexec's GPU is below 8.9.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from dcae_deploy.checkpoints import atomic_write
from dcae_deploy.engines.common import portable_target
from dcae_deploy.manifest import Component, Manifest
from dcae_deploy.precisions import PRECISIONS
from dcae_deploy.tensorrt_support import precision_min_cc, strictest_precision

SCRIPT_NAME = "build_engines.sh"


def shape_flags(component: Component) -> list[str]:
    """``--minShapes=latent:1x32x2x2,timestep:1,...`` / ``--optShapes=...`` / ``--maxShapes=...``: every
    input with a dynamic axis, in the graph's input order (one TensorRT optimisation profile)."""
    flags = []
    order = [t.name for t in component.inputs]  # the graph's input order (the manifest JSON sorts its keys)
    profiles = sorted(component.profiles.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    for label, attr in (("min", "min"), ("opt", "opt"), ("max", "max")):
        specs = [f"{name}:{'x'.join(str(d) for d in getattr(profile, attr))}" for name, profile in profiles]
        if specs:
            flags.append(f"--{label}Shapes={','.join(specs)}")
    return flags


def trtexec_command(component: Component, engine_path: str, timing_cache: str | None = None) -> list[str]:
    """The ``trtexec`` argument list (after the program name) that builds ``component``'s engine: strongly typed
    at every precision, so no ``--fp16`` / ``--bf16`` / ``--int8`` / ``--fp8`` and no ``--calib`` (a quantized
    graph carries its Q/DQ scales)."""
    args = [f"--onnx={component.file}", f"--saveEngine={engine_path}", *shape_flags(component)]
    args += ["--stronglyTyped", "--skipInference"]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return args


def tensorrt_rtx_command(component: Component, engine_path: str) -> list[str]:
    """The ``tensorrt_rtx`` argument list (compute capabilities are added by the script from an env variable)."""
    return [f"--onnx={component.file}", f"--saveEngine={engine_path}", *shape_flags(component), "--skipInference"]


def render_build_script(manifest: Manifest) -> str:
    """The text of ``build_engines.sh`` for ``manifest`` (paths relative to the export folder)."""
    precision = manifest.precision
    trtexec_dir = f"engines/trtexec-{precision}"
    rtx_dir = f"engines/tensorrt_rtx-{precision}"

    def lines(tool_var: str, args: list[str], extra: str = "") -> str:
        body = " \\\n    ".join(shlex.quote(a) for a in args)
        return f'  "${tool_var}" \\\n    {body}{extra}\n'

    trt_calls = "".join(
        f'  echo "trtexec: {c.name}" >&2\n'
        + lines("TRTEXEC", trtexec_command(c, f"{trtexec_dir}/{c.name}.plan", "engines/trtexec.timing.cache"))
        for c in manifest.components.values()
    )
    rtx_calls = "".join(
        f'  echo "tensorrt_rtx: {c.name}" >&2\n'
        + lines(
            "TENSORRT_RTX",
            tensorrt_rtx_command(c, f"{rtx_dir}/{c.name}.plan"),
            ' \\\n    ${CC_FLAG[@]+"${CC_FLAG[@]}"}',
        )
        for c in manifest.components.values()
    )
    precisions = {manifest.precision_of(name) for name in manifest.components} or {precision}
    precision = strictest_precision(precisions)
    need = precision_min_cc(precision)
    lowest = f"{need[0]}.{need[1]}" if need is not None and need > (8, 6) else "8.6"
    quantized = any(PRECISIONS[p].quantized for p in precisions if p in PRECISIONS)
    precision_note = (
        f"# The graphs are float32 with QuantizeLinear/DequantizeLinear pairs ({manifest.describe_precision()}, "
        "explicit quantization:\n"
        "# the scales are in the graph): no calibration (--calib) and, strongly typed, no --int8 / --fp8 either.\n"
        if quantized else ""
    )
    if need is not None:
        floor, label = f"{need[0]}{need[1]}", f"{need[0]}.{need[1]}"
        precision_note += (
            f"# {precision} engines run only on GPUs of compute capability {label} or later: the default\n"
            f"# TensorRT-RTX target is {portable_target(precision)}; RTX_COMPUTE_CAPABILITIES may not list anything "
            f"below {floor}.\n"
        )
        needs = f"{precision} engines need compute capability {label} or later"
        trt_guard = f"""  gpu_cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \\
    | head -n 1 | tr -d ' .' || true)"
  if [ -n "$gpu_cc" ] && [ "$gpu_cc" -lt {floor} ] 2>/dev/null; then
    echo "warning: {needs} and the first GPU has $gpu_cc: trtexec will fail there" >&2
  fi
"""
        rtx_guard = f"""    for cc in ${{RTX_COMPUTE_CAPABILITIES//,/ }}; do
      if [ "${{cc//./}}" -lt {floor} ] 2>/dev/null; then
        echo "error: {needs}; RTX_COMPUTE_CAPABILITIES lists $cc" >&2
        exit 2
      fi
    done
"""
    else:
        trt_guard = rtx_guard = ""
    profiles = "\n".join(
        f"#   {c.name}: " + "; ".join(f"{name} min {p.min} opt {p.opt} max {p.max}" for name, p in c.profiles.items())
        for c in manifest.components.values()
    )
    return f"""#!/usr/bin/env bash
# Build TensorRT engines for this export ({manifest.variant}, {manifest.kind}, {manifest.describe_precision()}) with NVIDIA's
# command-line tools. Written by dcae_deploy from manifest.json: the same ONNX files and optimisation
# profiles as `python -m dcae_deploy.engines build <this folder>`:
{profiles}
#
# usage: ./{SCRIPT_NAME} [trtexec|tensorrt_rtx]
#   trtexec       full TensorRT; builds on (and for) the GPU of this machine -> {trtexec_dir}/
#   tensorrt_rtx  TensorRT-RTX; builds ahead of time, no GPU needed        -> {rtx_dir}/
#   default: trtexec when it is on PATH, else tensorrt_rtx.
# environment:
#   TRTEXEC=/path/to/trtexec  TENSORRT_RTX=/path/to/tensorrt_rtx  (tools not on PATH)
#   RTX_COMPUTE_CAPABILITIES=86,89,120  limit TensorRT-RTX engines to these GPUs (default: portable,
#                                       compute capability {lowest} and later). Turing (75) cannot run these
#                                       graphs: TensorRT-RTX has no FP32 GEMM there (attention stays fp32)
# The graphs carry their precision (strongly typed): no --fp16/--bf16 flags (TensorRT 11 removed them).
{precision_note}set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-trtexec}}"
TENSORRT_RTX="${{TENSORRT_RTX:-tensorrt_rtx}}"
tool="${{1:-}}"
if [ -z "$tool" ]; then
  if command -v "$TRTEXEC" >/dev/null 2>&1; then
    tool=trtexec
  elif command -v "$TENSORRT_RTX" >/dev/null 2>&1; then
    tool=tensorrt_rtx
  else
    echo "error: neither trtexec nor tensorrt_rtx found (put one on PATH or set TRTEXEC / TENSORRT_RTX)" >&2
    exit 1
  fi
fi

case "$tool" in
trtexec)
{trt_guard}  mkdir -p {shlex.quote(trtexec_dir)}
{trt_calls}  ;;
tensorrt_rtx)
  mkdir -p {shlex.quote(rtx_dir)}
  CC_FLAG=()
  if [ -n "${{RTX_COMPUTE_CAPABILITIES:-}}" ]; then
{rtx_guard}    CC_FLAG=("--computeCapabilities=$RTX_COMPUTE_CAPABILITIES")
  fi
{rtx_calls}  ;;
*)
  echo "error: unknown tool '$tool': use trtexec or tensorrt_rtx" >&2
  exit 2
  ;;
esac
echo "engines written under $(pwd)/engines" >&2
"""


def write_build_script(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``folder/build_engines.sh`` (atomically, executable) and return its path."""
    path = Path(folder) / SCRIPT_NAME
    text = render_build_script(manifest)

    atomic_write(path, lambda tmp: Path(tmp).write_text(text, newline="\n"))
    mode = path.stat().st_mode
    path.chmod(mode | (mode & 0o444) >> 2)  # executable wherever readable (the write applied the umask)
    return path
