"""``python -m dcae_deploy.generate`` and ``python -m dcae_deploy.parity`` end to end on the tiny export."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dcae_deploy.cli import run_cli
from dcae_deploy.generate import main as generate_main
from dcae_deploy.parity import main as parity_main


def test_generate_writes_one_png_per_image(artifacts_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    status = run_cli(generate_main, ["--artifacts", str(artifacts_dir), "--prompt", "a red circle on a blue background",
                                     "--batch", "2", "--steps", "2", "--height", "64", "--width", "128",
                                     "--seed", "3", "--verbose", "--output", str(out)])
    assert status == 0
    images = [np.asarray(Image.open(tmp_path / f"img-{i}.png")) for i in range(2)]
    assert all(im.shape == (64, 128, 3) for im in images) and not np.array_equal(images[0], images[1])
    assert "per-stage timings" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize(
    "args, message",
    [
        (["--artifacts", "/nonexistent/export"], "does not exist"),
        (["--height", "1024"], "outside this export's profile"),
        (["--prompt", " "], "the prompt is empty"),
        (["--variant", "tiny-t2i"], "not of 'tiny-t2i'"),
    ],
)
def test_generate_user_errors_exit_1_with_a_message(artifacts_dir, tmp_path, capsys, args, message):
    argv = ["--artifacts", str(artifacts_dir), "--prompt", "a red circle", "--steps", "1",
            "--output", str(tmp_path / "x.png"), *args]
    assert run_cli(generate_main, argv) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_parity_cli_prints_a_table_and_passes(artifacts_dir, tmp_path, capsys):
    status = run_cli(parity_main, ["--artifacts", str(artifacts_dir), "--backends", "torch,onnxruntime",
                                   "--steps", "2", "--height", "64", "--width", "64", "--json", str(tmp_path / "p.json")])
    out = capsys.readouterr().out
    assert status == 0, out
    for stage in ("text_embeddings", "first_step", "latent", "image"):
        assert f"onnxruntime    {stage}" in out
    assert "FAILED" not in out and (tmp_path / "p.json").is_file()


def test_missing_demo_is_a_clear_error(monkeypatch, tmp_path):
    import dcae_deploy.shipped_demo as demo
    from dcae_deploy.errors import DcaeDeployError

    monkeypatch.setattr(demo.importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(DcaeDeployError, match="the demo model is not installed"):
        demo.demo_artifacts()


def test_demo_cache_folder_follows_the_weights(monkeypatch, tmp_path):
    import dcae_deploy.shipped_demo as demo

    weights = tmp_path / "demo"
    weights.mkdir()
    (weights / "pipeline.json").write_text('{"variant": "demo"}')
    monkeypatch.setenv(demo.CACHE_ENV, str(tmp_path / "cache"))
    first = demo.cache_folder(weights)
    assert first.parent == tmp_path / "cache" and first.name.startswith("demo-") and len(first.name) == 17
    (weights / "pipeline.json").write_text('{"variant": "demo", "v": 2}')
    assert demo.cache_folder(weights) != first


def test_generate_runs_a_pytorch_folder_without_export(artifacts_dir, tmp_path):
    """--backend torch --checkpoint FOLDER (no --artifacts) runs the weights directly: the same image as the
    torch backend on an export of those weights."""
    from dcae_deploy.models.pipeline import build_pipeline, save_pipeline

    save_pipeline(build_pipeline("demo", seed=0), tmp_path / "ckpt")  # what the fixture export was made from
    common = ["--prompt", "a red circle", "--steps", "2", "--height", "64", "--width", "64", "--backend", "torch",
              "--device", "cpu", "--quiet"]
    assert run_cli(generate_main, [*common, "--checkpoint", str(tmp_path / "ckpt"), "--output", str(tmp_path / "a.png")]) == 0
    assert run_cli(generate_main, [*common, "--artifacts", str(artifacts_dir), "--output", str(tmp_path / "b.png")]) == 0
    eager, exported = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "ab")
    assert np.array_equal(eager, exported)


def test_checkpoint_without_artifacts_needs_the_torch_backend(tmp_path, capsys):
    argv = ["--prompt", "a red circle", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "x.png")]
    assert run_cli(generate_main, argv) == 1
    assert "add --backend torch" in capsys.readouterr().err
