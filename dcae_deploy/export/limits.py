"""Upper bounds of the shape profile: refuse, before any work, a profile that TensorRT cannot build.

The export's profile (``--min-res/--opt-res/--max-res/--max-batch``) becomes the TensorRT optimisation profile
of every engine. TensorRT limits the volume of every single tensor of the network, not just the inputs:

* TensorRT: at most ``2**31 - 1`` elements per tensor (its kernels address tensors with 32-bit offsets; the
  builder stops with "tensor volume exceeds (2^31)-1"; not configurable: NVIDIA/TensorRT#1948, still in
  TensorRT 10.9: NVIDIA/TensorRT#4408);
* TensorRT-RTX 1.7: at most ``2**40`` elements per tensor; past it the builder only logs the warning
  "Profile kMAX values are not self-consistent ... tensor volume exceeds 1099511627776" and "succeeds" with an
  engine that cannot run its own maximum shape.

The export refuses profiles past the stricter one, :data:`MAX_TENSOR_ELEMENTS` (an engine for every
backend). The largest tensor is not an input: a DC-AE decoder's biggest activation is its last upsampling at full
resolution (256 channels for f32c32-sana, 85x the image). It is measured exactly by running the component's
PyTorch module on the ``meta`` device (shapes only: no memory, no arithmetic) at the profile's maximum and
recording every intermediate tensor, on a copy of the registered architecture built on ``meta`` too, so the
check costs well under a second and runs before any checkpoint is read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.family import component_defs, image_ratio
from dcae_deploy.specs import ComponentSpec, Resolution, component_spec

#: TensorRT's per-tensor element limit (see the module docstring); TensorRT-RTX allows 2**40.
MAX_TENSOR_ELEMENTS = 2**31 - 1
MAX_TENSOR_ELEMENTS_TEXT = "2^31-1 = 2,147,483,647"

_TORCH_DTYPES = {"float": torch.float32, "float32": torch.float32, "int64": torch.int64}
_TEXT_ROLE = "text_encoder"  # its shapes do not depend on the image profile (and its meta build needs a tokenizer)


class ProfileTooLargeError(DcaeDeployError):
    """A shape profile with a tensor past TensorRT's per-tensor element limit."""


@dataclass(frozen=True)
class Largest:
    """The largest tensor of one component at one profile point."""

    component: str
    elements: int
    shape: tuple[int, ...]
    op: str


def check_profile_size(config: Any, components: list[str], res: Resolution) -> None:
    """Raise :class:`ProfileTooLargeError` when a tensor of ``components`` at the top of ``res`` is past
    :data:`MAX_TENSOR_ELEMENTS`; the message gives the limit and the largest ``--max-res`` (and batch) that fit."""
    roles = _image_roles(config, components)
    if not roles:
        return
    parts = _meta_parts(config, roles)
    if parts is None:
        return
    names = [n for n in components if component_defs(config)[n][0] in roles]
    too_big = [big for big in (_largest(config, n, parts, res) for n in names) if big.elements > MAX_TENSOR_ELEMENTS]
    if not too_big:
        return
    worst = max(too_big, key=lambda b: b.elements)
    ratio = image_ratio(config)
    fits = _largest_max_res(config, [b.component for b in too_big], parts, res, ratio)
    if fits >= res.min_res:
        advice = f"the largest --max-res that fits at --max-batch {res.max_batch} is {fits}: lower --max-res (or --max-batch)"
        if "decoder" in worst.component:
            advice += " (the runtime still decodes larger images, in tiles of the profile's largest side)"
    else:
        one = _largest_max_res(config, [b.component for b in too_big], parts, replace(res, max_batch=1), ratio)
        advice = (f"even --max-res {res.min_res} (= --min-res) does not fit at --max-batch {res.max_batch}; "
                  + (f"at --max-batch 1 the largest --max-res is {one}" if one >= ratio else "no profile of this model fits")
                  + "; lower --max-batch and --min-res")
    raise ProfileTooLargeError(
        f"profile too large for TensorRT: at --max-res {res.max_res} --max-batch {res.max_batch} the {worst.component} "
        f"graph's largest tensor would hold {worst.elements:,} elements ({worst.op} -> {worst.shape}), past TensorRT's "
        f"limit of {MAX_TENSOR_ELEMENTS_TEXT} elements per tensor, so no engine could be built for it; {advice}. "
        "Nothing was exported."
    )


def _image_roles(config: Any, components: list[str]) -> list[str]:
    defs = component_defs(config)
    roles = []
    for name in components:
        role = defs[name][0]
        if role != _TEXT_ROLE and role not in roles:
            roles.append(role)
    return roles


def _meta_parts(config: Any, roles: list[str]):
    """The registered architecture of ``roles`` on the meta device (no memory), or None if it cannot be built so."""
    from dcae_deploy.models.pipeline import build_parts

    state = torch.random.get_rng_state()  # building draws from the global generator: leave it as it was
    try:
        with torch.device("meta"):
            return build_parts(config, seed=0, roles=roles)
    except Exception:  # a family whose constructor needs real data: fall back to no measurement
        return None
    finally:
        torch.random.set_rng_state(state)


def _largest(config: Any, name: str, parts: Any, res: Resolution) -> Largest:
    """The largest tensor (inputs, outputs and every intermediate) of component ``name`` at the top of ``res``."""
    spec = component_spec(config, name, parts, res, None)
    point = {dim: hi for dim, (_, _, hi) in spec.dims.items()}
    best = max(
        (Largest(name, _volume(t.concrete(point)), t.concrete(point), f"{kind} {t.name!r}")
         for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)) for t in tensors),
        key=lambda b: b.elements,
    )
    measured = _measure(spec, parts, point)
    if measured is not None and measured[0] > best.elements:
        best = Largest(name, *measured)
    return best


def _measure(spec: ComponentSpec, parts: Any, point: dict[str, int]) -> tuple[int, tuple[int, ...], str] | None:
    """(elements, shape, op) of the largest tensor a meta-device forward of ``spec`` at ``point`` makes."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Recorder(TorchDispatchMode):
        found: tuple[int, tuple[int, ...], str] = (0, (), "")

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.numel() > self.found[0]:
                    self.found = (t.numel(), tuple(t.shape), func.__name__.split(".")[0])
            return out

    inputs = [torch.zeros(t.concrete(point), dtype=_TORCH_DTYPES[t.dtype], device="meta") for t in spec.inputs]
    mode = Recorder()
    try:
        with mode, torch.no_grad():
            spec.module(parts)(*inputs)
    except Exception:  # an op without a meta kernel (data-dependent): inputs and outputs only
        return None
    return mode.found


def _largest_max_res(config: Any, names: list[str], parts: Any, res: Resolution, ratio: int) -> int:
    """The largest multiple of ``ratio`` up to ``res.max_res`` at which every component of ``names`` fits (0: none)."""

    def fits(k: int) -> bool:
        side = k * ratio
        top = Resolution(min(res.min_res, side), min(res.opt_res, side), side, res.max_batch)
        return all(_largest(config, n, parts, top).elements <= MAX_TENSOR_ELEMENTS for n in names)

    worst = max(_largest(config, n, parts, res).elements for n in names)
    lo, hi = 0, res.max_res // ratio  # fits(lo) is taken as true, fits(hi) is false
    guess = int(res.max_res * (MAX_TENSOR_ELEMENTS / worst) ** 0.5) // ratio  # activations grow with the area
    for k in (guess, guess + 1):
        if lo < k < hi:
            lo, hi = (k, hi) if fits(k) else (lo, k)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * ratio


def _volume(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
