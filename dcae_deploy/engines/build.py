"""Build TensorRT / TensorRT-RTX engines from an export folder (``manifest.json`` + ONNX graphs).

One engine per component, strongly typed (the precision lives in the ONNX graph, no fp16 flag), with
one optimisation profile whose min/opt/max shapes come from the manifest. Plans and sidecars are
written atomically; a component whose build fails leaves nothing behind under its final names. Plans already in
the engine folder that were built from other graphs (the export was re-exported since) are stale: the build
says so and replaces those it builds, and warns about any it leaves (the runtime refuses them).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from dcae_deploy.checkpoints import atomic_write, write_json
from dcae_deploy.engines.common import (
    BuildTarget,
    EngineBuildError,
    TensorRTFlavour,
    engine_folder_name,
    load_flavour,
    resolve_target,
)
from dcae_deploy.engines.sidecar import list_engine_dirs
from dcae_deploy.manifest import Component, Manifest, read_manifest, sha256_file
from dcae_deploy.tensorrt_support import PLAN_SUFFIX, SIDECAR_SUFFIX, EngineInfo, stale_engines

_STATUS_WIDTH = 100  # characters of the in-place progress line on a terminal
# Enough of the backend's error log to explain a failed build without flooding the terminal.
_MAX_LOGGED_ERRORS = 20


def build_engines(
    folder: str | Path,
    *,
    backend: str | None = None,
    components: Sequence[str] | None = None,
    compute_capability: str | None = None,
    timing_cache: str | Path | None = None,
    output: str | Path | None = None,
    progress: bool = True,
    verbose: bool = False,
    stream: IO[str] | None = None,
) -> dict[str, EngineInfo]:
    """Build one engine per component of the export in ``folder``; return ``{component: EngineInfo}``.

    Args:
        folder: export folder holding ``manifest.json``; every file's hash is verified first.
        backend: ``"tensorrt"``, ``"tensorrt-rtx"`` or ``None``/``"auto"`` (TensorRT when importable).
        components: subset of the manifest's components (default: all).
        compute_capability: TensorRT-RTX target, see :func:`~dcae_deploy.engines.common.resolve_target`.
        timing_cache: file to load tactic timings from (if it exists) and save them to afterwards
            (full TensorRT; TensorRT-RTX has no timing cache and leaves the file alone).
        output: engine root (default ``folder/engines``); plans go to ``output/<backend>-<version>-<target>-<precision>/``.
        progress: show build progress on ``stream`` (default stderr).

    Raises:
        ManifestError: the manifest is missing or a file changed after export.
        EngineBuildError: no backend, a parser error, a profile that does not fit the graph, a failed build.
    """
    folder = Path(folder)
    stream = stream or sys.stderr
    manifest = read_manifest(folder, verify=True)
    selected = _select_components(manifest, components)
    flavour = load_flavour(backend)
    target = resolve_target(flavour, compute_capability)
    engine_dir = Path(output) if output is not None else folder / "engines"
    engine_dir = engine_dir / engine_folder_name(flavour, target, manifest.precision)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None and flavour.is_rtx:
        # TensorRT-RTX keeps the timing-cache API as deprecated no-ops (it tunes kernels at run time, JIT);
        # loading a saved cache even reaches for CUDA, which fails on a GPU-less build machine.
        _say(stream, f"note: TensorRT-RTX ignores timing caches; --timing-cache {cache_path} is left untouched")
        cache_path = None
    cache_bytes = _read_timing_cache(cache_path)
    manifest_sha = sha256_file(folder / "manifest.json")
    _report_stale(engine_dir, manifest, {c.name for c in selected}, stream)

    infos: dict[str, EngineInfo] = {}
    for component in selected:
        onnx_path = folder / component.file
        _say(
            stream,
            f"building {component.name}: {onnx_path} -> {engine_dir}/ ({flavour.name} {flavour.version}, "
            f"target {target.name}, {manifest.precision})",
        )
        start = time.perf_counter()
        plan, cache_bytes = _build_one(
            flavour, target, component, onnx_path, cache_bytes, progress=progress, verbose=verbose, stream=stream
        )
        seconds = time.perf_counter() - start
        infos[component.name] = _write_engine(
            engine_dir, plan, component, manifest, manifest_sha, folder, flavour, target, seconds
        )
        _say(stream, f"  {component.name}: {infos[component.name].plan_bytes / 1e6:.1f} MB plan in {seconds:.1f} s")
    if cache_path is not None and cache_bytes is not None:
        atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(cache_bytes))
    return infos


def _report_stale(engine_dir: Path, manifest: Manifest, rebuilt: set[str], stream: IO[str]) -> None:
    """Say which plans of ``engine_dir`` (and of the folders beside it) were built from other graphs than
    ``manifest`` lists: those in ``rebuilt`` are about to be replaced, the others stay stale."""
    if engine_dir.is_dir():
        for name, why in stale_engines(engine_dir, manifest.components).items():
            plan = engine_dir / f"{name}{PLAN_SUFFIX}"
            if name in rebuilt:
                _say(stream, f"replacing stale engine {plan}: it was built from other graphs ({why})")
            elif name in manifest.components:
                _say(stream, f"warning: {plan} is stale (built from other graphs: {why}) and this build leaves it; "
                             f"the runtime refuses it: rebuild it too (--components {name})")
            else:
                _say(stream, f"warning: {plan} is stale ({why}); delete it")
    for sibling in list_engine_dirs(engine_dir.parent):
        if sibling.resolve() != engine_dir.resolve():
            stale = stale_engines(sibling, manifest.components)
            if stale:
                _say(stream, f"note: {sibling} holds engines built from other graphs ({', '.join(sorted(stale))}): "
                             "the runtime refuses them; delete that folder")


def _select_components(manifest: Manifest, names: Iterable[str] | None) -> list[Component]:
    if not names:
        return list(manifest.components.values())
    flat = [n.strip() for name in names for n in name.split(",") if n.strip()]
    return [manifest.component(name) for name in dict.fromkeys(flat)]  # raises ManifestError for unknown names


def _read_timing_cache(path: Path | None) -> bytes | None:
    if path is None:
        return None
    if path.is_dir():
        raise EngineBuildError(f"--timing-cache {path} is a folder; give a file path")
    return path.read_bytes() if path.is_file() else b""


def _say(stream: IO[str], message: str) -> None:
    print(message, file=stream, flush=True)


# --------------------------------------------------------------------------------------------------- build


def _build_one(
    flavour: TensorRTFlavour,
    target: BuildTarget,
    component: Component,
    onnx_path: Path,
    cache_bytes: bytes | None,
    *,
    progress: bool,
    verbose: bool,
    stream: IO[str],
) -> tuple[memoryview, bytes | None]:
    """Parse, configure and build one component; return the plan bytes and the updated timing cache."""
    trt = flavour.trt
    logger = _make_logger(trt, verbose, stream)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10; TensorRT 11 and TensorRT-RTX keep it or make it the only mode
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"{flavour.name} {flavour.version} cannot parse {onnx_path}:\n  " + "\n  ".join(errors or logger.errors)
        )
    _check_io_names(network, component, onnx_path)

    config = builder.create_builder_config()
    _add_profile(builder, config, network, component, onnx_path)
    _set_target(trt, config, target)
    cache = _attach_timing_cache(config, cache_bytes, stream) if cache_bytes is not None else None

    monitor = _make_progress_monitor(trt, component.name, stream) if progress else None
    spinner = _Spinner(component.name, stream) if progress and monitor is None else None
    if monitor is not None:
        config.progress_monitor = monitor
    try:
        if spinner is not None:
            spinner.start()
        serialized = builder.build_serialized_network(network, config)
    finally:
        if spinner is not None:
            spinner.stop()
        if monitor is not None:
            monitor.close()
    if serialized is None:
        detail = "\n  ".join(logger.errors[-_MAX_LOGGED_ERRORS:]) or "no error message from the builder"
        raise EngineBuildError(
            f"{flavour.name} {flavour.version} failed to build {component.name} from {onnx_path} "
            f"(target {target.name}):\n  {detail}"
        )
    plan = memoryview(serialized).cast("B")  # no copy: plans of full-size models are hundreds of MB
    if not plan.nbytes:
        raise EngineBuildError(f"{flavour.name} returned an empty plan for {component.name}")
    new_cache = None
    if cache is not None:
        new_cache = bytes(memoryview(config.get_timing_cache().serialize()))
    return plan, new_cache if new_cache is not None else cache_bytes


def _format_parser_error(error: Any) -> str:
    parts = [str(error.desc())]
    node = getattr(error, "node_name", None)
    op = getattr(error, "node_operator", None)
    node_name = node() if callable(node) else node
    op_name = op() if callable(op) else op
    if node_name or op_name:
        parts.append(f"(node {node_name!r}, op {op_name!r})")
    return " ".join(parts)


def _check_io_names(network: Any, component: Component, onnx_path: Path) -> None:
    """The engine keeps the manifest's tensor names, so a runtime can bind by name: refuse a mismatch."""
    got_in = [network.get_input(i).name for i in range(network.num_inputs)]
    got_out = [network.get_output(i).name for i in range(network.num_outputs)]
    want_in = [t.name for t in component.inputs]
    want_out = [t.name for t in component.outputs]
    if sorted(got_in) != sorted(want_in) or sorted(got_out) != sorted(want_out):
        raise EngineBuildError(
            f"{onnx_path} has inputs {got_in} and outputs {got_out}, but the manifest lists inputs {want_in} and "
            f"outputs {want_out}; the export folder is inconsistent: re-export it"
        )


def _add_profile(builder: Any, config: Any, network: Any, component: Component, onnx_path: Path) -> None:
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        shapes = component.profiles.get(tensor.name)
        if shapes is None:
            if any(d < 0 for d in dims):
                raise EngineBuildError(
                    f"input {tensor.name!r} of {onnx_path} has dynamic shape {dims} but the manifest gives it no "
                    "min/opt/max profile; re-export"
                )
            continue  # a static input needs no profile
        for label, shape in (("min", shapes.min), ("opt", shapes.opt), ("max", shapes.max)):
            if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape)):
                raise EngineBuildError(
                    f"the manifest's {label} shape {tuple(shape)} of input {tensor.name!r} does not fit its "
                    f"shape {dims} in {onnx_path}; re-export the folder"
                )
        if not all(a <= b <= c for a, b, c in zip(shapes.min, shapes.opt, shapes.max)):
            raise EngineBuildError(
                f"profile of input {tensor.name!r} is not ordered min <= opt <= max: {shapes.min}, {shapes.opt}, "
                f"{shapes.max}"
            )
        profile.set_shape(tensor.name, shapes.min, shapes.opt, shapes.max)
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"the backend rejected the optimisation profile of {component.name} ({onnx_path})")


def _set_target(trt: Any, config: Any, target: BuildTarget) -> None:
    if not target.compute_capabilities:
        return
    config.num_compute_capabilities = len(target.compute_capabilities)
    for index, member in enumerate(target.compute_capabilities):
        if not config.set_compute_capability(getattr(trt.ComputeCapability, member), index):
            raise EngineBuildError(f"the backend refused compute capability {member} (target {target.name})")


def _attach_timing_cache(config: Any, data: bytes, stream: IO[str]) -> Any:
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        _say(stream, "  warning: the timing cache was made on another GPU or TensorRT version; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


# --------------------------------------------------------------------------------------------------- output


def _write_engine(
    engine_dir: Path,
    plan: memoryview,
    component: Component,
    manifest: Manifest,
    manifest_sha: str,
    folder: Path,
    flavour: TensorRTFlavour,
    target: BuildTarget,
    seconds: float,
) -> EngineInfo:
    """Plan first, sidecar last, both atomic: a sidecar only ever describes a complete plan."""
    plan_path = engine_dir / f"{component.name}{PLAN_SUFFIX}"
    sidecar_path = engine_dir / f"{component.name}{SIDECAR_SUFFIX}"
    sidecar_path.unlink(missing_ok=True)  # a stale sidecar must not describe the new plan
    atomic_write(plan_path, lambda tmp: Path(tmp).write_bytes(plan))
    info = EngineInfo(
        component=component.name,
        plan_path=plan_path,
        plan_sha256=hashlib.sha256(plan).hexdigest(),
        plan_bytes=plan.nbytes,
        onnx_file=component.file,
        onnx_sha256=component.files[component.file],
        onnx_files=component.files,
        source_dir=str(folder.resolve()),
        variant=manifest.variant,
        kind=manifest.kind,
        precision=manifest.precision,
        manifest_checkpoint=manifest.checkpoint,
        manifest_sha256=manifest_sha,
        strongly_typed=True,
        backend=flavour.name,
        backend_version=flavour.version,
        target=target.name,
        compute_capabilities=tuple(_cc_text(m) for m in target.compute_capabilities),
        inputs=component.inputs,
        outputs=component.outputs,
        profiles=component.profiles,
        build_seconds=round(seconds, 3),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        host=f"{platform.system()} {platform.machine()}, python {platform.python_version()}",
    )
    data = info.to_dict()
    write_json(sidecar_path, data)
    return EngineInfo.from_dict(data, engine_dir)


def _cc_text(member: str) -> str:
    if not member.startswith("SM"):
        return member.lower()
    digits = member[2:]
    return f"{digits[:-1]}.{digits[-1]}"


# --------------------------------------------------------------------------------------------------- logging / progress


def _make_logger(trt: Any, verbose: bool, stream: IO[str]) -> Any:
    """An ``ILogger`` that keeps errors for the exception message and prints warnings (all with ``verbose``)."""
    severity = trt.ILogger.Severity

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._lock = threading.Lock()

        def log(self, level: Any, msg: str) -> None:
            with self._lock:
                if level in (severity.ERROR, severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                    if verbose:
                        print(f"  [trt] error: {msg}", file=stream, flush=True)
                elif level == severity.WARNING:
                    print(f"  [trt] warning: {msg}", file=stream, flush=True)
                elif verbose:
                    print(f"  [trt] {msg}", file=stream, flush=True)

    return _Logger()


def _make_progress_monitor(trt: Any, label: str, stream: IO[str]) -> Any | None:
    """An ``IProgressMonitor`` that shows the current build phase, or ``None`` when the binding lacks it.

    On a terminal one status line is rewritten in place; otherwise each top-level phase gets one line.
    """
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None
    interactive = hasattr(stream, "isatty") and stream.isatty()

    class _Monitor(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()
            self._phases: dict[str, tuple[int, int]] = {}  # name -> (steps done, steps total), in start order
            self._depth: dict[str, int] = {}
            self._start = time.perf_counter()
            self._dirty = False
            self._last_draw = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                with self._lock:
                    self._phases[phase_name] = (0, max(int(num_steps), 1))
                    depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                    self._depth[phase_name] = depth
                    if not interactive and depth <= 1:
                        print(f"  [{label}] {'  ' * depth}{phase_name} ({self._elapsed()})", file=stream, flush=True)
                    self._draw(force=depth <= 1)
            except Exception:  # noqa: BLE001 - a display problem must never abort the build
                self._dirty = False

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                with self._lock:
                    if phase_name in self._phases:
                        self._phases[phase_name] = (int(step) + 1, self._phases[phase_name][1])
                    self._draw()
            except Exception:  # noqa: BLE001
                self._dirty = False
            return True

        def phase_finish(self, phase_name: str) -> None:
            try:
                with self._lock:
                    self._phases.pop(phase_name, None)
                    self._depth.pop(phase_name, None)
                    self._draw()
            except Exception:  # noqa: BLE001
                self._dirty = False

        def _elapsed(self) -> str:
            return f"{time.perf_counter() - self._start:.1f} s"

        def _draw(self, force: bool = False) -> None:
            now = time.perf_counter()
            if not interactive or not self._phases or (not force and now - self._last_draw < 0.1):
                return
            self._last_draw = now
            phases = list(self._phases.items())
            shown = phases if len(phases) <= 2 else [phases[0], phases[-1]]
            text = (" > " if len(phases) <= 2 else " > ... > ").join(f"{n} {d}/{t}" for n, (d, t) in shown)
            line = f"  [{label}] {self._elapsed():>7}  {text}"
            stream.write("\r" + line[:_STATUS_WIDTH].ljust(_STATUS_WIDTH))
            stream.flush()
            self._dirty = True

        def close(self) -> None:
            with self._lock:
                if self._dirty:
                    stream.write("\r" + " " * _STATUS_WIDTH + "\r")
                    stream.flush()
                    self._dirty = False

    return _Monitor()


class _Spinner:
    """Elapsed-time indicator for bindings without ``IProgressMonitor``: a background thread on ``stream``."""

    def __init__(self, label: str, stream: IO[str]) -> None:
        self._label = label
        self._stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._interactive = hasattr(stream, "isatty") and stream.isatty()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._interactive:
            self._stream.write("\r" + " " * 60 + "\r")
            self._stream.flush()

    def _run(self) -> None:
        start = time.perf_counter()
        frames = "|/-\\"
        tick = 0
        interval = 0.25 if self._interactive else 30.0
        while not self._stop.wait(interval):
            tick += 1
            elapsed = time.perf_counter() - start
            if self._interactive:
                self._stream.write(f"\r  [{self._label}] building {frames[tick % 4]} {elapsed:.0f} s")
            else:
                self._stream.write(f"  [{self._label}] still building ({elapsed:.0f} s)\n")
            self._stream.flush()


__all__ = ["EngineBuildError", "build_engines"]
