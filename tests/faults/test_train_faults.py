"""Training faults: a failing rank under torchrun, unreadable images, resumes that cannot continue exactly
(another phase, changed settings) and corrupt checkpoints. Every run is a real subprocess (real torchrun
and gloo for the distributed ones); each test checks the exit code, the message and the run folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TRAIN = "dcae_deploy.train"
TINY = ["--variant", "tiny-f32c32-sana", "--resolution", "32", "--device", "cpu", "--log-every", "1"]
SHAPES = [*TINY, "--data", "shapes", "--num-images", "4", "--batch-size", "2"]
TORCHRUN_TIMEOUT = 120  # the whole torchrun, startup included; a fixed run ends in ~10 s

needs_gloo = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _images(folder: Path, n: int, truncate: int | None = None) -> Path:
    """``n`` random 40x48 PNGs in ``folder``; image ``truncate`` cut to half its bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((48, 40, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    if truncate is not None:
        path = folder / f"{truncate}.png"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return folder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (the run's unique output folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _torchrun(out: Path, *args: str, nproc: int = 2, script: Path | None = None,
              ) -> tuple[subprocess.CompletedProcess, float, list[int]]:
    """``python -m torch.distributed.run ... -m dcae_deploy.train args --out out`` (or ``script out``):
    (result, seconds, pids of leftover processes). A hang fails the test, and every process of the run is
    killed then (torchrun starts its workers in sessions of their own, so they are found by the output
    folder on their command line)."""
    target = [str(script), str(out)] if script else ["-m", TRAIN, *args, "--out", str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=TORCHRUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        for pid in [*_pids_mentioning(str(out)), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate()
        pytest.fail(f"torchrun still running after {TORCHRUN_TIMEOUT} s: a rank hangs")
    elapsed = time.perf_counter() - start
    time.sleep(0.5)  # let the kernel reap the workers torchrun just stopped
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), elapsed, _pids_mentioning(str(out))


def _rank_exit_codes(output: str) -> dict[int, int]:
    """torchrun's failure summary: ``{rank: exit code}`` of every worker."""
    pairs = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", output)
    return {int(rank): int(code) for rank, code in pairs}


def _worker_frames(output: str) -> list[str]:
    """Traceback lines inside dcae_deploy (torchrun's own launcher traceback does not count)."""
    return [line for line in output.splitlines() if line.strip().startswith("File ") and "dcae_deploy" in line]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _log_steps(run: Path) -> list[int]:
    return [int(row.split(",")[0]) for row in (run / "loss_log.csv").read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def _trained_once(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", TRAIN, "autoencoder", "--phase", "low_res_full", *SHAPES,
                             "--steps", "2", "--checkpoint-every", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.json", "step-0000001", "step-0000002"]
    return out


@pytest.fixture
def trained(_trained_once, tmp_path) -> Path:
    """A copy of a finished 2-step low_res_full run with checkpoints after steps 1 and 2."""
    out = tmp_path / "run"
    shutil.copytree(_trained_once, out)
    return out


# ---------------------------------------------------------------------------------------------
# One rank fails under torchrun
# ---------------------------------------------------------------------------------------------


@needs_gloo
def test_one_failing_rank_stops_every_rank_within_seconds(tmp_path):
    # 2 images, 2 ranks, batch 1: at step 0 exactly one rank reads the truncated image; the other rank
    # waits in DDP's all-reduce for it (before the fix the failing rank then waited in a barrier: hang)
    data = _images(tmp_path / "images", 2, truncate=1)
    out = tmp_path / "run"
    result, elapsed, left = _torchrun(
        out, "autoencoder", "--phase", "low_res_full", *TINY, "--batch-size", "1", "--num-workers", "0",
        "--steps", "3", "--data", f"folder:{data}",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert left == [], f"processes of the run still alive: {left}"
    codes = _rank_exit_codes(output)
    assert sorted(codes) == [0, 1] and all(code != 0 for code in codes.values()), output[-3000:]
    bad = str(data / "1.png")
    assert output.count("error:") == 1, output[-3000:]
    assert output.count(f"error: cannot read image {bad}") == 1, output[-3000:]
    assert _worker_frames(output) == [], output[-3000:]  # no traceback of any rank
    assert not out.exists() or list(out.rglob("*")) == []  # no empty loss_log.csv, no checkpoint


@needs_gloo
def test_an_error_every_rank_hits_is_reported_once(tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "no-such-folder"
    result, elapsed, left = _torchrun(out, "autoencoder", "--phase", "low_res_full", *TINY, "--batch-size", "1",
                                      "--steps", "2", "--data", f"folder:{missing}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and elapsed < 60 and left == []
    assert output.count("error:") == 1, output[-3000:]
    assert f"error: image folder not found: {missing}" in output
    assert _worker_frames(output) == []
    assert not out.exists()


STUCK_RANK = """
import sys, time
from dcae_deploy.cli import run_cli
from dcae_deploy.train.distributed import init_distributed, mean_over_ranks, run_ranked

def main(argv):
    info = init_distributed("cpu", timeout_s=3)
    def body():
        if info.rank == 1:
            time.sleep(300)  # stuck (a dead lock, a hung file system): never joins the collective
        mean_over_ranks(info, {"loss": 1.0})
    return run_ranked(info, body)

sys.exit(run_cli(main))
"""


@needs_gloo
def test_a_stuck_rank_makes_the_others_fail_after_the_timeout(tmp_path):
    script = tmp_path / "stuck_rank.py"
    script.write_text(STUCK_RANK)
    out = tmp_path / "marker"  # only names the run's processes
    result, elapsed, left = _torchrun(out, script=script)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and left == []
    assert elapsed < 60, f"took {elapsed:.0f} s"
    codes = _rank_exit_codes(output)
    assert sorted(codes) == [0, 1] and all(code != 0 for code in codes.values()), output[-3000:]
    assert output.count("error:") == 1, output[-3000:]
    assert "error: rank 0 of 2 lost contact with the other training processes" in output
    assert "within 3 s" in output and "--dist-timeout" in output
    assert _worker_frames(output) == []


# ---------------------------------------------------------------------------------------------
# Unreadable data; a run that fails to start leaves nothing behind
# ---------------------------------------------------------------------------------------------


def test_unreadable_image_in_a_loader_worker_names_the_file_and_leaves_no_log(run, tmp_path):
    data = _images(tmp_path / "images", 4, truncate=2)
    out = tmp_path / "run"
    result = run(TRAIN, "autoencoder", "--phase", "low_res_full", *TINY, "--batch-size", "4", "--num-workers", "1",
                 "--steps", "2", "--data", f"folder:{data}", "--out", out, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: cannot read image {data / '2.png'}: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr
    assert not out.exists()  # the loss log is created by the first completed step, not before


# ---------------------------------------------------------------------------------------------
# Resumes that cannot continue the run exactly
# ---------------------------------------------------------------------------------------------


def test_resume_into_another_phase_is_a_clear_error(run, trained):
    before = _tree(trained)
    result = run(TRAIN, "autoencoder", "--phase", "high_res_latent_adaptation", *SHAPES, "--steps", "3",
                 "--resume", trained, "--out", trained, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: checkpoint ") and "step-0000002" in message
    for words in ("phase 'low_res_full'", "--phase high_res_latent_adaptation", "--phase low_res_full", "--init"):
        assert words in message, message
    assert _tree(trained) == before  # nothing written


def test_resume_with_changed_settings_is_refused_unless_allowed(run, trained):
    before = _tree(trained)
    changed = ["autoencoder", "--phase", "low_res_full", *SHAPES, "--steps", "3", "--batch-size", "1",
               "--lr", "0.001", "--seed", "7", "--resume", trained, "--out", trained]
    result = run(TRAIN, *changed, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    err = result.stderr
    assert "error: cannot resume from" in err and "step-0000002" in err
    for change in ("batch_size: 2 -> 1", "seed: 0 -> 7", "phase.lr: 6.4e-05 -> 0.001", "--allow-changed-config"):
        assert change in err, err
    assert "phase.batch_size" not in err  # one line per setting
    assert _tree(trained) == before

    result = run(TRAIN, *changed, "--allow-changed-config", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = result.stdout[result.stdout.index("warning: --allow-changed-config"):]
    assert all(c in warning for c in ("batch_size: 2 -> 1", "seed: 0 -> 7", "phase.lr: 6.4e-05 -> 0.001"))
    assert _log_steps(trained) == [0, 1, 2]
    assert json.loads((trained / "checkpoints" / "latest.json").read_text())["folder"] == "step-0000003"


# ---------------------------------------------------------------------------------------------
# Corrupt checkpoints
# ---------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _flip_byte(path: Path) -> None:
    """Alter one byte of tensor data: the file still parses, its weights are garbage."""
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_truncate, _flip_byte], ids=["truncated", "bit-flip"])
def test_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(run, trained, corrupt):
    newest, older = trained / "checkpoints" / "step-0000002", trained / "checkpoints" / "step-0000001"
    corrupt(newest / "model.safetensors")
    result = run(TRAIN, "autoencoder", "--phase", "low_res_full", *SHAPES, "--steps", "3",
                 "--resume", trained, "--out", trained, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert f"warning: skipping {newest}: {newest / 'model.safetensors'} is corrupt" in out, out
    assert f"resuming from {older}, the newest intact checkpoint" in out
    assert f"resumed from {older} at step 1" in out
    aside = newest.with_name("step-0000002.corrupt")
    assert f"warning: moved the corrupt checkpoint {newest} to {aside}" in out
    assert _log_steps(trained) == [0, 1, 2]  # steps 1 and 2 ran again, nothing twice
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == [
        "latest.json", "step-0000001", "step-0000002.corrupt", "step-0000003"]
    assert json.loads((trained / "checkpoints" / "latest.json").read_text())["folder"] == "step-0000003"


def test_no_intact_checkpoint_names_every_corrupt_file(run, trained):
    ckpts = trained / "checkpoints"
    _truncate(ckpts / "step-0000002" / "model.safetensors")
    _flip_byte(ckpts / "step-0000001" / "ema.safetensors")
    before = _tree(trained)
    result = run(TRAIN, "autoencoder", "--phase", "low_res_full", *SHAPES, "--steps", "3",
                 "--resume", trained, "--out", trained, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    err = result.stderr
    assert f"error: no intact training checkpoint under {ckpts}" in err, err
    assert f"{ckpts / 'step-0000002' / 'model.safetensors'} is corrupt: 1000 bytes" in err
    assert f"{ckpts / 'step-0000001' / 'ema.safetensors'} is corrupt: its SHA-256 differs" in err
    assert _tree(trained) == before
