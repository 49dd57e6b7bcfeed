"""An export folder as the runtime sees it: the manifest, its typed ``pipeline`` section, and the profiles.

Only ``manifest.json`` and the files it names are read (no model registry, no torch), so a folder
copied to a laptop runs with the deploy requirements alone (``runtime/requirements-runtime.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcae_deploy.manifest import (
    MANIFEST_FILE,
    Component,
    Manifest,
    ManifestError,
    PipelineSection,
    read_manifest,
    verify_files,
)
from dcae_deploy.runtime.errors import ArtifactsError

#: conditioning -> the components a generation needs (the conditioning adapters are in runtime/generation.py)
REQUIRED_COMPONENTS = {"text": ("text_encoder", "denoiser", "decoder"), "class": ("denoiser", "decoder")}
EXPORT_HINT = "export one with `python -m dcae_deploy.export --model demo --checkpoint PIPELINE_FOLDER --output DIR`"


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
    """A verified export folder; ``pipeline`` is None for an export of a bare family variant (an autoencoder,
    a denoiser, a text encoder), whose components :func:`dcae_deploy.runtime.open_component` runs one by one."""

    folder: Path
    manifest: Manifest
    pipeline: PipelineSection | None

    @property
    def precision(self) -> str:
        return self.manifest.precision

    def precision_of(self, component: str) -> str:
        """The precision ``component`` was exported at (an export may give its text encoder int4 weights)."""
        return self.manifest.precision_of(component)

    @property
    def variant(self) -> str:
        return self.manifest.variant

    def component(self, name: str) -> Component:
        return self.manifest.component(name)

    def graph_path(self, name: str) -> Path:
        return self.folder / self.component(name).file

    def required_components(self) -> tuple[str, ...]:
        """What a run of this export needs: a pipeline's generation components, else every exported one."""
        if self.pipeline is None:
            return tuple(self.manifest.components)
        return REQUIRED_COMPONENTS[self.pipeline.conditioning]

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


def open_export(folder: str | Path, verify: bool = True) -> Artifacts:
    """Read and check any export folder's manifest (a pipeline or a bare family variant).

    Raises:
        ArtifactsError: missing folder or manifest, an unreadable manifest.
        ManifestError: with ``verify``, a file that changed after export.
    """
    folder = Path(folder).expanduser()
    if folder.is_file() and folder.name == MANIFEST_FILE:  # the manifest itself: its folder is meant
        folder = folder.parent
    elif folder.is_file():
        raise ArtifactsError(f"artifacts {folder} is a file: pass the export folder, the one holding {MANIFEST_FILE}")
    if not folder.is_dir():
        raise ArtifactsError(f"artifacts folder {folder} does not exist: pass the folder an export wrote, or {EXPORT_HINT}")
    if not (folder / MANIFEST_FILE).is_file():
        raise ArtifactsError(f"{folder} has no {MANIFEST_FILE}: it is not an export folder; {EXPORT_HINT}")
    try:
        manifest = read_manifest(folder, verify=False)
    except ManifestError as exc:
        raise ArtifactsError(str(exc)) from exc
    if verify:
        verify_files(folder, manifest)  # ManifestError: a file changed after export
    return Artifacts(folder.resolve(), manifest, manifest.pipeline)


def load_artifacts(folder: str | Path, variant: str | None = None, verify: bool = True) -> Artifacts:
    """Read and check ``folder/manifest.json`` of a pipeline export for generation.

    Args:
        folder: an export folder of a text-to-image pipeline.
        variant: the pipeline variant the caller asked for; a folder of another variant is refused.
        verify: check every listed file's SHA-256 (a few seconds for large graphs).

    Raises:
        ArtifactsError: missing folder or manifest, not a pipeline export, another variant, missing component.
    """
    artifacts = open_export(folder, verify=False)
    folder, manifest, pipeline = artifacts.folder, artifacts.manifest, artifacts.pipeline
    path = folder / MANIFEST_FILE
    if manifest.kind != "pipeline" or pipeline is None:
        raise ArtifactsError(
            f"{folder} holds a {manifest.kind!r} export of {manifest.variant!r}, not a text-to-image pipeline; {EXPORT_HINT}"
        )
    if variant is not None and variant != manifest.variant:
        raise ArtifactsError(
            f"{folder} holds an export of {manifest.variant!r}, not of {variant!r}: pass the folder exported "
            f"from {variant!r}, or drop the variant to use {manifest.variant!r}"
        )
    if pipeline.conditioning not in REQUIRED_COMPONENTS:
        raise ArtifactsError(f"{path}: conditioning {pipeline.conditioning!r} is not supported by this runtime "
                             f"(it runs {', '.join(REQUIRED_COMPONENTS)}); update dcae_deploy")
    missing = [c for c in REQUIRED_COMPONENTS[pipeline.conditioning] if c not in manifest.components]
    if missing:
        raise ArtifactsError(f"{folder} has no {', '.join(missing)} graph; re-export with all components")
    if verify:
        verify_files(folder, manifest)
    if pipeline.text_encoder is not None and not artifacts.tokenizer_path().is_file():
        raise ArtifactsError(f"{artifacts.tokenizer_path()} (the tokenizer named by {path}) is missing; re-export")
    return artifacts
