"""Plain test helpers (no fixtures): the reference-data folder and comparison utilities.

Test modules import these with ``from helpers import ...`` (``tests/`` is on ``sys.path`` through
``pythonpath = ["tests"]`` in pyproject.toml), which leaves ``conftest.py`` free for fixtures in any subfolder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the parity metric of DESIGN.md's first tolerance row."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter and BatchNorm statistic so that no weight is at a default (0 or 1) value.

    A wrong key mapping then changes the outputs instead of hiding behind an identity initialisation.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model


def copy_export(folder: Path, tmp_path: Path) -> Path:
    """A private copy of a session export (without its engines, build script or OpenVINO cache), so that a test can
    build into or tamper with it."""
    dest = tmp_path / folder.name
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("engines", "*.sh", "openvino-cache"))
    return dest
