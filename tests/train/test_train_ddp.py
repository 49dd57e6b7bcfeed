"""DDP on CPU: two gloo processes under torchrun keep identical replicas (model and discriminator)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_gloo_replicas_stay_identical(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "dcae_deploy.train", "autoencoder", "--phase", "low_res_local_refinement",
        "--variant", "tiny-f32c32-sana", "--data", "shapes", "--num-images", "8", "--resolution", "32",
        "--steps", "3", "--batch-size", "2", "--lr", "1e-3", "--device", "cpu", "--log-every", "1",
        "--checkpoint-every", "2", "--out", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout

    sums = [(out / "replicas" / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert sums[0] == sums[1]
    assert {line.split()[0] for line in sums[0].splitlines()} == {"model", "discriminator"}
    assert (out / "checkpoints" / "step-0000002" / "rng-rank1.pt").is_file()
    assert (out / "final" / "model.safetensors").is_file()
    rows = (out / "loss_log.csv").read_text().splitlines()
    assert len(rows) == 1 + 3
