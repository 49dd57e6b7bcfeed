"""The runtime runs ONNX Runtime without importing torch (a deploy machine has no torch), and without the
export or engines stages (data flows one way: export -> engines -> runtime)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_onnxruntime_generation_imports_no_torch(artifacts_dir, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import dcae_deploy.runtime
        from dcae_deploy.generate import main
        assert main(["--artifacts", {str(artifacts_dir)!r}, "--backend", "onnxruntime", "--prompt", "a red circle",
                     "--steps", "2", "--height", "64", "--width", "64", "--quiet",
                     "--output", {str(tmp_path / "x.png")!r}]) == 0
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        upstream = sorted(m for m in sys.modules if m.startswith(("dcae_deploy.export", "dcae_deploy.engines")))
        assert not upstream, upstream
        print("no torch")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "no torch" in out.stdout, out.stderr
    assert (tmp_path / "x.png").stat().st_size > 0
