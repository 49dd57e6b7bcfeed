"""The parity gate: run an exported graph, compare with PyTorch fp32, fail loudly past tolerance.

Tolerances (the README's export section, :data:`dcae_deploy.precisions.PRECISIONS`): fp32 graphs within relative
L2 1e-4 of PyTorch fp32; fp16/bf16 graphs within relative L2 1e-2, and decoded images at PSNR >= 35 dB; int8/fp8
Q/DQ graphs, on held-out real inputs, images at PSNR >= 30 dB and other outputs within relative L2 0.2. A broken
tolerance is an error, never a warning. NaN or Inf in either output fails the comparison and is reported as such (counts of
each, in the graph's output and in PyTorch's), never as a relative error of "inf".

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
from dcae_deploy.precisions import (
    ORT_OPTIMIZATION_LIMIT,
    ORT_QDQ_DISABLED_OPTIMIZERS,
    PRECISIONS,
    get_precision,
)

REL_L2 = {name: p.rel_l2 for name, p in PRECISIONS.items()}
MIN_IMAGE_PSNR_DB = PRECISIONS["fp16"].image_psnr_db  # fp16 / bf16 image outputs (quantized: image_psnr_limit)


def image_psnr_limit(precision: str) -> float | None:
    """The smallest PSNR of image outputs at ``precision`` (None for fp32: its relative L2 limit is tighter)."""
    return get_precision(precision).image_psnr_db


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
    nan: int = 0  # NaN / Inf values in the graph's output
    inf: int = 0
    reference_nan: int = 0  # ... and in PyTorch's (then the model, not the export, is at fault)
    reference_inf: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def finite(self) -> bool:
        return not (self.nan or self.inf or self.reference_nan or self.reference_inf)

    def nonfinite_note(self) -> str:
        """What is NaN/Inf, in words ('' when both outputs are finite)."""
        def counts(nan: int, inf: int) -> str:
            return " and ".join(f"{n:,} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)

        size = math.prod(self.shape)
        if self.reference_nan or self.reference_inf:
            return f"PyTorch fp32 itself gives {counts(self.reference_nan, self.reference_inf)} of {size:,} values"
        if self.nan or self.inf:
            return f"ONNX output has {counts(self.nan, self.inf)} of {size:,} values (PyTorch fp32: all finite)"
        return ""


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
    nan, inf, ref_nan, ref_inf = (int(f(x).sum()) for x in (a, b) for f in (np.isnan, np.isinf))
    finite = not (nan or inf or ref_nan or ref_inf)  # a NaN anywhere fails: it is never "close enough"
    rel_l2 = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)) if finite else math.inf
    psnr = psnr_db(a, b) if is_image and finite else None
    spec = get_precision(precision)
    psnr_limit = spec.image_psnr_db if is_image else None
    rel_l2_limit = spec.rel_l2_limit(is_image)
    passed = finite and rel_l2 <= rel_l2_limit and (psnr_limit is None or psnr >= psnr_limit)
    return ParityRecord(
        component=component,
        output=output,
        shape=tuple(a.shape),
        runner=runner,
        max_abs=float(np.abs(a - b).max()) if finite else math.inf,
        rel_l2=rel_l2,
        psnr_db=psnr,
        rel_l2_limit=rel_l2_limit,
        psnr_limit_db=psnr_limit,
        passed=passed,
        nan=nan,
        inf=inf,
        reference_nan=ref_nan,
        reference_inf=ref_inf,
    )


def nonfinite_hint(precision: str) -> str:
    """What NaN/Inf in a graph's output means when PyTorch fp32 is finite on the same inputs, per precision."""
    if precision == "fp16":
        return ("fp16 overflow: fp16 holds at most 65504 and PyTorch fp32 stays finite on the same inputs; export "
                "with --precision bf16 (fp32's range in half the bytes) or fp32")
    if precision == "bf16":
        return ("bf16 has fp32's range, so this is no overflow: the graph computes what PyTorch does not; rerun with "
                "--verbose and report it with the parity report")
    return ("PyTorch fp32 is finite on the very same inputs, so this is no overflow of the checkpoint's values but "
            "the graph computing what PyTorch does not (the exporter or ONNX Runtime); rerun with --verbose and "
            "report it with the parity report")


def failure_message(failed: list[ParityRecord], total: int, variant: str, precision: str, extra: str = "") -> str:
    """The error message of a failed gate: the failed records, and for NaN/Inf what it means at this precision."""
    message = f"{len(failed)} of {total} parity checks failed for {variant} ({precision}):\n{summarize(failed)}"
    nonfinite = [r for r in failed if r.nan or r.inf]
    if nonfinite:
        outputs = ", ".join(sorted({f"{r.component}.{r.output}" for r in nonfinite}))
        message += f"\nNaN/Inf in the ONNX output of {outputs} ({precision}): {nonfinite_hint(precision)}{extra}"
    return message


class OnnxGraphRunner:
    """Runs one ONNX file on named numpy inputs; picks ONNX Runtime or the ONNX reference evaluator. A quantized
    (Q/DQ) graph runs on the CPU EP with the settings its precision needs (``dcae_deploy.precisions``)."""

    def __init__(self, path: str | Path, precision: str) -> None:
        import onnxruntime as ort

        if get_precision(precision).quantized:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if precision in ORT_OPTIMIZATION_LIMIT:
                options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPTIMIZATION_LIMIT[precision])
            self.name = "onnxruntime:CPUExecutionProvider (Q/DQ)"
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                                 disabled_optimizers=list(ORT_QDQ_DISABLED_OPTIMIZERS))
            return
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
        verdict = "ok" if r.passed else "FAILED"
        if not r.finite:
            lines.append(f"  {r.component}.{r.output} {r.shape}: {r.nonfinite_note()} [{r.runner}] {verdict}")
            continue
        psnr = "" if r.psnr_db is None else f", PSNR {r.psnr_db:.1f} dB"
        limit = f"<= {r.rel_l2_limit:g}" + ("" if r.psnr_limit_db is None else f", >= {r.psnr_limit_db:g} dB")
        lines.append(
            f"  {r.component}.{r.output} {r.shape}: rel L2 {r.rel_l2:.3g}, max abs {r.max_abs:.3g}{psnr} "
            f"(limit {limit}) [{r.runner}] {verdict}"
        )
    return "\n".join(lines)
