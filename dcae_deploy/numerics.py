"""Non-finite weights: which tensors of a PyTorch module hold NaN or Inf, and what to tell the user.

Shared by every stage that can meet a broken checkpoint: the export (refuses it before any graph), the
PyTorch paths of the command lines (reconstruct, evaluate) and the runtime's torch backend (names the tensors
when a stage produces NaN). Torch is imported where a module is inspected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BadTensor:
    """A parameter or buffer with ``nan`` NaN and ``inf`` Inf entries out of ``numel``."""

    name: str
    nan: int
    inf: int
    numel: int

    def describe(self) -> str:
        counts = [f"{n:,} {kind}" for n, kind in ((self.nan, "NaN"), (self.inf, "Inf")) if n]
        return f"{self.name} ({' and '.join(counts)} of {self.numel:,} values)"


def nonfinite_tensors(module: Any, prefix: str = "") -> list[BadTensor]:
    """Parameters with NaN or Inf, and floating buffers with NaN (a buffer may hold -inf on purpose: a mask)."""
    import torch

    bad = []
    named = [(n, p, True) for n, p in module.named_parameters()] + [(n, b, False) for n, b in module.named_buffers()]
    for name, tensor, is_parameter in named:
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        with torch.no_grad():
            if bool(torch.isfinite(tensor).all()):
                continue
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum()) if is_parameter else 0
        if nan or inf:
            bad.append(BadTensor(prefix + name, nan, inf, tensor.numel()))
    return bad


def describe_bad(bad: list[BadTensor], shown: int = 3) -> str:
    """``"a (3 NaN of 9 values); b (...) and 4 more tensors"``."""
    more = f" and {len(bad) - shown} more tensors" if len(bad) > shown else ""
    return "; ".join(t.describe() for t in bad[:shown]) + more


def nonfinite_cause(modules: Any | Mapping[str, Any]) -> str | None:
    """Why an fp32 PyTorch model produced NaN/Inf, when its weights say so (None when they are all finite).

    ``modules``: one module, or role -> module (tensor names then start with ``role.``).
    """
    parts = modules if isinstance(modules, Mapping) else {"": modules}
    bad = [t for role, module in parts.items() if module is not None
           for t in nonfinite_tensors(module, f"{role}." if role else "")]
    if not bad:
        return None
    return f"the checkpoint is corrupt or diverged, its weights hold NaN/Inf: {describe_bad(bad)}; use an intact checkpoint"


def weights_hint(module: Any) -> str:
    """:func:`nonfinite_cause`, or what finite weights leave (the input, or fp32 overflow)."""
    return nonfinite_cause(module) or "its weights are all finite, so the input or the fp32 arithmetic overflows; check the input"
