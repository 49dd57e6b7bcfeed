"""PyTorch weights through the runtime's text-to-image loop, without exporting them first.

::

    from dcae_deploy.runtime.eager import open_pytorch

    with open_pytorch("runs/demo/pipeline") as t2i:          # a pipeline folder, or PipelineModels
        image = t2i.generate(GenerationConfig(prompts=("a red circle on a blue background",))).images[0]

The same :class:`~dcae_deploy.runtime.generation.TextToImage` (tokenizer, text-encoder calls, guidance,
sampler, scaling, tiling, checks) runs on the torch backend, fed by an in-memory manifest that
:func:`dcae_deploy.export.describe_pipeline` derives from the models (fp32, the export's default
profiles). This is the fp32 reference an export is compared with, and a way to try weights before
exporting them. It needs torch (and transformers for Gemma-2), unlike the exported runtime.
"""

from __future__ import annotations

from pathlib import Path

from dcae_deploy.runtime.artifacts import Artifacts
from dcae_deploy.runtime.backends import BackendOptions, TorchBackend
from dcae_deploy.runtime.generation import TextToImage


def open_pytorch(source, *, variant: str | None = None, device: str = "auto", min_res: int | None = None,
                 max_res: int | None = None, max_batch: int | None = None, **kwargs) -> TextToImage:
    """A :class:`TextToImage` over PyTorch models: ``source`` is a pipeline folder (``load_pipeline``) or
    :class:`~dcae_deploy.models.pipeline.PipelineModels`. ``min_res``/``max_res``/``max_batch`` bound the
    accepted requests as an export's profile would (default: one latent cell up to the export defaults);
    other keyword arguments go to :class:`TextToImage`."""
    from dcae_deploy.models.pipeline import PipelineModels, load_pipeline
    from dcae_deploy.specs import describe

    folder = None
    if isinstance(source, PipelineModels):
        models = source
    else:
        folder = Path(source).expanduser()
        models = load_pipeline(folder, variant=variant)
    if min_res is None:  # no graph to build: any multiple of the compression ratio down to one latent cell
        min_res = models.autoencoder.config.spatial_compression_ratio
    manifest = describe(models, min_res=min_res, max_res=max_res, max_batch=max_batch)
    artifacts = Artifacts(folder.resolve() if folder else Path.cwd(), manifest, manifest.pipeline)
    backend = TorchBackend(artifacts, BackendOptions(device=device), models=models)
    return TextToImage(artifacts, backend, tokenizer=models.tokenizer, **kwargs)
