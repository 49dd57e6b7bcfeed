"""Real photographs (the ones scikit-image ships in ``skimage/data``) through the image-folder path:
random crops and captions of ImageFolderDataset, its errors, and a short autoencoder fine-tune."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcae_deploy import load_autoencoder
from dcae_deploy.cli import run_cli
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.models.autoencoder import build_autoencoder
from dcae_deploy.train.__main__ import main
from dcae_deploy.train.data import ImageFolderDataset, image_dataset

skdata = pytest.importorskip(
    "skimage.data", reason="scikit-image is not installed (it is in the 'test' extra: pip install -e '.[test]')"
)

CAPTIONS = {
    "astronaut.png": "an astronaut in a white spacesuit in front of a flag",
    "coffee.png": "a cup of coffee on a saucer",
    "chelsea.png": "a tabby cat",
    "rocket.png": "a rocket on its launch pad",
    "vehicles/motorcycle.png": "a red motorcycle in a garage",
}


def _photos() -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 RGB photos, all bundled with scikit-image (no download)."""
    return {
        "astronaut.png": skdata.astronaut(),
        "coffee.png": skdata.coffee(),
        "chelsea.png": skdata.chelsea(),
        "rocket.png": skdata.rocket(),
        "vehicles/motorcycle.png": skdata.stereo_motorcycle()[0],
    }


def write_photo_folder(root: Path, short_side: int | None = None) -> Path:
    """The photos as PNGs under ``root`` (one in a sub-folder) plus ``captions.jsonl``; ``short_side``
    downscales each so that its shorter side has that many pixels."""
    for name, array in _photos().items():
        image = Image.fromarray(array)
        if short_side is not None:
            scale = short_side / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    lines = [json.dumps({"file": name, "caption": caption}) for name, caption in CAPTIONS.items()]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_folder(tmp_path_factory.mktemp("photos"))


def _find_window(original: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    """Top-left corners (y, x) where ``crop`` (r, r, 3) sits in ``original`` (H, W, 3) pixel for pixel."""
    r = crop.shape[0]
    h, w = original.shape[0] - r + 1, original.shape[1] - r + 1
    ys, xs = np.nonzero((original[:h, :w] == crop[0, 0]).all(-1))
    return [(y, x) for y, x in zip(ys.tolist(), xs.tolist()) if np.array_equal(original[y : y + r, x : x + r], crop)]


def test_photo_crops_and_captions(photos):
    ds = ImageFolderDataset(photos, 64)
    assert [ds._key(p) for p in ds.files] == sorted(CAPTIONS)
    originals = _photos()
    for i, path in enumerate(ds.files):
        name = path.relative_to(photos).as_posix()
        assert ds.caption(i) == CAPTIONS[name]
        crops = []
        for draw in (0, 1, 2):
            item = ds[(i, draw)]
            x = item["image"]
            assert x.shape == (3, 64, 64) and x.dtype == torch.float32, name
            assert -1.0 <= x.min() and x.max() <= 1.0, name
            assert item["caption"] == CAPTIONS[name]
            # A crop is a window of the photo's own pixels (no resize: every photo is larger than 64 px).
            pixels = ((x.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
            assert _find_window(originals[name], pixels), f"{name}: crop {draw} is not a window of the photo"
            crops.append(x)
        assert torch.equal(crops[0], ds[(i, 0)]["image"])  # the draw seed fixes the crop
        assert not torch.equal(crops[0], crops[1]) or not torch.equal(crops[0], crops[2])
    # Natural images use the whole value range, unlike a constant or a noise pattern.
    whole = torch.stack([ds[(i, 0)]["image"] for i in range(len(ds))])
    assert whole.min() < -0.8 and whole.max() > 0.8 and 0.1 < whole.std() < 0.9

    # Through the --data spec; a crop larger than some photos upscales those (short side = crop size).
    big = image_dataset(f"folder:{photos}", 448)
    cat = next(i for i, p in enumerate(big.files) if p.name == "chelsea.png")  # 451 x 300
    item = big[(cat, 3)]
    assert item["image"].shape == (3, 448, 448) and item["caption"] == "a tabby cat"


def test_grayscale_photo_becomes_rgb(tmp_path):
    Image.fromarray(skdata.camera()).save(tmp_path / "camera.png")  # (512, 512) uint8, mode L
    x = ImageFolderDataset(tmp_path, 64)[(0, 0)]["image"]
    assert x.shape == (3, 64, 64)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert ImageFolderDataset(tmp_path, 64).caption(0) == ""  # no captions.jsonl: empty captions


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(DcaeDeployError, match="image folder not found: .*missing"):
        ImageFolderDataset(tmp_path / "missing", 64)
    with pytest.raises(DcaeDeployError, match="not found"):
        image_dataset(f"folder:{tmp_path / 'missing'}", 64)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DcaeDeployError, match="is a file, not a folder"):
        ImageFolderDataset(tmp_path / "file.png", 64)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DcaeDeployError, match="no images"):
        ImageFolderDataset(empty, 64)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "coffee.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = ImageFolderDataset(broken, 64)
    with pytest.raises(DcaeDeployError, match="cannot read image .*coffee.png"):
        ds[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"file": "coffee.png", "caption": "a cup of coffee"', r"captions.jsonl:2: invalid JSON"),
        ('{"file": "coffee.png"}', r"captions.jsonl:2: expected a JSON object with 'file' and 'caption'"),
        ('["coffee.png", "a cup of coffee"]', r"captions.jsonl:2: expected a JSON object"),
        ('{"file": "coffee.png", "caption": 3}', r"captions.jsonl:2: 'file' and 'caption' must be strings"),
        ('{"file": "coffee.jpg", "caption": "a cup"}', r"captions.jsonl:2: 'coffee.jpg' is not an image under"),
        ('{"file": "chelsea.png", "caption": "a cat again"}', r"captions.jsonl:2: a second caption for 'chelsea.png'"),
    ],
)
def test_bad_captions_file(tmp_path, content, message):
    for name in ("coffee.png", "chelsea.png"):
        Image.fromarray(getattr(skdata, name.removesuffix(".png"))()[:80, :80]).save(tmp_path / name)
    first = json.dumps({"file": "chelsea.png", "caption": "a tabby cat"})
    (tmp_path / "captions.jsonl").write_text(f"{first}\n{content}\n", encoding="utf-8")
    with pytest.raises(DcaeDeployError, match=message):
        ImageFolderDataset(tmp_path, 64)


def test_captions_are_utf8(tmp_path):
    Image.fromarray(skdata.coffee()[:80, :80]).save(tmp_path / "coffee.png")
    line = json.dumps({"file": "./coffee.png", "caption": "un café crème"}, ensure_ascii=False)
    (tmp_path / "captions.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode("utf-8") + b"\n")  # with a BOM
    assert ImageFolderDataset(tmp_path, 64)[0]["caption"] == "un café crème"
    (tmp_path / "captions.jsonl").write_bytes(line.encode("latin-1"))
    with pytest.raises(DcaeDeployError, match="cannot read captions file .*UTF-8"):
        ImageFolderDataset(tmp_path, 64)


def test_cli_reports_a_missing_photo_folder(tmp_path, capsys):
    args = ["autoencoder", "--phase", "low_res_full", "--variant", "tiny-f32c32-sana", "--resolution", "64",
            "--data", f"folder:{tmp_path / 'missing'}", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "run")]
    assert run_cli(main, args) == 1
    assert "image folder not found" in capsys.readouterr().err


STEPS = 40


def test_short_finetune_on_photos(tmp_path, capsys):
    # Photos downscaled to a 96 px short side, so that a 64 px crop shows most of the scene.
    folder = write_photo_folder(tmp_path / "photos", short_side=96)
    out = tmp_path / "run"
    args = ["autoencoder", "--phase", "low_res_full", "--variant", "tiny-f32c32-sana", "--data", f"folder:{folder}",
            "--resolution", "64", "--steps", str(STEPS), "--batch-size", "4", "--lr", "5e-4", "--seed", "0",
            "--log-every", "10", "--checkpoint-every", "0", "--device", "cpu", "--out", str(out)]
    assert run_cli(main, args) == 0
    assert f"step {STEPS}/{STEPS}" in capsys.readouterr().out

    with (out / "loss_log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(STEPS))
    for r in rows:
        for key in ("l1", "loss", "grad_norm_model"):
            assert math.isfinite(float(r[key])), (r["step"], key, r[key])
    l1 = [float(r["l1"]) for r in rows]
    first, last = sum(l1[:3]) / 3, sum(l1[-5:]) / 5
    assert last < 0.8 * first, f"L1 on the photos did not go down: first steps {first:.4f}, last steps {last:.4f}"

    model = load_autoencoder(out / "final")
    ema = load_autoencoder(out / "final" / "ema")
    assert model.config.name == ema.config.name == "tiny-f32c32-sana"

    # The fine-tuned weights reconstruct the photos better than the weights they started from.
    torch.manual_seed(0)  # the CLI seeds 0 before building the model
    start = build_autoencoder("tiny-f32c32-sana").eval()
    ds = ImageFolderDataset(folder, 64)
    images = torch.stack([ds[(i, 0)]["image"] for i in range(len(ds))])
    with torch.no_grad():
        trained_l1 = (model(images) - images).abs().mean().item()
        start_l1 = (start(images) - images).abs().mean().item()
    assert math.isfinite(trained_l1) and trained_l1 < 0.8 * start_l1, (trained_l1, start_l1)
