"""The fault-injection suite: every test here is marked ``faults`` (``pytest -m faults`` runs it alone).

Each test drives a real entry point (mostly as a subprocess, as a user would) into a fault and asserts
the exit code, the key words of the message and the state of the output folder afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FAULTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if FAULTS_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def run_module(module: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None,
               cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``python -m module args...`` in a fresh interpreter (one thread), text output captured.

    A hang fails the test (``subprocess.TimeoutExpired``) instead of blocking the suite.
    """
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


@pytest.fixture
def run():
    """The :func:`run_module` helper as a fixture."""
    return run_module
