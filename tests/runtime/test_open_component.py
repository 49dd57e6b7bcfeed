"""``open_component``: one exported graph from Python, on every backend, for pipeline and bare exports."""

from __future__ import annotations

import numpy as np
import pytest

from dcae_deploy.runtime import BACKENDS, ArtifactsError, BackendError, open_component


@pytest.fixture(scope="module")
def autoencoder_export(tmp_path_factory):
    """A bare autoencoder export (no pipeline section): tiny DC-AE, random weights, decoder only."""
    from dcae_deploy.export import export_model

    folder = tmp_path_factory.mktemp("ae-export")
    export_model("tiny-f32c32-sana", folder, components=["decoder"], min_res=64, opt_res=64, max_res=64, max_batch=1)
    return folder


def _latent(channels: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, channels, 2, 2), dtype=np.float32)


def test_decoder_of_a_bare_autoencoder_export_matches_pytorch(autoencoder_export):
    with open_component(autoencoder_export, "decoder", backend="onnxruntime") as ort_decoder:
        image = ort_decoder.infer({"latent": _latent()})["image"]
    with open_component(autoencoder_export, "decoder", backend="torch") as torch_decoder:
        reference = torch_decoder.infer({"latent": _latent()})["image"]
    assert image.shape == reference.shape == (1, 3, 64, 64)
    rel = np.linalg.norm(image - reference) / np.linalg.norm(reference)
    assert rel <= 1e-4, rel


def test_pipeline_components_open_one_by_one(artifacts_dir):
    with open_component(artifacts_dir, "text_encoder") as encoder:
        ids = np.zeros((1, encoder.component.inputs[0].shape[1]), np.int64)
        out = encoder.infer({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert set(out) == {"text_embeddings"} and np.isfinite(out["text_embeddings"]).all()


def test_unknown_component_and_backend_are_clear_errors(autoencoder_export):
    with pytest.raises(Exception, match="no component 'encoder'.*decoder"):
        open_component(autoencoder_export, "encoder")
    with pytest.raises(BackendError, match=f"unknown backend 'onnx'; choose one of {', '.join(BACKENDS)}"):
        open_component(autoencoder_export, "decoder", backend="onnx")
    with pytest.raises(ArtifactsError, match="does not exist"):
        open_component(autoencoder_export / "nowhere", "decoder")
