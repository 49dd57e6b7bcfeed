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
