"""``torchrun --nproc_per_node 2 -m dcae_deploy.evaluate reconstruction``: each process takes every other image and the
metric states are gathered (gloo on CPU), so the numbers equal a single process's on all the images."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcae_deploy.cli import run_cli
from dcae_deploy.evaluate import main

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_give_the_single_process_metrics(photos, inception_file, alexnet_file, tmp_path, capsys):
    args = ["reconstruction", "--images", str(photos), "--resolution", "64", "--device", "cpu", "--threads", "1",
            "--batch-size", "1", "--lpips-weights", str(alexnet_file), "--inception-weights", str(inception_file)]
    assert run_cli(main, [*args, "--json", str(tmp_path / "one.json")]) == 0
    capsys.readouterr()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "dcae_deploy.evaluate", *args, "--json", str(tmp_path / "two.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("reconstruction of 4 images") == 1  # one table, from rank 0

    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["images"]["evaluated"] == one["images"]["evaluated"] == 4
    a, b = one["backends"]["torch"], two["backends"]["torch"]
    for key in ("psnr", "ssim", "lpips"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
    # FID needs every image's features: on one process's half it would be far off (2 samples); gathered, it matches
    assert b["fid"] == pytest.approx(a["fid"], rel=1e-5)
