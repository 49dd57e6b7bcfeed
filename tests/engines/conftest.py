"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def trt_rtx(monkeypatch):
    """The TensorRT-RTX module, with deserialisation made to fail the test (there is no GPU to run on)."""
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx not installed")

    def forbidden(*args, **kwargs):
        raise AssertionError("the engine builder must not deserialise engines (no GPU on a build machine)")

    monkeypatch.setattr(trt, "Runtime", forbidden)
    return trt
