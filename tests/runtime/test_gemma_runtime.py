"""The Gemma-2 path of the runtime (``tiny-t2i``): torch-free Gemma tokenizer, the prompts encoded with SANA's
instruction and the negative prompt without it (two text-encoder calls of different token lengths), the
caption mask cut to the positions the graph keeps. ONNX Runtime on the export equals the eager PyTorch
pipeline on the same weights (``dcae_deploy.runtime.eager``). The export includes the split decoder, so tiled
decoding is checked there too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcae_deploy.export import export_model
from dcae_deploy.export.gate import psnr_db
from dcae_deploy.models.pipeline import build_pipeline
from dcae_deploy.runtime import GenerationConfig, TextToImage
from dcae_deploy.runtime.eager import open_pytorch
from dcae_deploy.tokenizer import GemmaTokenizer

pytest.importorskip("onnxruntime")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny-t2i")
    export_model("tiny-t2i", folder, min_res=64, opt_res=64, max_res=128, max_batch=2,
                 components=["text_encoder", "denoiser", "decoder", "decoder_global", "decoder_local"])
    return folder


def test_onnxruntime_matches_eager_pytorch(exported):
    request = GenerationConfig(prompts=("a red circle on a blue background", "A Star!"), seed=5, negative_prompt="blurry")
    with TextToImage.open(exported, "onnxruntime", progress=False) as t2i:
        assert isinstance(t2i.tokenizer(), GemmaTokenizer)
        ort = t2i.generate(request)
    with open_pytorch(build_pipeline("tiny-t2i", seed=0), device="cpu", progress=False) as t2i:
        eager = t2i.generate(request)
    assert ort.stages["text_embeddings"].shape == (4, 24, 64)  # [negative x2, prompts x2], max_length positions
    for stage, expected in eager.stages.items():
        assert _rel(ort.stages[stage], expected) <= 1e-4, stage


def test_negative_prompt_is_encoded_without_the_instruction(exported):
    with TextToImage.open(exported, "onnxruntime", progress=False) as t2i:
        tok = t2i.tokenizer()
        emb, mask = t2i.encode_text(["a blue square"])
        neg, neg_mask = t2i.encode_text(["a blue square"], instruction=False)
    assert tok.length(instruction=True) > tok.length(instruction=False) == 24
    assert emb.shape == neg.shape == (1, 24, 64) and mask.shape == neg_mask.shape == (1, 24)
    assert not np.allclose(emb, neg)  # the instruction prefix changes the states of the same words
    assert mask[0, 0] == 1 and neg_mask.sum() < 24  # BOS kept; the short negative is padded


def test_split_decoder_tiles_match_untiled_decoding(exported):
    """decoder_global on the whole latent, decoder_local in 64 px tiles: equal to the one-graph decoder up to
    the blend (whole-decoder tiles of the same size only reach about 20 dB on these weights)."""
    request = GenerationConfig(prompts=("a white circle",), steps=2, height=128, width=128)
    with TextToImage.open(exported, "onnxruntime", progress=False) as t2i:
        assert t2i.backend.has("decoder_global") and t2i.backend.has("decoder_local")
        whole = t2i.generate(request)
        calls = []
        original = t2i._run
        t2i._run = lambda component, x: (calls.append((component, x.shape)), original(component, x))[1]
        tiled = t2i.generate(GenerationConfig(**{**request.__dict__, "tile_size": 64})).stages["image"]
    assert [c for c, _ in calls].count("decoder_local") == 9 and ("decoder_global", (1, 32, 4, 4)) in calls
    assert "decoder" not in [c for c, _ in calls]
    assert psnr_db(tiled, whole.stages["image"]) >= 40.0
