"""Reconstruction metrics as the DC-AE release's evaluator (``efficientvit/aecore/evaluator.py``) defines them.

Inputs and reconstructions are first rounded to 0-255 levels as the release does
(``(255 * (x + 1) / 2 + 0.5).clamp(0, 255).to(uint8)``: what saving a PNG keeps), then

- **PSNR**: per image on 0-255 levels (``10 log10(255^2 / MSE)``, MSE over the image's pixels and channels), averaged
  over the images: the release's ``PSNRStats``; torchmetrics' ``PeakSignalNoiseRatio(data_range=255, dim=(1, 2, 3))``
  computes exactly that (its default, one MSE over the whole set, would not);
- **SSIM**: torchmetrics' ``StructuralSimilarityIndexMeasure(data_range=(0, 255))`` (11 x 11 Gaussian window,
  sigma 1.5, K1 0.01, K2 0.03): the SSIM map averaged over the whole image, its 5-pixel border computed on a
  reflection-padded image, then over the images. scikit-image's ``structural_similarity`` crops that border instead and
  reads 0.007 to 0.023 higher on 128 px photographs; ``tests/evaluate/test_metric_reference.py`` checks both
  conventions against one map written out with scipy;
- **LPIPS**: per image on the levels / 255 (``normalize=True``), AlexNet by default (:mod:`dcae_deploy.metrics.lpips`),
  averaged over the images;
- **rFID**: Fréchet distance between the FID-Inception statistics of the reconstructions and of the inputs
  (:mod:`dcae_deploy.metrics.fid`); the release compares the reconstructions with precomputed statistics of the same
  data set (ImageNet val at the resolution), the same thing when those come from the same images.

Every state is a torchmetrics state: under ``torchrun`` ``compute()`` gathers all processes' images.
:class:`ReconstructionEvaluator` keeps one set per backend plus, for each backend after the first (the PyTorch fp32
reference), how far its reconstructions are from the reference's: PSNR over the whole set on unrounded outputs and the
largest difference in 0-255 levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from dcae_deploy.metrics.fid import FeatureStatistics, frechet_distance

METRICS = ("psnr", "ssim", "lpips", "fid")


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 levels, rounded half up as the release does."""
    return (255 * ((images.float() + 1) / 2) + 0.5).clamp(0, 255).to(torch.uint8)


class ReconstructionMetrics:
    """The requested metrics of one set of reconstructions against their inputs (one backend)."""

    def __init__(self, metrics: Sequence[str], device: torch.device, lpips=None, inception=None,
                 input_statistics: FeatureStatistics | None = None) -> None:
        from torchmetrics.aggregation import MeanMetric
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(METRICS)}")
        if "lpips" in metrics and lpips is None or "fid" in metrics and (inception is None or input_statistics is None):
            raise ValueError("lpips needs its network; fid needs the Inception and the inputs' statistics")
        self.metrics, self.device = tuple(metrics), device
        self.lpips_net, self.inception, self.input_statistics = lpips, inception, input_statistics
        self.psnr = PeakSignalNoiseRatio(data_range=255.0, dim=(1, 2, 3)).to(device)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=(0.0, 255.0)).to(device)
        self.lpips = MeanMetric().to(device)
        self.recon_statistics = FeatureStatistics(inception.num_features).to(device) if "fid" in metrics else None
        self.images = 0

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> None:
        """``inputs``, ``reconstructions``: (B, 3, H, W) uint8 levels (see :func:`quantize`)."""
        ref, pred = inputs.to(self.device).float(), reconstructions.to(self.device).float()
        self.images += ref.shape[0]
        if "psnr" in self.metrics:
            self.psnr.update(pred, ref)
        if "ssim" in self.metrics:
            self.ssim.update(ref, pred)  # the release's argument order (SSIM is symmetric)
        if "lpips" in self.metrics:
            self.lpips.update(self.lpips_net(ref / 255, pred / 255))
        if "fid" in self.metrics:
            self.recon_statistics.update(self.inception(pred / 255))

    def compute(self) -> dict[str, float]:
        """The metrics over every process's images (a collective under torchrun: call it on every rank)."""
        out: dict[str, float] = {}
        if "psnr" in self.metrics:
            out["psnr"] = float(self.psnr.compute())
        if "ssim" in self.metrics:
            out["ssim"] = float(self.ssim.compute())
        if "lpips" in self.metrics:
            out["lpips"] = float(self.lpips.compute())
        if "fid" in self.metrics:
            mu, sigma = self.recon_statistics.compute()
            mu_in, sigma_in = self.input_statistics.compute()
            out["fid"] = frechet_distance(mu, sigma, mu_in, sigma_in)
        return out


class Fidelity:
    """How close one backend's reconstructions are to the reference's: PSNR over the whole set (one MSE, on
    unrounded outputs clamped to [-1, 1], in 0-255 units) and the largest difference in 0-255 levels."""

    def __init__(self, device: torch.device) -> None:
        from torchmetrics.aggregation import MaxMetric
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=255.0).to(device)
        self.max_levels = MaxMetric().to(device)
        self.device = device

    @torch.no_grad()
    def update(self, output: torch.Tensor, reference: torch.Tensor) -> None:
        out, ref = (t.to(self.device).float().clamp(-1, 1) for t in (output, reference))
        self.psnr.update((out + 1) * 127.5, (ref + 1) * 127.5)
        self.max_levels.update((quantize(out).int() - quantize(ref).int()).abs().max().float())

    def compute(self) -> dict[str, float]:
        return {"psnr": float(self.psnr.compute()), "max_level_diff": int(self.max_levels.compute())}


class ReconstructionEvaluator:
    """The metrics of several backends' reconstructions of the same images; the first backend is the reference.

    ``add(inputs, {backend: reconstructions})`` with float tensors in [-1, 1] (B, 3, H, W); ``results()`` (collective
    under torchrun) -> ``{backend: {"psnr": ..., ..., "vs_reference": {...}}}`` (no ``vs_reference`` for the first).
    """

    def __init__(self, backends: Sequence[str], metrics: Sequence[str], device: torch.device | str = "cpu",
                 lpips=None, inception=None) -> None:
        self.backends, self.metrics, self.device = tuple(backends), tuple(metrics), torch.device(device)
        self.inception = inception.to(self.device) if inception is not None else None
        lpips = lpips.to(self.device) if lpips is not None else None
        self.input_statistics = FeatureStatistics(inception.num_features).to(self.device) if "fid" in metrics else None
        self.sets = {b: ReconstructionMetrics(metrics, self.device, lpips, self.inception, self.input_statistics)
                     for b in self.backends}
        self.fidelity = {b: Fidelity(self.device) for b in self.backends[1:]}

    @torch.no_grad()
    def add(self, inputs: torch.Tensor | np.ndarray, reconstructions: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        x = quantize(torch.as_tensor(inputs))
        if self.input_statistics is not None:
            self.input_statistics.update(self.inception(x.to(self.device).float() / 255))
        outputs = {b: torch.as_tensor(reconstructions[b]).float() for b in self.backends}
        for b in self.backends:
            self.sets[b].update(x, quantize(outputs[b]))
        for b, fidelity in self.fidelity.items():
            fidelity.update(outputs[b], outputs[self.backends[0]])

    def results(self) -> dict[str, dict]:
        results: dict[str, dict] = {}
        for b in self.backends:
            results[b] = self.sets[b].compute()
            if b in self.fidelity:
                results[b]["vs_reference"] = self.fidelity[b].compute()
        return results
