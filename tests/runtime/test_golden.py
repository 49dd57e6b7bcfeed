"""Current outputs of every stage against the golden files in tests/data/golden/.

A failure names the stage and its error. After an *intended* numerical change, rewrite the files with
``python tests/data/golden/make_golden.py`` and commit them with the change that explains them.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from pathlib import Path

from dcae_deploy.parity import PARITY_STAGES as STAGES
from dcae_deploy.parity import read_golden, run_backend

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
GOLDEN = GOLDEN_DIR / "demo-64px.npz"


def test_golden_recipe_is_the_fixture_recipe(recipe):
    stored, _ = read_golden(GOLDEN)
    assert asdict(stored) == asdict(recipe), "the golden file was made from another recipe: regenerate it"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_stages_match_the_golden_file(artifacts, recipe, torch_result, backend):
    _, golden = read_golden(GOLDEN)
    result = torch_result if backend == "torch" else run_backend(artifacts, backend, recipe.generation())
    errors = []
    for stage in STAGES:
        actual, expected = result.stages[stage].astype(np.float64), golden[stage].astype(np.float64)
        if actual.shape != expected.shape:
            errors.append(f"{stage}: shape {actual.shape} != golden {expected.shape}")
            continue
        rel = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)
        if not rel <= 1e-4:
            errors.append(f"{stage}: relative L2 {rel:.3g} > 1e-4 against {GOLDEN.name}")
    assert not errors, f"{backend}: " + "; ".join(errors)
