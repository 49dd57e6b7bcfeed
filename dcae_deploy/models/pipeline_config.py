"""Text-to-image pipelines: which autoencoder, denoiser and text encoder work together, and how to sample.

A pipeline is not a family of its own: it composes parts of the registered families
(:func:`dcae_deploy.family.parts_of`). Its PyTorch side is :mod:`dcae_deploy.models.pipeline` (the pipeline
folder). This module imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dcae_deploy.manifest import SamplerDefaults
from dcae_deploy.registry import get_variant


@dataclass(frozen=True)
class PipelineConfig:
    """A text-to-image model: names of its three parts plus its sampling defaults (``sampling``).

    A pipeline checkpoint is a folder with ``vae/``, ``transformer/`` and ``text_encoder/`` (and
    ``tokenizer/``) sub-folders, as ``diffusers.SanaPipeline.save_pretrained`` writes.
    """

    kind = "pipeline"

    name: str
    autoencoder: str
    denoiser: str
    text_encoder: str
    sampling: SamplerDefaults = SamplerDefaults()  # image size, steps, guidance, flow shift, sampler
    description: str = ""

    def parts(self) -> dict[str, Any]:
        """The configs of the three parts, looked up in the registry."""
        return {
            "autoencoder": get_variant(self.autoencoder, kind="autoencoder"),
            "denoiser": get_variant(self.denoiser, kind="denoiser"),
            "text_encoder": get_variant(self.text_encoder, kind="text_encoder"),
        }

    #: what the denoiser is conditioned on: caption embeddings from the text encoder
    conditioning = "text"

    @property
    def image_size(self) -> int:
        """The pipeline's own image side: the optimum of its export profile."""
        return self.sampling.height

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
