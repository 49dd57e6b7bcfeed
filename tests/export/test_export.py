"""Export stage: tiny variants to ONNX in three precisions, parity-gated; manifests; bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from dcae_deploy.errors import CheckpointError, DcaeDeployError, UnknownVariantError
from dcae_deploy.export import export_model
from dcae_deploy.export.gate import ParityError
from dcae_deploy.manifest import ManifestError, read_manifest, sha256_file

TINY_PROFILE = dict(min_res=64, opt_res=128, max_res=256, max_batch=2)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export-fp32")
    return out, export_model("tiny-f32c32-sana", out, **TINY_PROFILE)


def test_fp32_export_writes_graphs_manifest_and_parity(fp32_export):
    out, manifest = fp32_export
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".sh")) == [
        "decoder.onnx", "encoder.onnx", "manifest.json", "parity.json"
    ]
    again = read_manifest(out)  # verifies every hash
    assert again == manifest
    assert manifest.variant == "tiny-f32c32-sana" and manifest.precision == "fp32" and manifest.checkpoint is None
    assert manifest.scaling_factor == pytest.approx(0.41407) and manifest.spatial_compression_ratio == 32
    dec = manifest.components["decoder"]
    assert dec.inputs[0].name == "latent" and dec.inputs[0].shape == ("batch", 32, "latent_height", "latent_width")
    assert dec.outputs[0].name == "image" and dec.outputs[0].dtype == "float32"
    assert dec.profiles["latent"].min == (1, 32, 2, 2) and dec.profiles["latent"].max == (2, 32, 8, 8)
    assert dec.files["decoder.onnx"] == sha256_file(out / "decoder.onnx")
    assert {"torch", "onnx", "onnxruntime", "dcae_deploy"} <= manifest.versions.keys()
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and len(report["records"]) == 4  # 2 components x 2 shapes
    assert all(r["rel_l2"] <= 1e-4 for r in report["records"])
    assert {tuple(r["shape"]) for r in report["records"]} >= {(1, 3, 128, 128), (2, 3, 64, 128)}


def test_graph_axes_are_dynamic(fp32_export):
    out, _ = fp32_export
    graph = onnx.load(out / "encoder.onnx").graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 3 and all(isinstance(d, str) for d in dims[2:])


@pytest.mark.parametrize("precision, onnx_type", [("fp16", onnx.TensorProto.FLOAT16), ("bf16", onnx.TensorProto.BFLOAT16)])
def test_low_precision_graphs_carry_their_dtype_and_pass_the_gate(precision, onnx_type, tmp_path):
    manifest = export_model("tiny-f32c32-sana", tmp_path, precision=precision, **TINY_PROFILE)
    assert manifest.components["encoder"].inputs[0].dtype == {"fp16": "float16", "bf16": "bfloat16"}[precision]
    model = onnx.load(tmp_path / "decoder.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx_type
    # fp32 islands: the attention and norm statistics are computed in float32 inside the graph
    casts_to_fp32 = [n for n in model.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT]
    assert casts_to_fp32
    assert all(n.op_type != "Resize" for n in model.graph.node)  # TensorRT has no bf16 Resize
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and all(r["rel_l2"] <= 1e-2 for r in report["records"])
    assert all(r["psnr_db"] >= 35 for r in report["records"] if r["output"] == "image")


def test_tampered_graph_is_detected(fp32_export, tmp_path):
    import shutil

    out, _ = fp32_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="decoder.onnx changed after export"):
        read_manifest(copy)


def test_parity_failure_is_an_error_and_keeps_no_graphs(tmp_path, monkeypatch):
    import dataclasses

    from dcae_deploy import precisions

    # an impossible gate: every comparison must now fail
    monkeypatch.setitem(precisions.PRECISIONS, "fp32", dataclasses.replace(precisions.PRECISIONS["fp32"], rel_l2=0.0))
    with pytest.raises(ParityError, match="parity checks failed"):
        export_model("tiny-f32c32-sana", tmp_path, components=["decoder"], **TINY_PROFILE)
    # the failed report never takes the name of a valid export's report (parity.json describes the graphs beside it)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parity-failed.json"]
    assert json.loads((tmp_path / "parity-failed.json").read_text())["passed"] is False


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(variant="f32c33"), UnknownVariantError, "unknown variant 'f32c33'"),
        (dict(components=["denoiser"]), DcaeDeployError, "components encoder, decoder, decoder_global, decoder_local; it has no 'denoiser'"),
        (dict(min_res=256, opt_res=128, max_res=512), DcaeDeployError, "profile out of order"),
        (dict(min_res=48, opt_res=64, max_res=128), DcaeDeployError, "--min-res 48 must be a positive multiple of"),
        (dict(max_batch=0), DcaeDeployError, "--max-batch must be between 1 and 64"),
        (dict(max_res=256.0), DcaeDeployError, "--max-res must be a whole number, got 256.0"),
        (dict(max_res=2**20), DcaeDeployError, "profile too large for TensorRT.*2,147,483,647 elements per tensor"),
        (dict(precision="int3"), DcaeDeployError, "unknown precision 'int3'"),
    ],
)
def test_bad_arguments(kwargs, error, message, tmp_path):
    args = dict(variant="tiny-f32c32-sana", **TINY_PROFILE) | kwargs
    with pytest.raises(error, match=message):
        export_model(args.pop("variant"), tmp_path / "out", **args)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_and_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_model("tiny-f32c32-sana", tmp_path / "out", checkpoint=tmp_path / "nope", **TINY_PROFILE)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        export_model("tiny-f32c32-sana", tmp_path / "out", checkpoint=tmp_path / "bad.safetensors", **TINY_PROFILE)
    assert not any((tmp_path / "out").iterdir())


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DcaeDeployError, match="is not writable"):
        export_model("tiny-f32c32-sana", tmp_path / "file" / "out", **TINY_PROFILE)


def test_cli_reports_user_errors_without_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dcae_deploy.export", "--model", "nope", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1 and out.stderr.startswith("error: unknown variant 'nope'; valid names:")
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_full_f32c32_sana_exports_and_passes_the_gate(tmp_path):
    """The real-size SANA autoencoder (random weights) on this CPU machine: about 3 minutes on 2 cores."""
    manifest = export_model(
        "f32c32-sana", tmp_path, components=["encoder", "decoder"], min_res=256, opt_res=256, max_res=512, max_batch=2
    )
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and all(r["rel_l2"] <= 1e-4 for r in report["records"])
    assert manifest.components["decoder"].profiles["latent"].max == (2, 32, 16, 16)
    # ... and its decoder builds into a TensorRT-RTX engine on this CPU-only machine (ahead of time).
    pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx not installed")
    from dcae_deploy.engines import build_engines

    info = build_engines(tmp_path, backend="tensorrt-rtx", components=["decoder"], progress=False)["decoder"]
    assert info.plan_path.is_file() and info.plan_bytes > 100e6  # fp32 weights alone are 637 MB
    assert info.variant == "f32c32-sana" and info.backend == "tensorrt-rtx"


def test_fully_static_encoder_profile_has_no_dynamic_spatial_axes():
    """min == max resolution: the derived ``height = 32 * latent_height`` stays static instead of failing."""
    from dcae_deploy.models.autoencoder import autoencoder_spec
    from dcae_deploy.specs import Resolution
    from dcae_deploy.variants import get_variant

    spec = autoencoder_spec("encoder", get_variant("tiny-f32c32-sana"), Resolution(64, 64, 64, max_batch=2))
    (image_axes,) = spec.dynamic_shapes()
    assert list(image_axes) == [0]  # only the batch
    assert spec.profile()["image"] == ((1, 3, 64, 64), (1, 3, 64, 64), (2, 3, 64, 64))
