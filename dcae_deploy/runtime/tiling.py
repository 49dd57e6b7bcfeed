"""Tiled decoding: latents larger than the decoder's profile (or a memory budget) in overlapping tiles.

Tiles overlap by ``overlap`` latent cells; in the overlap, each tile's pixels are weighted by a linear
ramp towards its edge and the sum is divided by the summed weights, so seams fade instead of cutting.
Tiles on the border of the image have no ramp on that side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dcae_deploy.errors import DcaeDeployError


@dataclass(frozen=True)
class TileConfig:
    """Tile side and overlap, in latent cells (pixels / compression ratio)."""

    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile < 1 or not 0 <= self.overlap < self.tile:
            raise DcaeDeployError(f"tiles need 0 <= overlap < tile, got tile {self.tile}, overlap {self.overlap} (latent cells)")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``[0, size)`` with tiles of ``tile`` stepping by ``tile - overlap``; the last ends at ``size``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _weights(starts: list[int], tile: int, ratio: int) -> list[np.ndarray]:
    """Per-tile 1-D pixel weights: linear ramps over the overlap with each neighbour, 1 elsewhere."""
    out = []
    n = tile * ratio
    for k, s in enumerate(starts):
        w = np.ones(n, dtype=np.float64)
        if k > 0:  # overlap with the previous tile, at this tile's start
            ov = (starts[k - 1] + tile - s) * ratio
            if ov > 0:
                w[:ov] = np.minimum(w[:ov], (np.arange(ov) + 0.5) / ov)
        if k + 1 < len(starts):  # overlap with the next tile, at this tile's end
            ov = (s + tile - starts[k + 1]) * ratio
            if ov > 0:
                w[n - ov:] = np.minimum(w[n - ov:], (ov - np.arange(ov) - 0.5) / ov)
        out.append(w)
    return out


def decode_tiled(
    decode: Callable[[np.ndarray], np.ndarray], latent: np.ndarray, ratio: int, config: TileConfig
) -> np.ndarray:
    """``decode`` (latent (B, C, h, w) -> image (B, 3, h*ratio, w*ratio)) applied tile by tile and blended."""
    b, _, h, w = latent.shape
    th, tw = min(config.tile, h), min(config.tile, w)
    rows = tile_starts(h, th, min(config.overlap, th - 1))
    cols = tile_starts(w, tw, min(config.overlap, tw - 1))
    if len(rows) == 1 and len(cols) == 1:
        return decode(latent)
    wy, wx = _weights(rows, th, ratio), _weights(cols, tw, ratio)
    image = weight = None
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            part = np.asarray(decode(latent[:, :, y:y + th, x:x + tw]), dtype=np.float64)
            if image is None:
                image = np.zeros((b, part.shape[1], h * ratio, w * ratio))
                weight = np.zeros((h * ratio, w * ratio))
            mask = wy[i][:, None] * wx[j][None, :]
            ys, xs = slice(y * ratio, (y + th) * ratio), slice(x * ratio, (x + tw) * ratio)
            image[:, :, ys, xs] += part * mask
            weight[ys, xs] += mask
    return (image / weight).astype(np.float32)
