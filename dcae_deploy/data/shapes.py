"""Deterministic procedural dataset: one coloured shape on a coloured background.

Captions look like ``"a red circle on a blue background"``. Every image is a pure function of
``(seed, index)``: the sample parameters come from ``numpy.random.default_rng([seed, index])`` and
rendering is PIL ``ImageDraw`` at 4x supersampling, box-downscaled for anti-aliasing.

Vocabulary: 8 well-separated colours (used for both foreground and background, always different)
and 4 shapes (circle, square, triangle, star) -> 8 * 4 * 7 = 224 caption triples. A fixed,
seeded ~15% of the triples is held out from training (:func:`heldout_triples`) so evaluation can
use prompts never seen in training; the split keeps every (fg, shape), (fg, bg) and (shape, bg)
pair present in training so the held-out triples are novel *combinations* of seen parts.

Torch is only imported inside :meth:`ShapesDataset.__getitem__`; rendering is numpy + PIL.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

#: Named colours (RGB). Pairwise distance >= ~85 so per-image jitter never changes the nearest name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 215),
    "purple": (145, 45, 185),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

Triple = tuple[str, str, str]  # (fg colour, shape, bg colour)

HELDOUT_FRACTION = 0.15
SPLIT_SEED = 1234

_SUPERSAMPLE = 4
_COLOUR_JITTER = 10  # max +- per channel, uniform
_GRADIENT_MAX = 10.0  # max +- background brightness change across the image
_NOISE_SIGMA = 2.0  # Gaussian pixel noise (whole image)
_MAX_ROTATION = 15.0  # degrees, square / triangle
_STAR_INNER = 0.45  # inner / outer radius of the 5-pointed star
# Circumradius of each shape relative to half its nominal size, so shapes look similarly big.
_RADIUS_SCALE = {"circle": 1.0, "square": 1.25, "triangle": 1.2, "star": 1.15}


@dataclass(frozen=True)
class ShapeSample:
    """Everything needed to render one image (sizes and positions in output pixels)."""

    shape: str
    fg: str
    bg: str
    caption: str
    image_size: int
    center: tuple[float, float]  # (x, y)
    radius: float  # circumradius of the shape
    rotation: float  # degrees, counter-clockwise
    fg_rgb: tuple[int, int, int]  # jittered foreground colour
    bg_rgb: tuple[int, int, int]  # jittered background colour
    gradient: tuple[float, float]  # background brightness change along (x, y), end to end
    noise_seed: int


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(fg: str, shape: str, bg: str) -> str:
    """Caption for a triple, e.g. ``caption_for("red", "circle", "blue")``."""
    _check_triple(fg, shape, bg)
    return f"{_article(fg)} {fg} {shape} on {_article(bg)} {bg} background"


_CAPTION_RE = re.compile(r"^an? (\S+) (\S+) on an? (\S+) background$")


def parse_caption(text: str) -> Triple:
    """Inverse of :func:`caption_for`: ``"a red circle on a blue background"`` -> (fg, shape, bg).

    Case and surrounding whitespace / a trailing period are ignored. Raises ``ValueError`` for
    captions of another form or with unknown colour or shape words.
    """
    norm = " ".join(text.strip().lower().rstrip(".").split())
    m = _CAPTION_RE.match(norm)
    if m is None:
        raise ValueError(
            f"caption {text!r} is not of the form 'a <colour> <shape> on a <colour> background'"
        )
    fg, shape, bg = m.groups()
    _check_triple(fg, shape, bg)
    return fg, shape, bg


def _check_triple(fg: str, shape: str, bg: str) -> None:
    for word, kind in ((fg, "colour"), (bg, "colour"), (shape, "shape")):
        vocab = COLOURS if kind == "colour" else SHAPES
        if word not in vocab:
            raise ValueError(f"unknown {kind} {word!r}; expected one of {sorted(vocab)}")
    if fg == bg:
        raise ValueError(f"foreground and background colour must differ (both {fg!r})")


def all_triples() -> list[Triple]:
    """All valid (fg, shape, bg) triples in a fixed order."""
    return [(f, s, b) for f in COLOURS for s in SHAPES for b in COLOURS if f != b]


@lru_cache(maxsize=None)
def _split(seed: int, fraction: float) -> tuple[tuple[Triple, ...], tuple[Triple, ...]]:
    triples = all_triples()
    order = triples[:]
    random.Random(seed).shuffle(order)
    target = round(fraction * len(triples))
    # Count training triples per pair; hold a triple out only if all its pairs stay covered.
    pairs: dict[tuple, int] = {}

    def keys(t: Triple) -> tuple[tuple, ...]:
        f, s, b = t
        return (("fs", f, s), ("fb", f, b), ("sb", s, b))

    for t in triples:
        for k in keys(t):
            pairs[k] = pairs.get(k, 0) + 1
    held: set[Triple] = set()
    for t in order:
        if len(held) >= target:
            break
        if all(pairs[k] > 1 for k in keys(t)):
            held.add(t)
            for k in keys(t):
                pairs[k] -= 1
    train = tuple(t for t in triples if t not in held)
    return train, tuple(t for t in triples if t in held)


def train_triples(seed: int = SPLIT_SEED, fraction: float = HELDOUT_FRACTION) -> list[Triple]:
    """Triples used for training (fixed order)."""
    return list(_split(seed, fraction)[0])


def heldout_triples(seed: int = SPLIT_SEED, fraction: float = HELDOUT_FRACTION) -> list[Triple]:
    """Triples never used for training (~``fraction`` of all; for evaluation prompts)."""
    return list(_split(seed, fraction)[1])


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    d = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + d, 0, 255))  # type: ignore[return-value]


def make_sample(triple: Triple, rng: np.random.Generator, image_size: int = 128) -> ShapeSample:
    """Draw random rendering parameters (position, size, rotation, jitter) for ``triple``."""
    fg, shape, bg = triple
    caption = caption_for(fg, shape, bg)
    nominal = rng.uniform(0.35, 0.65) * image_size  # nominal size: 35-65% of the side
    radius = 0.5 * nominal * _RADIUS_SCALE[shape]
    margin = radius + 0.04 * image_size  # keep the shape clear of the border (judge uses it)
    cx, cy = (float(rng.uniform(margin, image_size - margin)) for _ in range(2))
    if shape in ("square", "triangle"):
        rotation = float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
    elif shape == "star":
        rotation = float(rng.uniform(-36.0, 36.0))
    else:
        rotation = 0.0
    gradient = tuple(float(g) for g in rng.uniform(-_GRADIENT_MAX, _GRADIENT_MAX, size=2))
    return ShapeSample(
        shape=shape,
        fg=fg,
        bg=bg,
        caption=caption,
        image_size=image_size,
        center=(cx, cy),
        radius=float(radius),
        rotation=rotation,
        fg_rgb=_jitter(COLOURS[fg], rng),
        bg_rgb=_jitter(COLOURS[bg], rng),
        gradient=gradient,  # type: ignore[arg-type]
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _polygon(sample: ShapeSample, scale: float) -> list[tuple[float, float]]:
    cx, cy = sample.center
    r = sample.radius
    if sample.shape == "square":
        angles, radii = [45.0 + 90.0 * k for k in range(4)], [r] * 4
    elif sample.shape == "triangle":
        angles, radii = [90.0 + 120.0 * k for k in range(3)], [r] * 3
    elif sample.shape == "star":
        angles = [90.0 + 36.0 * k for k in range(10)]
        radii = [r if k % 2 == 0 else r * _STAR_INNER for k in range(10)]
    else:
        raise ValueError(f"no polygon for shape {sample.shape!r}")
    pts = []
    for a, rad in zip(angles, radii):
        t = math.radians(a + sample.rotation)
        # Image y grows downward: subtract the sine so angles are counter-clockwise on screen.
        pts.append(((cx + rad * math.cos(t)) * scale, (cy - rad * math.sin(t)) * scale))
    return pts


def shape_mask(sample: ShapeSample) -> np.ndarray:
    """Anti-aliased coverage of the shape, float32 (H, W) in [0, 1]."""
    n, ss = sample.image_size, _SUPERSAMPLE
    big = Image.new("L", (n * ss, n * ss), 0)
    draw = ImageDraw.Draw(big)
    if sample.shape == "circle":
        cx, cy = sample.center
        r = sample.radius
        draw.ellipse([(cx - r) * ss, (cy - r) * ss, (cx + r) * ss, (cy + r) * ss], fill=255)
    else:
        draw.polygon(_polygon(sample, ss), fill=255)
    small = big.resize((n, n), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render_array(sample: ShapeSample) -> np.ndarray:
    """Render ``sample`` to a uint8 (H, W, 3) array."""
    n = sample.image_size
    ramp = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    gx, gy = sample.gradient
    shade = gx * ramp[None, :] + gy * ramp[:, None]  # (H, W) brightness offset
    bg = np.asarray(sample.bg_rgb, dtype=np.float32)[None, None, :] + shade[:, :, None]
    fg = np.asarray(sample.fg_rgb, dtype=np.float32)[None, None, :]
    alpha = shape_mask(sample)[:, :, None]
    img = bg * (1.0 - alpha) + fg * alpha
    noise = np.random.default_rng(sample.noise_seed).normal(0.0, _NOISE_SIGMA, size=img.shape)
    return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)


def render(sample: ShapeSample) -> Image.Image:
    """Render ``sample`` to an RGB PIL image."""
    return Image.fromarray(render_array(sample))


class ShapesDataset:
    """Map-style dataset (torch ``DataLoader`` compatible) rendering samples on the fly.

    Item ``i`` is a pure function of ``(seed, i)``: its triple is drawn uniformly from the
    split's triples and its parameters from :func:`make_sample`. ``split`` is ``"train"``,
    ``"heldout"`` or ``"all"``. ``__getitem__`` returns ``dict(image=float32 tensor (3, H, W)
    in [-1, 1], caption=str)``.
    """

    def __init__(self, length: int, seed: int = 0, image_size: int = 128, split: str = "train"):
        if split == "train":
            triples = train_triples()
        elif split == "heldout":
            triples = heldout_triples()
        elif split == "all":
            triples = all_triples()
        else:
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length = length
        self.seed = seed
        self.image_size = image_size
        self.split = split
        self.triples: list[Triple] = triples

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> ShapeSample:
        """Parameters of item ``index`` (no rendering)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for dataset of length {self.length}")
        rng = np.random.default_rng([self.seed, index])
        triple = self.triples[int(rng.integers(len(self.triples)))]
        return make_sample(triple, rng, self.image_size)

    def __getitem__(self, index: int) -> dict:
        import torch

        s = self.sample(index)
        arr = render_array(s)
        image = torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1.0).contiguous()
        return {"image": image, "caption": s.caption}
