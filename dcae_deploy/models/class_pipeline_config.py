"""Class-conditional pipelines (DC-AE-Diffusion): which DC-AE and which UViT / USiT / DiT work together, and how
to sample them.

Like :class:`~dcae_deploy.models.pipeline_config.PipelineConfig` (text-to-image) a pipeline composes registered
parts; it has no text encoder: its denoiser reads ImageNet class labels (``conditioning = "class"``). Its
checkpoint is the DC-AE-Diffusion hub folder (``config.json`` ``{"model_name": ...}`` + ``model.safetensors`` with
``autoencoder.*`` and ``diffusion_model.*`` keys), read by ``loader``, or a dcae_deploy pipeline folder
(``pipeline.json``, ``vae/``, ``transformer/``; :mod:`dcae_deploy.models.pipeline`). This module imports no torch.

``sampling.sampler`` names the sampler the runtime resolves (the reference's eval sampler of each model):

=====================  =================================================================================
``dpm-solver++-uvit``  UViT: DPM-Solver++ (order 3, singlestep "fast", time-uniform, discrete VP schedule of
                       scaled-linear betas 0.00085..0.012), the reference's grid; 30 steps
``sit-dopri5``         USiT: the SiT linear-path probability-flow ODE, t 0 -> 1, adaptive dopri5 (atol 1e-6,
                       rtol 1e-3); ``steps`` (250) is the output grid only. Alternatives ``sit-heun``, ``sit-euler``
``adm``                DiT: ADM ancestral sampling, linear betas 1e-4..0.02 respaced to ``steps`` (250), learned-
                       range variance. Alternative ``ddim``
=====================  =================================================================================

Classifier-free guidance ``guidance_scale`` s (1.0 = off): eps / v = uncond + s * (cond - uncond), with the null
class ``num_classes`` as the unconditional label (for DiT on the first in_channels channels only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dcae_deploy.manifest import SamplerDefaults
from dcae_deploy.registry import get_variant


@dataclass(frozen=True)
class ClassPipelineConfig:
    """A class-conditional latent diffusion model: the names of its autoencoder and denoiser, and its sampling
    defaults (``sampling``; its ``flow_shift`` is unused by these samplers and kept at 1.0)."""

    kind = "pipeline"
    #: what the denoiser is conditioned on: class labels (``num_classes`` is the null class)
    conditioning = "class"
    #: reads the DC-AE-Diffusion hub folder (a folder without ``pipeline.json``): role -> PyTorch module
    loader = "dcae_deploy.models.uvit:load_dcae_diffusion"

    name: str
    autoencoder: str
    denoiser: str
    sampling: SamplerDefaults = SamplerDefaults(height=512, width=512, steps=30, guidance_scale=1.5, flow_shift=1.0,
                                                sampler="dpm-solver++-uvit")
    description: str = ""

    def parts(self) -> dict[str, Any]:
        """The configs of the two parts, looked up in the registry."""
        return {
            "autoencoder": get_variant(self.autoencoder, kind="autoencoder"),
            "denoiser": get_variant(self.denoiser, kind="denoiser"),
        }

    @property
    def image_size(self) -> int:
        """The one image side the pipeline makes (its denoiser's latent side times the compression)."""
        return self.sampling.height

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
