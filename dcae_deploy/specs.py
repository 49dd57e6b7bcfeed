"""Export specs of graph components: named inputs and outputs, dynamic axes, shape profile, parity points.

Like optimum's per-model ONNX configs, everything component-specific lives in one small declarative
object (:class:`ComponentSpec`) that each model family makes for its components (the ``spec`` functions a
:class:`~dcae_deploy.family.ComponentDef` names); the generic exporter, parity gate, eager runtime and
benchmarks never name a model. Shapes are written with symbolic names (``batch``, ``latent_height``,
``tokens``, ...) that the manifest keeps; ``dims`` gives each name its concrete min/opt/max, which become the
TensorRT optimisation profile of every input that uses it.

The components of the registered families and their tensors (the contract with the runtime):

============  =====================================================================  ==========================
component     inputs                                                                 output
============  =====================================================================  ==========================
encoder       image (batch, 3, height, width) [P]                                    latent [P]
decoder       latent (batch, C, latent_height, latent_width) [P]                     image [P]
denoiser      latent [P], timestep (batch,) float32, encoder_hidden_states            velocity (like latent) [P]
              (batch, T, caption_channels) [P], encoder_attention_mask (batch, T) int64
denoiser      latent [P] (static side: the config's input_size), timestep (batch,)   prediction (batch, C or
(class)       float32, class_labels (batch,) int64: UViT / USiT / DiT                2C, side, side) [P]
text_encoder  input_ids (batch, tokens) int64, attention_mask (batch, tokens) int64  text_embeddings
                                                                                     (batch, T, hidden) [P]
decoder_      latent [P] (``decoder_global``) / features (batch, F, feature_height,   features [P] / image [P]
global/local  feature_width) [P] (``decoder_local``): the decoder split for exact tiling
============  =====================================================================  ==========================

``[P]`` is the export precision. The denoiser's and text encoder's batch goes to ``2 * max_batch``
(classifier-free guidance runs both branches in one batch). ``T`` is static: the text encoder's
``max_length`` (300 for SANA's Gemma-2, whose graph selects BOS + the last 299 of ``tokens`` positions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.family import component_defs, component_names, family_of, image_ratio, is_composite, parts_of
from dcae_deploy.precisions import PRECISIONS
from dcae_deploy.manifest import Component, Manifest, PipelineSection, ShapeProfile, TensorInfo

Dtype = Literal["float", "float32", "int64"]  # "float": the export precision
Sample = Literal["uniform", "normal", "timestep", "ids", "mask"]
NUMPY_DTYPES = {name: p.float_dtype for name, p in PRECISIONS.items()}  # a Q/DQ graph's float tensors: float32
OPSET = 22  # bf16 Conv needs opset 22 (earlier opsets type-restrict Conv to fp16/fp32/fp64)


@dataclass(frozen=True)
class Resolution:
    """Image-space export profile: square sides in pixels (multiples of the compression ratio) and batch."""

    min_res: int
    opt_res: int
    max_res: int
    max_batch: int = 1

    def validate(self, ratio: int) -> None:
        sides = {"--min-res": self.min_res, "--opt-res": self.opt_res, "--max-res": self.max_res}
        for flag, value in {**sides, "--max-batch": self.max_batch}.items():
            if isinstance(value, bool) or not hasattr(value, "__index__"):  # 512.0 would reach the graph's shapes
                raise DcaeDeployError(f"{flag} must be a whole number, got {value!r}")
        for flag, value in sides.items():
            if value <= 0 or value % ratio:
                raise DcaeDeployError(f"{flag} {value} must be a positive multiple of the compression ratio {ratio}")
        if not self.min_res <= self.opt_res <= self.max_res:
            raise DcaeDeployError(
                f"profile out of order: need --min-res <= --opt-res <= --max-res, got "
                f"{self.min_res} / {self.opt_res} / {self.max_res}"
            )
        if not 1 <= self.max_batch <= 64:
            raise DcaeDeployError(f"--max-batch must be between 1 and 64, got {self.max_batch}")

    def parity_shapes(self) -> list[tuple[int, int, int]]:
        """Two (batch, height, width) points inside the profile: the optimum, and a small non-square one."""
        step = self.min_res if self.max_res >= 2 * self.min_res else 0
        small = (min(2, self.max_batch), self.min_res, self.min_res + step)
        return [(1, self.opt_res, self.opt_res), small]


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (ints and symbolic names), dtype role, sample distribution.

    ``sample``/``scale`` say how the parity gate fills an input: ``uniform`` U(-1, 1) * scale,
    ``normal`` N(0, 1) * scale, ``timestep`` U(0, scale), ``ids`` integers in [0, scale), ``mask``
    right-padded 1/0 rows with at least one 1.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: Dtype = "float"
    sample: Sample = "normal"
    scale: float = 1.0

    def concrete(self, point: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else point[d] for d in self.shape)

    def make(self, point: dict[str, int], gen: torch.Generator) -> torch.Tensor:
        """A seeded sample (float32 or int64) of this tensor at ``point``."""
        shape = self.concrete(point)
        if self.sample == "uniform":
            return (torch.rand(shape, generator=gen) * 2 - 1) * self.scale
        if self.sample == "normal":
            return torch.randn(shape, generator=gen) * self.scale
        if self.sample == "timestep":
            return torch.rand(shape, generator=gen) * self.scale
        if self.sample == "ids":
            return torch.randint(0, int(self.scale), shape, generator=gen)
        if self.sample == "mask":
            lengths = torch.randint(1, shape[-1] + 1, shape[:-1], generator=gen)
            lengths.view(-1)[0] = shape[-1]  # one row without padding
            return (torch.arange(shape[-1]) < lengths[..., None]).long()
        raise ValueError(f"unknown sample kind {self.sample!r}")


@dataclass(frozen=True)
class ComponentSpec:
    """One exportable component, made concrete for a model config and a shape profile.

    Attributes:
        dims: symbolic dimension -> (min, opt, max); a name with min == max is still symbolic in the
            manifest but static in the graph.
        derived: dimension -> (base dimension, factor): ``height = 32 * latent_height`` keeps the
            exporter's shape guards (strided convolutions) satisfied.
        points: two parity points (symbolic dimension -> value) inside the profile.
        module: picks the ``nn.Module`` to export from the loaded parts; its ``forward`` takes the
            inputs in order.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: dict[str, tuple[int, int, int]]
    points: tuple[dict[str, int], ...]
    module: Callable[[Any], nn.Module]
    image_output: bool = False
    derived: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def example_point(self) -> dict[str, int]:
        """The shape the graph is traced at: the optimum, with batch 2 (size-1 axes would be specialised)."""
        return {name: (max(opt, 2) if name == "batch" else opt) for name, (_, opt, _) in self.dims.items()}

    def sample_inputs(self, point: dict[str, int], seed: int) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(seed)
        return tuple(t.make(point, gen) for t in self.inputs)

    def dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """``torch.export.Dim`` per dynamic axis of every input (shared by name across inputs)."""
        made: dict[str, Any] = {}

        def dim(name: str):
            if name not in made:
                if name in self.derived:
                    base, factor = self.derived[name]
                    base_dim = dim(base)
                    made[name] = None if base_dim is None else factor * base_dim  # static base: static too
                else:
                    lo, _, hi = self.dims[name]
                    hi = max(hi, 2) if name == "batch" else hi  # the trace uses batch 2
                    made[name] = torch.export.Dim(name, min=lo, max=hi) if lo < hi else None
            return made[name]

        return tuple(
            {axis: d for axis, d in ((a, dim(s)) for a, s in enumerate(t.shape) if isinstance(s, str)) if d is not None}
            for t in self.inputs
        )

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min, opt, max) concrete shapes, for every input with a symbolic axis."""
        points = [{name: v[i] for name, v in self.dims.items()} for i in range(3)]
        return {
            t.name: tuple(t.concrete(p) for p in points)  # type: ignore[misc]
            for t in self.inputs
            if any(isinstance(d, str) for d in t.shape)
        }


# ---------------------------------------------------------------------------------------------
# Graph wrappers: a plain forward over the named inputs
# ---------------------------------------------------------------------------------------------


class Wrapped(nn.Module):
    """Gives the exported graph a plain ``forward(x)`` over one submodule."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class MethodGraph(nn.Module):
    """Gives the exported graph a plain ``forward(x)`` calling one method of a submodule."""

    def __init__(self, inner: nn.Module, method: str) -> None:
        super().__init__()
        self.inner, self.method = inner, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.inner, self.method)(x)


def spatial_dims(res: Resolution, ratio: int) -> dict[str, tuple[int, int, int]]:
    lat = (res.min_res // ratio, res.opt_res // ratio, res.max_res // ratio)
    px = (res.min_res, res.opt_res, res.max_res)
    return {"latent_height": lat, "latent_width": lat, "height": px, "width": px}


def spatial_points(res: Resolution, ratio: int) -> list[dict[str, int]]:
    points = []
    for _, h, w in res.parity_shapes():
        points.append({"height": h, "width": w, "latent_height": h // ratio, "latent_width": w // ratio})
    return points


# ---------------------------------------------------------------------------------------------
# Making the specs of a variant's components
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecContext:
    """What a family's ``spec`` function sees: the component, its part and the variant around it.

    ``parts`` has one attribute per role (``autoencoder``, ``denoiser``, ``text_encoder``) holding the loaded
    PyTorch module or None; ``configs`` maps every role of the variant to its config (the loaded part's
    config where loaded, else the registered one); ``tokenizer`` is the text encoder's, if any.
    """

    name: str
    config: Any
    parts: Any
    configs: dict[str, Any]
    tokenizer: Any
    res: Resolution
    ratio: int

    def module(self, role: str) -> nn.Module | None:
        return getattr(self.parts, role, None)


def part_configs(config: Any, parts: Any) -> dict[str, Any]:
    """Role -> config over the variant: the loaded part's config where ``parts`` has it, else the registry's."""
    return {role: getattr(getattr(parts, role, None), "config", None) or registered
            for role, registered in parts_of(config).items()}


def component_spec(config: Any, name: str, parts: Any, res: Resolution, tokenizer: Any = None) -> ComponentSpec:
    """The :class:`ComponentSpec` of component ``name`` of variant ``config`` over the loaded ``parts``."""
    role, definition = component_defs(config)[name]
    configs = part_configs(config, parts)
    context = SpecContext(name, configs[role], parts, configs, tokenizer, res, image_ratio(config))
    return family_of(configs[role]).function(definition.spec)(context)


def module_call(config: Any, name: str, parts: Any) -> tuple[nn.Module, Callable[[dict], torch.Tensor]]:
    """(module, fn over named torch inputs) that runs component ``name`` of ``config`` in PyTorch."""
    defs = component_defs(config)
    if name not in defs:
        raise DcaeDeployError(f"{config.name!r} has no component {name!r}; it has {', '.join(defs)}")
    role, definition = defs[name]
    part = getattr(parts, role, None)
    if part is None:
        raise DcaeDeployError(f"component {name!r} needs the {role} of {config.name!r}, which is not loaded")
    return family_of(parts_of(config)[role]).function(definition.call)(part)


DEFAULT_RESOLUTION = Resolution(min_res=256, opt_res=512, max_res=1024, max_batch=4)


def default_resolution(config: Any, min_res: int | None = None, opt_res: int | None = None,
                       max_res: int | None = None, max_batch: int | None = None) -> Resolution:
    """The export profile: the given sides, else the defaults (a pipeline's own image size is the optimum,
    inside the default range)."""
    d = DEFAULT_RESOLUTION
    side = getattr(config, "image_size", None)
    if side is not None:
        d = Resolution(min(d.min_res, side), side, max(d.max_res, side), d.max_batch)
    min_res = d.min_res if min_res is None else min_res
    max_res = d.max_res if max_res is None else max_res
    if opt_res is None:  # the default optimum must stay inside a user-narrowed range
        opt_res = min(max(d.opt_res, min_res), max_res)
    return Resolution(min_res, opt_res, max_res, d.max_batch if max_batch is None else max_batch)


def dtype_name(tensor: TensorSpec, precision: str) -> str:
    return NUMPY_DTYPES[precision] if tensor.dtype == "float" else tensor.dtype


def component_record(spec: ComponentSpec, precision: str, file: str, files: dict[str, str]) -> Component:
    """The manifest entry of a component exported from ``spec`` (``file`` empty: described, not exported)."""
    return Component(
        name=spec.name,
        file=file,
        files=files,
        inputs=tuple(TensorInfo(t.name, dtype_name(t, precision), t.shape) for t in spec.inputs),
        outputs=tuple(TensorInfo(t.name, dtype_name(t, precision), t.shape) for t in spec.outputs),
        profiles={name: ShapeProfile(*shapes) for name, shapes in spec.profile().items()},
    )


def pipeline_section(config: Any, parts: Any, tokenizer: Any, tokenizer_file: str | None) -> PipelineSection | None:
    """The manifest's ``pipeline`` block of a pipeline variant (None for a bare family variant): each part's
    facts from its family, plus the pipeline's conditioning and sampling defaults."""
    if not is_composite(config):
        return None
    facts = {role: family_of(part).facts(part, tokenizer, tokenizer_file)
             for role, part in part_configs(config, parts).items()}
    return PipelineSection(variant=config.name, conditioning=config.conditioning,
                           defaults=config.sampling, **facts)


def autoencoder_fields(config: Any, parts: Any) -> dict[str, Any]:
    """The manifest's top-level autoencoder fields (None without an autoencoder part)."""
    ae = part_configs(config, parts).get("autoencoder")
    if ae is None or getattr(parts, "autoencoder", None) is None:
        return dict(scaling_factor=None, spatial_compression_ratio=None, latent_channels=None)
    return dict(scaling_factor=ae.scaling_factor, spatial_compression_ratio=ae.spatial_compression_ratio,
                latent_channels=ae.latent_channels)


def tool_versions() -> dict[str, str]:
    import onnx

    import dcae_deploy

    versions = {"dcae_deploy": dcae_deploy.__version__, "torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        pass
    return versions


def describe(models: Any, *, components: list[str] | None = None, min_res: int | None = None,
             opt_res: int | None = None, max_res: int | None = None, max_batch: int | None = None) -> Manifest:
    """The fp32 manifest an export of these PyTorch parts would write, without exporting anything.

    ``components`` defaults to the variant's default components plus its optional ones that generation can
    use (for a pipeline: the split decoder too; not the encoder). Components carry their inputs, outputs and shape
    profiles but no graph file (``file`` is empty), and the text encoder's ``tokenizer`` is None: enough
    for the runtime's torch backend to run the models in memory (``dcae_deploy.runtime.eager``).
    """
    config = models.config
    res = default_resolution(config, min_res, opt_res, max_res, max_batch)
    res.validate(image_ratio(config))
    if components is None:
        composite = is_composite(config)
        optional = [c.name for _, c in component_defs(config).values() if not c.is_default(composite) and c.in_pipeline]
        components = component_names(config) + optional
    records = {n: component_record(component_spec(config, n, models, res, models.tokenizer), "fp32", "", {})
               for n in components}
    return Manifest(
        variant=config.name, kind=config.kind, precision="fp32", opset=OPSET, components=records,
        **autoencoder_fields(config, models), resolution=dataclasses.asdict(res), versions=tool_versions(),
        pipeline=pipeline_section(config, models, models.tokenizer, None),
    )
