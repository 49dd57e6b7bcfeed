"""Fréchet Inception Distance: feature statistics gathered across processes, the distance, reference files.

- :class:`FeatureStatistics` is a torchmetrics ``Metric`` holding the running sums of a set of feature vectors
  (sum, sum of outer products, count, float64), exactly the states of torchmetrics' ``FrechetInceptionDistance`` and
  of the release's ``FIDStats``. Under ``torchrun`` its ``compute()`` sums them over all processes (torchmetrics' sync),
  so every process's images count: FID needs all of them.
- :func:`frechet_distance` is torchmetrics' ``_compute_fid`` (the trace of the matrix square root from the
  eigenvalues of ``sigma1 @ sigma2``), in float64. ``tests/evaluate/test_fid_statistics.py`` checks it against the closed form on
  Gaussians with known covariances and against ``scipy.linalg.sqrtm`` (the release's ``frechet_distance``).
- :func:`read_fid_statistics` / :func:`write_fid_statistics`: the release's reference-statistics file, an ``.npz``
  with ``mu`` (D,) and ``sigma`` (D, D) (``np.savez(path, mu=mu, sigma=sigma)``); :func:`fid_against_reference` is
  the generation FID of a class-conditional family: its generated images' statistics against such a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchmetrics import Metric

from dcae_deploy.errors import DcaeDeployError


class FeatureStatistics(Metric):
    """Mean and covariance of feature vectors fed by ``update(features)`` ((B, D) tensors), synced over processes.

    ``compute()`` returns ``(mu, sigma)`` as float64 numpy arrays: the mean and the unbiased (N - 1) covariance, the
    release's and torchmetrics' estimators.
    """

    full_state_update = False

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_features = num_features
        self.add_state("features_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("features_cov_sum", torch.zeros(num_features, num_features, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("num_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        f = features.detach().reshape(features.shape[0], -1).double()
        if f.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} features per sample, got {f.shape[1]}")
        self.features_sum += f.sum(dim=0)
        self.features_cov_sum += f.t().mm(f)
        self.num_samples += f.shape[0]

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.num_samples)
        if n < 2:
            raise DcaeDeployError(f"FID needs at least 2 images, got {n}")
        mu = self.features_sum / n
        sigma = (self.features_cov_sum - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` in float64 (torchmetrics' implementation)."""
    from torchmetrics.image.fid import _compute_fid

    t = [torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (mu1, sigma1, mu2, sigma2)]
    if t[0].shape != t[2].shape or t[1].shape != t[3].shape or t[1].shape != (t[0].shape[0],) * 2:
        raise DcaeDeployError(f"Fréchet distance of mismatched statistics: mu {tuple(t[0].shape)} vs {tuple(t[2].shape)}, "
                              f"sigma {tuple(t[1].shape)} vs {tuple(t[3].shape)}")
    return float(_compute_fid(*t))


def read_fid_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of a reference-statistics file in the release's format (``.npz`` with ``mu`` and ``sigma``).

    Raises:
        DcaeDeployError: a missing or unreadable file, missing arrays, shapes that do not fit, non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise DcaeDeployError(f"FID reference statistics {path} not found (an .npz with 'mu' and 'sigma', as the "
                              "DC-AE release writes them)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("mu", "sigma") if k in data.files}
            found = list(data.files)
    except Exception as exc:  # zipfile / pickle / ValueError on a bad file
        raise DcaeDeployError(f"cannot read FID reference statistics {path}: {exc}") from exc
    if set(arrays) != {"mu", "sigma"}:
        raise DcaeDeployError(f"{path} holds {found}, not the 'mu' and 'sigma' arrays of FID reference statistics")
    mu, sigma = arrays["mu"], arrays["sigma"]
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DcaeDeployError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit (need (D,) and (D, D))")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DcaeDeployError(f"{path}: mu or sigma holds NaN/Inf")
    return mu, sigma


def write_fid_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write ``mu`` and ``sigma`` in the release's format (atomically)."""
    from dcae_deploy.checkpoints import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))

    atomic_write(path, write)


def fid_against_reference(statistics: FeatureStatistics, reference: str | os.PathLike) -> float:
    """FID of the features gathered in ``statistics`` (all processes: call it on every rank) against a reference file.

    The generation metric of the release's class-conditional evaluation: N generated samples' Inception features
    against the data set's precomputed ``mu``/``sigma``.
    """
    mu_ref, sigma_ref = read_fid_statistics(reference)
    if mu_ref.shape[0] != statistics.num_features:
        raise DcaeDeployError(f"{reference} holds statistics of {mu_ref.shape[0]} features; the feature network gives "
                              f"{statistics.num_features} (the FID Inception's pool features are 2048-d)")
    mu, sigma = statistics.compute()
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)
