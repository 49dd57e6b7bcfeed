"""Smoke test of benchmarks/bench_pipeline.py: the shipped demo's fp32 export on ONNX Runtime (the reference) and
OpenVINO, 3 steps, one process per run; it times nothing itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcae_deploy.export import export_model
from dcae_deploy.shipped_demo import demo_folder

ROOT = Path(__file__).resolve().parents[2]


def test_bench_pipeline_demo(tmp_path):
    pytest.importorskip("openvino", reason="the openvino package is not installed")
    export = tmp_path / "export"
    export_model("demo", export, checkpoint=demo_folder(), min_res=128, opt_res=128, max_res=128, max_batch=1)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_pipeline.py"), "--artifacts", f"fp32={export}",
           "--runs", "onnxruntime@fp32,openvino@fp32,openvino@nowhere", "--steps", "3", "--threads", "1",
           "--prompt", "a red circle on a blue background", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0 and "NAME one of fp32" in proc.stderr  # an unknown export name is refused up front
    cmd[cmd.index("--runs") + 1] = "onnxruntime@fp32,openvino@fp32"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["run"] for r in rows] == ["onnxruntime@fp32", "openvino@fp32"]
    assert all(r["median_s"] > 0 and (r["height"], r["width"]) == (128, 128) for r in rows)
    assert rows[1]["psnr_vs_reference_db"] > 35  # the same fp32 graphs on two runtimes: the same image
    assert "openvino@fp32" in (out / "results.md").read_text()
