"""``python -m dcae_deploy.evaluate reconstruction``: real photographs through the shipped demo DC-AE, on PyTorch and
on its real ONNX export in ONNX Runtime; bad input refused with clear messages before any model runs."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from recon_helpers import PHOTOS

from dcae_deploy.cli import run_cli
from dcae_deploy.evaluate import main


def _run(argv, capsys) -> tuple[int, str, str]:
    status = run_cli(main, ["reconstruction", *map(str, argv)])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_export_on_onnxruntime_against_pytorch_with_all_four_metrics(demo_ae_export, photos, inception_file,
                                                                      alexnet_file, tmp_path, capsys):
    status, out, err = _run(["--images", photos, "--artifacts", demo_ae_export, "--backend", "onnxruntime",
                             "--resolution", 64, "--batch-size", 3, "--threads", 1, "--lpips-weights", alexnet_file,
                             "--inception-weights", inception_file, "--json", tmp_path / "r.json"], capsys)
    assert status == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    torch_row, ort_row = report["backends"]["torch"], report["backends"]["onnxruntime"]
    assert report["images"]["evaluated"] == len(PHOTOS) and report["metrics"] == ["psnr", "ssim", "lpips", "fid"]
    assert report["source"]["variant"] == "demo-f32c32" and report["source"]["precision"] == "fp32"
    assert "batches of 2 (the export's largest batch)" in err
    assert "is not pt_inception-2015-12-05-6726825d.pth" in err and "is not alexnet-owt-7be5be79.pth" in err
    assert "note: rFID on 4 images" in out
    lines = out.splitlines()
    assert any(line.startswith("torch ") and "(reference)" in line for line in lines)
    assert any(line.startswith("onnxruntime ") for line in lines) and any(line.startswith("  change") for line in lines)
    # fp32 ONNX Runtime reproduces PyTorch: measured 130+ dB between the two sets of reconstructions, <= 1 level apart
    assert ort_row["vs_reference"]["psnr"] > 100 and ort_row["vs_reference"]["max_level_diff"] <= 1
    assert abs(ort_row["delta"]["psnr"]) < 0.01 and abs(ort_row["delta"]["ssim"]) < 1e-4
    assert abs(ort_row["delta"]["lpips"]) < 1e-4 and abs(ort_row["delta"]["fid"]) < 1e-3 * max(1.0, torch_row["fid"])
    assert 5 < torch_row["psnr"] < 40 and 0 < torch_row["ssim"] < 1 and torch_row["lpips"] > 0 and torch_row["fid"] > 0

    # an independent PSNR of the PyTorch row: our own encode / decode of the same crops, scored by scikit-image
    skmetrics = pytest.importorskip("skimage.metrics")
    from dcae_deploy import load_autoencoder
    from dcae_deploy.metrics.images import load_image, to_model_input
    from dcae_deploy.shipped_demo import demo_folder

    ae = load_autoencoder(demo_folder() / "vae").float()
    ref = np.stack([load_image(photos / name, 64) for name in sorted(PHOTOS)])
    with torch.no_grad():
        recon = ae.decode(ae.encode(torch.from_numpy(to_model_input(ref)))).numpy()
    levels = np.clip(np.floor(255 * (recon + 1) / 2 + 0.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    psnr = np.mean([skmetrics.peak_signal_noise_ratio(r, o, data_range=255) for r, o in zip(ref, levels)])
    assert torch_row["psnr"] == pytest.approx(psnr, abs=1e-3)


def test_pytorch_checkpoint_alone_and_metrics_without_weights_are_skipped_with_the_reason(photos, tmp_path, capsys):
    status, out, err = _run(["--images", photos, "--resolution", 64, "--threads", 1, "--max-images", 2,
                             "--json", tmp_path / "r.json"], capsys)  # default source: the shipped demo's DC-AE
    assert status == 0, err
    assert "lpips skipped: no --lpips-weights" in err and "alexnet-owt-7be5be79.pth" in err
    assert "fid skipped: no --inception-weights" in err and "nothing is downloaded" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report["backends"]) == ["torch"] and report["metrics"] == ["psnr", "ssim"]
    assert set(report["skipped_metrics"]) == {"lpips", "fid"} and report["images"]["evaluated"] == 2
    assert "shipped demo" in out


def _folder_with(photos, tmp_path, extra: dict[str, bytes]):
    folder = tmp_path / "images"
    shutil.copytree(photos, folder)
    for name, data in extra.items():
        (folder / name).write_bytes(data)
    return folder


def test_an_unreadable_image_refuses_the_run_naming_it_unless_skipped(photos, tmp_path, capsys):
    jpeg = (photos / "rocket.jpg").read_bytes()
    folder = _folder_with(photos, tmp_path, {"broken.png": b"\x89PNG\r\n\x1a\n garbage", "notes.txt": b"hello",
                                             "fake.jpg": b"hello"})
    (folder / "sub").mkdir()
    (folder / "sub" / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # a truncated JPEG: its header still reads
    status, out, err = _run(["--images", folder, "--resolution", 64, "--metrics", "psnr", "--threads", 1], capsys)
    assert status == 1
    assert "error: 2 of 7 images" in err and "broken.png: damaged or truncated" in err
    assert "fake.jpg: not an image PIL can read" in err
    assert "Nothing was evaluated" in err and "--skip-bad-images" in err
    assert "ignoring 1 file(s) without an image suffix (.txt)" in err

    (folder / "broken.png").unlink()
    (folder / "fake.jpg").unlink()  # the truncated JPEG is found when it is decoded, and named
    status, out, err = _run(["--images", folder, "--resolution", 64, "--metrics", "psnr", "--threads", 1], capsys)
    assert status == 1 and "half.jpg" in err and "truncated" in err and "torch " not in out

    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    status, out, err = _run(["--images", folder, "--resolution", 64, "--metrics", "psnr", "--threads", 1,
                             "--skip-bad-images", "--json", tmp_path / "r.json"], capsys)
    assert status == 0, err
    assert "skipping broken.png" in err and "skipping" in err and "half.jpg" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"]["evaluated"] == len(PHOTOS)
    assert sorted(s["file"].rsplit("/", 1)[-1] for s in report["images"]["skipped"]) == ["broken.png", "half.jpg"]


def test_images_smaller_than_the_resolution_are_named(photos, capsys):
    status, out, err = _run(["--images", photos, "--resolution", 512, "--metrics", "psnr"], capsys)
    assert status == 1
    assert "3 of 4 images" in err
    for name, size, short in (("chelsea.png", "451x300", 300), ("coffee.png", "600x400", 400),
                              ("rocket.jpg", "640x427", 427)):
        assert f"{name}: {size}, short side {short} < --resolution 512" in err
    assert "would upscale the small ones" in err
    assert "astronaut" not in err  # 512 x 512 fits


@pytest.mark.parametrize("argv, message", [
    (["--lpips-weights", "{tmp}/nowhere/alexnet.pth"], "--lpips-weights .*nowhere/alexnet.pth: no such file"),
    (["--inception-weights", "{tmp}/pt_inception.pth"], "--inception-weights .*pt_inception.pth: no such file"),
    (["--metrics", "lpips,fid"], "nothing to evaluate: every requested metric was skipped"),
    (["--metrics", "psnr,mse"], "--metrics mse: choose among psnr, ssim, lpips, fid"),
    (["--backend", "onnxruntime"], "add --artifacts EXPORT_DIR"),
    (["--artifacts", "{tmp}", "--backend", "onnx"], "unknown backend onnx"),
    (["--artifacts", "{tmp}"], "has no manifest.json"),
    (["--resolution", "48"], "--resolution 48 is not a multiple of the autoencoder's spatial compression 32: use 32 or 64"),
    (["--json", "{tmp}"], "is a folder"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_bad_requests_are_clear_errors(photos, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    status, out, err = _run(["--images", photos, "--max-images", 1, *argv], capsys)
    assert status == 1
    assert err.splitlines()[-1].startswith("error: ")
    assert not any(line.startswith("torch ") for line in out.splitlines())  # no table: nothing was evaluated
    assert re.search(message, err), err


def test_an_export_without_encoder_and_an_empty_folder_are_refused(demo_ae_export, photos, tmp_path, capsys):
    folder = tmp_path / "decoder-only"
    shutil.copytree(demo_ae_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["components"]["encoder"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    status, out, err = _run(["--images", photos, "--artifacts", folder, "--resolution", 64, "--metrics", "psnr"], capsys)
    assert status == 1 and "has no encoder graph" in err and "--components encoder,decoder" in err
    (tmp_path / "empty").mkdir()
    status, out, err = _run(["--images", tmp_path / "empty", "--resolution", 64], capsys)
    assert status == 1 and "holds no image files" in err
