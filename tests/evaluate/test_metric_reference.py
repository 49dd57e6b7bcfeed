"""PSNR and SSIM of :mod:`dcae_deploy.metrics.reconstruction` against scikit-image on the same uint8 arrays, the
release's conventions (per-image PSNR averaged; rounding half up), and the release's centre crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from recon_helpers import PHOTOS, skimage_data

from dcae_deploy.metrics.images import load_image, to_model_input
from dcae_deploy.metrics.reconstruction import ReconstructionMetrics, quantize

skmetrics = pytest.importorskip("skimage.metrics")


def _pairs(resolution: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Four photographs and distorted copies with different amounts of error (noise, a shift, a box blur)."""
    rng = np.random.default_rng(0)
    ref = np.stack([load_image(skimage_data() / name, resolution) for name in PHOTOS])
    out = ref.astype(np.float64)
    out[0] += rng.normal(0, 4, out[0].shape)
    out[1] += rng.normal(0, 20, out[1].shape)
    out[2] = np.roll(out[2], 1, axis=1)
    out[3] = (out[3] + np.roll(out[3], 1, 0) + np.roll(out[3], 1, 1) + np.roll(out[3], 1, (0, 1))) / 4
    return ref, np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _ours(ref: np.ndarray, out: np.ndarray, batch: int) -> dict[str, float]:
    metrics = ReconstructionMetrics(["psnr", "ssim"], torch.device("cpu"))
    to_t = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())  # noqa: E731
    for i in range(0, len(ref), batch):
        metrics.update(to_t(ref[i:i + batch]), to_t(out[i:i + batch]))
    return metrics.compute()


def _ssim_map(a: np.ndarray, b: np.ndarray, mode: str) -> np.ndarray:
    """SSIM map of one channel written out with scipy (11-tap Gaussian, sigma 1.5, K1 0.01, K2 0.03, 0-255)."""
    f = lambda x: ndimage.gaussian_filter(x, sigma=1.5, truncate=3.5, mode=mode)  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    saa, sbb, sab = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))


@pytest.mark.parametrize("batch", [1, 3])
def test_psnr_and_ssim_agree_with_scikit_image(batch):
    """PSNR: scikit-image's, per image, averaged. SSIM: the release's torchmetrics SSIM averages the map over the whole
    image, its borders from whole-sample reflection; scikit-image crops the 5-pixel border instead (0.007 to 0.023
    higher on these 128 px images). Both conventions are checked against one map written out with scipy."""
    ref, out = _pairs()
    psnrs = [skmetrics.peak_signal_noise_ratio(r, o, data_range=255) for r, o in zip(ref, out)]
    sk_ssims = [skmetrics.structural_similarity(r, o, data_range=255, gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False, channel_axis=2) for r, o in zip(ref, out)]
    maps = [np.stack([_ssim_map(r[..., c].astype(float), o[..., c].astype(float), "mirror") for c in range(3)])
            for r, o in zip(ref, out)]
    np.testing.assert_allclose([m[:, 5:-5, 5:-5].mean() for m in maps], sk_ssims, atol=1e-12)  # the scipy map is skimage's
    ours = _ours(ref, out, batch)
    assert len(set(np.round(psnrs, 1))) == 4  # four different errors: the mean below is not a coincidence
    # measured: PSNR 1.7e-6 dB from scikit-image (float32 sums); SSIM 1.0e-6 from the float64 map (float32 variances)
    assert ours["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4)
    assert ours["ssim"] == pytest.approx(np.mean([m.mean() for m in maps]), abs=1e-5)
    assert np.mean(sk_ssims) - ours["ssim"] > 0.005  # the border convention matters: the release's is kept


def test_psnr_is_the_mean_of_per_image_values_as_the_release_reports_it():
    """The release's PSNRStats averages per-image PSNRs; one MSE over the whole set (torchmetrics' default) differs."""
    ref, out = _pairs()
    mse = ((ref.astype(np.float64) - out) ** 2).reshape(len(ref), -1).mean(1)
    per_image = 10 * np.log10(255.0**2 / mse)
    pooled = 10 * np.log10(255.0**2 / mse.mean())
    ours = _ours(ref, out, batch=2)["psnr"]
    assert ours == pytest.approx(per_image.mean(), abs=1e-4)
    assert abs(ours - pooled) > 1.0  # the two conventions are far apart on these images


def test_quantize_rounds_half_up_and_clamps_like_the_release():
    x = torch.tensor([-1.5, -1.0, 2 * 0.5 / 255 - 1, 2 * 0.49 / 255 - 1, 0.0, 1.0, 3.0])
    release = (255 * ((x + 1) / 2) + 0.5).clamp(0, 255).to(torch.uint8)  # evaluator.py, verbatim
    assert quantize(x).tolist() == release.tolist() == [0, 0, 1, 0, 128, 255, 255]


def test_centre_crop_is_the_release_dmcrop():
    """At 128 px the release's DMCrop halves astronaut (512 x 512) twice with a box filter and crops nothing; rocket
    (640 x 427) is halved once (427 >= 256), resized bicubic to a short side of 128, then centre-cropped."""
    from PIL import Image

    data = skimage_data()
    with Image.open(data / "astronaut.png") as img:
        img = img.convert("RGB")
        expected = np.asarray(img.resize((256, 256), Image.BOX).resize((128, 128), Image.BOX))
    np.testing.assert_array_equal(load_image(data / "astronaut.png", 128), expected)
    with Image.open(data / "rocket.jpg") as img:
        half = img.convert("RGB").resize((320, 213), Image.BOX)  # 427 >= 256: one halving
        scaled = np.asarray(half.resize((round(320 * 128 / 213), 128), Image.BICUBIC))
    left = (scaled.shape[1] - 128) // 2
    np.testing.assert_array_equal(load_image(data / "rocket.jpg", 128), scaled[:, left:left + 128])
    x = to_model_input(load_image(data / "rocket.jpg", 128)[None])
    assert x.shape == (1, 3, 128, 128) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
    back = quantize(torch.from_numpy(x)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(back[0], load_image(data / "rocket.jpg", 128))  # [-1, 1] and back is lossless
