"""The deploy runtime: text to image from exported graphs or engines, on torch, ONNX Runtime or TensorRT.

::

    from dcae_deploy.runtime import GenerationConfig, TextToImage

    with TextToImage.open("export/demo", backend="onnxruntime") as t2i:   # or "tensorrt", "torch"
        result = t2i.generate(GenerationConfig(prompts=("a red circle on a blue background",), seed=0))

Importing this package, and running ONNX Runtime or TensorRT, imports no torch (only the torch
backend does); a deploy machine needs only runtime/requirements-runtime.txt.
"""

from dcae_deploy.runtime.artifacts import Artifacts, PipelineInfo, load_artifacts
from dcae_deploy.runtime.backends import BACKENDS, BackendOptions, open_backend
from dcae_deploy.runtime.errors import ArtifactsError, BackendError, NonFiniteError
from dcae_deploy.runtime.pipeline import GenerationConfig, GenerationResult, TextToImage, generate
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
    "PipelineInfo",
    "Runner",
    "SamplerConfig",
    "TextToImage",
    "TileConfig",
    "decode_tiled",
    "generate",
    "load_artifacts",
    "open_backend",
    "sample",
]
