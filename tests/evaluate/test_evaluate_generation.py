"""``python -m dcae_deploy.evaluate generation`` and ``fid-stats`` (issue 15): the FID of a class-conditional model's
samples against reference statistics, as the release's evaluator computes it, on any backend and under torchrun.

Real parts throughout: the tiny UViT class pipeline (random weights saved as a pipeline folder, and exported from it),
the FID Inception with random weights from a local file (``conftest.inception_file``). Four samples per set keep it
fast; their 2048-d covariance has rank 3, which the independent FID below uses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dcae_deploy.cli import run_cli
from dcae_deploy.evaluate import main
from dcae_deploy.evaluate.generation import batches, release_class_labels, to_levels

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--num-samples", "4", "--batch-size", "2", "--threads", "1", "--no-progress"]


def _generation(*args) -> int:
    return run_cli(main, ["generation", *map(str, args)])


def _stats(path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["mu"], data["sigma"]


def _rel(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def c2i(tmp_path_factory):
    """tiny-uvit-c2i: a PyTorch pipeline folder (random weights, seed 0) and its export (denoiser + decoder, 128 px
    only, batch up to 2), about 15 s."""
    from dcae_deploy.export import export_model
    from dcae_deploy.models.pipeline import build_pipeline, save_pipeline

    torch.set_num_threads(1)  # the 2048-d eigenvalue problem of FID takes seconds on one thread, minutes on a busy two
    root = tmp_path_factory.mktemp("c2i")
    pipeline = save_pipeline(build_pipeline("tiny-uvit-c2i", seed=0), root / "pipeline")
    export_model("tiny-uvit-c2i", root / "export", checkpoint=pipeline, components=["denoiser", "decoder"],
                 min_res=128, opt_res=128, max_res=128, max_batch=2)
    return SimpleNamespace(root=root, pipeline=pipeline, export=root / "export")


@pytest.fixture(scope="module")
def set_a(c2i, inception_file):
    """Set A: 4 samples, seed 0, ONNX Runtime; only its statistics (no reference)."""
    out = c2i.root / "a"
    assert _generation("--artifacts", c2i.export, *COMMON, "--inception-weights", inception_file,
                       "--save-statistics", out.with_suffix(".npz"), "--json", out.with_suffix(".json")) == 0
    return SimpleNamespace(npz=out.with_suffix(".npz"), report=json.loads(out.with_suffix(".json").read_text()))


@pytest.fixture(scope="module")
def set_b(c2i, inception_file, set_a):
    """Set B: seed 1 (other noise, the same labels), FID against set A's saved statistics."""
    out = c2i.root / "b"
    assert _generation("--artifacts", c2i.export, *COMMON, "--seed", "1", "--inception-weights", inception_file,
                       "--fid-reference", set_a.npz, "--save-statistics", out.with_suffix(".npz"),
                       "--json", out.with_suffix(".json")) == 0
    return SimpleNamespace(npz=out.with_suffix(".npz"), report=json.loads(out.with_suffix(".json").read_text()))


@pytest.fixture(scope="module")
def two_processes(c2i, inception_file, set_a):
    """Set A again under ``torchrun --nproc_per_node 2`` (gloo): FID against its single-process statistics, images saved."""
    out = c2i.root / "a2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "dcae_deploy.evaluate", "generation",
           "--artifacts", str(c2i.export), *COMMON, "--device", "cpu", "--inception-weights", str(inception_file),
           "--fid-reference", str(set_a.npz), "--save-statistics", str(out.with_suffix(".npz")),
           "--save-images", str(out), "--json", str(out.with_suffix(".json"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return SimpleNamespace(npz=out.with_suffix(".npz"), images=out, stdout=proc.stdout,
                           report=json.loads(out.with_suffix(".json").read_text()))


def test_labels_images_and_shards_follow_the_release():
    # the release's SampleClassDataset: torch.randint with a CPU generator, here reproduced with numpy alone
    for count, classes, seed in ((50_000, 1000, 0), (777, 10, 3), (5, 1001, 2**32 - 1)):
        expected = torch.randint(0, classes, (count,), generator=torch.Generator().manual_seed(seed)).numpy()
        assert np.array_equal(release_class_labels(count, classes, seed), expected), (count, classes, seed)
    assert np.array_equal(release_class_labels(100, 1000), release_class_labels(50_000, 1000)[:100])
    # its uint8 conversion: torch.clamp(127.5 x + 128, 0, 255).to(uint8), out-of-range and exact level edges included
    x = np.concatenate([np.random.default_rng(0).uniform(-1.2, 1.2, 4000), (np.arange(-2, 260) - 128) / 127.5])
    x = x.astype(np.float32).reshape(1, 1, 1, -1)
    reference = torch.clamp(127.5 * torch.from_numpy(x) + 128.0, 0, 255).to(torch.uint8).numpy()
    assert np.array_equal(to_levels(x), reference)
    # every sample in exactly one process's batches, whatever the number of processes
    for world in (1, 2, 3):
        got = sorted(i for rank in range(world) for a, b in batches(11, 4, rank, world) for i in range(a, b))
        assert got == list(range(11)), world


def test_the_same_set_on_two_processes_has_the_single_process_statistics_and_fid_zero(set_a, two_processes):
    mu, sigma = _stats(set_a.npz)
    mu2, sigma2 = _stats(two_processes.npz)
    np.testing.assert_allclose(mu2, mu, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sigma2, sigma, rtol=1e-9, atol=1e-7)
    report = two_processes.report
    assert report["processes"] == 2 and report["samples"] == set_a.report["samples"] == 4
    # against its own statistics, read back from the saved file: zero up to the eigenvalue solver's rounding
    assert abs(report["fid"]) < 1e-4 * np.trace(sigma), report["fid"]
    assert [line.startswith("FID ") for line in two_processes.stdout.splitlines()].count(True) == 1  # by rank 0
    labels = release_class_labels(4, 1000)
    assert sorted(p.name for p in two_processes.images.iterdir()) == [f"{i:05d}_{y}.png" for i, y in enumerate(labels)]


def test_fid_stats_of_the_saved_images_equal_the_generated_statistics(set_a, two_processes, inception_file, tmp_path):
    out = tmp_path / "ref.npz"
    assert run_cli(main, ["fid-stats", "--images", str(two_processes.images), "--resolution", "128", "--inception-weights",
                          str(inception_file), "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    (mu, sigma), (mu_ref, sigma_ref) = _stats(set_a.npz), _stats(out)
    np.testing.assert_allclose(mu_ref, mu, rtol=1e-6, atol=1e-6)  # PNG keeps the uint8 levels; 128 px: no resize
    np.testing.assert_allclose(sigma_ref, sigma, rtol=1e-5, atol=1e-5)


def test_fid_against_another_set_equals_an_independent_computation(set_a, set_b, capsys):
    (mu1, s1), (mu2, s2) = _stats(set_b.npz), _stats(set_a.npz)
    fid = set_b.report["fid"]
    assert fid > 1.0
    # scipy's sqrtm on the two Gaussians, reduced to the 3-d range of set B's covariance (4 samples: rank 3), where
    # tr sqrt(S1 S2) = tr sqrt(C K) with S1 = Q C Q^T, K = Q^T S2 Q (the full 2048-d sqrtm takes a minute here)
    from scipy.linalg import sqrtm

    q, _ = np.linalg.qr(s1 @ np.random.default_rng(0).standard_normal((s1.shape[0], 3)))
    assert np.linalg.norm(q @ (q.T @ s1 @ q) @ q.T - s1) < 1e-10 * np.linalg.norm(s1)
    trace_sqrt = np.trace(sqrtm((q.T @ s1 @ q) @ (q.T @ s2 @ q))).real
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)
    assert fid == pytest.approx(expected, rel=1e-4)
    assert set_b.report["sampling"]["seed"] == 1 and set_b.report["reference"] == str(set_a.npz)


def test_pytorch_and_onnxruntime_give_the_same_statistics(c2i, inception_file, set_a, set_b):
    out = c2i.root / "torch.npz"
    assert _generation("--checkpoint", c2i.pipeline, *COMMON, "--inception-weights", inception_file,
                       "--save-statistics", out) == 0
    (mu_t, s_t), (mu_a, s_a), (mu_b, s_b) = _stats(out), _stats(set_a.npz), _stats(set_b.npz)
    # the same samples up to fp32 rounding (a level here and there after uint8), far closer than another set
    assert _rel(mu_t, mu_a) < 1e-4 < _rel(mu_b, mu_a)
    assert _rel(s_t, s_a) < 1e-2 < _rel(s_b, s_a)


@pytest.mark.parametrize("change, message", [
    ({"--inception-weights": None}, "--inception-weights FILE is required"),
    ({"--inception-weights": "TMP/missing.pth"}, "no such file"),
    ({"--fid-reference": "TMP/missing.npz"}, "not found"),
    ({"--fid-reference": {"mu": np.zeros(3), "sigma": np.eye(3)}}, "of 3 features; the FID Inception gives 2048"),
    ({"--fid-reference": {"mu": np.zeros(4), "sigma": np.eye(3)}}, "do not fit"),
    ({"--fid-reference": {"mu": np.zeros(2048)}}, "not the 'mu' and 'sigma' arrays"),
    ({"--save-statistics": None}, "nothing to compute"),
    ({"--num-samples": "1"}, "FID needs at least 2 samples"),
    ({"--json": "TMP/FILE/out.json"}, "is a file, not a folder"),
    ({"--save-statistics": "TMP/stats.txt"}, "must end in .npz"),
    ({"--save-images": "TMP/FILE"}, "is a file: name a folder"),
    ({"--artifacts": None, "--checkpoint": "PIPELINE", "--backend": "torch"}, "--backend torch says how an export runs"),
    ({"--artifacts": None, "--checkpoint": "DEMO"}, "is 'demo', a text-to-image pipeline"),
])
def test_bad_requests_are_refused_before_any_work(c2i, inception_file, tmp_path, capsys, change, message):
    from dcae_deploy.shipped_demo import demo_folder

    (tmp_path / "FILE").write_text("a file")
    options = {"--artifacts": str(c2i.export), "--inception-weights": str(inception_file),
               "--save-statistics": str(tmp_path / "out.npz"), "--json": str(tmp_path / "out.json"), **change}
    argv = [*COMMON]  # a later flag overrides COMMON's
    for flag, value in options.items():
        if isinstance(value, dict):
            np.savez(tmp_path / "ref.npz", **value)
            value = tmp_path / "ref.npz"
        elif isinstance(value, str):
            value = {"PIPELINE": str(c2i.pipeline), "DEMO": str(demo_folder())}.get(value, value)
            value = value.replace("TMP", str(tmp_path))
        if value is not None:
            argv += [flag, str(value)]
    assert _generation(*argv) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "out.npz").exists() and not (tmp_path / "out.json").exists()
