"""Smoke test of benchmarks/bench_stages.py: the tiny demo pipeline (random weights) at 64 px, 2 repeats.

It checks that one run writes the JSON, markdown and PNG reports with finite positive times for torch and
ONNX Runtime; it times nothing itself (benchmarks are scripts, not timed tests).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_stages.py"


def test_bench_stages_demo_64px(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--model", "demo", "--resolution", "64", "--stages", "denoiser,decoder",
           "--backends", "torch,torch-compile,onnxruntime,tensorrt", "--repeats", "2", "--warmup", "1",
           "--threads", "1", "--device", "cpu", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((out / "results.json").read_text())
    assert report["weights"].startswith("random")
    rows = {(r["stage"], r["backend"]): r for r in report["rows"]}
    for stage in ("denoiser", "decoder"):
        for backend in ("torch", "onnxruntime"):
            r = rows[(stage, backend)]
            assert r["status"] == "ok", r
            assert len(r["times_ms"]) == 2
            assert all(math.isfinite(t) and t > 0 for t in r["times_ms"])
            assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0
            assert r["finite"]
            assert r["memory"]["peak_over_start_mb"] > 0
        ort = rows[(stage, "onnxruntime")]
        assert ort["speedup_vs_torch"] > 0
        assert ort["rel_l2_vs_torch"] < 1e-4  # the same inputs and weights on both backends
        assert ort["config"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
        # GPU-only backends say why they did not run instead of failing
        assert rows[(stage, "torch-compile")]["status"] == "n/a"
        assert rows[(stage, "tensorrt")]["status"] == "n/a"
        assert rows[(stage, "tensorrt")]["reason"]

    md = (out / "results.md").read_text()
    assert "| decoder | 64 |" in md and "x vs torch eager" in md and "n/a" in md


def test_bench_stages_low_precision_backends_and_the_peer_goal(tmp_path):
    """The issue-16 set in one run: PyTorch bf16, OpenVINO's defaults (the peer's way), and an int8 export on ONNX
    Runtime and OpenVINO; decoder rows carry the image PSNR against PyTorch fp32, and the report the peer goal."""
    pytest.importorskip("openvino", reason="the openvino package is not installed")
    pytest.importorskip("skimage", reason="the decoder inputs and the int8 calibration use the scikit-image photos")
    out = tmp_path / "out"
    backends = "torch,torch-bf16,openvino,openvino-defaults,onnxruntime-int8,openvino-int8"
    cmd = [sys.executable, str(SCRIPT), "--model", "tiny-f32c32-sana", "--resolution", "64", "--stages", "decoder",
           "--backends", backends, "--repeats", "2", "--warmup", "1", "--threads", "1", "--device", "cpu",
           "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    rows = {r["backend"]: r for r in report["rows"]}
    for backend in backends.split(","):
        assert rows[backend]["status"] == "ok", rows[backend]
    assert rows["torch-bf16"]["config"]["dtype"] == "bfloat16"
    assert rows["onnxruntime-int8"]["config"]["precision"] == "int8"
    assert report["quantized_exports"]["int8"]["decoder"]["folder"] != report["exports"]["decoder"]["folder"]
    for backend in ("openvino", "onnxruntime-int8", "openvino-int8", "torch-bf16"):
        assert math.isfinite(rows[backend]["psnr_vs_torch"])
    assert rows["openvino"]["psnr_vs_torch"] > 80  # f32: the same function
    assert 20 < rows["onnxruntime-int8"]["psnr_vs_torch"] < 80  # quantized: close, not equal
    goal = report["peer_goal"]
    assert goal is not None and goal["rows"][0]["backend"] not in ("torch", "torch-bf16", "openvino-defaults")
    assert "openvino-defaults" in (out / "results.md").read_text()
