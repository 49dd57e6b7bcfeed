"""benchmarks/laptop_estimate.py counts the int4 text encoder's weights in the layout the exporter writes: checked
against the real file of an int4 export of a tiny Gemma-2 with SANA's 2304 channels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from dcae_deploy.export import export_model

ROOT = Path(__file__).resolve().parents[2]


def _laptop_estimate():
    spec = importlib.util.spec_from_file_location("laptop_estimate", ROOT / "benchmarks" / "laptop_estimate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_int4_layout_matches_the_exported_file(tmp_path):
    estimate = _laptop_estimate()
    module = estimate.build("text_encoder", "tiny-gemma-2-2304")
    ids = torch.zeros(1, 8, dtype=torch.long, device="meta")
    counted = estimate._counted_bytes(estimate.count(module, (ids, torch.ones_like(ids))), "int4")

    export_model("tiny-gemma-2-2304", tmp_path, precision="int4")
    real = sum(p.stat().st_size for p in tmp_path.glob("text_encoder.onnx*"))
    # the file also holds the graph itself (measured: counted 5.76 MB, file 6.06 MB)
    assert counted <= real <= 1.1 * counted, (counted, real)
