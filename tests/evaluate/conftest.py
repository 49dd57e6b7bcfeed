"""Fixtures of the reconstruction-evaluation tests: real photographs (from the scikit-image wheel), weight files of
the metric networks with random weights (the real ones are never downloaded), a real export of the shipped demo DC-AE."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomize_
from recon_helpers import PHOTOS, skimage_data


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """A folder of four colour photographs shipped with scikit-image (short sides 300 to 512 px)."""
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copy(skimage_data() / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory) -> Path:
    """A weights file with the FID Inception's tensors (pytorch-fid's names, 1008-class fc), random values."""
    from dcae_deploy.metrics.inception import FIDInceptionV3

    model = randomize_(FIDInceptionV3(), seed=1)
    state = dict(model.state_dict())
    gen = torch.Generator().manual_seed(2)
    state["fc.weight"] = torch.randn(1008, 2048, generator=gen) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def alexnet_file(tmp_path_factory) -> Path:
    """torchvision-style AlexNet weights (``features.*`` + ``classifier.*``), random values."""
    from dcae_deploy.metrics.lpips import LPIPS

    model = randomize_(LPIPS("alex"), seed=3, scale=0.05)
    gen = torch.Generator().manual_seed(4)
    state = {f"features.{k}": torch.randn(v.shape, generator=gen) * (2.0 / np.prod(v.shape[1:])) ** 0.5
             if k.endswith("weight") else v for k, v in model.features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4096, 9216)  # present in torchvision's file, unused by LPIPS
    path = tmp_path_factory.mktemp("alexnet") / "random-alexnet.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def demo_ae_export(tmp_path_factory) -> Path:
    """The shipped demo DC-AE exported with encoder and decoder (fp32, 64 px, batch up to 2): about 25 s."""
    from dcae_deploy.export import export_model
    from dcae_deploy.shipped_demo import demo_folder

    folder = tmp_path_factory.mktemp("demo-ae-export")
    export_model("demo-f32c32", folder, checkpoint=demo_folder() / "vae", components=["encoder", "decoder"],
                 min_res=64, opt_res=64, max_res=64, max_batch=2)
    return folder
