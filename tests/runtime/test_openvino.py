"""The OpenVINO backend (``runners/openvino.py``) against ONNX Runtime and PyTorch on the tiny exports, on the CPU.

fp32 (the runtime's default precision) within the fp32 gate (relative L2 <= 1e-4), bf16 within the bf16 gate
(<= 1e-2, image PSNR >= 35 dB) where the CPU computes bf16, the compiled-model cache, the user errors, and a
generation that imports no torch. Skipped where ``openvino`` is not installed. Every OpenVINO model runs on one
thread (a shared 2-core machine).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dcae_deploy.export.gate import compare
from dcae_deploy.runtime import BackendError, BackendOptions, open_backend, open_component

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason="openvino is not installed (`pip install openvino`)")

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "demo-64px.npz"
ONE_THREAD = BackendOptions(threads=1)


def _cpu_bf16_reason() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed"
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return ("this CPU has no native bf16 (AVX512-BF16 or AMX): OpenVINO's CPU plugin does not emulate it, it "
                "computes in f32 instead, so there is no bf16 to check")
    return None


@pytest.fixture(scope="module")
def ae_export(tmp_path_factory):
    """The tiny autoencoder, encoder + decoder, 64-128 px, batch 1-2, random weights (about 45 s)."""
    import torch

    from dcae_deploy.export import export_model

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("ov-ae")
    export_model("tiny-f32c32-sana", folder, components=["encoder", "decoder"], min_res=64, opt_res=64, max_res=128,
                 max_batch=2)
    return folder


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Two real photographs (scikit-image's astronaut and coffee) at 64 x 128, RGB in [-1, 1], NCHW."""
    from skimage import data, transform

    names = ("astronaut", "coffee")
    images = [transform.resize(getattr(data, name)(), (64, 128), anti_aliasing=True) for name in names]
    return (np.stack(images).transpose(0, 3, 1, 2) * 2 - 1).astype(np.float32)


def _run(folder, component: str, backend: str, feeds: dict, options: BackendOptions = ONE_THREAD):
    with open_component(folder, component, backend=backend, options=options) as runner:
        return runner.infer(feeds), getattr(runner, "report", {})


def _rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual.astype(np.float64) - expected) / np.linalg.norm(expected.astype(np.float64)))


def test_fp32_autoencoder_matches_onnxruntime(ae_export, photos):
    latent = _run(ae_export, "encoder", "onnxruntime", {"image": photos})[0]["latent"]
    encoded, report = _run(ae_export, "encoder", "openvino", {"image": photos})
    assert report["precision"] == "f32" and report["device"] == "CPU" and report["threads"] == 1, report
    assert _rel_l2(encoded["latent"], latent) <= 1e-4
    noise = np.random.default_rng(0).standard_normal((1, 32, 2, 2), dtype=np.float32)  # another shape, same graph
    for z in (latent, noise):
        reference = _run(ae_export, "decoder", "onnxruntime", {"latent": z})[0]["image"]
        image = _run(ae_export, "decoder", "openvino", {"latent": z})[0]["image"]
        assert image.shape == reference.shape == (len(z), 3, 32 * z.shape[2], 32 * z.shape[3])
        assert image.dtype == np.float32 and _rel_l2(image, reference) <= 1e-4


@pytest.mark.skipif(_cpu_bf16_reason() is not None, reason=_cpu_bf16_reason() or "")
def test_bf16_autoencoder_within_the_bf16_gate(ae_export, photos):
    bf16 = BackendOptions(threads=1, ov_precision="bf16")
    latent = _run(ae_export, "encoder", "onnxruntime", {"image": photos})[0]["latent"]
    encoded, report = _run(ae_export, "encoder", "openvino", {"image": photos}, bf16)
    assert report["precision"] == "bf16", report  # bf16 really ran (OpenVINO falls back to f32 silently)
    record = compare("encoder", "latent", encoded["latent"], latent, "bf16", is_image=False, runner="openvino")
    assert record.passed and record.rel_l2 > 1e-4, record  # within the gate, and visibly not f32
    reference = _run(ae_export, "decoder", "onnxruntime", {"latent": latent})[0]["image"]
    image = _run(ae_export, "decoder", "openvino", {"latent": latent}, bf16)[0]["image"]
    record = compare("decoder", "image", image, reference, "bf16", is_image=True, runner="openvino")
    assert record.passed, record
    print(f"bf16: encoder rel L2 {_rel_l2(encoded['latent'], latent):.2e}, decoder rel L2 {record.rel_l2:.2e}, "
          f"PSNR {record.psnr_db:.1f} dB")


def test_golden_recipe_through_openvino_matches_pytorch(artifacts, recipe):
    from dcae_deploy.parity import compare_stages, read_golden, run_backend

    _, golden = read_golden(GOLDEN)  # the PyTorch fp32 stages of this recipe
    result = run_backend(artifacts, "openvino", recipe.generation(), ONE_THREAD)
    records = compare_stages(result.stages, golden, artifacts.precision, "openvino")
    assert all(r.passed for r in records), [(r.component, r.rel_l2) for r in records]


def test_compiled_model_cache_makes_the_second_load_fast(ae_export, tmp_path):
    options = BackendOptions(threads=1, ov_cache_dir=tmp_path / "cache")
    z = np.random.default_rng(1).standard_normal((1, 32, 2, 2), dtype=np.float32)
    times, reports, images = [], [], []
    for _ in range(2):
        t0 = time.perf_counter()
        image, report = _run(ae_export, "decoder", "openvino", {"latent": z}, options)
        times.append(time.perf_counter() - t0)
        reports.append(report)
        images.append(image["image"])
    print(f"decoder load + run: first {times[0]:.2f} s, second (from the cache) {times[1]:.2f} s; "
          f"compile {reports[0]['compile_s']} s vs {reports[1]['compile_s']} s")
    blobs = list((tmp_path / "cache").rglob("*.blob"))
    assert blobs and all(b.stat().st_size > 0 for b in blobs)
    assert Path(reports[0]["cache_dir"]).parent.parent == tmp_path / "cache"
    assert [r["loaded_from_cache"] for r in reports] == [False, True]
    assert np.array_equal(images[0], images[1])


def test_the_cache_keeps_precisions_apart(ae_export, tmp_path):
    """OpenVINO 2026.4's CPU blobs do not key on the precision hint: an f16 blob served a later f32 request with f16
    numerics. The runner keeps one cache folder per device and precision."""
    cache = tmp_path / "cache"
    z = np.random.default_rng(2).standard_normal((2, 32, 2, 4), dtype=np.float32)
    reference = _run(ae_export, "decoder", "onnxruntime", {"latent": z})[0]["image"]
    f16 = _run(ae_export, "decoder", "openvino", {"latent": z}, BackendOptions(threads=1, ov_cache_dir=cache,
                                                                            ov_precision="f16"))[0]["image"]
    f32, report = _run(ae_export, "decoder", "openvino", {"latent": z}, BackendOptions(threads=1, ov_cache_dir=cache))
    assert sorted(p.name for p in next(cache.iterdir()).iterdir()) == ["CPU-f16", "CPU-f32"]
    assert report["precision"] == "f32" and _rel_l2(f32["image"], reference) <= 1e-4
    assert not np.array_equal(f16, f32["image"])


def test_an_unwritable_cache_warns_once_and_runs_without(ae_export, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    options = BackendOptions(threads=1, ov_cache_dir=blocker / "cache")  # mkdir fails even for root
    z = np.zeros((1, 32, 2, 2), np.float32)
    for _ in range(2):
        image, report = _run(ae_export, "decoder", "openvino", {"latent": z}, options)
        assert report["cache_dir"] is None and np.isfinite(image["image"]).all()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "compiled-model cache" in line]
    assert len(warnings) == 1 and "running without a cache" in warnings[0], warnings


def test_the_default_cache_is_under_the_export_or_dcae_deploy_cache(ae_export, tmp_path, monkeypatch):
    from dcae_deploy.runtime import open_export

    monkeypatch.delenv("DCAE_DEPLOY_CACHE", raising=False)
    assert open_backend("openvino", open_export(ae_export)).cache_root == ae_export / "openvino-cache"
    monkeypatch.setenv("DCAE_DEPLOY_CACHE", str(tmp_path))
    backend = open_backend("openvino", open_export(ae_export))
    assert backend.cache_root == tmp_path / "openvino-cache"
    assert open_backend("openvino", open_export(ae_export), BackendOptions(ov_cache_dir="")).cache_root is None


def test_bad_device_and_precision_are_clear_errors(ae_export):
    import openvino as ov

    seen = ", ".join(ov.Core().available_devices)
    message = f"unknown OpenVINO device 'TPU'; choose one of CPU, GPU, NPU, AUTO.*sees: {seen}"
    with pytest.raises(BackendError, match=message):
        open_component(ae_export, "decoder", backend="openvino", options=BackendOptions(ov_device="TPU"))
    with pytest.raises(BackendError, match="unknown OpenVINO precision 'fp8'; choose one of f32, bf16, f16, default"):
        open_component(ae_export, "decoder", backend="openvino", options=BackendOptions(ov_precision="fp8"))
    absent = [d for d in ("GPU", "NPU") if not any(a.startswith(d) for a in ov.Core().available_devices)]
    for device in absent:
        with pytest.raises(BackendError, match=f"OpenVINO sees no {device} on this machine .*use --ov-device CPU"):
            open_component(ae_export, "decoder", backend="openvino", options=BackendOptions(ov_device=device))
    with open_component(ae_export, "decoder", backend="openvino",
                        options=BackendOptions(threads=1, ov_device="auto", ov_precision="fp32", ov_cache_dir="")) as r:
        assert r.report["device"] == "AUTO" and r.report["precision"] == "f32" and r.report["execution_devices"]


def test_generate_refuses_openvino_flags_on_another_backend(artifacts_dir, tmp_path, capsys):
    from dcae_deploy.cli import run_cli
    from dcae_deploy.generate import main

    argv = ["--artifacts", str(artifacts_dir), "--prompt", "a red circle", "--output", str(tmp_path / "x.png")]
    assert run_cli(main, [*argv, "--ov-precision", "bf16"]) == 1
    assert "--ov-precision sets OpenVINO, which --backend auto (the default) does not take: add --backend openvino" in \
        capsys.readouterr().err
    assert run_cli(main, [*argv, "--backend", "openvino", "--ov-device", "TPU"]) == 1
    assert "unknown OpenVINO device 'TPU'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_openvino_generation_imports_no_torch(artifacts_dir, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from dcae_deploy.generate import main
        assert main(["--artifacts", {str(artifacts_dir)!r}, "--backend", "openvino", "--prompt", "a red circle",
                     "--steps", "2", "--height", "64", "--width", "64", "--quiet", "--ov-precision", "f32",
                     "--output", {str(tmp_path / "x.png")!r}]) == 0
        assert "openvino" in sys.modules
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        upstream = sorted(m for m in sys.modules if m.startswith(("dcae_deploy.export", "dcae_deploy.engines")))
        assert not upstream, upstream
        print("no torch")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "DCAE_DEPLOY_CACHE": str(tmp_path)})
    assert out.returncode == 0 and "no torch" in out.stdout, out.stderr
    assert (tmp_path / "x.png").stat().st_size > 0
    assert list((tmp_path / "openvino-cache").rglob("*.blob"))


def test_missing_openvino_says_how_to_install_it(artifacts_dir):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["openvino"] = None  # as if the package were not installed: `import openvino` raises ImportError
        from dcae_deploy.runtime import BackendError, open_component
        try:
            open_component({str(artifacts_dir)!r}, "decoder", backend="openvino")
        except BackendError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "OpenVINO is not installed: `pip install openvino`" in out.stdout, out.stdout + out.stderr
