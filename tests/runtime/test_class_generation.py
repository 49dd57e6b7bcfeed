"""Class-conditional generation (DC-AE-Diffusion UViT / DiT exports) through the runtime: backends agree, the CLI
writes PNGs or a grid, bad requests are refused before any work (issue 14)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dcae_deploy.cli import run_cli
from dcae_deploy.generate import main as generate_main
from dcae_deploy.parity import main as parity_main


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Random-weight exports of the tiny UViT, DiT and USiT class pipelines (denoiser + decoder, batch up to 2)."""
    import torch

    from dcae_deploy.export import export_model

    torch.set_num_threads(1)
    folders = {}
    for variant in ("tiny-uvit-c2i", "tiny-dit-c2i", "tiny-usit-c2i"):
        folders[variant] = tmp_path_factory.mktemp(variant)
        export_model(variant, folders[variant], components=["denoiser", "decoder"], max_batch=2)
    return folders


@pytest.mark.parametrize("variant, request_kw", [
    ("tiny-uvit-c2i", dict(class_labels=(1, 2, 3), guidance_scale=4.0)),       # dpm-solver++-uvit, two calls
    ("tiny-dit-c2i", dict(class_labels=(7, 8), guidance_scale=3.0, steps=12)),  # adm, learned sigma, 2B batch
    ("tiny-dit-c2i", dict(class_labels=(7,), guidance_scale=1.0, sampler="ddim", steps=6)),
    ("tiny-usit-c2i", dict(class_labels=(2, 3), guidance_scale=1.5)),           # sit-dopri5, adaptive steps
    ("tiny-usit-c2i", dict(class_labels=(2,), guidance_scale=4.0, sampler="sit-heun", steps=5)),
])
def test_onnxruntime_matches_pytorch_stage_by_stage(exports, variant, request_kw):
    from dcae_deploy.parity import compare_stages, run_backend
    from dcae_deploy.runtime import GenerationConfig, load_artifacts

    artifacts = load_artifacts(exports[variant])
    request = GenerationConfig(seed=3, **request_kw)
    reference = run_backend(artifacts, "torch", request)
    result = run_backend(artifacts, "onnxruntime", request)
    records = compare_stages(result.stages, reference.stages, "fp32", "onnxruntime")
    assert [r.component for r in records] == ["first_step", "latent", "image"]
    assert all(r.passed for r in records), [(r.component, r.rel_l2) for r in records]
    assert result.images.shape == (len(request_kw["class_labels"]), 128, 128, 3)
    # labels steer the image: another label, same seed, another latent
    other = run_backend(artifacts, "onnxruntime", GenerationConfig(seed=3, **dict(request_kw, class_labels=(0,) * len(
        request_kw["class_labels"]))))
    assert not np.allclose(other.stages["latent"], result.stages["latent"])


def test_generate_cli_writes_one_png_per_label_or_a_grid(exports, tmp_path):
    folder = exports["tiny-uvit-c2i"]
    common = ["--artifacts", str(folder), "--class-labels", "279,333,979", "--guidance", "6.0", "--quiet"]
    assert run_cli(generate_main, [*common, "--output", str(tmp_path / "img.png")]) == 0
    singles = [np.asarray(Image.open(tmp_path / f"img-{i}.png")) for i in range(3)]
    assert all(im.shape == (128, 128, 3) for im in singles)
    assert run_cli(generate_main, [*common, "--grid", "--output", str(tmp_path / "grid.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (128, 3 * 128, 3)
    assert all(np.array_equal(grid[:, i * 128:(i + 1) * 128], singles[i]) for i in range(3))


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a cat"], "is class-conditional: pass class labels"),
    (["--class-labels", "1000"], "class label(s) 1000 out of range"),
    (["--class-labels", "cat"], "must be comma-separated integers"),
    (["--class-labels", "1", "--sampler", "sit-euler"], "choose one of adm, ddim"),
    (["--class-labels", "1", "--prompt", "x"], "exclude each other"),
])
def test_bad_class_requests_are_refused(exports, tmp_path, capsys, args, message):
    argv = ["--artifacts", str(exports["tiny-dit-c2i"]), *args, "--output", str(tmp_path / "x.png")]
    assert run_cli(generate_main, argv) == 1
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_a_text_export_refuses_class_labels(capsys, tmp_path):
    assert run_cli(generate_main, ["--class-labels", "1", "--output", str(tmp_path / "x.png")]) == 1
    assert "is a text-to-image model" in capsys.readouterr().err


def test_parity_cli_covers_the_family(exports, capsys):
    assert run_cli(parity_main, ["--artifacts", str(exports["tiny-dit-c2i"]), "--class-labels", "4,5",
                                 "--steps", "8"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime    latent" in out and "FAILED" not in out and "text_embeddings" not in out


def test_class_generation_on_onnxruntime_imports_no_torch(exports, tmp_path):
    code = (
        "import sys\n"
        "from dcae_deploy.runtime import GenerationConfig, TextToImage\n"
        f"with TextToImage.open({str(exports['tiny-uvit-c2i'])!r}, progress=False) as g:\n"
        "    g.generate(GenerationConfig(class_labels=(1,), guidance_scale=2.0))\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('dcae_deploy.export', 'dcae_deploy.engines'))]\n"
        "assert not bad, bad\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_tensorrt_rtx_engines_build_with_profiles_that_cover_guided_batches(exports, tmp_path):
    """TensorRT-RTX builds ahead of time without a GPU: the denoiser's profile reaches 2 x --max-batch (CFG)."""
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT-RTX (the test extra installs it on Linux/Windows)")
    import shutil

    from dcae_deploy.engines.build import build_engines
    from dcae_deploy.tensorrt_support import read_sidecar

    folder = tmp_path / "export"
    shutil.copytree(exports["tiny-dit-c2i"], folder)
    build_engines(folder, backend="tensorrt-rtx")
    (engine_dir,) = (folder / "engines").iterdir()
    info = read_sidecar(engine_dir / "denoiser.json")
    assert {name: p.max[0] for name, p in info.profiles.items()} == {"latent": 4, "timestep": 4, "class_labels": 4}
    assert (engine_dir / "denoiser.plan").stat().st_size == info.plan_bytes
