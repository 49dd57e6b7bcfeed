"""Shared fixtures: one exported tiny text-to-image folder (the golden recipe), made once per session.

The export is the real one (``dcae_deploy.export.export_model`` of the registered ``demo`` pipeline with
randomly initialised weights, seed 0, a 64-128 px profile): about 30 s on the 2-core CPU machine.
"""

from __future__ import annotations

import pytest
import torch

from dcae_deploy.parity import GoldenRecipe


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def recipe() -> GoldenRecipe:
    return GoldenRecipe()


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory, recipe):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("t2i-export")
    recipe.export(folder)
    return folder


@pytest.fixture(scope="session")
def artifacts(artifacts_dir, recipe):
    from dcae_deploy.runtime import load_artifacts

    return load_artifacts(artifacts_dir, variant=recipe.variant)


@pytest.fixture(scope="session")
def torch_result(artifacts, recipe):
    """The PyTorch fp32 reference generation of the recipe (shared by several tests)."""
    from dcae_deploy.parity import run_backend

    return run_backend(artifacts, "torch", recipe.generation())
