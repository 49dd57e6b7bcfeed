"""The shipped demo model (dcae_deploy/demo): it loads, reconstructs, and draws what it is told.

The floors below are regression bars for the weights in the repository, measured on small samples
(the full evaluation is `python -m dcae_deploy.evaluate`, 100 prompts / 64 images: PSNR 28.0 dB, colour
100%, shape 79%, the same through ONNX Runtime; the issue's goals are 28 dB, 90% and 70%).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from dcae_deploy.data.judge import judge_image, score
from dcae_deploy.evaluate import heldout_prompts, reconstruction_psnr
from dcae_deploy.models.pipeline import load_pipeline
from dcae_deploy.shipped_demo import demo_folder


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    from dcae_deploy.export import export_model
    from dcae_deploy.shipped_demo import DEMO_EXPORT

    out = tmp_path_factory.mktemp("demo-export")
    torch.set_num_threads(1)
    export_model("demo", out, checkpoint=demo_folder(), **DEMO_EXPORT)
    return out


def test_demo_reconstructs_heldout_images():
    models = load_pipeline(demo_folder())
    with torch.no_grad():
        psnr = reconstruction_psnr(models.autoencoder, count=16)["psnr_mean"]
    assert psnr >= 27.0, psnr  # measured 27.4 dB on these 16 images, 28.0 dB on 64


def test_demo_prompt_adherence_through_onnxruntime(demo_export):
    from dcae_deploy.runtime.generation import GenerationConfig, TextToImage

    prompts = heldout_prompts(16)
    with TextToImage.open(demo_export, backend="onnxruntime", progress=False) as pipe:
        images = [pipe.generate(GenerationConfig(prompts=(p,), seed=i)).images[0] for i, p in enumerate(prompts)]
    result = score(prompts, images)
    assert result["fg_colour_accuracy"] >= 0.9, result
    assert result["bg_colour_accuracy"] >= 0.9, result
    assert result["shape_accuracy"] >= 0.5, result  # measured 10 of 16 (62%); 79% on 100 (python -m dcae_deploy.evaluate)


def test_evaluate_draws_the_same_images_with_pytorch_and_onnxruntime(demo_export):
    """`python -m dcae_deploy.evaluate` on the checkpoint (PyTorch) and on the export (ONNX Runtime) start from the
    same noise, so the two measure the same images."""
    from dcae_deploy.evaluate import torch_generator
    from dcae_deploy.runtime.generation import GenerationConfig, TextToImage

    prompts = heldout_prompts(2)
    models = load_pipeline(demo_folder())
    c = models.config.sampling
    eager = torch_generator(models, c.steps, c.guidance_scale, c.height, c.width)(prompts, 7)
    with TextToImage.open(demo_export, backend="onnxruntime", progress=False) as pipe:
        exported = pipe.generate(GenerationConfig(prompts=tuple(prompts), seed=7)).images
    diff = np.abs(np.stack(eager).astype(int) - exported.astype(int))
    assert diff.max() <= 2, diff.max()  # measured 1 (another seed: mean 12, max 207)


@pytest.fixture(scope="module")
def demo_int8_export(tmp_path_factory):
    from dcae_deploy.export import export_model

    out = tmp_path_factory.mktemp("demo-int8")
    export_model("demo", out, checkpoint=demo_folder(), precision="int8", min_res=128, opt_res=128, max_res=256,
                 max_batch=2)  # calibrated on the shapes and the demo's own sampling trajectories (auto)
    return out


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_demo_runs_end_to_end_through_its_int8_export(demo_export, demo_int8_export, backend):
    """The int8 export's prompt adherence stays within 5 points of the fp32 export's on the same held-out prompts and
    seeds (100 prompts, `python -m dcae_deploy.evaluate --artifacts`: fp32 79%, int8 80% on ONNX Runtime, 75% on
    OpenVINO)."""
    from dcae_deploy.runtime.generation import GenerationConfig, TextToImage

    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino package is not installed")
    prompts = heldout_prompts(16)
    scores = []
    for folder in (demo_export, demo_int8_export):
        with TextToImage.open(folder, backend=backend, progress=False) as pipe:
            images = [pipe.generate(GenerationConfig(prompts=(p,), seed=i)).images[0] for i, p in enumerate(prompts)]
        scores.append(score(prompts, images))
    fp32, int8 = scores
    assert int8["fg_colour_accuracy"] >= 0.9 and int8["bg_colour_accuracy"] >= 0.9, int8
    assert int8["joint_accuracy"] >= fp32["joint_accuracy"] - 2 / 16, (fp32, int8)  # 16 prompts: 2 of them


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_main_job_generates_the_prompted_colours(demo_export, cache, tmp_path):
    """The README's main command, from a fresh cache folder: export on first use, then ONNX Runtime."""
    out = tmp_path / "out.png"
    env = {"DCAE_DEPLOY_CACHE": str(cache), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "dcae_deploy.generate", "--prompt", "a yellow square on a purple background",
         "--output", str(out), "--seed", "3"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    from PIL import Image

    judged = judge_image(np.asarray(Image.open(out).convert("RGB")))
    assert (judged.fg_colour, judged.bg_colour) == ("yellow", "purple"), judged


def test_tensorrt_backend_builds_the_demo_engines_where_they_can_run(cache, tmp_path):
    """--backend tensorrt without --artifacts builds the demo's engines into the cache once and runs them. Where
    no GPU could run them, nothing is built (tests/faults/test_engine_faults.py checks that message)."""
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT-RTX (the test extra installs it on Linux/Windows)")
    from dcae_deploy.tensorrt_support import gpu_problem

    problem = gpu_problem()
    if problem is not None:
        pytest.skip(f"no GPU here that TensorRT engines run on ({problem})")
    env = {"DCAE_DEPLOY_CACHE": str(cache), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "dcae_deploy.generate", "--prompt", "a red circle", "--backend", "tensorrt",
         "--output", str(tmp_path / "trt.png")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    plans = sorted(p.name for p in cache.glob("demo-*/engines/*/*.plan"))
    assert plans == sorted(f"{c}.plan" for c in ("decoder", "decoder_global", "decoder_local", "denoiser",
                                                  "text_encoder")), run.stderr[-2000:]
    assert run.returncode == 0 and (tmp_path / "trt.png").is_file(), run.stderr[-2000:]
