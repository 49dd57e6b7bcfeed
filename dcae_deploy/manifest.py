"""``manifest.json``: the contract between the export stage and everything downstream.

An export folder holds one ONNX graph per component plus this manifest: variant, precision, tensor
names, dtypes and symbolic shapes, the min/opt/max optimisation profile of every input, the latent
scaling factor, opset, tool versions and a SHA-256 of every file. Engine builders and runtimes read
only the manifest and the files it names, and refuse files whose hash no longer matches.

A pipeline export (``kind == "pipeline"``) also carries ``pipeline`` (:class:`PipelineSection`): what the
runtime needs and cannot read from the graphs (latent scaling, timestep scale, tokenizer file, sampling
defaults), one typed entry per part, each contributed by its model family (:mod:`dcae_deploy.family`)::

    {"variant": "demo", "conditioning": "text",
     "autoencoder": {"scaling_factor", "spatial_compression_ratio", "latent_channels"},
     "denoiser": {"timestep_scale", "in_channels", "caption_channels"},  (class conditioning: no caption_channels;
                 "timestep_convention", "prediction", "num_classes", "null_class", "latent_size" instead)
     "text_encoder": {"family", "max_length", "hidden_size", "tokenizer": "tokenizer/vocab.json",
                      "input_tokens": [min, max], "complex_human_instruction": bool},
     "defaults": {"height", "width", "steps", "guidance_scale", "flow_shift", "sampler"}}

``conditioning`` says what the denoiser is conditioned on: ``"text"`` (caption embeddings from the text
encoder) or ``"class"`` (ImageNet class labels: DC-AE-Diffusion UViT / USiT / DiT); a class-conditional pipeline
has no ``text_encoder`` entry, and its ``defaults.sampler`` names one of the class samplers.

Version history: 1 had no ``conditioning`` (read as ``"text"``); 2 adds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcae_deploy.checkpoints import read_json, write_json
from dcae_deploy.errors import DcaeDeployError

#: Optional decoder components for exact tiled decoding: the global stages on the whole latent, then the
#: local high-resolution stages tile by tile.
SPLIT_DECODER = ("decoder_global", "decoder_local")

MANIFEST_FILE = "manifest.json"
FORMAT_TAG = "dcae_deploy.manifest"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 is upgraded on reading (conditioning "text")


class ManifestError(DcaeDeployError):
    """A missing, unreadable or inconsistent manifest, or an artifact that changed after export."""


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, numpy-style dtype name, shape with symbolic dimension names."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ShapeProfile:
    """TensorRT-style optimisation profile of one input: concrete min/opt/max shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Component:
    """One exported graph. ``files`` maps every file it needs (graph, external data) to its SHA-256."""

    name: str
    file: str
    files: dict[str, str]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    profiles: dict[str, ShapeProfile]


@dataclass(frozen=True)
class AutoencoderFacts:
    """What the runtime needs of the autoencoder: latent scaling and geometry."""

    scaling_factor: float
    spatial_compression_ratio: int
    latent_channels: int


@dataclass(frozen=True)
class DenoiserFacts:
    """What the runtime needs of the denoiser: the timestep input's scale, latent and caption widths; for a
    class-conditional denoiser (``conditioning == "class"``, :mod:`dcae_deploy.models.uvit_family`) also what its
    timestep means, what it predicts, its classes and the fixed latent side. A field left at its None default is
    not written (:meth:`PipelineSection.to_dict`), so text pipelines' manifests keep their version-2 form."""

    timestep_scale: float
    in_channels: int
    caption_channels: int | None = None  # text conditioning only
    timestep_convention: str | None = None  # "uvit-dpm" | "sit" | "adm"; None: flow sigma * 1000 * timestep_scale
    prediction: str | None = None  # "eps" | "velocity" | "eps+variance"; None: velocity (flow matching)
    num_classes: int | None = None  # class labels 0 .. num_classes - 1
    null_class: int | None = None  # the label of classifier-free guidance's unconditional branch
    latent_size: int | None = None  # the only latent side the graph takes (learned / fixed position embedding)


@dataclass(frozen=True)
class TextEncoderFacts:
    """What the runtime needs of the text encoder: its tokenizer file and token window."""

    family: str
    max_length: int
    hidden_size: int
    tokenizer: str | None  # path relative to the export folder; None when the text encoder was not exported
    input_tokens: tuple[int, int]  # (shortest, longest) tokenised prompt the graph takes
    complex_human_instruction: bool = False


@dataclass(frozen=True)
class SamplerDefaults:
    """The pipeline's default request: image size, steps, guidance, flow shift, sampler name."""

    height: int = 1024
    width: int = 1024
    steps: int = 20
    guidance_scale: float = 4.5
    flow_shift: float = 3.0
    sampler: str = "dpm-solver++"


#: manifest key -> facts class of each part of a pipeline section
PART_FACTS = {"autoencoder": AutoencoderFacts, "denoiser": DenoiserFacts, "text_encoder": TextEncoderFacts}


@dataclass(frozen=True)
class PipelineSection:
    """The manifest's ``pipeline`` block (see the module docstring)."""

    variant: str
    autoencoder: AutoencoderFacts
    denoiser: DenoiserFacts
    defaults: SamplerDefaults
    text_encoder: TextEncoderFacts | None = None
    conditioning: str = "text"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"variant": self.variant, "conditioning": self.conditioning}
        for key in PART_FACTS:
            facts = getattr(self, key)
            if facts is not None:
                data[key] = _jsonable(_set_fields(facts))
        data["defaults"] = dataclasses.asdict(self.defaults)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineSection":
        parts = {key: _facts_from_dict(facts_class, data[key])
                 for key, facts_class in PART_FACTS.items() if data.get(key) is not None}
        return cls(variant=data["variant"], defaults=SamplerDefaults(**data["defaults"]),
                   conditioning=data.get("conditioning", "text"), **parts)


def _facts_from_dict(cls, data: dict[str, Any]):
    values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
    if "input_tokens" in values:
        values["input_tokens"] = tuple(values["input_tokens"])
    return cls(**values)


def _set_fields(facts: Any) -> dict[str, Any]:
    """The fields of a facts dataclass, without those left at a default of None (reading fills them in again)."""
    return {f.name: getattr(facts, f.name) for f in dataclasses.fields(facts)
            if not (f.default is None and getattr(facts, f.name) is None)}


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


@dataclass(frozen=True)
class Manifest:
    variant: str
    kind: str
    precision: str
    opset: int
    components: dict[str, Component]
    scaling_factor: float | None = None
    spatial_compression_ratio: int | None = None
    latent_channels: int | None = None
    resolution: dict[str, int] = field(default_factory=dict)  # min_res / opt_res / max_res / max_batch
    checkpoint: str | None = None  # None: randomly initialised weights (structure check only)
    versions: dict[str, str] = field(default_factory=dict)
    pipeline: PipelineSection | None = None  # pipeline exports only (see the module docstring)
    # a variant that is not registered (a custom architecture): {"family": name, "config": config.to_dict()},
    # all that later stages need to rebuild it (the torch backend, parity); None for registered variants
    model_config: dict[str, Any] | None = None
    # quantized exports (int8 / fp8 / int4): how each Q/DQ graph was made ("components": tool, settings, quantized
    # layers per component) and the calibration (image source, samples and held-out samples per component, where the
    # inputs came from)
    quantization: dict[str, Any] | None = None
    # the components exported at another precision than ``precision`` ({"text_encoder": "int4"}); empty: none
    component_precisions: dict[str, str] = field(default_factory=dict)

    def precision_of(self, name: str) -> str:
        """The precision component ``name`` was exported at."""
        return self.component_precisions.get(name, self.precision)

    def describe_precision(self) -> str:
        """``int8``, or with components at their own precision ``int8 (text_encoder int4)``."""
        own = ", ".join(f"{name} {value}" for name, value in self.component_precisions.items())
        return f"{self.precision} ({own})" if own else self.precision

    def component(self, name: str) -> Component:
        if name not in self.components:
            raise ManifestError(
                f"the export has no component {name!r}; it has: {', '.join(self.components)}. "
                "Re-export with --components including it"
            )
        return self.components[name]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(dataclasses.replace(self, pipeline=None))
        data["pipeline"] = self.pipeline.to_dict() if self.pipeline is not None else None
        return {"format": FORMAT_TAG, "version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        data = {k: v for k, v in data.items() if k not in ("format", "version")}
        data["components"] = {name: _component_from_dict(c) for name, c in data["components"].items()}
        if data.get("pipeline") is not None:
            data["pipeline"] = PipelineSection.from_dict(data["pipeline"])
        return cls(**data)


def _component_from_dict(data: dict[str, Any]) -> Component:
    return Component(
        name=data["name"],
        file=data["file"],
        files=dict(data["files"]),
        inputs=tuple(TensorInfo(t["name"], t["dtype"], tuple(t["shape"])) for t in data["inputs"]),
        outputs=tuple(TensorInfo(t["name"], t["dtype"], tuple(t["shape"])) for t in data["outputs"]),
        profiles={k: ShapeProfile(*(tuple(p[x]) for x in ("min", "opt", "max"))) for k, p in data["profiles"].items()},
    )


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST_FILE
    write_json(path, manifest.to_dict())
    return path


def read_manifest(folder: str | Path, verify: bool = True) -> Manifest:
    """Read ``folder/manifest.json``; with ``verify``, check every listed file exists with its recorded hash."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(
            f"no {MANIFEST_FILE} in {folder}: point at a folder written by `python -m dcae_deploy.export`"
        )
    try:
        data = read_json(path)
    except DcaeDeployError as exc:
        raise ManifestError(str(exc)) from exc
    if data.get("format") != FORMAT_TAG or data.get("version") not in READABLE_VERSIONS:
        raise ManifestError(
            f"{path} is not a dcae_deploy manifest of version {FORMAT_VERSION} "
            f"(format={data.get('format')!r}, version={data.get('version')!r}); re-export the folder with this "
            f"version of dcae_deploy (python -m dcae_deploy.export ...)"
        )
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"{path} is incomplete or malformed ({exc!r}); re-export") from exc
    if verify:
        verify_files(folder, manifest)
    return manifest


def verify_files(folder: str | Path, manifest: Manifest) -> None:
    """Every file of every component exists in ``folder`` with its recorded SHA-256 (else ManifestError)."""
    for component in manifest.components.values():
        verify_hashes(
            folder,
            component.files,
            ManifestError,
            listed_in=str(Path(folder) / MANIFEST_FILE),
            remedy="re-export the folder",
            what="changed after export",
        )


def verify_hashes(
    folder: str | Path,
    files: dict[str, str],
    error: type[DcaeDeployError],
    *,
    listed_in: str,
    remedy: str,
    what: str = "changed after it was written",
) -> None:
    """Check that each ``folder/name`` exists and has the SHA-256 ``files[name]``; raise ``error`` if not.

    Shared by the manifest (exported graphs, tokenizer files) and the engine sidecars (plans).
    """
    folder = Path(folder)
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise error(f"{path} is listed in {listed_in} but missing; {remedy}")
        if sha256_file(path) != expected:
            raise error(
                f"{path} {what} (SHA-256 mismatch with {listed_in}); it may be corrupt, truncated or "
                f"edited: {remedy}"
            )
