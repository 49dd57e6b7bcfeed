"""Flavours, build targets and errors shared by the engine builder, the sidecar reader and the script writer.

Two TensorRT flavours drive the same build code: full TensorRT (``import tensorrt``; builds for the GPU it
runs on) and TensorRT-RTX (``import tensorrt_rtx``; builds ahead of time, without a GPU, for a set of RTX
compute capabilities). Both are imported lazily, through :func:`dcae_deploy.tensorrt_support.import_flavour`
(shared with the runtime), so that the rest of dcae_deploy works without them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.tensorrt_support import (
    FLAVOURS,
    TENSORRT,
    TENSORRT_RTX,
    EngineInfoError,
    TensorRTFlavour,
    TensorRTUnavailable,
    import_flavour,
    precision_cc_problem,
    precision_min_cc,
)

__all__ = [
    "FLAVOURS",
    "PORTABLE_TARGET",
    "TENSORRT",
    "TENSORRT_RTX",
    "BuildTarget",
    "EngineBuildError",
    "EngineInfoError",
    "TensorRTFlavour",
    "detect_gpu_target",
    "engine_folder_name",
    "load_flavour",
    "portable_target",
    "resolve_target",
    "target_compute_capabilities",
]

INSTALL_HINT = (
    "install TensorRT-RTX with `pip install tensorrt-rtx-cu13==1.7.1.116` (Linux/Windows; builds engines "
    "without a GPU), or full TensorRT from NVIDIA's package index (`pip install tensorrt`, builds on a GPU)"
)

# Folder-name tag of a TensorRT-RTX build with no explicit compute capability: the library's portable
# default, which runs on compute capability 8.6, 8.9, 12.0, 12.1 and later (Ampere and newer RTX GPUs) "if the model
# precisions are supported on the target architecture": an fp8 engine's portable build runs on 8.9 and later only
# (:func:`portable_target` names it sm89+).
PORTABLE_TARGET = "sm86+"


class EngineBuildError(DcaeDeployError):
    """An engine that cannot be built: no flavour, a graph the parser rejects, a bad profile or target."""


def load_flavour(name: str | None = None) -> TensorRTFlavour:
    """Import ``tensorrt`` or ``tensorrt_rtx``; ``None``/``"auto"`` prefers full TensorRT when both exist."""
    if name not in (None, "auto", *FLAVOURS):
        raise EngineBuildError(f"unknown backend {name!r}: choose one of auto, {', '.join(FLAVOURS)}")
    try:
        return import_flavour(None if name == "auto" else name)
    except TensorRTUnavailable as exc:
        raise EngineBuildError(f"no TensorRT backend available: {exc}. To build engines, {INSTALL_HINT}") from exc


@dataclass(frozen=True)
class BuildTarget:
    """Which GPUs an engine is for.

    ``name`` goes into the engine folder name. ``compute_capabilities`` lists the TensorRT-RTX
    ``ComputeCapability`` members to set (``("SM86", "SM89")``, ``("CURRENT",)``); empty means the
    flavour's default (TensorRT-RTX: portable to 8.6+; TensorRT: the GPU the build runs on).
    """

    name: str
    compute_capabilities: tuple[str, ...] = ()

    @property
    def cli_value(self) -> str | None:
        """The ``--computeCapabilities=`` value of the ``tensorrt_rtx`` command-line tool, if any."""
        ccs = [c for c in self.compute_capabilities if c.startswith("SM")]
        return ",".join(c[2:] for c in ccs) or None


def _normalise_cc(token: str) -> str | None:
    """``"8.6"``, ``"86"``, ``"sm86"``, ``"sm_86"``, ``"SM86"`` -> ``"SM86"``; ``"12.0"`` -> ``"SM120"``."""
    token = token.strip().lower().removeprefix("sm").lstrip("_")
    match = re.fullmatch(r"(\d+)\.(\d)", token)
    if match:
        return f"SM{match.group(1)}{match.group(2)}"
    if re.fullmatch(r"\d{2,3}", token):
        return f"SM{token}"
    return None


def _cc_label(member: str) -> str:
    digits = member[2:]
    return f"{digits[:-1]}.{digits[-1]}"


def portable_target(precision: str | None = None) -> str:
    """The folder-name tag of TensorRT-RTX's portable default target for engines of ``precision``: ``sm86+``, or
    ``sm89+`` for fp8 (the portable build skips the GPUs that lack the precision's kernels)."""
    need = precision_min_cc(precision) if precision else None
    return f"sm{need[0]}{need[1]}+" if need is not None and need > (8, 6) else PORTABLE_TARGET


def resolve_target(flavour: TensorRTFlavour, spec: str | None = None, precision: str | None = None) -> BuildTarget:
    """Turn a ``--compute-capability`` value into a :class:`BuildTarget` for ``flavour``.

    TensorRT-RTX: ``None``/``"portable"`` -> the library default (8.6 and later, no GPU needed);
    ``"current"`` -> the GPU of this machine; ``"8.6,8.9,12.0"`` -> exactly those architectures.
    Full TensorRT always builds for the GPU it runs on, so it accepts only ``None``/``"current"``.

    With ``precision`` (the export's), a target that a GPU too old for it belongs to is refused before anything is
    built: fp8 needs compute capability 8.9+ (:data:`~dcae_deploy.tensorrt_support.PRECISION_MIN_COMPUTE_CAPABILITY`),
    so an fp8 export's portable target is ``sm89+`` and ``--compute-capability 8.6`` (or a full-TensorRT build
    on an 8.6 GPU) is an :class:`EngineBuildError` naming the precision, the target and what to do.
    """
    target = _resolve_target(flavour, spec, precision)
    if precision is not None:
        _check_precision(flavour, target, precision)
    return target


def _resolve_target(flavour: TensorRTFlavour, spec: str | None, precision: str | None) -> BuildTarget:
    spec = spec.strip().lower() if spec else None
    if not flavour.is_rtx:
        if spec not in (None, "current"):
            raise EngineBuildError(
                f"--compute-capability {spec!r} needs TensorRT-RTX: full TensorRT builds for the GPU it runs on "
                "(run the build on the target GPU, or use --backend tensorrt-rtx)"
            )
        return BuildTarget(detect_gpu_target() or "gpu")
    if spec in (None, "portable", "default"):
        return BuildTarget(portable_target(precision))
    if spec == "current":
        return BuildTarget(detect_gpu_target() or "current", ("CURRENT",))
    supported = [m for m in flavour.trt.ComputeCapability.__members__ if m.startswith("SM")]
    chosen: list[str] = []
    for token in spec.split(","):
        member = _normalise_cc(token)
        if member not in supported:
            raise EngineBuildError(
                f"compute capability {token.strip()!r} is not a TensorRT-RTX {flavour.version} target; it supports "
                f"{', '.join(_cc_label(m) for m in supported)} (RTX GPUs), 'current' (this machine's GPU) "
                f"or 'portable' (the default: {portable_target(precision)})"
            )
        if member not in chosen:
            chosen.append(member)
    chosen.sort(key=lambda m: int(m[2:]))
    return BuildTarget("-".join(m.lower() for m in chosen), tuple(chosen))


def target_compute_capabilities(target: BuildTarget) -> list[tuple[int, int]]:
    """The compute capabilities a target names (``SM86`` members, else a detected ``sm86`` GPU in its name);
    empty for the portable default and for a GPU that could not be detected."""
    members = [m for m in target.compute_capabilities if m.startswith("SM")]
    names = [m.lower() for m in members] or [target.name]
    found = []
    for name in names:
        match = re.fullmatch(r"sm(\d+)(\d)", name)
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return found


def _check_precision(flavour: TensorRTFlavour, target: BuildTarget, precision: str) -> None:
    need = precision_min_cc(precision)
    ccs = target_compute_capabilities(target)
    labels = ", ".join(f"{a}.{b}" for a, b in ccs if need is None or (a, b) < need)
    if target.compute_capabilities and target.compute_capabilities != ("CURRENT",):
        where = f"--compute-capability lists {labels}"
    elif flavour.is_rtx:
        where = f"this machine's GPU ('current') has compute capability {labels}"
    else:
        where = f"this machine's GPU, which full TensorRT builds for, has compute capability {labels}"
    problem = precision_cc_problem(precision, ccs, where)
    if problem is None:
        return
    fitting = ""
    if flavour.is_rtx:
        ok = [_cc_label(m) for m in flavour.trt.ComputeCapability.__members__
              if m.startswith("SM") and (int(m[2:-1]), int(m[-1])) >= need]
        fitting = (f"; TensorRT-RTX {flavour.version} builds {precision} for {', '.join(ok)} (or leave "
                   f"--compute-capability out: the portable {portable_target(precision)} target)")
    raise EngineBuildError(f"cannot build {precision} engines for target {target.name}: {problem}{fitting}")


def detect_gpu_target() -> str | None:
    """``"sm89"`` for the first CUDA GPU of this machine, or ``None`` when none is visible."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"sm{major}{minor}"
    except Exception:  # noqa: BLE001, S110 - a CPU-only or broken torch build: fall back to nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"sm{out[0].replace('.', '')}" if out and re.fullmatch(r"\d+\.\d", out[0]) else None


def engine_folder_name(flavour: TensorRTFlavour, target: BuildTarget, precision: str) -> str:
    """``tensorrt-rtx-1.7.1.116-sm86+-fp16``: flavour, its version, GPU target, precision."""
    return f"{flavour.name}-{flavour.version}-{target.name}-{precision}"
