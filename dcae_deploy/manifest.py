"""``manifest.json``: the contract between the export stage and everything downstream.

An export folder holds one ONNX graph per component plus this manifest: variant, precision, tensor
names, dtypes and symbolic shapes, the min/opt/max optimisation profile of every input, the latent
scaling factor, opset, tool versions and a SHA-256 of every file. Engine builders and runtimes read
only the manifest and the files it names, and refuse files whose hash no longer matches.

A text-to-image export (``kind == "pipeline"``) also carries ``pipeline``: what the runtime needs and
cannot read from the graphs (latent scaling, timestep scale, tokenizer file, sampling defaults)::

    {"variant": "demo",
     "autoencoder": {"scaling_factor", "spatial_compression_ratio", "latent_channels"},
     "denoiser": {"timestep_scale", "in_channels", "caption_channels"},
     "text_encoder": {"family", "max_length", "hidden_size", "tokenizer": "tokenizer/vocab.json",
                      "input_tokens": [min, max], "complex_human_instruction": bool},
     "defaults": {"height", "width", "steps", "guidance_scale", "flow_shift", "sampler"}}
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
FORMAT_VERSION = 1


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
    pipeline: dict[str, Any] | None = None  # text-to-image exports only (see the module docstring)

    def component(self, name: str) -> Component:
        if name not in self.components:
            raise ManifestError(
                f"the export has no component {name!r}; it has: {', '.join(self.components)}. "
                "Re-export with --components including it"
            )
        return self.components[name]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_TAG, "version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        data = {k: v for k, v in data.items() if k not in ("format", "version")}
        data["components"] = {name: _component_from_dict(c) for name, c in data["components"].items()}
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
    if data.get("format") != FORMAT_TAG or data.get("version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path} is not a dcae_deploy manifest of version {FORMAT_VERSION} "
            f"(format={data.get('format')!r}, version={data.get('version')!r}); re-export with this version"
        )
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError) as exc:
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
