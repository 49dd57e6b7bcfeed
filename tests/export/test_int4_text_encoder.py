"""int4 weight-only text encoders (``--component-precision text_encoder=int4``): the shipped demo's trained text
encoder as int4 MatMul weights and a float16 embedding table, gated on held-out captions, recorded per component in
the manifest, run by ONNX Runtime and OpenVINO; the errors a user can cause."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.evaluate import heldout_prompts
from dcae_deploy.export import export_model
from dcae_deploy.export.calibration import torch_output
from dcae_deploy.export.quantize import INT4_BLOCK_SIZE
from dcae_deploy.manifest import read_manifest
from dcae_deploy.models.pipeline import load_pipeline
from dcae_deploy.registry import get_variant
from dcae_deploy.runtime import open_component
from dcae_deploy.shipped_demo import demo_folder


@pytest.fixture(scope="module")
def int4_text_encoder(tmp_path_factory):
    """The demo's text encoder alone, int4 weights, the rest of the export (nothing here) fp32."""
    folder = tmp_path_factory.mktemp("demo-int4-text")
    export_model("demo", folder, checkpoint=demo_folder(), components=["text_encoder"],
                 component_precisions={"text_encoder": "int4"})
    return folder


@pytest.fixture(scope="module")
def captions():
    """Tokenised held-out demo captions and the PyTorch fp32 text encoder's embeddings of them."""
    models = load_pipeline(demo_folder())
    ids, mask = models.tokenizer(heldout_prompts(4))
    feeds = {"input_ids": ids, "attention_mask": mask}
    return feeds, torch_output(get_variant("demo"), "text_encoder", models, feeds)


def _rel_l2(actual, expected) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def test_int4_text_encoder_is_gated_and_recorded(int4_text_encoder):
    manifest = read_manifest(int4_text_encoder)
    assert manifest.precision == "fp32" and manifest.precision_of("text_encoder") == "int4"
    assert manifest.describe_precision() == "fp32 (text_encoder int4)"
    record = manifest.quantization["components"]["text_encoder"]
    assert record["precision"] == "int4" and record["activations"].startswith("float32")
    assert record["quantized_layers"] >= 8  # 2 blocks x (q, k, v, out, 2 MLP) at least

    parity = json.loads((int4_text_encoder / "parity.json").read_text())
    assert parity["passed"] and parity["component_precisions"] == {"text_encoder": "int4"}
    held_out = [r for r in parity["records"] if "Q/DQ" in r["runner"]]
    assert len(held_out) == 2 and all(1e-4 < r["rel_l2"] <= 0.1 for r in held_out)  # quantized; measured 0.04


def test_int4_graph_holds_int4_blocks_and_a_float16_table(int4_text_encoder):
    graph = onnx.load(str(int4_text_encoder / "text_encoder.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert dequantize and not any(n.op_type == "QuantizeLinear" for n in graph.node)  # weight-only: no activation Q
    for node in dequantize:
        assert inits[node.input[0]].data_type == onnx.TensorProto.INT4
        assert {a.name: a.i for a in node.attribute}["block_size"] == INT4_BLOCK_SIZE
    tables = [inits[n.input[0]] for n in graph.node if n.op_type == "Gather" and n.input[0] in inits]
    assert any(t.data_type == onnx.TensorProto.FLOAT16 and len(t.dims) == 2 for t in tables)
    float_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
                     and min(i.dims) >= INT4_BLOCK_SIZE]
    assert not float_weights, [i.name for i in float_weights]  # every weight matrix is int4 (or the fp16 table)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int4_text_encoder_runs_close_to_pytorch(int4_text_encoder, captions, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino package is not installed")
    feeds, expected = captions
    with open_component(int4_text_encoder, "text_encoder", backend=backend) as runner:
        actual = runner.infer(feeds)["text_embeddings"]
    assert actual.shape == expected.shape
    assert 1e-4 < _rel_l2(actual, expected) <= 0.1  # measured 0.04 on held-out captions (gate 0.3)


def test_onnxruntime_and_openvino_agree_on_the_int4_graph(int4_text_encoder, captions):
    pytest.importorskip("openvino", reason="the openvino package is not installed")
    feeds, _ = captions
    outputs = []
    for backend in ("onnxruntime", "openvino"):
        with open_component(int4_text_encoder, "text_encoder", backend=backend) as runner:
            outputs.append(runner.infer(feeds)["text_embeddings"])
    assert _rel_l2(outputs[1], outputs[0]) <= 1e-3  # the same int4 weights dequantized; float arithmetic beyond


def test_int4_is_refused_for_a_graph_without_matmul_weights(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DcaeDeployError, match="no MatMul with weights for int4"):
        export_model("tiny-f32c32-sana", out, components=["decoder"], precision="int4", min_res=64, opt_res=128,
                     max_res=256, max_batch=2)
    assert not any(out.rglob("*.onnx")) and not (out / "manifest.json").exists()


def test_component_precision_must_name_an_exported_component(tmp_path):
    with pytest.raises(DcaeDeployError, match="names 'text_encoder', which this export does not write"):
        export_model("tiny-f32c32-sana", tmp_path / "out", component_precisions={"text_encoder": "int4"})
    with pytest.raises(DcaeDeployError, match="unknown precision 'int3'"):
        export_model("demo", tmp_path / "out", checkpoint=demo_folder(), components=["text_encoder"],
                     component_precisions={"text_encoder": "int3"})


def test_cli_refuses_a_malformed_component_precision(tmp_path, capsys):
    from dcae_deploy.cli import run_cli
    from dcae_deploy.export.__main__ import main

    argv = ["--model", "demo", "--component-precision", "text_encoder:int4", "--output", str(tmp_path / "out")]
    assert run_cli(main, argv) == 1
    assert "COMPONENT=PRECISION pairs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
