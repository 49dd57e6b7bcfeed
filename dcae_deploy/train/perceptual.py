"""LPIPS (VGG16) perceptual distance from *local* weight files only; nothing is downloaded.

LPIPS needs two sets of weights: the ImageNet VGG16 convolutions (torchvision naming,
``features.<i>.weight/bias``) and LPIPS' learned per-channel layer weights (``lin<k>.model.1.weight``,
the ``vgg.pth`` of the ``lpips`` package). Pass the file(s) holding them (``.safetensors`` or weights-only
``.pth``; one file with both sets or two files). Without such files the perceptual term is off:
random VGG weights would give a meaningless "perceptual" loss.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from dcae_deploy.checkpoints import read_state_dict
from dcae_deploy.errors import CheckpointError

# torchvision vgg16 "features": conv widths with "M" = 2x2 max-pool; LPIPS taps relu1_2 ... relu5_3.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # indices of the ReLUs whose outputs LPIPS compares
_TAP_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(width, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            width = int(v)
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS-VGG distance per sample, inputs in [-1, 1]; frozen, eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike]) -> LPIPS:
        """Load VGG16 ``features.*`` and LPIPS ``lin<k>.model.1.weight`` tensors from local files.

        Raises:
            CheckpointError: a file is unreadable, or the tensors needed are missing or misshapen.
        """
        state: dict[str, torch.Tensor] = {}
        for p in paths:
            state.update(read_state_dict(p))
        model = cls()
        wanted = {f"features.{k}": k for k in model.features.state_dict()}
        wanted.update({f"lin{i}.model.1.weight": f"lins.{i}.weight" for i in range(len(_TAP_CHANNELS))})
        missing = sorted(k for k in wanted if k not in state)
        if missing:
            raise CheckpointError(
                f"LPIPS weights in {', '.join(map(str, paths))} lack {len(missing)} tensors "
                f"(e.g. {', '.join(missing[:4])}); need torchvision VGG16 'features.*' and LPIPS 'lin<k>.model.1.weight'"
            )
        ours = {v if v.startswith("lins.") else f"features.{v}": state[k] for k, v in wanted.items()}
        try:
            model.load_state_dict(ours)
        except RuntimeError as exc:
            raise CheckpointError(f"LPIPS weights do not fit VGG16: {exc}") from exc
        model.requires_grad_(False)
        return model.eval()

    def train(self, mode: bool = True) -> LPIPS:  # always eval: a fixed metric, not a trained module
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) distances between images ``x`` and ``y``."""
        h = torch.cat([x, y]).float()
        h = (h - self.shift) / self.scale
        total = torch.zeros(x.shape[0], device=x.device)
        tap = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i == _TAPS[tap]:
                f = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                fx, fy = f.chunk(2)
                total = total + self.lins[tap]((fx - fy).pow(2)).mean(dim=(1, 2, 3))
                tap += 1
                if tap == len(_TAPS):
                    break
        return total
