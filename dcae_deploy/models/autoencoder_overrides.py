"""Custom DC-AE architectures: a JSON config file, or the reference's override syntax on a registered variant.

The reference (efficientvit ``dc_ae.py``) describes a DC-AE as an OmegaConf dot-list over its config
dataclasses, for example::

    latent_channels=32 encoder.block_type=[ResBlock,ResBlock,EViT_GLU] encoder.width_list=[64,128,256]
    encoder.depth_list=[0,2,2] decoder.norm=[bn2d,bn2d,trms2d] decoder.act=relu

:func:`apply_overrides` reads that syntax on top of a registered variant (``--variant f32c32-in --override
"..."``): each variant is first shown in the reference's terms (:func:`reference_view`), the overrides replace
keys there, and the result is converted back to our :class:`AutoencoderConfig` with every key checked. Names
follow the reference: blocks ``ResBlock``, ``EViT_GLU`` (EfficientViT block) and ``EViTS5_GLU`` (with the
5x5 multi-scale aggregation of the SANA autoencoders), norms ``bn2d`` / ``trms2d``, activations ``relu`` /
``silu``, downsampling ``ConvPixelUnshuffle`` / ``Conv``, upsampling ``ConvPixelShuffle`` / ``InterpolateConv``.
Where the reference allows one name for every stage (``block_type``, and the decoder's ``norm`` and ``act``),
a scalar is broadcast; ``width_list`` and ``depth_list`` are always lists and set the number of stages.
Reference options that our model (like diffusers' ``AutoencoderDC``) builds only one way are accepted at that
value and refused at any other, with the value allowed.

:func:`resolve_autoencoder_config` is what the command lines call for ``--variant NAME_OR_JSON [--override]``.
This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.models.autoencoder_family import AutoencoderConfig, DecoderConfig, EncoderConfig

__all__ = ["OverrideError", "apply_overrides", "parse_overrides", "reference_view", "resolve_autoencoder_config"]


class OverrideError(DcaeDeployError, ValueError):
    """An override or config file that does not describe a buildable DC-AE (the message names the key)."""


BLOCKS = {"ResBlock": ("ResBlock", ()), "EViT_GLU": ("EfficientViTBlock", ()), "EViTS5_GLU": ("EfficientViTBlock", (5,))}
NORMS = {"bn2d": "batch_norm", "trms2d": "rms_norm"}
ACTS = {"relu": "relu", "silu": "silu"}
DOWNSAMPLES = {"ConvPixelUnshuffle": "pixel_unshuffle", "Conv": "conv"}
UPSAMPLES = {"ConvPixelShuffle": "pixel_shuffle", "InterpolateConv": "interpolate"}

#: reference options our model builds one way only: key -> the one value it accepts (None is the reference's None)
FIXED = {
    "encoder.norm": "trms2d",
    "encoder.act": "silu",
    "encoder.downsample_match_channel": True,
    "encoder.downsample_shortcut": "averaging",
    "encoder.out_norm": None,
    "encoder.out_act": None,
    "encoder.double_latent": False,
    "decoder.upsample_match_channel": True,
    "decoder.upsample_shortcut": "duplicating",
    "decoder.out_norm": "trms2d",
    "use_quant_conv": False,
}
PER_STAGE = ("encoder.width_list", "encoder.depth_list", "encoder.block_type", "decoder.width_list",
             "decoder.depth_list", "decoder.block_type", "decoder.norm", "decoder.act")
BROADCAST = ("encoder.block_type", "decoder.block_type", "decoder.norm", "decoder.act")  # a name for every stage
KEYS = ("name", "in_channels", "latent_channels", "scaling_factor", "attention_head_dim", *PER_STAGE,
        "encoder.downsample_block_type", "encoder.out_shortcut", "decoder.in_shortcut", "decoder.upsample_block_type",
        "decoder.out_act", *FIXED)


# --- parsing ---------------------------------------------------------------------------------------------


def parse_overrides(text: str) -> dict[str, Any]:
    """``"a=1 encoder.width_list=[64, 128]"`` -> ``{"a": 1, "encoder.width_list": [64, 128]}`` (YAML-like scalars:
    ints, floats, true/false, null/None, else strings; one level of ``[...]`` lists, spaces allowed inside)."""
    items: dict[str, Any] = {}
    for token in _split_tokens(text):
        key, sep, raw = token.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OverrideError(f"override {token!r} is not KEY=VALUE (e.g. encoder.width_list=[64,128,256])")
        if key in items:
            raise OverrideError(f"override key {key!r} is given twice")
        items[key] = _parse_value(raw.strip(), key)
    return items


def _split_tokens(text: str) -> list[str]:
    tokens, depth, current = [], 0, ""
    for ch in text.strip():
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            raise OverrideError(f"unbalanced ']' in override {text!r}")
        if ch.isspace() and depth == 0:
            if current:
                tokens.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise OverrideError(f"unclosed '[' in override {text!r}")
    return tokens + ([current] if current else [])


def _parse_value(raw: str, key: str) -> Any:
    if raw.startswith("["):
        if not raw.endswith("]") or "[" in raw[1:]:
            raise OverrideError(f"{key}: {raw!r} is not a flat list such as [64,128,256]")
        inner = raw[1:-1].strip()
        return [_scalar(v.strip()) for v in inner.split(",")] if inner else []
    return _scalar(raw)


def _scalar(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("null", "none", "~", ""):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return raw.strip("'\"")


# --- our config <-> the reference's terms -------------------------------------------------------------------


def _invert(table: Mapping[str, Any]) -> dict[Any, str]:
    return {v: k for k, v in table.items()}


def reference_view(config: AutoencoderConfig) -> dict[str, Any]:
    """``config`` as the reference's dot-keys (stage-wise lists), the form overrides apply to."""
    enc, dec = config.encoder, config.decoder
    blocks = _invert(BLOCKS)
    view: dict[str, Any] = {
        "name": config.name,
        "in_channels": config.in_channels,
        "latent_channels": config.latent_channels,
        "scaling_factor": config.scaling_factor,
        "attention_head_dim": config.attention_head_dim,
        "encoder.width_list": list(enc.widths),
        "encoder.depth_list": list(enc.depths),
        "encoder.block_type": [blocks[(b, tuple(s))] for b, s in zip(enc.block_types, enc.qkv_multiscales)],
        "encoder.downsample_block_type": _invert(DOWNSAMPLES)[enc.downsample],
        "encoder.out_shortcut": "averaging" if enc.out_shortcut else None,
        "decoder.width_list": list(dec.widths),
        "decoder.depth_list": list(dec.depths),
        "decoder.block_type": [blocks[(b, tuple(s))] for b, s in zip(dec.block_types, dec.qkv_multiscales)],
        "decoder.norm": [_invert(NORMS)[n] for n in dec.norms],
        "decoder.act": list(dec.acts),
        "decoder.upsample_block_type": _invert(UPSAMPLES)[dec.upsample],
        "decoder.in_shortcut": "duplicating" if dec.in_shortcut else None,
        "decoder.out_act": dec.out_act,
    }
    return {**view, **FIXED}


def apply_overrides(base: AutoencoderConfig, overrides: str | Mapping[str, Any], name: str | None = None) -> AutoencoderConfig:
    """``base`` with the reference-syntax ``overrides`` applied; every key and value checked.

    The result is named ``name``, else the override's ``name=``, else ``<base>+custom``; its scaling factor is
    the base variant's unless overridden (measure the new one: 1 / RMS of its latents).

    Raises:
        OverrideError: an unknown key, a value outside the allowed names, per-stage lists of different lengths,
            a width that the latent channels or the attention heads do not divide, a stage count below 2.
    """
    items = parse_overrides(overrides) if isinstance(overrides, str) else dict(overrides)
    unknown = sorted(set(items) - set(KEYS))
    if unknown:
        raise OverrideError(f"unknown override key(s) {', '.join(unknown)}; allowed keys: {', '.join(KEYS)}")
    view = reference_view(base)
    view["name"] = name or items.pop("name", None) or f"{base.name}+custom"
    view.update(items)
    return from_reference(view, description=f"{base.name} with overrides: " + " ".join(
        f"{k}={_show(v)}" for k, v in items.items()))


def _show(value: Any) -> str:
    return f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)


def from_reference(view: Mapping[str, Any], description: str = "") -> AutoencoderConfig:
    """Our :class:`AutoencoderConfig` from the reference's dot-keys (see :func:`reference_view`)."""
    for key, allowed in FIXED.items():
        if key in view and view[key] != allowed:
            raise OverrideError(f"{key}={view[key]!r} is not supported: only {allowed!r} (every released DC-AE and "
                                "diffusers' AutoencoderDC build it that way)")
    latent = _integer(view, "latent_channels", minimum=1)
    head_dim = _integer(view, "attention_head_dim", minimum=1)
    stages = {}
    for side in ("encoder", "decoder"):
        widths = _int_list(view, f"{side}.width_list", minimum=1)
        if len(widths) < 2:
            raise OverrideError(f"{side}.width_list={_show(widths)}: a DC-AE needs at least 2 stages "
                                "(compression ratio 2 ** (stages - 1))")
        depths = _int_list(view, f"{side}.depth_list", minimum=0, length=len(widths), length_of=f"{side}.width_list")
        stages[side] = (widths, depths)
    n = len(stages["encoder"][0])
    if len(stages["decoder"][0]) != n:
        raise OverrideError(f"encoder.width_list has {n} stages and decoder.width_list {len(stages['decoder'][0])}: "
                            "both sides need the same number (the compression ratio)")
    per_stage: dict[str, list] = {}
    for key, table in (("encoder.block_type", BLOCKS), ("decoder.block_type", BLOCKS), ("decoder.norm", NORMS),
                       ("decoder.act", ACTS)):
        per_stage[key] = _names(view, key, table, n)
    for side, (widths, depths) in stages.items():
        if widths[-1] % latent:
            raise OverrideError(f"{side}.width_list={_show(widths)}: the last width {widths[-1]} must be a multiple of "
                                f"latent_channels={latent} (the {side}'s shortcut groups channels)")
        for i, block in enumerate(per_stage[f"{side}.block_type"]):
            if BLOCKS[block][0] == "EfficientViTBlock" and depths[i] and widths[i] % head_dim:
                raise OverrideError(f"{side}.width_list={_show(widths)}: stage {i} has {block} blocks, whose width "
                                    f"{widths[i]} must be a multiple of the attention head dim {head_dim}")
        if depths[0] == 0 and n < 2:
            raise OverrideError(f"{side}.depth_list: an empty first stage needs a second stage")
    enc_blocks = [BLOCKS[b] for b in per_stage["encoder.block_type"]]
    dec_blocks = [BLOCKS[b] for b in per_stage["decoder.block_type"]]
    try:
        encoder = EncoderConfig(
            widths=tuple(stages["encoder"][0]), depths=tuple(stages["encoder"][1]),
            block_types=tuple(b for b, _ in enc_blocks), qkv_multiscales=tuple(s for _, s in enc_blocks),
            downsample=_lookup(view, "encoder.downsample_block_type", DOWNSAMPLES),
            out_shortcut=_switch(view, "encoder.out_shortcut", "averaging"),
        )
        decoder = DecoderConfig(
            widths=tuple(stages["decoder"][0]), depths=tuple(stages["decoder"][1]),
            block_types=tuple(b for b, _ in dec_blocks), qkv_multiscales=tuple(s for _, s in dec_blocks),
            norms=tuple(NORMS[v] for v in per_stage["decoder.norm"]),
            acts=tuple(ACTS[v] for v in per_stage["decoder.act"]),
            upsample=_lookup(view, "decoder.upsample_block_type", UPSAMPLES),
            in_shortcut=_switch(view, "decoder.in_shortcut", "duplicating"),
            out_act=_lookup(view, "decoder.out_act", ACTS),
        )
        scaling = view.get("scaling_factor")
        if not isinstance(scaling, (int, float)) or isinstance(scaling, bool) or scaling <= 0:
            raise OverrideError(f"scaling_factor={scaling!r} must be a positive number (1 / RMS of the latents)")
        return AutoencoderConfig(
            name=str(view["name"]), encoder=encoder, decoder=decoder, scaling_factor=float(scaling),
            latent_channels=latent, in_channels=_integer(view, "in_channels", minimum=1),
            attention_head_dim=head_dim, description=description,
        )
    except ValueError as exc:  # the config classes' own checks
        if isinstance(exc, OverrideError):
            raise
        raise OverrideError(f"the overrides do not describe a buildable DC-AE: {exc}") from exc


def _integer(view: Mapping[str, Any], key: str, minimum: int) -> int:
    value = view.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise OverrideError(f"{key}={value!r} must be an integer >= {minimum}")
    return value


def _int_list(view, key: str, minimum: int, length: int | None = None, length_of: str = "") -> list[int]:
    value = view.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                                              for v in value):
        raise OverrideError(f"{key}={_show(value) if isinstance(value, list) else value!r} must be a list of "
                            f"integers >= {minimum}, one per stage, e.g. {key}=[0,2,2]")
    if length is not None and len(value) != length:
        raise OverrideError(f"{key} has {len(value)} entries but {length_of} has {length}: give one per stage")
    return value


def _names(view, key: str, table: Mapping[str, Any], stages: int) -> list[str]:
    value = view.get(key)
    values = [value] * stages if not isinstance(value, list) and key in BROADCAST else value
    if not isinstance(values, list):
        raise OverrideError(f"{key}={value!r} must be a list with one entry per stage")
    if len(values) != stages:
        raise OverrideError(f"{key} has {len(values)} entries but the autoencoder has {stages} stages (width_list): "
                            f"give one per stage{', or one name for all' if key in BROADCAST else ''}")
    bad = sorted({str(v) for v in values if v not in table})
    if bad:
        raise OverrideError(f"{key}: unknown {', '.join(bad)}; allowed: {', '.join(table)}")
    return values


def _lookup(view, key: str, table: Mapping[str, Any]) -> Any:
    value = view.get(key)
    if value not in table:
        raise OverrideError(f"{key}={value!r} is not allowed; allowed: {', '.join(table)}")
    return table[value]


def _switch(view, key: str, on: str) -> bool:
    value = view.get(key)
    if value not in (on, None):
        raise OverrideError(f"{key}={value!r} is not allowed; allowed: {on}, null")
    return value == on


# --- --variant NAME | FILE.json, --override ----------------------------------------------------------------


def read_config_file(path: str | Path) -> AutoencoderConfig:
    """An autoencoder config from JSON: our ``config.json`` (checkpoint or export, ``{"config": {...}}`` or the
    bare dict of :meth:`AutoencoderConfig.to_dict`) or a diffusers ``AutoencoderDC`` ``config.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OverrideError(f"cannot read the config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise OverrideError(f"{path} must hold a JSON object (an autoencoder config)")
    readers: list[tuple[Callable[[dict], bool], Callable[[dict], AutoencoderConfig]]] = [
        (lambda d: isinstance(d.get("config"), dict), lambda d: AutoencoderConfig.from_dict(d["config"])),
        (lambda d: "encoder" in d and "decoder" in d, AutoencoderConfig.from_dict),
        (lambda d: "encoder_block_out_channels" in d,
         lambda d: AutoencoderConfig.from_diffusers_config(d, name=path.stem)),
    ]
    for accepts, read in readers:
        if accepts(data):
            try:
                return read(data)
            except (TypeError, ValueError, KeyError) as exc:
                raise OverrideError(f"{path} is not a valid autoencoder config: {exc}") from exc
    raise OverrideError(f"{path} is not an autoencoder config: expected our config.json (a 'config' object, or "
                        "'encoder' and 'decoder' objects) or a diffusers AutoencoderDC config.json")


def resolve_autoencoder_config(variant: str, override: str | None = None) -> AutoencoderConfig:
    """``--variant`` (a registered name, or a ``.json`` config file) with ``--override`` applied."""
    from dcae_deploy.registry import get_variant

    looks_like_file = variant.endswith(".json") or "/" in variant or Path(variant).is_file()
    base = read_config_file(variant) if looks_like_file else get_variant(variant, kind="autoencoder")
    config = apply_overrides(base, override) if override else base
    check_buildable(config)
    return config


def check_buildable(config: AutoencoderConfig) -> None:
    """Build and run ``config`` on the meta device (no memory, no compute): shape rules the config checks do not know
    (the pixel-shuffle and shortcut channel groupings) fail here, as an :class:`OverrideError`."""
    import torch

    from dcae_deploy.models.autoencoder import build_autoencoder

    try:
        model = build_autoencoder(config, device=torch.device("meta"))
        side = config.spatial_compression_ratio
        with torch.no_grad():  # shapes only: meta tensors run every shape check of a real forward
            model.decode(model.encode(torch.empty(1, config.in_channels, side, side, device="meta")))
    except (ValueError, RuntimeError, AssertionError, ZeroDivisionError) as exc:
        raise OverrideError(f"{config.name}: the widths do not fit DC-AE's resampling blocks ({exc}); adjacent "
                            "stage widths must split into each other's pixel-shuffle channel groups (in the released DC-AEs "
                            "each width is 1x or 2x the one before)") from exc
