"""``build_engines.sh``: the same engine builds as ``python -m dcae_deploy.engines build``, with NVIDIA's CLIs.

The script sits in the export folder and builds from the ONNX files next to it with ``trtexec``
(full TensorRT) or ``tensorrt_rtx`` (the TensorRT-RTX tool, same flag syntax), using the manifest's
min/opt/max shapes, so a user without Python can reproduce the engines on their own machine.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from dcae_deploy.checkpoints import atomic_write
from dcae_deploy.manifest import Component, Manifest

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
    """The ``trtexec`` argument list (after the program name) that builds ``component``'s engine."""
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
    profiles = "\n".join(
        f"#   {c.name}: " + "; ".join(f"{name} min {p.min} opt {p.opt} max {p.max}" for name, p in c.profiles.items())
        for c in manifest.components.values()
    )
    return f"""#!/usr/bin/env bash
# Build TensorRT engines for this export ({manifest.variant}, {manifest.kind}, {precision}) with NVIDIA's
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
#                                       compute capability 8.6 and later). Turing (75) cannot run these
#                                       graphs: TensorRT-RTX has no FP32 GEMM there (attention stays fp32)
# The graphs carry their precision (strongly typed): no --fp16/--bf16 flags (TensorRT 11 removed them).
set -euo pipefail
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
  mkdir -p {shlex.quote(trtexec_dir)}
{trt_calls}  ;;
tensorrt_rtx)
  mkdir -p {shlex.quote(rtx_dir)}
  CC_FLAG=()
  if [ -n "${{RTX_COMPUTE_CAPABILITIES:-}}" ]; then
    CC_FLAG=("--computeCapabilities=$RTX_COMPUTE_CAPABILITIES")
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
