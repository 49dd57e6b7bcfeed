"""LPIPS (AlexNet or VGG16) as torchmetrics computes it, without torchvision; weights from local files only.

The DC-AE release reports LPIPS with ``torchmetrics``' ``LearnedPerceptualImagePatchSimilarity(normalize=True)``:
its default backbone, **AlexNet**, on images in [0, 1]. torchmetrics builds the backbone with torchvision (and
downloads its ImageNet weights); this module builds the same ``features`` layers in plain torch and loads

- the backbone from the file the user names: torchvision's ImageNet weights (``alexnet-owt-7be5be79.pth`` or
  ``vgg16-397923af.pth``; only the ``features.<i>.*`` tensors are used), or the same tensors as safetensors;
- the learned per-layer weights (``lin<k>.model.1.weight``) from a second file when given, else from the copy that
  ships inside the torchmetrics wheel (``torchmetrics/functional/image/lpips_models/<net>.pth``), as torchmetrics does.

The computation is torchmetrics' own: its ``ScalingLayer``, ``_normalize_tensor`` (eps 1e-8 inside the square root)
and ``_spatial_average``; ``tests/evaluate/test_metric_networks.py`` checks it against torchmetrics' ``_LPIPS.forward``.
``dcae_deploy/train/perceptual.py`` holds the training loss (VGG16 only, the ``lpips`` package's eps 1e-10 outside
the root); on the same VGG16 weights the two give the same distances (checked in the same test file).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dcae_deploy.errors import CheckpointError

# torchvision ``features`` of each backbone: ("C", out, kernel, stride, padding) conv + ReLU, ("M",) 3x3/2 or 2x2/2 max pool
_ALEX = (("C", 64, 11, 4, 2), ("M", 3), ("C", 192, 5, 1, 2), ("M", 3), ("C", 384, 3, 1, 1), ("C", 256, 3, 1, 1),
         ("C", 256, 3, 1, 1))
_VGG16 = (("C", 64, 3, 1, 1), ("C", 64, 3, 1, 1), ("M", 2), ("C", 128, 3, 1, 1), ("C", 128, 3, 1, 1), ("M", 2),
          ("C", 256, 3, 1, 1), ("C", 256, 3, 1, 1), ("C", 256, 3, 1, 1), ("M", 2), ("C", 512, 3, 1, 1),
          ("C", 512, 3, 1, 1), ("C", 512, 3, 1, 1), ("M", 2), ("C", 512, 3, 1, 1), ("C", 512, 3, 1, 1),
          ("C", 512, 3, 1, 1))
#: net -> (layers, indices of the ReLUs LPIPS compares (torchmetrics' slice ends - 1), their channels,
#: the name of torchvision's weights file)
NETS = {
    "alex": (_ALEX, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), "alexnet-owt-7be5be79.pth"),
    "vgg": (_VGG16, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), "vgg16-397923af.pth"),
}


def _features(layers) -> nn.Sequential:
    modules: list[nn.Module] = []
    width = 3
    for layer in layers:
        if layer[0] == "M":
            modules.append(nn.MaxPool2d(kernel_size=layer[1], stride=2))
        else:
            _, out, kernel, stride, padding = layer
            modules += [nn.Conv2d(width, out, kernel, stride=stride, padding=padding), nn.ReLU(inplace=False)]
            width = out
    return nn.Sequential(*modules)


def bundled_lin_weights(net: str) -> Path:
    """The LPIPS linear-layer weights torchmetrics ships for ``net`` (``alex.pth``, ``vgg.pth``)."""
    import torchmetrics.functional.image.lpips as tm_lpips

    return Path(tm_lpips.__file__).parent / "lpips_models" / f"{net}.pth"


class LPIPS(nn.Module):
    """Per-image LPIPS distance between images in [0, 1] (``normalize=True`` in torchmetrics' terms); frozen, eval mode."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        from torchmetrics.functional.image.lpips import ScalingLayer

        if net not in NETS:
            raise ValueError(f"unknown LPIPS net {net!r}; choose one of {', '.join(NETS)}")
        layers, self.taps, channels, _ = NETS[net]
        self.net = net
        self.features = _features(layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.scaling_layer = ScalingLayer()

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike], net: str = "alex") -> LPIPS:
        """The backbone's ``features.*`` and (optionally) ``lin<k>.model.1.weight`` tensors from local files; the
        linear layers default to torchmetrics' bundled ones.

        Raises:
            CheckpointError: an unreadable file, tensors missing or misshapen for ``net``.
        """
        from dcae_deploy.checkpoints import read_state_dict

        model = cls(net)
        state: dict[str, torch.Tensor] = {}
        for path in paths:
            state.update(read_state_dict(path))
        lin_keys = [f"lin{i}.model.1.weight" for i in range(len(model.lins))]
        if not any(k in state for k in lin_keys):
            lin_file = bundled_lin_weights(net)
            if not lin_file.is_file():
                raise CheckpointError(f"torchmetrics' LPIPS layer weights {lin_file} are missing: reinstall torchmetrics, "
                                      f"or pass the lpips package's {net}.pth with the backbone weights")
            state.update(read_state_dict(lin_file))
        wanted = {f"features.{k}": f"features.{k}" for k in model.features.state_dict()}
        wanted.update({k: f"lins.{i}.weight" for i, k in enumerate(lin_keys)})
        missing = sorted(k for k in wanted if k not in state)
        if missing:
            raise CheckpointError(
                f"LPIPS-{net} weights in {', '.join(map(str, paths))} lack {len(missing)} tensors (e.g. "
                f"{', '.join(missing[:4])}): pass torchvision's ImageNet {net} weights ({NETS[net][3]}, 'features.*' "
                "tensors), and optionally the lpips package's linear layers ('lin<k>.model.1.weight')"
            )
        try:
            model.load_state_dict({ours: state[theirs].float() for theirs, ours in wanted.items()})
        except RuntimeError as exc:
            raise CheckpointError(f"the weights in {', '.join(map(str, paths))} do not fit LPIPS-{net}: {exc}") from exc
        model.requires_grad_(False)
        return model.eval()

    def train(self, mode: bool = True) -> LPIPS:  # a fixed metric network
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) distances between images ``x`` and ``y`` in [0, 1]."""
        from torchmetrics.functional.image.lpips import _normalize_tensor, _spatial_average

        h = self.scaling_layer(torch.cat([x, y]).float() * 2 - 1)
        total = torch.zeros(x.shape[0], device=x.device)
        taps = iter(enumerate(self.taps))
        k, tap = next(taps)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i == tap:
                fx, fy = _normalize_tensor(h).chunk(2)
                total = total + _spatial_average(self.lins[k]((fx - fy) ** 2), keep_dim=False).flatten()
                k, tap = next(taps, (None, None))
                if tap is None:
                    break
        return total
