"""SANA's Gemma-2 text-encoder stage: same states and masks as diffusers ``SanaPipeline.encode_prompt``.

A tiny random Gemma-2 (hidden 64, 2 layers) and the built-in tiny BPE tokenizer (trained locally,
saved to a temporary folder and read back by ``transformers.AutoTokenizer`` for diffusers): no download.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcae_deploy.errors import CheckpointError, DcaeDeployError
from dcae_deploy.models.gemma import build_gemma, encode_prompts, load_gemma
from dcae_deploy.models.text_encoder import default_tokenizer, load_text_encoder, load_tokenizer, save_text_encoder
from dcae_deploy.tokenizer import SANA_INSTRUCTION, GemmaTokenizer, select_positions
from dcae_deploy.variants import get_variant

PROMPTS = ["A red circle on a blue background", "  Café with a STAR ☕, detailed  "]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(encoder, our tokenizer, folder holding the saved tokenizer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = get_variant("tiny-gemma-2")
    encoder = build_gemma(config)
    with torch.no_grad():  # RMSNorm weights start at 0 (Gemma scales by 1 + w): make every weight matter
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokenizer = default_tokenizer(config)
    folder = tmp_path_factory.mktemp("tiny-gemma-tokenizer")
    tokenizer.save(folder)
    yield encoder, tokenizer, folder
    torch.set_num_threads(threads)


def test_tokenizer_ids_equal_transformers(tiny):
    from transformers import AutoTokenizer

    _, ours, folder = tiny
    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    hf.padding_side = "right"
    chi = "\n".join(SANA_INSTRUCTION)
    length = len(hf.encode(chi)) + ours.max_length - 2
    assert ours.length() == length and ours.input_lengths == (ours.max_length, length)
    ids, mask = ours(PROMPTS)
    texts = [chi + p.lower().strip() for p in PROMPTS]
    ref = hf(texts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True)
    np.testing.assert_array_equal(ids, np.array(ref["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(ref["attention_mask"]))
    assert ids[0, 0] == hf.bos_token_id and mask[0].sum() < length  # BOS first, right padding
    # the reloaded (torch-free, tokenizers-only) copy gives the same ids
    again = GemmaTokenizer.load(folder)
    np.testing.assert_array_equal(again(PROMPTS)[0], ids)
    assert again([""], instruction=False)[0].shape == (1, ours.max_length)


def test_stage_equals_diffusers_encode_prompt(tiny):
    from diffusers import SanaPipeline
    from transformers import AutoTokenizer

    encoder, ours, folder = tiny
    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    pipe = SanaPipeline(tokenizer=hf, text_encoder=encoder.model, vae=None, transformer=None, scheduler=None)
    with torch.no_grad():
        pe, pm, ne, nm = pipe.encode_prompt(
            PROMPTS,
            do_classifier_free_guidance=True,
            negative_prompt="",
            device=torch.device("cpu"),
            max_sequence_length=ours.max_length,
            complex_human_instruction=list(SANA_INSTRUCTION),
        )
    states, mask = encode_prompts(encoder, ours, PROMPTS)
    assert states.shape == (2, ours.max_length, 64) and pe.shape == states.shape
    torch.testing.assert_close(states, pe, rtol=1e-5, atol=1e-6)
    assert torch.equal(mask, pm.long())
    neg_states, neg_mask = encode_prompts(encoder, ours, ["", ""], instruction=False)
    torch.testing.assert_close(neg_states, ne, rtol=1e-5, atol=1e-6)
    assert torch.equal(neg_mask, nm.long())
    assert not torch.allclose(states[0], states[1])  # the two prompts differ after the shared instruction


def test_select_positions_matches_the_graph_selection():
    mask = np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(select_positions(mask, 3), [[1, 0, 0], [1, 1, 1]])
    assert select_positions(mask, 7) is mask


def test_save_load_round_trip_and_errors(tiny, tmp_path):
    encoder, ours, _ = tiny
    save_text_encoder(encoder, tmp_path / "text_encoder")
    ours.save(tmp_path / "tokenizer")
    again = load_text_encoder(tmp_path / "text_encoder", "tiny-gemma-2")
    tok = load_tokenizer(tmp_path / "tokenizer", "tiny-gemma-2")
    a, _ = encode_prompts(encoder, ours, PROMPTS[:1])
    b, _ = encode_prompts(again, tok, PROMPTS[:1])
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    with pytest.raises(CheckpointError, match="has no config.json"):
        load_gemma(tmp_path / "nowhere", get_variant("tiny-gemma-2"))
    with pytest.raises(CheckpointError, match="hidden size 64 does not fit gemma-2-2b-it"):
        load_text_encoder(tmp_path / "text_encoder", "gemma-2-2b-it")
    with pytest.raises(CheckpointError, match="no built-in tokenizer"):
        default_tokenizer("gemma-2-2b-it")
    with pytest.raises(DcaeDeployError, match="no tokenizer.json"):
        GemmaTokenizer.load(tmp_path)
