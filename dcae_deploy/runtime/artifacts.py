"""An exported text-to-image folder as the runtime sees it: manifest + the ``pipeline`` block + profiles.

Only ``manifest.json`` and the files it names are read (no model registry, no torch), so a folder
copied to a laptop runs with the deploy requirements alone (``runtime/requirements-runtime.txt``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcae_deploy.manifest import MANIFEST_FILE, Component, Manifest, ManifestError, read_manifest, verify_files
from dcae_deploy.runtime.errors import ArtifactsError

REQUIRED_COMPONENTS = ("text_encoder", "denoiser", "decoder")
EXPORT_HINT = "export one with `python -m dcae_deploy.export --model demo --checkpoint PIPELINE_FOLDER --output DIR`"


@dataclass(frozen=True)
class AutoencoderInfo:
    scaling_factor: float
    spatial_compression_ratio: int
    latent_channels: int


@dataclass(frozen=True)
class DenoiserInfo:
    timestep_scale: float
    in_channels: int
    caption_channels: int


@dataclass(frozen=True)
class TextEncoderInfo:
    family: str
    max_length: int
    hidden_size: int
    tokenizer: str  # path relative to the artifacts folder


@dataclass(frozen=True)
class Defaults:
    height: int
    width: int
    steps: int
    guidance_scale: float
    flow_shift: float
    sampler: str


@dataclass(frozen=True)
class PipelineInfo:
    """The manifest's ``pipeline`` block: what the runtime needs and cannot read from the graphs."""

    variant: str
    autoencoder: AutoencoderInfo
    denoiser: DenoiserInfo
    text_encoder: TextEncoderInfo
    defaults: Defaults

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineInfo":
        return cls(
            variant=data["variant"],
            autoencoder=_build(AutoencoderInfo, data["autoencoder"]),
            denoiser=_build(DenoiserInfo, data["denoiser"]),
            text_encoder=_build(TextEncoderInfo, data["text_encoder"]),
            defaults=_build(Defaults, data["defaults"]),
        )


def _build(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class SizeRange:
    """Allowed image sides (pixels) and batch of one component, from its manifest profile."""

    min_side: int
    max_side: int
    max_batch: int
    step: int

    def contains(self, height: int, width: int) -> bool:
        return all(self.min_side <= s <= self.max_side for s in (height, width))

    def describe(self) -> str:
        return f"{self.min_side} to {self.max_side} pixels in steps of {self.step}"


@dataclass(frozen=True)
class Artifacts:
    """A verified export folder of kind ``pipeline``."""

    folder: Path
    manifest: Manifest
    pipeline: PipelineInfo

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def variant(self) -> str:
        return self.manifest.variant

    def component(self, name: str) -> Component:
        return self.manifest.component(name)

    def graph_path(self, name: str) -> Path:
        return self.folder / self.component(name).file

    def tokenizer_path(self) -> Path:
        return self.folder / self.pipeline.text_encoder.tokenizer

    def max_batch(self, component: str) -> int:
        """The largest batch every input profile of ``component`` admits (the manifest's max_batch without profiles)."""
        profiles = self.component(component).profiles.values()
        if not profiles:
            return int(self.manifest.resolution.get("max_batch", 1))
        return min(p.max[0] for p in profiles)

    def size_range(self, component: str) -> SizeRange:
        """Image-side range and batch allowed by ``component``'s latent (or image) input profile."""
        comp = self.component(component)
        ratio = self.pipeline.autoencoder.spatial_compression_ratio
        spatial_input = next(t for t in comp.inputs if len(t.shape) == 4)
        profile = comp.profiles[spatial_input.name]
        scale = ratio if spatial_input.shape[1] == self.pipeline.autoencoder.latent_channels else 1
        lo = max(profile.min[2], profile.min[3]) * scale
        hi = min(profile.max[2], profile.max[3]) * scale
        return SizeRange(min_side=lo, max_side=hi, max_batch=profile.max[0], step=ratio)


def load_artifacts(folder: str | Path, variant: str | None = None, verify: bool = True) -> Artifacts:
    """Read and check ``folder/manifest.json`` for the runtime.

    Args:
        folder: an export folder of a text-to-image pipeline.
        variant: the pipeline variant the caller asked for; a folder of another variant is refused.
        verify: check every listed file's SHA-256 (a few seconds for large graphs).

    Raises:
        ArtifactsError: missing folder or manifest, not a pipeline export, another variant, missing component.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ArtifactsError(f"artifacts folder {folder} does not exist: pass the folder an export wrote, or {EXPORT_HINT}")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactsError(f"{folder} has no {MANIFEST_FILE}: it is not an export folder; {EXPORT_HINT}")
    try:
        manifest = read_manifest(folder, verify=False)
    except ManifestError as exc:
        raise ArtifactsError(str(exc)) from exc
    pipeline = manifest.pipeline
    if manifest.kind != "pipeline" or not isinstance(pipeline, dict):
        raise ArtifactsError(
            f"{folder} holds a {manifest.kind!r} export of {manifest.variant!r}, not a text-to-image pipeline; {EXPORT_HINT}"
        )
    if variant is not None and variant != manifest.variant:
        raise ArtifactsError(
            f"{folder} holds an export of {manifest.variant!r}, not of {variant!r}: pass the folder exported "
            f"from {variant!r}, or drop the variant to use {manifest.variant!r}"
        )
    missing = [c for c in REQUIRED_COMPONENTS if c not in manifest.components]
    if missing:
        raise ArtifactsError(f"{folder} has no {', '.join(missing)} graph; re-export with all components")
    try:
        info = PipelineInfo.from_dict(pipeline)
    except (KeyError, TypeError) as exc:
        raise ArtifactsError(f"{path}: the pipeline block is incomplete ({exc!r}); re-export the folder") from exc
    if verify:
        verify_files(folder, manifest)
    artifacts = Artifacts(folder.resolve(), manifest, info)
    if not artifacts.tokenizer_path().is_file():
        raise ArtifactsError(f"{artifacts.tokenizer_path()} (the tokenizer named by {path}) is missing; re-export")
    return artifacts
