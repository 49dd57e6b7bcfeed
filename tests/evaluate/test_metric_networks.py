"""The metric networks built without torchvision: the FID Inception-v3 and LPIPS, loaded from local files.

The real weights are never downloaded, so these tests use files of random weights: they prove the structure (every
tensor name and shape of the files the real networks ship as), the loading path and the computation around the
backbone; FID and LPIPS values match published ones only with the real files.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcae_deploy.errors import CheckpointError
from dcae_deploy.metrics.inception import FIDInceptionV3
from dcae_deploy.metrics.lpips import LPIPS, NETS, bundled_lin_weights

#: SHA-256 of the sorted "name:shape" lines of torch-fidelity 0.4.0's FeatureExtractorInceptionV3 state dict (the same
#: network and file as pytorch-fid's FID Inception), without fc.* and num_batches_tracked: 470 tensors, 21,820,000
#: numbers. Measured once with torch-fidelity's own definition; with identical weights and input its 2048-d features
#: and ours were bit-identical.
INCEPTION_LAYOUT_SHA256 = "e25e2ec47352b77da049d2b0a4e10826e2aa57e8fef0caa5be504b863ee6d514"


def test_fid_inception_has_the_layout_of_the_fid_weights_file():
    state = FIDInceptionV3().state_dict()
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert len(lines) == 470
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) == 21_820_000
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == INCEPTION_LAYOUT_SHA256


def test_fid_inception_loads_a_weights_file_and_gives_2048_features(inception_file):
    model = FIDInceptionV3.from_file(inception_file)
    saved = torch.load(inception_file, weights_only=True)
    assert torch.equal(model.Mixed_7c.branch_pool.bn.running_var, saved["Mixed_7c.branch_pool.bn.running_var"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training  # batch norm never leaves eval mode
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        f = model(x)
        # pytorch-fid's order (resize in [0, 1], then to [-1, 1]) gives the same features as the release's order
        resized = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        g = model(resized)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and f.std() > 0
    assert torch.allclose(f, g, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(f[0], f[1])


def test_fid_inception_refuses_wrong_files(inception_file, tmp_path):
    state = torch.load(inception_file, weights_only=True)
    imagenet = {**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save(imagenet, tmp_path / "imagenet.pth")
    with pytest.raises(CheckpointError, match="not the FID Inception.*1000 classes"):
        FIDInceptionV3.from_file(tmp_path / "imagenet.pth")
    partial = {k: v for k, v in state.items() if not k.startswith("Mixed_7c.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing"):
        FIDInceptionV3.from_file(tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not found"):
        FIDInceptionV3.from_file(tmp_path / "nowhere.pth")


class _Slices(nn.Module):
    """torchmetrics' backbone interface (a list of the tapped activations) over our layers."""

    def __init__(self, features: nn.Sequential, taps) -> None:
        super().__init__()
        ends = [t + 1 for t in taps]
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip([0, *ends], ends))

    def forward(self, x):
        outs = []
        for s in self.slices:
            x = s(x)
            outs.append(x)
        return outs


def _torchmetrics_lpips(ours: LPIPS):
    """torchmetrics' own ``_LPIPS`` module with our backbone in place of torchvision's (its constructor would import
    torchvision): its forward, scaling, normalisation and averaging are then the reference for ours."""
    from torchmetrics.functional.image.lpips import _LPIPS, NetLinLayer, ScalingLayer

    ref = _LPIPS.__new__(_LPIPS)
    nn.Module.__init__(ref)
    ref.pnet_type, ref.pnet_tune, ref.pnet_rand, ref.spatial, ref.resize = ours.net, False, False, False, None
    ref.scaling_layer, ref.net, ref.L = ScalingLayer(), _Slices(ours.features, ours.taps), len(ours.taps)
    ref.lins = nn.ModuleList()
    for lin in ours.lins:
        layer = NetLinLayer(lin.in_channels, use_dropout=True)
        layer.model[1].weight.data.copy_(lin.weight)
        ref.lins.append(layer)
    return ref.eval()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_computes_what_torchmetrics_computes(net):
    torch.manual_seed(0)
    ours = LPIPS(net)
    for m in ours.features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            m.bias.data.normal_(0, 0.1)
    for lin in ours.lins:
        lin.weight.data.uniform_(0, 1)
    x, y = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = _torchmetrics_lpips(ours)(x, y, normalize=True).flatten()
        got = ours(x, y)
    assert got.shape == (3,) and (got > 0).all()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert torch.allclose(ours(x, x), torch.zeros(3))


def test_lpips_loads_a_torchvision_backbone_and_torchmetrics_linear_layers(alexnet_file, tmp_path):
    model = LPIPS.from_files([alexnet_file])
    bundled = torch.load(bundled_lin_weights("alex"), map_location="cpu", weights_only=True)
    assert torch.equal(model.lins[2].weight, bundled["lin2.model.1.weight"])  # the real LPIPS layers
    saved = torch.load(alexnet_file, weights_only=True)
    assert torch.equal(model.features[3].weight, saved["features.3.weight"])
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert (model(x, y) > 0).all() and torch.allclose(model(x, x), torch.zeros(2))
    with pytest.raises(CheckpointError, match="LPIPS-vgg weights .* lack .* tensors.*vgg16-397923af.pth"):
        LPIPS.from_files([alexnet_file], net="vgg")  # AlexNet tensors for a VGG backbone
    torch.save({k: v for k, v in saved.items() if k != "features.10.bias"}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="lack 1 tensors.*features.10.bias"):
        LPIPS.from_files([tmp_path / "partial.pth"])


def test_lpips_vgg_agrees_with_the_training_loss_on_the_same_weights(tmp_path):
    """dcae_deploy.train.perceptual.LPIPS (the training loss; the lpips package's eps placement) and ours
    (torchmetrics')."""
    from dcae_deploy.checkpoints import write_safetensors
    from dcae_deploy.train.perceptual import LPIPS as TrainLPIPS

    torch.manual_seed(1)
    ours = LPIPS("vgg")
    state = {f"features.{k}": torch.randn(v.shape) * 0.05 for k, v in ours.features.state_dict().items()}
    state.update({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(NETS["vgg"][2])})
    write_safetensors(tmp_path / "vgg.safetensors", state)
    ours = LPIPS.from_files([tmp_path / "vgg.safetensors"], net="vgg")
    train = TrainLPIPS.from_files([tmp_path / "vgg.safetensors"])
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), train(x * 2 - 1, y * 2 - 1), rtol=1e-5, atol=1e-6)
