from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from dcae_deploy import build_autoencoder, save_autoencoder


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcae_deploy", *args], capture_output=True, text=True, timeout=300)


def test_variants_lists_parameter_counts():
    out = run("variants")
    assert out.returncode == 0, out.stderr
    assert "f32c32-sana" in out.stdout and "312,250,275" in out.stdout
    assert not [line for line in out.stdout.splitlines() if line.startswith("tiny-")]  # --all adds them


def test_reconstruct_writes_an_image(tmp_path):
    save_autoencoder(build_autoencoder("tiny-f32c32-sana"), tmp_path / "ae")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    out = run("reconstruct", "--checkpoint", str(tmp_path / "ae"), "--image", str(tmp_path / "in.png"),
              "--output", str(tmp_path / "out.png"))
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "out.png").size == (96, 64)  # cropped to multiples of 32


def test_user_error_exits_1_without_traceback(tmp_path):
    out = run("reconstruct", "--checkpoint", str(tmp_path / "missing"), "--image", "x.png", "--output", "y.png")
    assert out.returncode == 1
    assert out.stderr.startswith("error: checkpoint not found") and "Traceback" not in out.stderr
