"""Bad arguments, ignored flags and unwritable outputs on the command lines: refused at once with a message that
says what was wrong, before any model is loaded, and nothing written (issue 17, items 5, 6 and 11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dcae_deploy.cli import run_cli
from dcae_deploy.evaluate import main as evaluate_main
from dcae_deploy.generate import main as generate_main
from dcae_deploy.parity import main as parity_main

PROMPT = ["--prompt", "a red circle on a blue background"]


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    """Randomly initialised ``demo`` pipeline saved as a folder (word tokenizer, tiny parts): runs eagerly in seconds."""
    from dcae_deploy.models.pipeline import build_pipeline, save_pipeline

    folder = tmp_path_factory.mktemp("demo-weights")
    save_pipeline(build_pipeline("demo", seed=0), folder)
    return folder


def eager(weights, out, *extra) -> list[str]:
    return [*PROMPT, "--backend", "torch", "--device", "cpu", "--checkpoint", str(weights), "--steps", "2",
            "--quiet", "--output", str(out), *extra]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("main, argv", [
    (generate_main, [*PROMPT, "--seed", "-1", "--output", "{tmp}/x.png"]),
    (parity_main, ["--artifacts", "{tmp}/nowhere", "--seed", "-1"]),
])
def test_negative_seed_is_refused_before_any_work(main, argv, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert run_cli(main, argv) == 1
    err = _error(capsys)
    assert "--seed must be a non-negative integer, got -1" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["nan", "inf", "-2"])
def test_unusable_guidance_is_refused(value, tmp_path, capsys):
    assert run_cli(generate_main, [*PROMPT, "--guidance", value, "--output", str(tmp_path / "x.png")]) == 1
    err = _error(capsys)
    assert f"--guidance {float(value)}" in err and "finite number >= 0" in err
    assert not list(tmp_path.iterdir())


def test_guidance_at_most_one_says_that_guidance_is_off(demo_weights, tmp_path, capsys):
    """A scale <= 1 runs the prompt's prediction alone, like 1 does, and the user is told so."""
    assert run_cli(generate_main, eager(demo_weights, tmp_path / "half.png", "--guidance", "0.5")) == 0
    assert "--guidance 0.5 <= 1: classifier-free guidance is off" in capsys.readouterr().err
    assert run_cli(generate_main, eager(demo_weights, tmp_path / "one.png", "--guidance", "1")) == 0
    half, one = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("half", "one"))
    assert np.array_equal(half, one)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a CUDA GPU: --device cuda is valid here")
def test_torch_on_cuda_without_cuda_is_a_clear_error(demo_weights, tmp_path, capsys):
    argv = eager(demo_weights, tmp_path / "x.png")
    argv[argv.index("cpu")] = "cuda"
    assert run_cli(generate_main, argv) == 1
    err = _error(capsys)
    assert "--device cuda with --backend torch" in err and "--device cpu" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("main, argv, message", [
    (generate_main, [*PROMPT, "--engine-dir", "{tmp}", "--output", "{tmp}/x.png"],
     "--backend auto (the default) does not take"),
    (generate_main, [*PROMPT, "--artifacts", "{tmp}", "--checkpoint", "{tmp}", "--output", "{tmp}/x.png"],
     "--checkpoint names PyTorch weights, which --backend auto (the default) does not take"),
    (parity_main, ["--artifacts", "{tmp}", "--engine-dir", "{tmp}"], "--backends has no tensorrt"),
    (evaluate_main, ["--backend", "onnxruntime", "--num-prompts", "1"], "add --artifacts EXPORT_DIR"),
    (evaluate_main, ["--num-prompts", "0", "--reconstruction-images", "0"], "nothing to evaluate"),
    (evaluate_main, ["--artifacts", "{tmp}", "--num-prompts", "0"], "nothing to evaluate"),
])
def test_ignored_or_empty_requests_are_refused(main, argv, message, tmp_path, capsys):
    assert run_cli(main, [a.format(tmp=tmp_path) for a in argv]) == 1
    assert message in _error(capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("main, argv", [
    (parity_main, ["--artifacts", "{tmp}/no-export", "--json", "{tmp}/file/p.json"]),
    (evaluate_main, ["--checkpoint", "{tmp}/no-weights", "--json", "{tmp}/file/e.json"]),
    (generate_main, [*PROMPT, "--artifacts", "{tmp}/no-export", "--output", "{tmp}/file/x.png"]),
])
def test_unwritable_output_is_refused_before_the_work(main, argv, tmp_path, capsys):
    """The output's folder is a file: refused first (the missing export or weights would be the next error)."""
    (tmp_path / "file").write_text("not a folder")
    assert run_cli(main, [a.format(tmp=tmp_path) for a in argv]) == 1
    err = _error(capsys)
    assert f"{tmp_path / 'file'} is a file, not a folder" in err
    assert "no-export" not in err and "no-weights" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_reconstruct_needs_an_image_suffix_before_loading(tmp_path, run):
    result = run("dcae_deploy", "reconstruct", "--checkpoint", tmp_path / "missing", "--image", tmp_path / "a.png",
                 "--output", tmp_path / "r", timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--output" in result.stderr and "must end in .png" in result.stderr
    assert not list(tmp_path.iterdir())


def test_evaluate_backend_default_still_runs_an_export_on_onnxruntime():
    """--backend defaults to None only to tell 'given' from 'default': with --artifacts it means onnxruntime."""
    from argparse import Namespace

    from dcae_deploy.evaluate import check_arguments

    args = Namespace(num_prompts=2, reconstruction_images=0, backend=None, artifacts="x", steps=None,
                     batch_size=8, json=None, guidance=None)
    check_arguments(args)
    assert args.backend == "onnxruntime"


def test_variants_all_lists_every_kind(run):
    result = run("dcae_deploy", "variants", "--all", timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("tiny-f32c32-sana", "demo", "tiny-t2i", "sana-600m-t2i", "tiny-sana", "tiny-gemma-2"):
        assert f"\n{name} " in result.stdout, name


def test_artifacts_may_name_the_manifest_file(tmp_path):
    from dcae_deploy.export import export_model
    from dcae_deploy.runtime.artifacts import open_export
    from dcae_deploy.runtime.errors import ArtifactsError

    export_model("tiny-f32c32-sana", tmp_path / "export", components=["decoder"], min_res=64, opt_res=64,
                 max_res=64, max_batch=1)
    assert open_export(tmp_path / "export" / "manifest.json").folder == (tmp_path / "export").resolve()
    with pytest.raises(ArtifactsError, match="is a file: pass the export folder"):
        open_export(tmp_path / "export" / "decoder.onnx")


def test_read_only_demo_cache_names_the_setting(tmp_path, run):
    (tmp_path / "file").write_text("")
    result = run("dcae_deploy.generate", *PROMPT, "--output", tmp_path / "x.png",
                 env={"DCAE_DEPLOY_CACHE": str(tmp_path / "file" / "cache")}, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "set DCAE_DEPLOY_CACHE to a writable folder" in result.stderr
    assert "--output" not in result.stderr  # the old message blamed the export's output folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
