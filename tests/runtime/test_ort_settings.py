"""The ONNX Runtime runner's CPU path: explicit session settings and the in-memory layout rewrites.

The rewrites (``dcae_deploy/runtime/ort_graph.py``) must compute the exported graph's function (the Resize one
bit for bit, the others up to float rounding), every one of them must really be applied to the DC-AE decoder,
and the exported file itself stays untouched.
"""

from __future__ import annotations

import numpy as np

from dcae_deploy.runtime.ort_graph import CPU_REWRITES, rewrite_expand_to_resize, rewrite_upsample_conv
from dcae_deploy.runtime.runners.onnxruntime import OnnxRuntimeRunner, OrtSettings


def _decode(artifacts, settings: OrtSettings, latent: np.ndarray) -> tuple[np.ndarray, dict]:
    runner = OnnxRuntimeRunner(artifacts.component("decoder"), artifacts.graph_path("decoder"), artifacts.precision,
                               device="cpu", threads=1, settings=settings).load()
    try:
        return runner.infer({"latent": latent})["image"], runner.report
    finally:
        runner.close()


def _session_output(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of ``model`` (an ``onnx.ModelProto``) on the CPU EP, one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_rewrites_compute_the_same_decoder_and_are_used(artifacts):
    before = artifacts.graph_path("decoder").read_bytes()
    latent = np.random.default_rng(0).standard_normal((1, 32, 2, 3), dtype=np.float32) * 5
    rewritten, report = _decode(artifacts, OrtSettings(), latent)
    plain, plain_report = _decode(artifacts, OrtSettings(rewrite_graph=False), latent)
    assert plain_report["graph_rewrite"] is None
    # every rewrite finds its pattern in the dynamic-shape DC-AE decoder (upsampling, upsample + conv, RMSNorm,
    # GLUMBConv, shortcut)
    assert set(report["graph_rewrite"]) == {label for label, _ in CPU_REWRITES}, report["graph_rewrite"]
    assert np.linalg.norm(rewritten - plain) <= 1e-5 * np.linalg.norm(plain)
    assert not np.array_equal(rewritten, np.zeros_like(rewritten))
    assert artifacts.graph_path("decoder").read_bytes() == before


def test_resize_rewrite_alone_is_bit_identical(artifacts):
    import onnx

    latent = np.random.default_rng(1).standard_normal((1, 32, 3, 2), dtype=np.float32) * 5
    model = onnx.load(str(artifacts.graph_path("decoder")))
    plain = _session_output(model, {"latent": latent})
    assert rewrite_expand_to_resize(model) > 0
    np.testing.assert_array_equal(_session_output(model, {"latent": latent}), plain)


def test_settings_are_applied_and_reported(artifacts):
    latent = np.zeros((1, 32, 2, 2), dtype=np.float32)
    image, report = _decode(artifacts, OrtSettings(graph_optimization_level="ORT_ENABLE_BASIC", allow_spinning=False),
                            latent)
    assert image.shape == (1, 3, 64, 64)
    assert report["graph_optimization_level"] == "ORT_ENABLE_BASIC" and report["allow_spinning"] is False
    assert report["intra_op_num_threads"] == 1


def test_upsample_conv_as_phase_convs_is_the_same_function():
    """Resize(nearest 2x) -> Conv 3x3 with bias, at odd sizes (borders of every phase), through ONNX Runtime."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    weight, bias = rng.standard_normal((32, 16, 3, 3), dtype=np.float32), rng.standard_normal(32, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
         helper.make_node("Conv", ["up", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        "upsample", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
         numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    feeds = {"x": rng.standard_normal((2, 16, 5, 7), dtype=np.float32)}
    plain = _session_output(model, feeds)
    assert rewrite_upsample_conv(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"] * 4 + ["Concat", "DepthToSpace"]
    rewritten = _session_output(model, feeds)
    assert rewritten.shape == plain.shape == (2, 32, 10, 14)
    # float rounding of 144-term sums scales with the outputs (|y| up to ~30 here): MLAS kernels differ by CPU
    # (an AMD EPYC without AVX-512 rounds one value 1.5e-5 away), so the absolute slack follows the output scale
    np.testing.assert_allclose(rewritten, plain, rtol=1e-5, atol=1e-6 * float(np.abs(plain).max()))
