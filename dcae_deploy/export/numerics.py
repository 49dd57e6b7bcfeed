"""Non-finite numbers before and during the export: weights with NaN/Inf, a PyTorch reference that overflows.

A NaN in a graph's output has three possible sources, and each needs a different fix: the weights (a broken
checkpoint: no export can help), the model on its inputs (finite weights so large that float32 overflows), or
the export (the graph computes what PyTorch does not: fp16's range, an exporter bug). The export checks the
weights as soon as they are loaded (:func:`check_weights`, a pass over every parameter), and the parity gate
checks the PyTorch fp32 reference before blaming the graph (:func:`reference_error`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.numerics import BadTensor, describe_bad, nonfinite_tensors  # noqa: F401  (BadTensor: re-exported)

FP16_MAX = 65504.0


class NonFiniteWeightsError(DcaeDeployError):
    """A model whose weights hold NaN or Inf (a corrupt or diverged checkpoint)."""


class NonFiniteReferenceError(DcaeDeployError):
    """The PyTorch fp32 model itself produces NaN/Inf on the parity inputs: not an export problem."""


def largest_weight(module: nn.Module) -> tuple[str, float]:
    """(name, value) of the parameter entry with the largest finite magnitude."""
    best = ("", 0.0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.is_floating_point() and p.numel() and p.device.type != "meta":
                finite = torch.nan_to_num(p.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
                value = float(finite.abs().max())
                if value > best[1]:
                    best = (name, value)
    return best


def check_weights(modules: dict[str, nn.Module], source: str | None) -> None:
    """Raise :class:`NonFiniteWeightsError` if a parameter of ``modules`` (role -> module) holds NaN or Inf."""
    bad = [t for role, module in modules.items() for t in nonfinite_tensors(module, f"{role}: ")]
    if not bad:
        return
    where = f"checkpoint {source}" if source else "the randomly initialised model (a bug in dcae_deploy: report it)"
    raise NonFiniteWeightsError(
        f"{where} holds non-finite weights (NaN/Inf): {describe_bad(bad)}. The PyTorch model "
        "itself would produce NaN, so no graph could pass the parity gate, and nothing was exported. Use an intact "
        "checkpoint: re-download it, or re-save it from a training run before it diverged."
    )


def reference_error(component: str, output: str, expected: np.ndarray, modules: dict[str, nn.Module],
                    source: str | None, shape_note: str) -> NonFiniteReferenceError:
    """The error for a PyTorch fp32 reference with NaN/Inf in ``expected`` (output ``output`` of ``component``);
    ``modules`` (role -> module) are the parts whose weights are searched for the cause."""
    nan, inf = int(np.isnan(expected).sum()), int(np.isinf(expected).sum())
    counts = " and ".join(f"{n:,} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
    bad = [t for role, module in modules.items() for t in nonfinite_tensors(module, f"{role}: ")]
    what = f"checkpoint {source}" if source else "the randomly initialised model"
    if bad:
        cause = f"the {what} holds non-finite weights: {'; '.join(t.describe() for t in bad[:3])}"
        fix = "use an intact checkpoint"
    else:
        name, value = _largest_of(modules)
        cause = (f"its weights are finite (the largest is {value:.3g}, in {name}), so float32 overflows on ordinary "
                 f"inputs ({shape_note}): the {what} does not fit this variant or is corrupt")
        fix = "check that the checkpoint belongs to this variant and loads into it as trained"
    return NonFiniteReferenceError(
        f"the PyTorch model itself produces {counts} of {expected.size:,} values in {component}.{output} (PyTorch fp32, "
        f"before any export): {cause}. This is not an export problem; {fix}. Nothing was exported."
    )


def overflow_note(modules: dict[str, nn.Module], precision: str) -> str:
    """For a low-precision graph with NaN/Inf: the largest weight, when it is past fp16's range."""
    if precision != "fp16":
        return ""
    name, value = _largest_of(modules)
    return f"; the weight {name} reaches {value:.3g}, past fp16's {FP16_MAX:g}" if value > FP16_MAX else ""


def _largest_of(modules: dict[str, nn.Module]) -> tuple[str, float]:
    """("role: parameter", value) of the largest finite weight magnitude over ``modules``."""
    best = ("", 0.0)
    for role, module in modules.items():
        name, value = largest_weight(module)
        if value > best[1]:
            best = (f"{role}: {name}", value)
    return best
