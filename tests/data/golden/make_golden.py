"""Regenerate the golden files beside this script (on purpose: after an intended numerical change).

    .venv/bin/python tests/data/golden/make_golden.py

Equivalent to ``python -m dcae_deploy.parity --regenerate-golden --golden-dir tests/data/golden``: exports the
recipe's pipeline (``dcae_deploy.parity.GoldenRecipe``, random weights, seed 0) and stores PyTorch fp32's
output of every stage.
"""

from __future__ import annotations

from pathlib import Path

from dcae_deploy.parity import regenerate_golden

if __name__ == "__main__":
    print(f"wrote {regenerate_golden(Path(__file__).resolve().parent)}")
