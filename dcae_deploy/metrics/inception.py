"""The FID Inception-v3 (2048-d pool features) in plain torch, from a local weights file; nothing is downloaded.

This is the network of pytorch-fid and of the DC-AE release's evaluator (``efficientvit/apps/metrics/fid``): torchvision's
Inception-v3 layout with 1008 classes and the FID patches (average pools that ignore padding in the A, C and first E
blocks, a max pool in the last E block), holding TensorFlow's ``inception-2015-12-05`` weights as ported by
pytorch-fid: the file ``pt_inception-2015-12-05-6726825d.pth``. Keys are torchvision's
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ...), so the file loads as is.

:class:`FIDInceptionV3` takes images in [0, 1], maps them to [-1, 1] and resizes them to 299 x 299 (bilinear,
``align_corners=False``), as the release does before its Inception. FID values are comparable with published ones
**only** with that weights file: another file of the same shapes (random weights in the tests, torchvision's
ImageNet Inception, which this module refuses by its 1000-class ``fc``) gives a different feature space.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from dcae_deploy.errors import CheckpointError

#: the weights file this network is meant for (pytorch-fid's port of TensorFlow's FID Inception)
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_CLASSES = 1008
FEATURES = 2048


class BasicConv2d(nn.Module):
    """conv (no bias) + batch norm (eps 1e-3) + ReLU, torchvision's naming (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # FID patch: TensorFlow's average pool does not count the zero padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool(x)),
        ], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool=False``: the FID patch of Mixed_7b (average pool without padding); ``True``: Mixed_7c's max pool."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pool),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Images in [0, 1], (B, 3, H, W) -> (B, 2048) pool features of the FID Inception; frozen, eval mode."""

    num_features = FEATURES  # read by torchmetrics-style consumers

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> FIDInceptionV3:
        """Load the FID Inception weights (``pt_inception-2015-12-05-6726825d.pth`` or the same tensors as
        safetensors). The classifier (``fc.*``, 1008 classes) is checked and dropped: FID uses the pool features.

        Raises:
            CheckpointError: unreadable file, missing / unexpected / misshapen tensors, or torchvision's ImageNet
                Inception (1000 classes, a different network).
        """
        from dcae_deploy.checkpoints import read_state_dict

        state = read_state_dict(path)
        fc = state.get("fc.weight")
        if fc is not None and tuple(fc.shape) != (FID_CLASSES, FEATURES):
            raise CheckpointError(
                f"{path} has a {tuple(fc.shape)} classifier: it is not the FID Inception ({FID_CLASSES} classes, "
                f"{FID_WEIGHTS_FILE}; torchvision's ImageNet Inception has 1000 classes and other weights, which would "
                "give FIDs comparable with nothing)"
            )
        model = cls()
        own = model.state_dict()
        ignored = ("fc.", "AuxLogits.")
        state = {k: v for k, v in state.items() if not k.startswith(ignored) and not k.endswith("num_batches_tracked")}
        own_keys = {k for k in own if not k.endswith("num_batches_tracked")}
        missing, unexpected = sorted(own_keys - set(state)), sorted(set(state) - own_keys)
        misshapen = sorted(k for k in own_keys & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
        if missing or unexpected or misshapen:
            parts = [f"{len(v)} {what} (e.g. {', '.join(v[:3])})" for what, v in
                     (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if v]
            raise CheckpointError(f"{path} does not fit the FID Inception-v3 ({FID_WEIGHTS_FILE}): "
                                  f"{'; '.join(parts)} tensors")
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)  # num_batches_tracked stays 0
        model.requires_grad_(False)
        return model.eval()

    def train(self, mode: bool = True) -> FIDInceptionV3:  # a fixed metric network: batch norm always in eval
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * 2 - 1  # [0, 1] -> [-1, 1] (the release's Normalize(0.5, 0.5))
        if tuple(x.shape[-2:]) != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
