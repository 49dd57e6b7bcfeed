"""PyTorch runner: the fp32 reference, over the modules of :class:`~dcae_deploy.models.pipeline.PipelineModels`.

The only runtime module that imports torch. It takes the same named numpy inputs as the graphs and
returns the same named outputs, so every backend is driven by one pipeline loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dcae_deploy.manifest import Component
from dcae_deploy.runtime.errors import BackendError
from dcae_deploy.runtime.runners.base import Runner


def _module(models, component: str):
    """(module, function of named torch inputs) for one component."""
    if component == "text_encoder":
        m = models.text_encoder
        return m, lambda x: m(x["input_ids"], x["attention_mask"])
    if component == "denoiser":
        m = models.denoiser
        return m, lambda x: m(x["latent"], x["timestep"], x["encoder_hidden_states"],
                              x["encoder_attention_mask"].to(x["encoder_hidden_states"].dtype))
    if component == "decoder":
        m = models.autoencoder.decoder
        return m, lambda x: m(x["latent"])
    if component == "decoder_global":
        m = models.autoencoder.decoder
        return m, lambda x: m.decode_global(x["latent"])
    if component == "decoder_local":
        m = models.autoencoder.decoder
        return m, lambda x: m.decode_local(x["features"])
    if component == "encoder":
        m = models.autoencoder.encoder
        return m, lambda x: m(x["image"])
    raise BackendError(f"the torch backend has no component {component!r}")


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

    def _load(self) -> None:
        module, self._fn = _module(self._models(), self.name)
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
