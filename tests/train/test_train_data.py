"""Image-folder training data: random crops, shapes, value range, captions, reproducible draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.train.data import (
    ImageFolderDataset,
    LatentDataset,
    ShapesImages,
    image_dataset,
)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"a.png": (48, 64), "b.png": (20, 30), "sub/c.png": (40, 40)}  # (height, width); b is too small
    for name, (h, w) in sizes.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    Image.fromarray(np.full((40, 40), 7, np.uint8), mode="L").save(tmp_path / "gray.png")  # converted to RGB
    (tmp_path / "notes.txt").write_text("not an image")
    lines = [{"file": "a.png", "caption": "a red circle"}, {"file": "sub/c.png", "caption": "a blue star"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return tmp_path


def test_crops_shapes_range_and_captions(folder):
    ds = ImageFolderDataset(folder, 32)
    assert [p.relative_to(folder).as_posix() for p in ds.files] == ["a.png", "b.png", "gray.png", "sub/c.png"]
    captions = {}
    for i in range(len(ds)):
        item = ds[(i, 1234)]
        x = item["image"]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
        captions[ds.files[i].name] = item["caption"]
    assert captions == {"a.png": "a red circle", "b.png": "", "gray.png": "", "c.png": "a blue star"}
    assert torch.allclose(ds[(2, 0)]["image"], torch.full((3, 32, 32), 7 / 127.5 - 1))

    # A crop is a function of the draw seed: same seed, same crop; other seeds move it.
    assert torch.equal(ds[(0, 5)]["image"], ds[(0, 5)]["image"])
    crops = {tuple(ds[(0, s)]["image"][0, 0, :4].tolist()) for s in range(8)}
    assert len(crops) > 1
    # The crop is a window of the original pixels.
    original = torch.from_numpy(np.asarray(Image.open(folder / "a.png"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    crop = ds[(0, 5)]["image"]
    found = any(
        torch.equal(original[:, y : y + 32, x : x + 32], crop) for y in range(48 - 31) for x in range(64 - 31)
    )
    assert found


def test_bad_folders(tmp_path):
    with pytest.raises(DcaeDeployError, match="not found"):
        ImageFolderDataset(tmp_path / "missing", 32)
    with pytest.raises(DcaeDeployError, match="no images"):
        ImageFolderDataset(tmp_path, 32)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    (tmp_path / "captions.jsonl").write_text('{"file": "x.png"}\n')
    with pytest.raises(DcaeDeployError, match="captions.jsonl:1"):
        ImageFolderDataset(tmp_path, 32)
    with pytest.raises(DcaeDeployError, match="unknown data source"):
        image_dataset("imagenet", 32)


def test_shapes_and_latent_cache(tmp_path):
    shapes = image_dataset("shapes", 32, length=3)
    assert isinstance(shapes, ShapesImages) and len(shapes) == 3
    item = shapes[(1, 99)]
    assert item["image"].shape == (3, 32, 32) and item["caption"].startswith("a")
    assert torch.equal(item["image"], shapes[1]["image"])

    cache = LatentDataset(torch.randn(3, 32, 1, 1), ["x", "y", "z"])
    cache.save(tmp_path / "lat")
    again = LatentDataset.load(tmp_path / "lat")
    assert torch.equal(again.latents, cache.latents) and again[(2, 0)]["caption"] == "z"
