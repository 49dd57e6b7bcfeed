"""PyTorch module -> checked ONNX file, with the dynamo exporter.

The TorchScript exporter turns the DC-AE linear attention into a Transpose with a negative ``perm``
that ONNX Runtime rejects, so only ``torch.onnx.export(..., dynamo=True)`` is used. The exported
program is optimised (constant folding, dead-code elimination by onnxscript), saved with external
data when it would pass protobuf's 2 GB limit, and verified with ``onnx.checker`` (full check).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.specs import OPSET

_PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # leave room for the graph itself


class ExportError(DcaeDeployError):
    """The exporter or the ONNX checker rejected a graph."""


def export_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[dict, ...],
    verbose: bool = False,
) -> list[Path]:
    """Export ``module(*example)`` to ``path``; returns the files written (graph, and external data if any).

    ``dynamic_shapes`` has one ``{axis: torch.export.Dim}`` per input, in ``input_names`` order.
    """
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weight_bytes > _PROTOBUF_LIMIT
    quiet = contextlib.nullcontext() if verbose else _quiet()
    with quiet, torch.no_grad():
        try:
            program = torch.onnx.export(
                module,
                tuple(example),
                dynamo=True,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                verbose=False,
            )
            program.optimize()
            program.save(str(path), external_data=external)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {path.name}: {type(exc).__name__}: {exc}") from exc
    _check(path)
    files = [path]
    data = path.with_name(path.name + ".data")
    if data.exists():
        files.append(data)
    return files


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected {path.name}: {exc}") from exc


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress chatter and warnings (``--verbose`` shows them)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._export", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
