"""The FID path (:mod:`dcae_deploy.metrics.fid`) against independent computations: the closed form of the Fréchet
distance of Gaussians, scipy's matrix square root (the release's ``frechet_distance``), numpy's mean and covariance,
and the release's ``.npz`` reference-statistics format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.metrics.fid import (
    FeatureStatistics,
    fid_against_reference,
    frechet_distance,
    read_fid_statistics,
    write_fid_statistics,
)


def _spd(rng, d: int, scale: float = 1.0) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _scipy_fid(mu1, s1, mu2, s2) -> float:
    """The release's (pytorch-fid's) formula: scipy.linalg.sqrtm of the product."""
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_diagonal_covariances_match_the_closed_form():
    """Diagonal (commuting) covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2, exactly."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    v1, v2 = rng.uniform(0.1, 3, 64), rng.uniform(0.1, 3, 64)
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(closed, rel=1e-10)
    assert frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0, abs=1e-9)


def test_commuting_covariances_match_the_closed_form():
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: (S1 S2)^1/2 = Q diag(sqrt(ab)) Q^T,
    so d^2 = |dmu|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    a, b = rng.uniform(0.05, 4, 32), rng.uniform(0.05, 4, 32)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32) + 1
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(closed, rel=1e-9)


def test_general_covariances_match_scipy_sqrtm_and_the_symmetric_form():
    """Non-commuting covariances: tr (S1 S2)^1/2 = tr (S1^1/2 S2 S1^1/2)^1/2 (scipy sqrtm, two ways)."""
    rng = np.random.default_rng(2)
    for d in (8, 256):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _spd(rng, d), _spd(rng, d, scale=2.0)
        r1 = linalg.sqrtm(s1).real
        symmetric = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(r1 @ s2 @ r1).real)
        got = frechet_distance(mu1, s1, mu2, s2)
        assert got == pytest.approx(symmetric, rel=1e-8)
        assert got == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-8)
        assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-8)  # symmetric in its arguments


def test_rank_deficient_covariances_of_few_samples_stay_finite_and_match_scipy():
    """Fewer samples than dimensions (a reconstruction run on a handful of photographs): singular covariances."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 64)), rng.standard_normal((6, 64)) + 0.3
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (x, y)]
    got = frechet_distance(*stats[0], *stats[1])
    assert np.isfinite(got) and got > 0
    assert got == pytest.approx(_scipy_fid(*stats[0], *stats[1]), rel=1e-6)


def test_feature_statistics_are_numpys_mean_and_unbiased_covariance():
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((37, 16)) * rng.uniform(0.5, 3, 16) + rng.standard_normal(16)
    stats = FeatureStatistics(16)
    for chunk in np.array_split(feats, 5):
        stats.update(torch.from_numpy(chunk).float())
    mu, sigma = stats.compute()
    f32 = feats.astype(np.float32).astype(np.float64)  # what the float32 features hold
    np.testing.assert_allclose(mu, f32.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f32, rowvar=False), rtol=1e-9, atol=1e-10)
    with pytest.raises(DcaeDeployError, match="at least 2 images"):
        one = FeatureStatistics(16)
        one.update(torch.zeros(1, 16))
        one.compute()


def test_fid_against_reference_reads_the_release_npz(tmp_path):
    """Generated features against a reference file written as the release writes it (np.savez(mu=, sigma=))."""
    rng = np.random.default_rng(5)
    d = 32
    mu_ref, sigma_ref = rng.standard_normal(d), _spd(rng, d)
    np.savez(tmp_path / "ref.npz", mu=mu_ref, sigma=sigma_ref)
    feats = rng.multivariate_normal(mu_ref + 0.5, sigma_ref, size=400)
    stats = FeatureStatistics(d)
    stats.update(torch.from_numpy(feats))
    f = feats
    expected = _scipy_fid(f.mean(0), np.cov(f, rowvar=False), mu_ref, sigma_ref)
    assert fid_against_reference(stats, tmp_path / "ref.npz") == pytest.approx(expected, rel=1e-8)

    write_fid_statistics(tmp_path / "ours.npz", *stats.compute())  # our own writer: the same format back
    mu, sigma = read_fid_statistics(tmp_path / "ours.npz")
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    assert sorted(np.load(tmp_path / "ours.npz").files) == ["mu", "sigma"]


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"not a zip", "cannot read FID reference statistics"),
    ({"m": np.zeros(4), "s": np.eye(4)}, r"holds \['m', 's'\], not the 'mu' and 'sigma'"),
    ({"mu": np.zeros(4), "sigma": np.eye(3)}, "do not fit"),
    ({"mu": np.full(4, np.nan), "sigma": np.eye(4)}, "NaN/Inf"),
])
def test_bad_reference_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "ref.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.savez(path, **content)
    with pytest.raises(DcaeDeployError, match=message):
        read_fid_statistics(path)


def test_reference_of_another_feature_width_is_refused(tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(8), sigma=np.eye(8))
    stats = FeatureStatistics(2048)
    with pytest.raises(DcaeDeployError, match="statistics of 8 features.*2048"):
        fid_against_reference(stats, tmp_path / "ref.npz")
