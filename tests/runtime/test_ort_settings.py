"""The ONNX Runtime runner's CPU path: explicit session settings and the in-memory Resize rewrite.

The rewrite (``dcae_deploy/runtime/ort_graph.py``) must give the exported graph's output bit for bit, and
the session must really use it; the exported file itself stays untouched.
"""

from __future__ import annotations

import numpy as np

from dcae_deploy.runtime.runners.onnxruntime import OnnxRuntimeRunner, OrtSettings


def _decode(artifacts, settings: OrtSettings, latent: np.ndarray) -> tuple[np.ndarray, dict]:
    runner = OnnxRuntimeRunner(artifacts.component("decoder"), artifacts.graph_path("decoder"), artifacts.precision,
                               device="cpu", threads=1, settings=settings).load()
    try:
        return runner.infer({"latent": latent})["image"], runner.report
    finally:
        runner.close()


def test_resize_rewrite_is_bit_identical_and_used(artifacts):
    before = artifacts.graph_path("decoder").read_bytes()
    latent = np.random.default_rng(0).standard_normal((1, 32, 2, 3), dtype=np.float32) * 5
    rewritten, report = _decode(artifacts, OrtSettings(), latent)
    plain, plain_report = _decode(artifacts, OrtSettings(rewrite_resize=False), latent)
    assert report["graph_rewrite"] and int(report["graph_rewrite"].split()[0]) > 0  # the decoder upsamples
    assert plain_report["graph_rewrite"] is None
    np.testing.assert_array_equal(rewritten, plain)
    assert artifacts.graph_path("decoder").read_bytes() == before


def test_settings_are_applied_and_reported(artifacts):
    latent = np.zeros((1, 32, 2, 2), dtype=np.float32)
    image, report = _decode(artifacts, OrtSettings(graph_optimization_level="ORT_ENABLE_BASIC", allow_spinning=False),
                            latent)
    assert image.shape == (1, 3, 64, 64)
    assert report["graph_optimization_level"] == "ORT_ENABLE_BASIC" and report["allow_spinning"] is False
    assert report["intra_op_num_threads"] == 1
