"""One measurement: one stage on one backend, in a fresh process (so that peak memory is this pair's alone).

Run by ``bench_stages.py`` as ``python benchmarks/bench_worker.py JOB.json RESULT.json``; not meant to be run
by hand. The job names the stage, the backend, the input file (``.npz`` written once by the parent, so
every backend sees the very same inputs), the graph or engine to load, and the timing settings. The
result holds every timed run (ms), memory, the backend's configuration, and the path of the output
(``.npy``) that the parent compares against PyTorch eager.

Timing: ``warmup`` untimed calls, then ``repeats`` timed calls; the median is reported.
* CPU: ``time.perf_counter`` around each synchronous call.
* torch on CUDA (eager, CUDA graph, torch.compile): CUDA events around each call, inputs already on the GPU.
* ONNX Runtime CUDA EP: IO binding with inputs and outputs resident on the GPU; wall clock around
  ``run_with_iobinding`` (it returns after the GPU finished).
* TensorRT: the runtime's runner binds the buffers once; then ``execute_async_v3`` + stream synchronize
  is timed (wall clock). ``with_host_io_ms`` additionally times the runner's full ``infer`` (host <-> device copies).
* A tiled decode (image larger than the decoder profile) is timed end to end through
  ``dcae_deploy.runtime.decode_tiled``, host copies included, the same way on every backend.

Memory (MB): on CPU from ``/proc/self/status`` (VmRSS, VmHWM; the high-water mark is reset through
``/proc/self/clear_refs`` before the timed phase, falling back to ``getrusage`` maxrss where that is not
allowed); on GPU ``torch.cuda.max_memory_allocated`` (torch backends) and the device's used memory
(``cudaMemGetInfo``) before loading vs after the runs (every backend; ORT's arena and TensorRT's context
memory are not released, so this is their peak).
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
MB = 1024 * 1024


# --------------------------------------------------------------------------------------------------
# memory probes
# --------------------------------------------------------------------------------------------------


def _status() -> dict[str, float]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"VmRSS": float("nan"), "VmHWM": peak}
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def reset_peak_rss() -> bool:
    """Reset the process's resident high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class GpuMemory:
    """Used device memory (cudaMemGetInfo) through torch, or None when no CUDA device."""

    def __init__(self, enabled: bool) -> None:
        self.torch = None
        if not enabled:  # the parent found no GPU: do not import torch into an ONNX Runtime worker
            return
        try:
            import torch

            if torch.cuda.is_available():
                self.torch = torch
        except ImportError:
            pass

    def used_mb(self) -> float | None:
        if self.torch is None:
            return None
        free, total = self.torch.cuda.mem_get_info()
        return (total - free) / MB


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------


def load_inputs(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The parent's inputs (float32 / int64) and each input's role ("float": the export precision)."""
    data = np.load(path)
    roles = json.loads(Path(path).with_suffix(".json").read_text())
    return {k: data[k] for k in data.files}, roles


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


# --------------------------------------------------------------------------------------------------
# backends: each returns an object with
#   prepare(feeds_np) -> state   (inputs moved / bound; outside the timed region)
#   run(state)                   (compute only; synchronous unless events are used)
#   fetch(state) -> np.ndarray   (the output, float32, on the host)
#   call_np(feeds_np) -> np.ndarray  (the full path with host I/O; used for tiling)
#   events: bool                 (True: time run() with CUDA events)
#   config: dict                 (settings to report)
# --------------------------------------------------------------------------------------------------


class NotAvailable(Exception):
    """The pair cannot run on this machine; the message says why (reported as ``n/a: ...``)."""


def physical_cores() -> int:
    cores = set()
    try:
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
            elif not line.strip() and core is not None:
                cores.add((phys, core))
                phys = core = None
        if core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    n = len(cores) or (os.cpu_count() or 1)
    return min(n, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else n


def _torch_models(job: dict):
    """(module, fn over named torch inputs) of the job's stage: the weights the export used (seed 0) or the checkpoint."""
    from dcae_deploy.family import roles_for
    from dcae_deploy.models.pipeline import build_parts, load_parts
    from dcae_deploy.registry import get_variant
    from dcae_deploy.specs import module_call

    config = get_variant(job["model"])
    checkpoint = job.get("checkpoint")
    roles = roles_for(config, [job["stage"]])  # only the stage's part, as the exporter builds it (same seed-0 weights)
    models = load_parts(config, checkpoint, roles=roles) if checkpoint else build_parts(config, seed=0, roles=roles)
    module, fn = module_call(config, job["stage"], models)
    del models
    gc.collect()
    return module, fn


class TorchBackend:
    def __init__(self, job: dict, mode: str) -> None:
        import torch

        self.torch = torch
        cuda = torch.cuda.is_available() and job["device"] != "cpu"
        if mode != "eager" and not cuda:
            raise NotAvailable("no GPU" + (" (--device cpu)" if torch.cuda.is_available() else ""))
        if job["device"] == "cuda" and not cuda:
            raise NotAvailable("no GPU (--device cuda)")
        self.device = torch.device("cuda" if cuda else "cpu")
        self.events = cuda
        self.mode = mode
        torch.set_num_threads(job["threads"])
        self.dtype = torch_dtype(job["precision"])
        module, fn = _torch_models(job)
        module = module.to(self.dtype).eval().to(self.device)
        self.channels_last = bool(job.get("channels_last")) and job["stage"] in ("encoder", "decoder")
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module, self.fn = module, fn
        self.roles = job["roles"]
        self.config = {
            "device": str(self.device), "mode": mode, "dtype": str(self.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "inference_mode": True, "channels_last": self.channels_last,
            "torch": torch.__version__,
        }
        if cuda:
            self.config["gpu"] = torch.cuda.get_device_name()
            torch.backends.cuda.matmul.allow_tf32 = job["precision"] != "fp32"
            torch.backends.cudnn.allow_tf32 = job["precision"] != "fp32"
            self.config["tf32"] = job["precision"] != "fp32"
        self._graph = None
        self._graph_state: dict | None = None  # the inputs and outputs the CUDA graph was captured on
        self._compiled = None
        if mode == "compile":
            self._compiled = torch.compile(fn)
            self.config["compile_mode"] = "default"

    def _to_device(self, feeds: dict[str, np.ndarray]) -> dict:
        torch = self.torch
        out = {}
        for k, v in feeds.items():
            t = torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
            if self.roles[k] == "float":
                t = t.to(self.dtype)
                if self.channels_last and t.ndim == 4:
                    t = t.contiguous(memory_format=torch.channels_last)
            out[k] = t
        return out

    def prepare(self, feeds: dict[str, np.ndarray]) -> dict:
        state = {"inputs": self._to_device(feeds), "out": None}
        if self.mode == "cudagraph":
            torch = self.torch
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.inference_mode(), torch.cuda.stream(stream):
                for _ in range(3):  # warm up on a side stream before capture (cuBLAS/cuDNN handles)
                    self.fn(state["inputs"])
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                state["out"] = self.fn(state["inputs"])
            self._graph, self._graph_state = graph, state
        return state

    def run(self, state: dict) -> None:
        with self.torch.inference_mode():
            if self._graph is not None:
                self._graph.replay()
            elif self._compiled is not None:
                state["out"] = self._compiled(state["inputs"])
            else:
                state["out"] = self.fn(state["inputs"])

    def fetch(self, state: dict) -> np.ndarray:
        return state["out"].float().cpu().numpy()

    def call_np(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self._graph is not None:  # copy into the captured inputs (tiles all share one shape)
            state = self._graph_state
            for k, v in self._to_device(feeds).items():
                state["inputs"][k].copy_(v)
        else:
            state = {"inputs": self._to_device(feeds), "out": None}
        self.run(state)
        return self.fetch(state)


class RunnerBackend:
    """A runtime runner through its public binding API (dcae_deploy/runtime/runners/base.py): ``bind`` places the
    inputs once (on the GPU where the runner has one), ``run_bound`` is one execution with no host copies (ONNX
    Runtime CUDA EP: ``run_with_iobinding``; TensorRT: ``execute_async_v3`` + stream synchronize; CPU: one
    synchronous run), ``fetch`` copies the outputs back, and ``infer`` is the full path with host I/O."""

    events = False

    def __init__(self, runner, output: str) -> None:
        from dcae_deploy.runtime.errors import BackendError

        self.runner, self.output = runner, output
        try:
            runner.load()
        except BackendError as exc:
            raise NotAvailable(str(exc)) from exc
        self.cuda = runner.on_gpu

    def prepare(self, feeds: dict[str, np.ndarray]):
        return self.runner.bind(feeds)

    def run(self, state) -> None:
        self.runner.run_bound(state)

    def fetch(self, state) -> np.ndarray:
        return np.asarray(self.runner.fetch(state)[self.output], dtype=np.float32)

    def call_np(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.runner.infer(feeds)[self.output], dtype=np.float32)


class OrtBackend(RunnerBackend):
    """The runtime's ONNX Runtime runner, with explicit CPU session settings (see README: ORT CPU settings)."""

    def __init__(self, job: dict, force_cpu: bool) -> None:
        from dcae_deploy.manifest import read_manifest
        from dcae_deploy.runtime.runners.onnxruntime import OnnxRuntimeRunner, OrtSettings

        folder = job.get("artifacts")
        if not folder:
            raise NotAvailable(job.get("artifacts_reason") or "no export of this stage")
        manifest = read_manifest(folder, verify=False)
        if job["stage"] not in manifest.components:
            raise NotAvailable(f"the artifacts in {folder} have no {job['stage']} graph")
        component = manifest.component(job["stage"])
        device = "cpu" if force_cpu or job["device"] == "cpu" else job["device"]
        settings = OrtSettings(**(job.get("ort") or {}))  # defaults: exactly what the runtime's runner uses
        precision = manifest.precision_of(component.name)
        runner = OnnxRuntimeRunner(component, Path(folder) / component.file, precision, device=device,
                                   threads=job["threads"], settings=settings)
        super().__init__(runner, component.outputs[0].name)
        self.config = {"onnxruntime": runner.version, "providers": runner.providers,
                       "graph": str(runner.graph), "precision": precision, **runner.report}


class TrtBackend(RunnerBackend):
    """The runtime's TensorRT runner on the job's engine folder (``<stage>.plan``)."""

    def __init__(self, job: dict) -> None:
        from dcae_deploy.manifest import read_manifest
        from dcae_deploy.runtime.runners.tensorrt import TensorRTRunner

        engine_dir = job.get("engine_dir")
        if not engine_dir:
            raise NotAvailable(job.get("engine_reason") or "no engines")
        manifest = read_manifest(job["artifacts"], verify=False)
        plan = Path(engine_dir) / f"{job['stage']}.plan"
        if not plan.is_file():
            raise NotAvailable(f"no {plan.name} in {engine_dir}")
        component = manifest.component(job["stage"])
        runner = TensorRTRunner(component, plan, job.get("trt_flavour"))
        super().__init__(runner, component.outputs[0].name)
        self.config = {"flavour": runner.flavour, "plan": str(plan), "version": runner.version}


class OpenVINOBackend(RunnerBackend):
    """The runtime's OpenVINO runner on the CPU: ``openvino`` f32 (the runtime's default), ``openvino-bf16``,
    ``openvino-defaults`` (no precision hint); no compiled-model cache, so load_s is a real compile."""

    PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16", "openvino-defaults": "default", "openvino-int8": "f32"}

    def __init__(self, job: dict) -> None:
        from dcae_deploy.manifest import read_manifest
        from dcae_deploy.runtime.runners.openvino import OpenVINORunner

        folder = job.get("artifacts")
        if not folder:
            raise NotAvailable(job.get("artifacts_reason") or "no export of this stage")
        manifest = read_manifest(folder, verify=False)
        if job["stage"] not in manifest.components:
            raise NotAvailable(f"the artifacts in {folder} have no {job['stage']} graph")
        component = manifest.component(job["stage"])
        runner = OpenVINORunner(component, Path(folder) / component.file, device="CPU",
                                precision=self.PRECISIONS[job["backend"]], threads=job["threads"], cache_dir=None)
        super().__init__(runner, component.outputs[0].name)
        self.config = dict(runner.report)


def make_backend(job: dict):
    name = job["backend"]
    if name == "torch":
        return TorchBackend(job, "eager")
    if name == "torch-bf16":  # PyTorch eager computing in bfloat16 (the peers' CPU low-precision path)
        return TorchBackend({**job, "precision": "bf16"}, "eager")
    if name == "torch-cudagraph":
        return TorchBackend(job, "cudagraph")
    if name == "torch-compile":
        return TorchBackend(job, "compile")
    if name in ("onnxruntime", "onnxruntime-int8"):  # -int8: the same runner on the int8 export
        return OrtBackend(job, force_cpu=False)
    if name == "onnxruntime-cpu":
        return OrtBackend(job, force_cpu=True)
    if name == "tensorrt":
        return TrtBackend(job)
    if name.startswith("openvino"):
        return OpenVINOBackend(job)
    raise NotAvailable(f"unknown backend {name!r}")


# --------------------------------------------------------------------------------------------------
# the measurement
# --------------------------------------------------------------------------------------------------


def _timer(backend, state, tiled_call):
    """A function that runs once and returns its time in ms."""
    if tiled_call is not None:
        def once() -> float:
            t0 = time.perf_counter()
            tiled_call()
            return (time.perf_counter() - t0) * 1e3
        return once
    if backend.events:
        torch = backend.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def once() -> float:
            start.record()
            backend.run(state)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        return once

    def once() -> float:
        t0 = time.perf_counter()
        backend.run(state)
        return (time.perf_counter() - t0) * 1e3
    return once


def _preimport(backend: str) -> None:
    """Import the backend's libraries before the memory baseline: peaks then count the stage, not the imports."""
    import importlib

    names = {"torch": ["torch", "dcae_deploy.models.pipeline", "dcae_deploy.specs"],
             "onnxruntime": ["onnxruntime", "dcae_deploy.runtime.runners.onnxruntime"],
             "tensorrt": ["dcae_deploy.runtime.runners.tensorrt"],
             "openvino": ["openvino", "dcae_deploy.runtime.runners.openvino"]}
    for name in names.get(backend.split("-")[0], []):
        importlib.import_module(name)


def measure(job: dict) -> dict:
    _preimport(job["backend"])
    rss0 = _status()["VmRSS"]
    gpu = GpuMemory(enabled=bool(job.get("cuda")) and job["device"] != "cpu")
    gpu0 = gpu.used_mb()
    feeds, roles = load_inputs(job["inputs"])
    job["roles"] = roles
    t0 = time.perf_counter()
    backend = make_backend(job)
    load_s = time.perf_counter() - t0
    gc.collect()
    rss_loaded = _status()["VmRSS"]
    reset_ok = reset_peak_rss()
    torch_cuda = getattr(backend, "events", False)
    if torch_cuda:
        backend.torch.cuda.synchronize()
        backend.torch.cuda.reset_peak_memory_stats()

    tile = job.get("tile")
    if tile:
        from dcae_deploy.runtime.tiling import TileConfig, decode_tiled

        ratio = job["ratio"]
        cells = tile // ratio
        config = TileConfig(cells, max(1, cells // 4))
        latent = feeds["latent"]
        result: dict = {}

        def tiled_call():
            result["out"] = decode_tiled(lambda z: backend.call_np({"latent": z}), latent, ratio, config)

        if job["backend"] == "torch-cudagraph":
            first = {"latent": np.ascontiguousarray(latent[:, :, :cells, :cells])}
            backend.prepare(first)  # captures the CUDA graph on one tile's shape; call_np copies into it
        state = None
    else:
        tiled_call = None
        state = backend.prepare(feeds)

    once = _timer(backend, state, tiled_call)
    t_first = time.perf_counter()
    first_ms = once()  # includes torch.compile's compilation, ORT's arena growth, TRT-RTX's JIT
    first_s = time.perf_counter() - t_first
    for _ in range(max(0, job["warmup"] - 1)):
        once()
    times = [once() for _ in range(job["repeats"])]

    output = result["out"] if tile else backend.fetch(state)
    host_io = None
    if not tile and job["backend"] in ("onnxruntime", "tensorrt") and getattr(backend, "cuda", True):
        host = []
        for _ in range(min(3, job["repeats"])):
            t = time.perf_counter()
            backend.call_np(feeds)
            host.append((time.perf_counter() - t) * 1e3)
        host_io = statistics.median(host)
    status = _status()
    memory = {
        "rss_start_mb": rss0,
        "rss_after_load_mb": rss_loaded,
        "rss_peak_mb": status["VmHWM"],
        "peak_over_start_mb": status["VmHWM"] - rss0,  # weights + runtime + activations, this stage only
        "peak_over_loaded_mb": status["VmHWM"] - rss_loaded if reset_ok else None,  # activations + workspaces
        "peak_reset": reset_ok,
    }
    if torch_cuda:
        memory["gpu_max_allocated_mb"] = backend.torch.cuda.max_memory_allocated() / MB
    g1 = gpu.used_mb()
    if gpu0 is not None and g1 is not None:
        memory["gpu_used_delta_mb"] = g1 - gpu0
    out_path = job.get("output")
    if out_path:
        np.save(out_path, np.asarray(output, dtype=np.float32))
    return {
        "status": "ok",
        "times_ms": times,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "stdev_ms": statistics.stdev(times) if len(times) > 1 else 0.0,
        "first_call_ms": first_ms,
        "first_call_s": first_s,
        "load_s": load_s,
        "with_host_io_ms": host_io,
        "timing": "cuda events" if backend.events and not tile else "wall clock",
        "memory": memory,
        "config": backend.config,
        "output": out_path,
        "output_shape": list(np.shape(output)),
        "finite": bool(np.isfinite(output).all()),
    }


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    job = json.loads(Path(job_path).read_text())
    try:
        result = measure(job)
    except NotAvailable as exc:
        result = {"status": "n/a", "reason": str(exc)}
    except Exception as exc:  # reported in the table; the run goes on with the other pairs
        traceback.print_exc()
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    Path(result_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
