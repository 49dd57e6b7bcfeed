"""The export stage under faults (issue 17, items 2, 9 and 10), through ``python -m dcae_deploy.export``:

* killed (SIGKILL) at several points: the next export into the folder removes the dead export's staging folder
  (and only its: a live export's stays) and writes a valid, consistent export;
* a checkpoint with NaN weights, one whose fp32 model overflows, one that overflows fp16: exit 1, an error
  naming NaN/Inf and whose fault it is, no graphs, and the previous export in the folder left intact with its
  passing ``parity.json`` (a failed gate's report goes to ``parity-failed.json``);
* a profile past TensorRT's per-tensor limit: refused at once, with the limit and the largest --max-res.

Tiny decoder-only exports of ``tiny-f32c32-sana`` at 64 px (one static side, batch 1): real exports, real
ONNX Runtime, real subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dcae_deploy.manifest import read_manifest

VARIANT = "tiny-f32c32-sana"
PROFILE = ["--components", "decoder", "--min-res", "64", "--opt-res", "64", "--max-res", "64", "--max-batch", "1"]
STAGING = ".export-staging-*"
EXPORT_TIMEOUT = 300


# --- helpers ----------------------------------------------------------------------------------


def export_cli(run, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("dcae_deploy.export", "--model", VARIANT, *PROFILE, "--output", out, *extra, timeout=EXPORT_TIMEOUT)


def start_export(out: Path) -> subprocess.Popen:
    """The export as a background process (as ``run_module`` runs it), to be killed mid-way."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dcae_deploy.export", "--model", VARIANT, *PROFILE, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def wait_for(proc: subprocess.Popen, condition, timeout: float = EXPORT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the export ended before the point where the test kills it"
        assert time.monotonic() < deadline, "the export never reached the point where the test kills it"
        time.sleep(0.02)


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_valid_export(out: Path) -> None:
    """A complete export: the manifest's hashes match the files, parity.json passed and covers exactly the
    manifest's components, no staging folder and no failed report beside it."""
    manifest = read_manifest(out)  # verifies every file's sha256
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] is True and report["variant"] == manifest.variant
    assert report["precision"] == manifest.precision
    assert {r["component"] for r in report["records"]} == set(manifest.components)
    assert all(r["passed"] for r in report["records"])
    assert not list(out.glob(STAGING)), "a staging folder was left behind"
    assert not (out / "parity-failed.json").exists()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_export(tmp_path_factory):
    """A passing export (in this process): copied into a test's folder as 'the previous export'."""
    from dcae_deploy.export import export_model

    out = tmp_path_factory.mktemp("valid-export")
    export_model(VARIANT, out, components=["decoder"], min_res=64, opt_res=64, max_res=64, max_batch=1)
    assert_valid_export(out)
    return out


def save_decoder_checkpoint(folder: Path, edit) -> Path:
    """A tiny autoencoder checkpoint (``save_autoencoder``) after ``edit(model)`` changed its weights."""
    from dcae_deploy import build_autoencoder, save_autoencoder
    from dcae_deploy.variants import get_variant

    torch.manual_seed(0)
    model = build_autoencoder(get_variant(VARIANT))
    with torch.no_grad():
        edit(model)
    return save_autoencoder(model, folder)


# --- item 9: killed exports -------------------------------------------------------------------


@pytest.mark.parametrize("kill_point", ["staging-created", "graph-in-staging"])
def test_killed_export_is_cleaned_up_by_the_next_export(kill_point, tmp_path, run):
    out = tmp_path / "out"
    out.mkdir()
    proc = start_export(out)
    try:
        if kill_point == "staging-created":
            wait_for(proc, lambda: any(out.glob(STAGING)))
        else:
            wait_for(proc, lambda: any(out.glob(f"{STAGING}/*.onnx")))
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = list(out.glob(STAGING))
    assert left, "SIGKILL leaves the staging folder (the situation under test)"
    assert not (out / "manifest.json").exists()

    # A live export's staging folder (this test's own pid) must survive; a dead one's (no owner.json) must not.
    live = out / f".export-staging-{os.getpid()}-live"
    live.mkdir()
    dead = out / f".export-staging-{dead_pid()}-dead"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "partial.onnx").write_bytes(b"\0" * 100)

    result = export_cli(run, out)
    assert result.returncode == 0, result.stderr
    assert live.is_dir(), "the staging folder of a live export was removed"
    live.rmdir()
    assert_valid_export(out)
    assert "killed" in result.stderr and all(p.name in result.stderr for p in left)


def test_export_killed_over_a_previous_export_leaves_it_usable_and_reexport_is_consistent(valid_export, tmp_path, run):
    out = tmp_path / "out"
    shutil.copytree(valid_export, out)
    (out / "engines" / "tensorrt-rtx-fp32").mkdir(parents=True)  # engines of the previous graphs
    (out / "engines" / "tensorrt-rtx-fp32" / "decoder.plan").write_bytes(b"plan")
    before = snapshot(out)
    proc = start_export(out)
    try:
        wait_for(proc, lambda: any(out.glob(f"{STAGING}/*.onnx")))
    finally:
        proc.kill()
        proc.wait()
    assert list(out.glob(STAGING))
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".export-staging-")} == before
    read_manifest(out)  # the previous export is intact

    result = export_cli(run, out)
    assert result.returncode == 0, result.stderr
    assert_valid_export(out)
    assert "engines" in result.stderr and "refused until rebuilt" in result.stderr


# --- item 2: NaN / Inf ------------------------------------------------------------------------


def test_nan_checkpoint_is_refused_and_the_previous_export_is_left_intact(valid_export, tmp_path, run):
    ckpt = save_decoder_checkpoint(tmp_path / "nan-ckpt", lambda m: m.decoder.conv_in.weight.view(-1)[:3].fill_(float("nan")))
    out = tmp_path / "out"
    shutil.copytree(valid_export, out)
    before = snapshot(out)

    result = export_cli(run, out, "--checkpoint", ckpt)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert "NaN" in result.stderr and "non-finite weights" in result.stderr
    assert "decoder.conv_in.weight" in result.stderr and "3 NaN" in result.stderr
    assert snapshot(out) == before  # no graph, manifest or report touched
    assert json.loads((out / "parity.json").read_text())["passed"] is True

    empty = tmp_path / "empty"
    result = export_cli(run, empty, "--checkpoint", ckpt)
    assert result.returncode == 1 and "NaN" in result.stderr
    assert not empty.exists() or not any(empty.iterdir())


def test_fp32_overflow_in_pytorch_itself_is_blamed_on_the_model_not_the_export(tmp_path, run):
    ckpt = save_decoder_checkpoint(tmp_path / "huge-ckpt", lambda m: m.decoder.conv_out.weight.fill_(3e38))  # finite
    out = tmp_path / "out"
    result = export_cli(run, out, "--checkpoint", ckpt)
    assert result.returncode == 1, result.stderr
    message = result.stderr
    assert "the PyTorch model itself produces" in message and ("Inf" in message or "NaN" in message)
    assert "decoder.image" in message and "weights are finite" in message and "not an export problem" in message
    assert "rel L2 inf" not in message and "fp16" not in message  # an fp32 export: no fp16 advice
    assert not any(p.suffix == ".onnx" or p.name == "manifest.json" for p in out.rglob("*"))


def test_fp16_overflow_fails_the_gate_naming_inf_and_keeps_the_previous_parity_report(valid_export, tmp_path, run):
    ckpt = save_decoder_checkpoint(tmp_path / "loud-ckpt", lambda m: m.decoder.conv_out.weight.mul_(1e5))
    out = tmp_path / "out"
    shutil.copytree(valid_export, out)
    before = snapshot(out)

    result = export_cli(run, out, "--checkpoint", ckpt, "--precision", "fp16")
    assert result.returncode == 1, result.stderr
    message = result.stderr
    assert "NaN/Inf in the ONNX output of decoder.image (fp16)" in message and "fp16 overflow" in message
    assert "--precision bf16" in message and "rel L2 inf" not in message
    assert "PyTorch fp32: all finite" in message
    failed = json.loads((out / "parity-failed.json").read_text())
    assert failed["passed"] is False and failed["precision"] == "fp16"
    assert any(r["inf"] + r["nan"] > 0 and r["reference_nan"] == r["reference_inf"] == 0 for r in failed["records"])
    assert str(out / "parity-failed.json") in message
    # the previous export and its report are untouched: parity.json still describes the graphs beside it
    assert {k: v for k, v in snapshot(out).items() if k != "parity-failed.json"} == before
    assert json.loads((out / "parity.json").read_text())["passed"] is True and read_manifest(out).precision == "fp32"

    # the next successful export removes the stale failed report
    result = export_cli(run, out)
    assert result.returncode == 0, result.stderr
    assert_valid_export(out)


def test_nonfinite_hints_fit_the_precision():
    import numpy as np

    from dcae_deploy.export.gate import compare, failure_message

    actual = np.array([[1.0, np.inf, np.nan, 2.0]], np.float32)
    expected = np.ones((1, 4), np.float32)
    for precision in ("fp32", "fp16", "bf16"):
        record = compare("decoder", "image", actual, expected, precision, is_image=False, runner="test")
        assert not record.passed and (record.nan, record.inf) == (1, 1)
        message = failure_message([record], 1, VARIANT, precision)
        assert "1 NaN and 1 Inf" in message and "decoder.image" in message and "rel L2 inf" not in message
        assert ("fp16 overflow" in message) == (precision == "fp16")
    reference = compare("decoder", "image", expected, actual, "fp32", is_image=True, runner="test")
    assert not reference.passed and (reference.reference_nan, reference.reference_inf) == (1, 1)
    assert "PyTorch fp32 itself gives 1 NaN and 1 Inf" in failure_message([reference], 1, VARIANT, "fp32")


# --- item 10: profile bounds ------------------------------------------------------------------


def test_huge_max_res_is_refused_at_once_with_the_limit(tmp_path, run):
    out = tmp_path / "out"
    start = time.monotonic()
    result = run("dcae_deploy.export", "--model", VARIANT, "--components", "decoder", "--max-res", "1048576",
                 "--max-batch", "1", "--output", out, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    message = result.stderr
    assert message.startswith("error: profile too large for TensorRT") and "Traceback" not in message
    assert "2,147,483,647 elements per tensor" in message
    assert "the largest --max-res that fits at --max-batch 1 is 11584" in message
    assert not out.exists()  # refused before the output folder was even made
    assert elapsed < 60


@pytest.mark.parametrize("variant, max_res, max_batch, largest", [
    ("f32c32-sana", 4096, 1, 2880),  # the real SANA decoder: 256 channels at full resolution before its last conv
    ("f32c32-sana", 1024, 4, None),  # the default profile fits
])
def test_profile_bound_of_the_real_sana_decoder(variant, max_res, max_batch, largest):
    """The bound is measured on the real architecture (on the meta device: no weights, in well under a second)."""
    from dcae_deploy.export.limits import MAX_TENSOR_ELEMENTS, ProfileTooLargeError, check_profile_size
    from dcae_deploy.registry import get_variant
    from dcae_deploy.specs import default_resolution

    config = get_variant(variant)
    res = default_resolution(config, None, None, max_res, max_batch)
    if largest is None:
        check_profile_size(config, ["encoder", "decoder"], res)
        return
    with pytest.raises(ProfileTooLargeError, match=f"largest --max-res that fits at --max-batch {max_batch} is {largest}"):
        check_profile_size(config, ["encoder", "decoder"], res)
    # ... and that answer is right: 256 x 2880^2 fits, 256 x 2912^2 does not
    assert 256 * largest**2 <= MAX_TENSOR_ELEMENTS < 256 * (largest + 32) ** 2
    check_profile_size(config, ["decoder"], default_resolution(config, None, None, largest, max_batch))
