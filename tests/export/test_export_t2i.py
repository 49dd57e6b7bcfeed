"""Text-to-image export: tiny-t2i (tiny DC-AE + tiny SANA DiT + tiny Gemma-2) to multi-input ONNX graphs,
parity-gated, with the manifest's pipeline section and the tokenizer copied and hashed; bare denoiser and
text-encoder variants; component refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.export import export_model
from dcae_deploy.manifest import ManifestError, read_manifest, sha256_file
from dcae_deploy.tokenizer import load_tokenizer, select_positions

PROFILE = dict(min_res=64, opt_res=64, max_res=128, max_batch=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i-fp32")
    return out, export_model("tiny-t2i", out, **PROFILE)


def test_pipeline_export_graphs_manifest_and_parity(t2i):
    out, manifest = t2i
    assert manifest.kind == "pipeline" and list(manifest.components) == ["text_encoder", "denoiser", "decoder"]
    assert read_manifest(out) == manifest  # verifies every hash, tokenizer files included

    te = manifest.components["text_encoder"]
    assert [(t.name, t.dtype, t.shape) for t in te.inputs] == [
        ("input_ids", "int64", ("batch", "tokens")), ("attention_mask", "int64", ("batch", "tokens"))
    ]
    assert [(t.name, t.dtype, t.shape) for t in te.outputs] == [("text_embeddings", "float32", ("batch", 24, 64))]
    tokenizer = load_tokenizer(out / manifest.pipeline.to_dict()["text_encoder"]["tokenizer"])
    lo, hi = tokenizer.input_lengths
    assert manifest.pipeline.to_dict()["text_encoder"]["input_tokens"] == [lo, hi] and lo == 24 < hi
    assert te.profiles["input_ids"].min == (1, lo) and te.profiles["input_ids"].max == (2, hi)
    assert {"tokenizer/tokenizer.json", "tokenizer/prompt.json"} <= te.files.keys()
    assert te.files["tokenizer/tokenizer.json"] == sha256_file(out / "tokenizer" / "tokenizer.json")

    den = manifest.components["denoiser"]
    assert [(t.name, t.dtype) for t in den.inputs] == [
        ("latent", "float32"), ("timestep", "float32"), ("encoder_hidden_states", "float32"),
        ("encoder_attention_mask", "int64"),
    ]
    assert den.outputs[0].name == "velocity"
    assert den.profiles["latent"].min == (1, 32, 2, 2) and den.profiles["latent"].max == (2, 32, 4, 4)  # 2*max_batch
    assert den.profiles["encoder_attention_mask"].opt == (2, 24)

    assert manifest.pipeline.to_dict()["autoencoder"] == {
        "scaling_factor": pytest.approx(0.41407), "spatial_compression_ratio": 32, "latent_channels": 32
    }
    assert manifest.pipeline.to_dict()["denoiser"] == {"timestep_scale": 1.0, "in_channels": 32, "caption_channels": 64}
    assert manifest.pipeline.to_dict()["text_encoder"]["family"] == "gemma2"
    assert manifest.pipeline.to_dict()["defaults"]["steps"] == 4 and manifest.pipeline.to_dict()["variant"] == "tiny-t2i"

    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and len(report["records"]) == 6  # 3 components x 2 shapes
    assert all(r["rel_l2"] <= 1e-4 for r in report["records"])
    shapes = {(r["component"], tuple(r["shape"])) for r in report["records"]}
    assert {("text_encoder", (1, 24, 64)), ("denoiser", (1, 32, 2, 4)), ("decoder", (1, 3, 64, 128))} <= shapes


def test_text_encoder_graph_runs_the_exported_tokenizer(t2i):
    """ONNX Runtime on the shipped tokenizer's ids (with and without the instruction) equals PyTorch."""
    import onnxruntime as ort

    from dcae_deploy.models.pipeline import build_pipeline

    out, manifest = t2i
    tokenizer = load_tokenizer(out / manifest.pipeline.to_dict()["text_encoder"]["tokenizer"])
    session = ort.InferenceSession(str(out / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    encoder = build_pipeline("tiny-t2i").text_encoder  # same seed as the export's random weights
    for instruction in (True, False):
        ids, mask = tokenizer(["a red circle", "a green star on a white background"], instruction=instruction)
        got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        with torch.no_grad():
            want = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        assert got.shape == (2, 24, 64)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
        assert select_positions(mask, got.shape[1]).shape == (2, 24)
    graph = onnx.load(out / "text_encoder.onnx").graph
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim][1:] == [24, 64]


def test_tampered_tokenizer_is_detected(t2i, tmp_path):
    import shutil

    out, _ = t2i
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "tokenizer" / "prompt.json").write_text("{}")
    with pytest.raises(ManifestError, match="prompt.json changed after export"):
        read_manifest(copy)


@pytest.mark.parametrize("variant, component", [("tiny-sana", "denoiser"), ("tiny-gemma-2", "text_encoder")])
def test_bare_variants_export_one_component_in_fp16(variant, component, tmp_path):
    manifest = export_model(variant, tmp_path, precision="fp16", **PROFILE)
    assert list(manifest.components) == [component] and manifest.pipeline is None
    graph = onnx.load(tmp_path / f"{component}.onnx").graph
    types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    if component == "denoiser":
        assert types == {"latent": onnx.TensorProto.FLOAT16, "timestep": onnx.TensorProto.FLOAT,
                         "encoder_hidden_states": onnx.TensorProto.FLOAT16,
                         "encoder_attention_mask": onnx.TensorProto.INT64}
        assert manifest.components["denoiser"].inputs[2].shape == ("batch", 300, 64)  # SANA's caption length
        # fp32 islands: the linear attention runs in float32 inside the fp16 graph
        assert any(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT for n in graph.node)
    else:
        assert types == {"input_ids": onnx.TensorProto.INT64, "attention_mask": onnx.TensorProto.INT64}
        assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and all(r["rel_l2"] <= 1e-2 for r in report["records"])
    assert all(r["psnr_db"] is None for r in report["records"])  # PSNR only for images


@pytest.mark.parametrize(
    "variant, components, message",
    [
        ("tiny-sana", ["decoder"], "'tiny-sana' is a denoiser with components denoiser; it has no 'decoder'"),
        ("tiny-gemma-2", ["denoiser"], "is a text_encoder with components text_encoder; it has no 'denoiser'"),
        ("tiny-t2i", ["vae"], "components text_encoder, denoiser, decoder, encoder, decoder_global, decoder_local; it has no 'vae'"),
    ],
)
def test_missing_components_are_refused(variant, components, message, tmp_path):
    with pytest.raises(DcaeDeployError, match=message):
        export_model(variant, tmp_path / "out", components=components, **PROFILE)
    assert not (tmp_path / "out").exists()


def test_pipeline_checkpoint_round_trip(tmp_path):
    """A pipeline folder written by save_pipeline exports through load_pipeline (weights and tokenizer)."""
    from dcae_deploy.models.pipeline import build_pipeline, save_pipeline

    models = build_pipeline("tiny-t2i", seed=3)
    save_pipeline(models, tmp_path / "pipe")
    manifest = export_model(
        "tiny-t2i", tmp_path / "out", checkpoint=tmp_path / "pipe", components=["text_encoder"], **PROFILE
    )
    assert manifest.checkpoint == str((tmp_path / "pipe").resolve())
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["passed"]
    assert manifest.pipeline.to_dict()["text_encoder"]["tokenizer"] == "tokenizer/tokenizer.json"


def test_a_subset_export_loads_only_the_parts_it_needs(tmp_path):
    """--components decoder of a pipeline folder reads vae/ only: it works with the other parts absent."""
    import shutil

    from dcae_deploy.models.pipeline import build_pipeline, save_pipeline

    full = build_pipeline("tiny-t2i", seed=0)
    alone = build_pipeline("tiny-t2i", seed=0, parts=["denoiser"])
    assert alone.autoencoder is None and alone.text_encoder is None and alone.tokenizer is None
    for a, b in zip(full.denoiser.state_dict().values(), alone.denoiser.state_dict().values()):
        assert torch.equal(a, b)  # each part has its own seed: a subset has the full build's weights

    folder = save_pipeline(full, tmp_path / "ckpt")
    for sub in ("transformer", "text_encoder", "tokenizer"):
        shutil.rmtree(folder / sub)
    manifest = export_model("tiny-t2i", tmp_path / "out", checkpoint=folder, components=["decoder"], **PROFILE)
    assert list(manifest.components) == ["decoder"]
    assert manifest.pipeline.to_dict()["autoencoder"]["scaling_factor"] == full.autoencoder.config.scaling_factor
    with pytest.raises(DcaeDeployError, match="has no transformer/"):
        export_model("tiny-t2i", tmp_path / "out2", checkpoint=folder, components=["denoiser"], **PROFILE)
