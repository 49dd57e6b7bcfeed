"""A PatchGAN discriminator (pix2pix-style) and the hinge GAN losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.Module:
    # GroupNorm rather than BatchNorm: no running statistics to keep in sync across DDP replicas.
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class PatchDiscriminator(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> (B, 1, h, w) real/fake logits, one per overlapping patch.

    ``layers`` stride-2 4x4 convolutions (widths ``channels * 2**i``, capped at 8x), then a stride-1
    4x4 conv and a 4x4 conv to one logit per patch. Receptive field 70 px for ``layers=3``.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            blocks += [nn.Conv2d(width, out, 4, 2, 1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
            width = out
        out = channels * min(2**layers, 8)
        blocks += [nn.Conv2d(width, out, 4, 1, 1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
        blocks += [nn.Conv2d(out, 1, 4, 1, 1)]
        self.net = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), halved."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -mean(D(fake))."""
    return -logits_fake.float().mean()
