"""Calibration inputs of quantized exports: real inputs for every component, computed with the PyTorch fp32 parts.

* ``encoder``: real images, resized (shorter side) and centre-cropped to the profile's optimum side, in [-1, 1].
  ``--calibration-images`` names them: a folder of images, ``photos`` (the scikit-image photographs: astronaut,
  coffee, chelsea, ...), ``shapes`` (the demo's procedural shapes, :mod:`dcae_deploy.data.shapes`), or ``auto``
  (the default: shapes for the demo model, which was trained on them, else the photographs when scikit-image is
  installed, else the shapes).
* ``decoder`` / ``decoder_global``: the latents of those images (the PyTorch encoder), and for a pipeline also the
  final latents of its sampling trajectories; ``decoder_local``: ``decoder_global``'s features of those latents.
* ``denoiser``: its inputs recorded along real sampling trajectories of the pipeline (its own sampler, schedule
  and guidance, at the optimum side; text: captions through the PyTorch text encoder, class: spread labels). A
  bare denoiser has no text encoder or sampler to make trajectories with: it is calibrated on the gate's seeded
  random inputs, and the manifest says so.
* ``text_encoder``: tokenized captions (the demo's shape captions, or generic photographic captions).

The last ``held_out`` samples of each component are not used for calibration: the quantized graph's parity gate
compares them with PyTorch fp32 (:mod:`dcae_deploy.export.quantize`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.family import image_ratio
from dcae_deploy.specs import ComponentSpec, module_call

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SOURCES = ("auto", "photos", "shapes")
DEFAULT_SAMPLES = 10  # images; the last 2 are held out for the gate
MAX_TRAJECTORY_STEPS = 10  # recorded denoiser steps per trajectory (the pipeline's own schedule at this many steps)
TRAJECTORIES = 3  # the last one is held out
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
          "stereo_motorcycle", "colorwheel", "camera", "brick", "grass", "gravel", "coins", "moon")
CAPTIONS = (
    "a photograph of an astronaut riding a horse", "a cup of coffee on a wooden table", "a cat sitting on a windowsill",
    "a red rocket on a launch pad at dawn", "a mountain lake at sunset, highly detailed",
    "a portrait of an old man with a white beard", "a city street at night in the rain", "a bowl of fresh fruit",
    "a lighthouse on a rocky coast", "a field of sunflowers under a blue sky",
)
SHAPES_VARIANTS = ("demo",)  # trained on the procedural shapes: their own images and captions calibrate them


Feeds = dict[str, np.ndarray]


@dataclass
class CalibrationSet:
    """Per component: the calibration feeds and the held-out feeds (named numpy inputs, the graph's dtypes)."""

    feeds: dict[str, list[Feeds]] = field(default_factory=dict)
    held_out: dict[str, list[Feeds]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # component -> where its inputs came from
    images: str = ""

    def add(self, component: str, samples: list[Feeds], held_out: int, note: str) -> None:
        if len(samples) <= held_out:
            raise DcaeDeployError(f"{component}: {len(samples)} calibration samples leave none after the {held_out} "
                                  "held out for the gate; pass more (--calibration-samples)")
        self.feeds[component] = samples[: len(samples) - held_out]
        self.held_out[component] = samples[len(samples) - held_out:]
        self.notes[component] = note

    def describe(self) -> dict[str, Any]:
        """The manifest's record of the calibration."""
        return {
            "images": self.images,
            "components": {name: {"samples": len(self.feeds[name]), "held_out": len(self.held_out[name]),
                                  "inputs": self.notes[name]} for name in self.feeds},
        }


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def check_calibration_images(source: str | Path | None) -> str:
    """The image source (``auto``/``photos``/``shapes`` or a folder path), checked before any work: a folder that is
    missing, empty or holds no readable image is refused here."""
    source = "auto" if source is None else str(source)
    if source in SOURCES:
        if source == "photos":
            _import_skimage_data()
        return source
    folder = Path(source)
    if not folder.is_dir():
        raise DcaeDeployError(f"--calibration-images {source}: no such folder (give a folder of images, or one of "
                              f"{', '.join(SOURCES)})")
    files = image_files(folder)
    if not files:
        raise DcaeDeployError(f"--calibration-images {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add real "
                              "photographs like those the model will see, or pass --calibration-images photos")
    for path in files:
        _check_readable(path)
    return str(folder)


def _check_readable(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DcaeDeployError(f"--calibration-images: cannot read {path} ({exc}); remove it or replace it with a "
                              "readable image") from exc


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_source(source: str, variant: str) -> str:
    if source != "auto":
        return source
    if variant in SHAPES_VARIANTS:
        return "shapes"
    try:
        _import_skimage_data()
        return "photos"
    except DcaeDeployError:
        return "shapes"


def load_images(source: str, side: int, count: int) -> list[np.ndarray]:
    """``count`` images (1, 3, side, side) float32 in [-1, 1] from ``source`` (a folder, ``photos`` or ``shapes``)."""
    from PIL import Image, UnidentifiedImageError

    if source == "shapes":
        from dcae_deploy.data.shapes import all_triples, make_sample, render

        triples = all_triples()
        pictures = [render(make_sample(triples[(i * 37) % len(triples)], np.random.default_rng([7, i]), side))
                    for i in range(count)]
    elif source == "photos":
        data = _import_skimage_data()
        pictures = []
        for name in (PHOTOS * (count // len(PHOTOS) + 1))[:count]:
            array = getattr(data, name)()
            array = array[0] if isinstance(array, tuple) else array
            pictures.append(Image.fromarray(array).convert("RGB"))
    else:
        pictures = []
        for path in image_files(Path(source))[:count]:
            try:
                with Image.open(path) as image:
                    pictures.append(image.convert("RGB"))
            except (OSError, UnidentifiedImageError) as exc:
                raise DcaeDeployError(f"--calibration-images: cannot read {path} ({exc}); remove it or replace it "
                                      "with a readable image") from exc
        if len(pictures) < count:
            log(f"note: {source} holds {len(pictures)} images; calibrating on those ({count} asked for)")
    return [_to_array(_centre_crop(p, side)) for p in pictures]


def _import_skimage_data():
    try:
        import skimage.data as data
    except ImportError as exc:
        raise DcaeDeployError("--calibration-images photos needs scikit-image (pip install scikit-image): or pass a "
                              "folder of images, or --calibration-images shapes") from exc
    return data


def _centre_crop(image, side: int):
    from PIL import Image

    scale = side / min(image.size)
    size = (max(side, round(image.size[0] * scale)), max(side, round(image.size[1] * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return image.crop((left, top, left + side, top + side))


def _to_array(image) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


# ---------------------------------------------------------------------------------------------
# The calibration set of an export
# ---------------------------------------------------------------------------------------------


def build_calibration(config, parts, specs: dict[str, ComponentSpec], side: int, source: str, count: int,
                      held_out: int) -> CalibrationSet:
    """Real inputs for every component in ``specs`` (see the module docstring), computed with the fp32 ``parts``."""
    unknown = [name for name in specs if name not in INPUTS]
    if unknown:
        raise DcaeDeployError(f"no calibration inputs are defined for {', '.join(unknown)}: export those components "
                              f"with a float precision (fp32, fp16, bf16)")
    source = resolve_source(source, config.name)
    calib = CalibrationSet(images=source)
    context = _Context(config, parts, specs, source, side, image_ratio(config), count, held_out)
    for name in specs:
        samples, note = INPUTS[name](context)
        calib.add(name, samples, held_out if name != "denoiser" else context.held_out_steps, note)
    log("calibration: " + "; ".join(f"{n}: {len(calib.feeds[n])} + {len(calib.held_out[n])} held out ({calib.notes[n]})"
                                    for n in calib.feeds))
    return calib


@dataclass
class _Context:
    config: Any
    parts: Any
    specs: dict[str, ComponentSpec]
    source: str
    side: int
    ratio: int
    count: int
    held_out: int
    cache: dict[str, Any] = field(default_factory=dict)
    held_out_steps: int = 0

    def call(self, component: str, feeds: Feeds) -> np.ndarray:
        return torch_output(self.config, component, self.parts, feeds)

    def images(self) -> list[np.ndarray]:
        if "images" not in self.cache:
            if not self.side:
                raise DcaeDeployError("calibration needs an image side: this export has no image-sized component")
            log(f"calibration: {self.count} images from {self.source} at {self.side} px")
            self.cache["images"] = load_images(self.source, self.side, self.count)
        return self.cache["images"]

    def latents(self) -> tuple[list[np.ndarray], str]:
        """Raw latents of the images (the encoder's), then the trajectories' final latents for a pipeline."""
        if "latents" not in self.cache:
            ae = getattr(self.parts, "autoencoder", None)
            latents, note = [], ""
            if ae is not None and getattr(ae, "encoder", None) is not None:
                with torch.no_grad():
                    latents = [ae.encode(torch.from_numpy(x)).float().numpy() for x in self.images()]
                note = f"latents of {len(latents)} {self.source} images"
            if "denoiser" in self.specs:
                finals = [t[1] for t in self.trajectories()]
                scale = getattr(ae.config, "scaling_factor", 1.0) if ae is not None else 1.0
                latents = [f / scale for f in finals[:-1]] + latents + [finals[-1] / scale]
                note += f"{' + ' if note else ''}{len(finals)} sampled latents"
            if not latents:
                raise DcaeDeployError("the decoder's calibration needs latents: load the autoencoder with its encoder")
            self.cache["latents"] = (latents, note)
        return self.cache["latents"]

    def trajectories(self) -> list[tuple[list[Feeds], np.ndarray]]:
        """Per trajectory: the denoiser feeds of each step and the final (scaled) latent."""
        if "trajectories" not in self.cache:
            conditioning = getattr(self.config, "conditioning", None)
            if conditioning not in TRAJECTORY_RECORDERS:
                raise DcaeDeployError(f"{self.config.name} has no sampler to record trajectories with")
            self.cache["trajectories"] = TRAJECTORY_RECORDERS[conditioning](self)
        return self.cache["trajectories"]


def torch_output(config, component: str, parts, feeds: Feeds) -> np.ndarray:
    """PyTorch fp32's output of ``component`` on named numpy inputs."""
    _, fn = module_call(config, component, parts)
    with torch.no_grad():
        return fn({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}).float().numpy()


def _encoder_inputs(c: _Context) -> tuple[list[Feeds], str]:
    return [{"image": x} for x in c.images()], f"{len(c.images())} {c.source} images at {c.side} px"


def _decoder_inputs(c: _Context) -> tuple[list[Feeds], str]:
    latents, note = c.latents()
    return [{"latent": z.astype(np.float32)} for z in latents], note


def _decoder_local_inputs(c: _Context) -> tuple[list[Feeds], str]:
    latents, note = c.latents()
    return [{"features": c.call("decoder_global", {"latent": z})} for z in latents], f"decoder_global features of {note}"


def _denoiser_inputs(c: _Context) -> tuple[list[Feeds], str]:
    if getattr(c.config, "conditioning", None) not in TRAJECTORY_RECORDERS:  # a bare denoiser
        spec = c.specs["denoiser"]
        point = {name: (max(opt, 2) if name == "batch" else opt) for name, (_, opt, _) in spec.dims.items()}
        samples = [{t.name: x.numpy() for t, x in zip(spec.inputs, spec.sample_inputs(point, seed=1000 + i))}
                   for i in range(c.count)]
        c.held_out_steps = c.held_out
        log("WARNING: a bare denoiser has no text encoder or sampler: calibrating on seeded random inputs. Export the "
            "pipeline (its text encoder and sampler record real trajectories) for a calibration that matches use")
        return samples, "seeded random inputs (a bare denoiser: no trajectories)"
    runs = c.trajectories()
    c.held_out_steps = len(runs[-1][0])
    steps = [feeds for run, _ in runs for feeds in run]
    note = c.cache.get("trajectory_note")
    return steps, (f"{len(runs)} sampling trajectories of {len(runs[0][0])} steps at {c.side} px"
                   + (f", {note}" if note else ""))


def _text_encoder_inputs(c: _Context) -> tuple[list[Feeds], str]:
    captions = _captions(c)
    ids, mask = c.parts.tokenizer(list(captions))
    return ([{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]} for i in range(len(captions))],
            f"{len(captions)} {'shape' if c.source == 'shapes' else 'photographic'} captions")


def _captions(c: _Context) -> list[str]:
    count = max(c.count, c.held_out + 2)
    if c.source == "shapes":
        from dcae_deploy.data.shapes import caption_for, train_triples

        triples = train_triples()
        return [caption_for(*triples[(i * 29) % len(triples)]) for i in range(count)]
    return [CAPTIONS[i % len(CAPTIONS)] for i in range(count)]


def _text_trajectories(c: _Context) -> list[tuple[list[Feeds], np.ndarray]]:
    """CFG flow-matching trajectories of the pipeline's default sampler through the PyTorch text encoder and
    denoiser: negative (empty, no instruction) and positive rows in one batch, as the runtime runs them."""
    from dcae_deploy.sampling import SAMPLERS, cfg_batch, cfg_combine, flow_steps
    from dcae_deploy.tokenizer import select_positions

    defaults = c.config.sampling
    steps = min(defaults.steps, MAX_TRAJECTORY_STEPS)
    channels = c.specs["denoiser"].inputs[0].shape[1]
    tokenizer = c.parts.tokenizer

    def encode(texts, instruction=True):
        ids, mask = tokenizer(list(texts), instruction=instruction)
        emb = c.call("text_encoder", {"input_ids": ids, "attention_mask": mask})
        return emb, select_positions(mask, emb.shape[1]).astype(np.int64)

    if getattr(c.parts, "text_encoder", None) is None:  # the denoiser exported alone: no captions to encode
        spec = c.specs["denoiser"]
        point = {name: (2 if name == "batch" else opt) for name, (_, opt, _) in spec.dims.items()}

        def conditioning(i):
            sampled = dict(zip(spec.input_names, spec.sample_inputs(point, seed=2000 + i)))
            return {k: sampled[k].numpy() for k in ("encoder_hidden_states", "encoder_attention_mask")}
        c.cache["trajectory_note"] = "random caption embeddings (the text encoder is not part of this export)"
    else:
        negative, negative_mask = encode([""], instruction=False)

        def conditioning(i):
            emb, mask = encode([_captions(c)[i]])
            return {"encoder_hidden_states": np.concatenate([negative, emb]).astype(np.float32),
                    "encoder_attention_mask": np.concatenate([negative_mask, mask])}
    scale = c.parts.denoiser.config.timestep_scale if hasattr(c.parts.denoiser, "config") else 1.0
    runs = []
    schedule = SAMPLERS[defaults.sampler].schedule(steps, shift=defaults.flow_shift)
    for i in range(TRAJECTORIES):
        states = conditioning(i)
        side = c.side // c.ratio
        noise = np.random.default_rng([11, i]).standard_normal((1, channels, side, side)).astype(np.float32)
        recorded: list[Feeds] = []

        def velocity(x, t):
            feeds = {"latent": cfg_batch(x).astype(np.float32), "timestep": np.full(2, t * scale, np.float32),
                     **states}
            recorded.append(feeds)
            return cfg_combine(c.call("denoiser", feeds), defaults.guidance_scale)

        latent = noise
        for _, _, latent in flow_steps(velocity, noise, schedule, defaults.sampler):
            pass
        runs.append((recorded, latent))
    return runs


def _class_trajectories(c: _Context) -> list[tuple[list[Feeds], np.ndarray]]:
    """Trajectories of the pipeline's own class-conditional sampler (guidance as its default), spread labels."""
    from dcae_deploy.diffusion_samplers import CLASS_SAMPLERS, sample_class_conditional

    defaults = c.config.sampling
    sampler = CLASS_SAMPLERS[defaults.sampler]
    steps = None if sampler.default_steps is None else min(defaults.steps, MAX_TRAJECTORY_STEPS)
    denoiser = c.parts.denoiser.config
    spec = c.specs["denoiser"]
    _, channels, height, width = spec.inputs[0].concrete({**{n: d[1] for n, d in spec.dims.items()}, "batch": 1})
    null = denoiser.null_class if denoiser.null_class is not None else denoiser.num_classes
    runs = []
    for i in range(TRAJECTORIES):
        label = (i * 389 + 207) % denoiser.num_classes
        recorded: list[Feeds] = []

        def raw_model(x, t, y):
            feeds = {"latent": x.astype(np.float32), "timestep": t.astype(np.float32), "class_labels": y.astype(np.int64)}
            recorded.append(feeds)
            return c.call("denoiser", feeds)

        noise = np.random.default_rng([13, i]).standard_normal((1, channels, height, width)).astype(np.float32)
        latent = sample_class_conditional(defaults.sampler, raw_model, noise, [label], defaults.guidance_scale,
                                          steps=steps, rng=np.random.default_rng([17, i]), null_label=null)
        runs.append((recorded, np.asarray(latent, dtype=np.float32)))
    return runs


#: component -> (context -> (samples, where they came from))
INPUTS: dict[str, Callable[[_Context], tuple[list[Feeds], str]]] = {
    "encoder": _encoder_inputs,
    "decoder": _decoder_inputs,
    "decoder_global": _decoder_inputs,
    "decoder_local": _decoder_local_inputs,
    "denoiser": _denoiser_inputs,
    "text_encoder": _text_encoder_inputs,
}
#: a pipeline's ``conditioning`` -> its trajectory recorder
TRAJECTORY_RECORDERS: dict[str, Callable[[_Context], list[tuple[list[Feeds], np.ndarray]]]] = {
    "text": _text_trajectories,
    "class": _class_trajectories,
}
