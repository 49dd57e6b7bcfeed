"""The demo's word tokenizer and small text encoder, and pipeline folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcae_deploy.errors import CheckpointError, DcaeDeployError
from dcae_deploy.models.pipeline import build_pipeline, load_pipeline, save_pipeline
from dcae_deploy.models.text_encoder import build_text_encoder, default_tokenizer, load_text_encoder, save_text_encoder
from dcae_deploy.tokenizer import WordTokenizer


def test_word_tokenizer_bos_padding_unknown_and_truncation(tmp_path):
    tok = WordTokenizer(["a", "red", "circle"], max_length=4)
    ids, mask = tok(["A red CIRCLE!", "", "a zebra", "a red red red red"])
    bos, pad, unk = tok.ids["<bos>"], tok.ids["<pad>"], tok.ids["<unk>"]
    assert ids.dtype == np.int64 and ids.shape == (4, 4)
    assert ids[0].tolist() == [bos, tok.ids["a"], tok.ids["red"], tok.ids["circle"]]
    assert ids[1].tolist() == [bos, pad, pad, pad] and mask[1].tolist() == [1, 0, 0, 0]
    assert ids[2, 2] == unk and tok.unknown_words("a zebra") == ["zebra"]
    assert mask[3].tolist() == [1, 1, 1, 1]  # truncated to max_length
    tok.save(tmp_path)
    again = WordTokenizer.load(tmp_path)
    assert again.vocab == tok.vocab and np.array_equal(again(["a red circle"])[0], tok(["a red circle"])[0])
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(DcaeDeployError, match="vocabulary"):
        WordTokenizer.load(tmp_path)


def test_text_encoder_ignores_padding_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_text_encoder("demo-text").eval()
    tok = default_tokenizer("demo-text")
    ids, mask = (torch.from_numpy(a) for a in tok(["a red circle on a blue background"]))
    with torch.no_grad():
        out = model(ids, mask)
        other_padding = ids.clone()
        other_padding[mask == 0] = tok.ids["star"]  # what sits under the padding must not matter
        out2 = model(other_padding, mask)
    assert out.shape == (1, 16, 128)
    assert not out[mask == 0].any() and out[mask == 1].abs().sum() > 0
    assert torch.allclose(out, out2, atol=1e-6)
    save_text_encoder(model, tmp_path / "te")
    loaded = load_text_encoder(tmp_path / "te", "demo-text")
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), out)


def test_pipeline_folder_round_trip_and_errors(tmp_path):
    models = build_pipeline("demo", seed=0)
    folder = save_pipeline(models, tmp_path / "demo")
    loaded = load_pipeline(folder)
    assert loaded.config.name == "demo"
    for part in ("autoencoder", "denoiser", "text_encoder"):
        a, b = getattr(models, part).state_dict(), getattr(loaded, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    with pytest.raises(CheckpointError, match="holds pipeline 'demo'"):
        load_pipeline(folder, "tiny-t2i")
    with pytest.raises(CheckpointError, match="not a pipeline folder"):
        load_pipeline(tmp_path)
    import shutil

    shutil.rmtree(folder / "text_encoder")
    with pytest.raises(CheckpointError, match="text_encoder/"):
        load_pipeline(folder)
