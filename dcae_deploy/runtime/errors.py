"""Errors of the runtime: all are :class:`~dcae_deploy.errors.DcaeDeployError`, so CLIs print them without a traceback."""

from __future__ import annotations

from dcae_deploy.errors import DcaeDeployError


class ArtifactsError(DcaeDeployError):
    """A missing or unusable artifacts folder (no manifest, wrong kind or variant, missing component)."""


class BackendError(DcaeDeployError):
    """A backend that is not installed, cannot load a graph/engine, or fails while running it."""


class NonFiniteError(DcaeDeployError):
    """A stage produced NaN or Inf (typically a low-precision overflow): never turned into a black image."""

    def __init__(self, stage: str, backend: str, detail: str) -> None:
        self.stage, self.backend = stage, backend
        super().__init__(
            f"stage {stage!r} on backend {backend!r} produced non-finite values ({detail}). This is usually an "
            "fp16 overflow in an engine or graph: use an fp32 or bf16 export, or compare backends with "
            "`python -m dcae_deploy.parity`"
        )
