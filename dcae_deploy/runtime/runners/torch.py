"""PyTorch runner: the fp32 reference, over the modules of :class:`~dcae_deploy.models.pipeline.PipelineModels`.

The only runtime module that imports torch. It takes the same named numpy inputs as the graphs and
returns the same named outputs, so every backend is driven by one generation loop. Which module runs a
component, and how it is called, comes from the component's model family
(:func:`dcae_deploy.specs.module_call`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.manifest import Component
from dcae_deploy.runtime.errors import BackendError
from dcae_deploy.runtime.runners.base import Runner


class TorchRunner(Runner):
    """Runs one component's torch module in fp32 on ``device`` (``cpu`` or ``cuda``)."""

    backend = "torch"

    def __init__(self, component: Component, models: Callable[[], object], device: str = "cpu") -> None:
        super().__init__(component)
        # the reference computes in fp32 whatever the export precision; integer inputs stay integer
        self._dtypes = {k: (np.dtype(np.float32) if v.kind == "f" or v.name == "bfloat16" else v)
                        for k, v in self._dtypes.items()}
        self._models = models
        self.device = torch.device(device)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def version(self) -> str:
        return torch.__version__

    def _load(self) -> None:
        from dcae_deploy.specs import module_call

        models = self._models()
        try:
            module, self._fn = module_call(models.config, self.name, models)
        except DcaeDeployError as exc:
            raise BackendError(f"the torch backend cannot run {self.name!r}: {exc}") from exc
        self._module = module.float().eval().to(self.device)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()}
        with torch.inference_mode():
            out = self._fn(inputs)
        return {self.component.outputs[0].name: out.float().cpu().numpy()}

    def _close(self) -> None:
        if self.device.type != "cpu":
            self._module.to("cpu")
            torch.cuda.empty_cache()
        self._module = self._fn = None
