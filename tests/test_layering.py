"""Data flows one way (docs/ARCHITECTURE.md): no module imports a stage below it.

Checked on the source (every import statement, lazy ones inside functions included), so that a lazy import
that a test happens not to reach still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dcae_deploy"

# package (or module) -> the stages it must never import
FORBIDDEN = {
    "runtime": ("dcae_deploy.export", "dcae_deploy.engines", "dcae_deploy.train", "dcae_deploy.shipped_demo"),
    "engines": ("dcae_deploy.runtime", "dcae_deploy.train", "dcae_deploy.shipped_demo"),
    "export": ("dcae_deploy.engines.build", "dcae_deploy.runtime", "dcae_deploy.train"),
    "models": ("dcae_deploy.export", "dcae_deploy.engines", "dcae_deploy.runtime", "dcae_deploy.train"),
    "family.py": ("dcae_deploy.models.autoencoder", "dcae_deploy.export", "dcae_deploy.runtime"),
    "specs.py": ("dcae_deploy.export", "dcae_deploy.engines", "dcae_deploy.runtime"),
    "manifest.py": ("dcae_deploy.export", "dcae_deploy.engines", "dcae_deploy.runtime", "dcae_deploy.models"),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("where", sorted(FORBIDDEN))
def test_no_import_against_the_flow(where):
    target = PACKAGE / where
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert files, f"nothing to check under {target}"
    bad = [f"{path.relative_to(PACKAGE)} imports {name}" for path in files for name in _imports(path)
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[where])]
    assert not bad, "\n".join(bad)


def test_the_package_does_not_reach_into_tests():
    bad = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if '"tests"' in path.read_text()]
    assert not bad, bad
