"""The deploy runtime: images from exported graphs or engines, on any backend of ``BACKENDS``.

::

    from dcae_deploy.runtime import GenerationConfig, TextToImage, open_component

    with TextToImage.open("export/demo", backend="onnxruntime") as t2i:   # or "tensorrt", "torch"
        result = t2i.generate(GenerationConfig(prompts=("a red circle on a blue background",), seed=0))

    with open_component("export/f32c32-sana", "decoder", backend="onnxruntime") as decoder:  # one graph
        image = decoder.infer({"latent": z})["image"]

Importing this package, and running ONNX Runtime or TensorRT, imports no torch (only the torch
backend does); a deploy machine needs only runtime/requirements-runtime.txt.
"""

from dcae_deploy.manifest import PipelineSection
from dcae_deploy.runtime.artifacts import Artifacts, load_artifacts, open_export
from dcae_deploy.runtime.backends import BACKENDS, BackendOptions, open_backend, open_component, register_backend
from dcae_deploy.runtime.errors import ArtifactsError, BackendError, NonFiniteError
from dcae_deploy.runtime.generation import GenerationConfig, GenerationResult, TextToImage, generate
from dcae_deploy.runtime.runners.base import Runner
from dcae_deploy.runtime.schedulers import SamplerConfig, sample
from dcae_deploy.runtime.tiling import TileConfig, decode_tiled

__all__ = [
    "BACKENDS",
    "Artifacts",
    "ArtifactsError",
    "BackendError",
    "BackendOptions",
    "GenerationConfig",
    "GenerationResult",
    "NonFiniteError",
    "PipelineSection",
    "Runner",
    "SamplerConfig",
    "TextToImage",
    "TileConfig",
    "decode_tiled",
    "generate",
    "load_artifacts",
    "open_backend",
    "open_component",
    "open_export",
    "register_backend",
    "sample",
]
