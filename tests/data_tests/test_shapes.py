"""Procedural shapes dataset and the judge used to evaluate generated images."""

import numpy as np
import pytest
import torch

from dcae_deploy.data.judge import judge_image, score
from dcae_deploy.data.shapes import (
    COLOURS,
    SHAPES,
    ShapesDataset,
    all_triples,
    caption_for,
    heldout_triples,
    make_sample,
    parse_caption,
    render,
    render_array,
    train_triples,
)


def test_deterministic_pixels():
    a, b = ShapesDataset(8, seed=7), ShapesDataset(8, seed=7)
    for i in range(8):
        assert a.sample(i) == b.sample(i)
        assert np.array_equal(render_array(a.sample(i)), render_array(b.sample(i)))
    c = ShapesDataset(8, seed=8)
    assert not all(np.array_equal(render_array(a.sample(i)), render_array(c.sample(i))) for i in range(8))


def test_getitem_tensor_and_pil():
    ds = ShapesDataset(3, seed=0, image_size=64)
    item = ds[1]
    img = item["image"]
    assert isinstance(img, torch.Tensor) and img.dtype == torch.float32
    assert img.shape == (3, 64, 64)
    assert img.min() >= -1.0 and img.max() <= 1.0
    assert item["caption"] == ds.sample(1).caption
    assert torch.equal(img, ds[1]["image"])
    pil = render(ds.sample(1))
    assert pil.mode == "RGB" and pil.size == (64, 64)
    expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 127.5 - 1.0
    assert torch.allclose(img, expected)
    with pytest.raises(IndexError):
        ds.sample(3)


def test_caption_round_trip():
    for t in all_triples():
        assert parse_caption(caption_for(*t)) == t
    assert caption_for("orange", "star", "red") == "an orange star on a red background"
    assert parse_caption("  A Red Circle on a Blue background. ") == ("red", "circle", "blue")
    with pytest.raises(ValueError, match="colour 'teal'"):
        parse_caption("a teal circle on a blue background")
    with pytest.raises(ValueError, match="shape 'hexagon'"):
        parse_caption("a red hexagon on a blue background")
    with pytest.raises(ValueError, match="form"):
        parse_caption("red circle, blue background")
    with pytest.raises(ValueError, match="differ"):
        caption_for("red", "circle", "red")


def test_heldout_split():
    train, held = train_triples(), heldout_triples()
    assert held and not set(train) & set(held)
    assert set(train) | set(held) == set(all_triples())
    assert 0.1 < len(held) / len(all_triples()) < 0.2
    assert (train, held) == (train_triples(), heldout_triples())
    # Every pair of caption parts is still seen in training: held-out triples are new combinations.
    for f, s, b in held:
        assert any(t[:2] == (f, s) for t in train)
        assert any((t[0], t[2]) == (f, b) for t in train)
        assert any(t[1:] == (s, b) for t in train)
    ds = ShapesDataset(50, seed=0, split="train")
    assert all(tuple(parse_caption(ds.sample(i).caption)) in set(train) for i in range(50))
    ds = ShapesDataset(50, seed=0, split="heldout")
    assert all(tuple(parse_caption(ds.sample(i).caption)) in set(held) for i in range(50))


def test_judge_accuracy_on_ground_truth():
    ds = ShapesDataset(200, seed=123, split="all")
    samples = [ds.sample(i) for i in range(200)]
    result = score([s.caption for s in samples], [render_array(s) for s in samples])
    assert result["n"] == 200
    assert result["colour_accuracy"] >= 0.98, result
    assert result["shape_accuracy"] >= 0.95, result
    assert len({s.shape for s in samples}) == len(SHAPES)


def test_judge_detects_wrong_images():
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    prompts, images = [], []
    for i in range(40):
        fg, shape, bg = all_triples()[(i * 37) % len(all_triples())]
        wrong = [c for c in names if c not in (fg, bg)][i % (len(names) - 2)]
        images.append(render_array(make_sample((wrong, shape, bg), rng)))
        prompts.append(caption_for(fg, shape, bg))
    result = score(prompts, images)
    assert result["fg_colour_accuracy"] == 0.0
    assert result["shape_accuracy"] >= 0.95  # only the colour was swapped

    # Wrong shape, and an empty image (no shape at all).
    s = make_sample(("red", "circle", "blue"), rng)
    assert judge_image(render(s)).shape == "circle"
    assert score(["a red square on a blue background"], [render(s)])["shape_accuracy"] == 0.0
    blank = np.full((128, 128, 3), COLOURS["green"], dtype=np.uint8)
    j = judge_image(blank)
    assert j.shape is None and j.fg_colour is None and j.bg_colour == "green"
