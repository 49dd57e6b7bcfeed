"""Smoke test of benchmarks/profile_openvino.py: OpenVINO's per-node profile of a tiny decoder export, grouped."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dcae_deploy.export import export_model

ROOT = Path(__file__).resolve().parents[2]


def test_profile_groups_every_executed_node(tmp_path):
    pytest.importorskip("openvino", reason="the openvino package is not installed")
    spec = importlib.util.spec_from_file_location("profile_openvino", ROOT / "benchmarks" / "profile_openvino.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    export = tmp_path / "export"
    export_model("tiny-f32c32-sana", export, components=["decoder"], min_res=64, opt_res=64, max_res=64, max_batch=1)

    assert script.main(["--artifacts", str(export), "--component", "decoder", "--repeats", "1", "--threads", "1",
                        "--out", str(tmp_path / "out")]) == 0
    [result] = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert result["inputs"] == {"latent": [1, 32, 2, 2]}  # the export's opt shape: 64 px / 32
    assert result["wall_ms_median"] > 0 and result["profiled_ms"] > 0
    assert abs(sum(r["share"] for r in result["rows"]) - 1) < 1e-6
    assert any(r["operation"] == "Convolution" and r["kernel"] == "F32" for r in result["rows"])
    assert "| Convolution | F32 |" in (tmp_path / "out" / "profile.md").read_text()


def test_kernel_precision_reads_openvino_exec_types():
    spec = importlib.util.spec_from_file_location("profile_openvino", ROOT / "benchmarks" / "profile_openvino.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert [script.kernel_precision(t) for t in ("brgconv_avx512_1x1_I8", "jit_avx512_f32", "ref_any_i32", "undef")] \
        == ["I8", "F32", "I32", "-"]
