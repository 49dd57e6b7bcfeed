"""The parity gate: run an exported graph, compare with PyTorch fp32, fail loudly past tolerance.

Tolerances (the README's export section): fp32 graphs within relative L2 1e-4 of PyTorch fp32; fp16/bf16
graphs within relative L2 1e-2, and decoded images at PSNR >= 35 dB. A broken tolerance is an
error, never a warning.

Graphs run in ONNX Runtime (CUDA EP when present, else CPU EP). ONNX Runtime's CPU EP has no
bfloat16 convolution, so on a CPU-only machine bf16 graphs run in ``onnx.reference`` (the ONNX
project's reference evaluator): slow, meant for small shapes, and recorded as the runner used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dcae_deploy.errors import DcaeDeployError

REL_L2 = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 1e-2}
MIN_IMAGE_PSNR_DB = 35.0  # low-precision image outputs only


class ParityError(DcaeDeployError):
    """An exported graph disagrees with PyTorch beyond tolerance."""


@dataclass(frozen=True)
class ParityRecord:
    component: str
    output: str
    shape: tuple[int, ...]
    runner: str
    max_abs: float
    rel_l2: float
    psnr_db: float | None
    rel_l2_limit: float
    psnr_limit_db: float | None
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def psnr_db(actual: np.ndarray, expected: np.ndarray) -> float:
    """PSNR of images in [-1, 1] (both clamped, peak-to-peak 2), in dB."""
    a = np.clip(actual.astype(np.float64), -1, 1)
    b = np.clip(expected.astype(np.float64), -1, 1)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def compare(
    component: str, output: str, actual: np.ndarray, expected: np.ndarray, precision: str, is_image: bool, runner: str
) -> ParityRecord:
    a = actual.astype(np.float64)
    b = expected.astype(np.float64)
    if a.shape != b.shape:
        raise ParityError(f"{component}: ONNX output {output!r} has shape {a.shape}, PyTorch gave {b.shape}")
    finite = bool(np.isfinite(a).all())
    rel_l2 = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)) if finite else math.inf
    psnr = psnr_db(a, b) if is_image else None
    psnr_limit = MIN_IMAGE_PSNR_DB if is_image and precision != "fp32" else None
    passed = finite and rel_l2 <= REL_L2[precision] and (psnr_limit is None or psnr >= psnr_limit)
    return ParityRecord(
        component=component,
        output=output,
        shape=tuple(a.shape),
        runner=runner,
        max_abs=float(np.abs(a - b).max()) if finite else math.inf,
        rel_l2=rel_l2,
        psnr_db=psnr,
        rel_l2_limit=REL_L2[precision],
        psnr_limit_db=psnr_limit,
        passed=passed,
    )


class OnnxGraphRunner:
    """Runs one ONNX file on named numpy inputs; picks ONNX Runtime or the ONNX reference evaluator."""

    def __init__(self, path: str | Path, precision: str) -> None:
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.name = f"onnxruntime:{providers[0]}"
        if precision == "bf16" and providers[0] == "CPUExecutionProvider":
            from onnx.reference import ReferenceEvaluator

            self._session = ReferenceEvaluator(str(path))
            self.name = "onnx.reference (ONNX Runtime's CPU EP has no bf16 Conv)"
        else:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(path), options, providers=providers)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, feeds)


def summarize(records: list[ParityRecord]) -> str:
    lines = []
    for r in records:
        psnr = "" if r.psnr_db is None else f", PSNR {r.psnr_db:.1f} dB"
        limit = f"<= {r.rel_l2_limit:g}" + ("" if r.psnr_limit_db is None else f", >= {r.psnr_limit_db:g} dB")
        verdict = "ok" if r.passed else "FAILED"
        lines.append(
            f"  {r.component}.{r.output} {r.shape}: rel L2 {r.rel_l2:.3g}, max abs {r.max_abs:.3g}{psnr} "
            f"(limit {limit}) [{r.runner}] {verdict}"
        )
    return "\n".join(lines)
