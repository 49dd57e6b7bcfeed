"""Errors of the runtime: all are :class:`~dcae_deploy.errors.DcaeDeployError`, so CLIs print them without a traceback."""

from __future__ import annotations

from dcae_deploy.errors import DcaeDeployError


class ArtifactsError(DcaeDeployError):
    """A missing or unusable artifacts folder (no manifest, wrong kind or variant, missing component)."""


class BackendError(DcaeDeployError):
    """A backend that is not installed, cannot load a graph/engine, or fails while running it."""


class NonFiniteError(DcaeDeployError):
    """A stage produced NaN or Inf: never turned into a black image. The message names the likely cause:
    ``cause`` when the caller found it (non-finite weights), else what the export's precision suggests."""

    def __init__(self, stage: str, backend: str, detail: str, precision: str = "fp32", cause: str | None = None) -> None:
        self.stage, self.backend = stage, backend
        if cause is None and precision == "fp16":
            cause = ("this is usually an fp16 overflow in an engine or graph: use an fp32 or bf16 export, or "
                     "compare backends with `python -m dcae_deploy.parity`")
        elif cause is None:
            cause = (f"an {precision} run does not overflow on sound weights: the weights the export was made from "
                     "probably hold NaN/Inf (a diverged or corrupt checkpoint; `--backend torch` names the tensors), "
                     "or the request is extreme; compare backends with `python -m dcae_deploy.parity`")
        super().__init__(f"stage {stage!r} on backend {backend!r} produced non-finite values ({detail}): {cause}")
