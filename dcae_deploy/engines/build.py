"""Build TensorRT / TensorRT-RTX engines from an export folder (``manifest.json`` + ONNX graphs).

One engine per component, strongly typed (the precision lives in the ONNX graph, no fp16 flag), with
one optimisation profile whose min/opt/max shapes come from the manifest. Plans and sidecars are
written atomically; a component whose build fails leaves nothing behind under its final names. Plans already in
the engine folder that were built from other graphs (the export was re-exported since) are stale: the build
says so and replaces those it builds, and warns about any it leaves (the runtime refuses them).

Precisions and builder flags. Every network is created strongly typed
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TensorRT-RTX and TensorRT 11 know no other kind), so the graph
alone decides each layer's type and no precision flag is ever set:

* fp32 / fp16 / bf16: the graph's float type;
* int8 / fp8 (:mod:`dcae_deploy.precisions`): float32 graphs with QuantizeLinear/DequantizeLinear pairs, i.e.
  explicit quantization. The scales are in the graph, so there is no calibrator (trtexec: never ``--calib``);
  strongly typed, TensorRT fuses each Q/DQ pair into its int8 / fp8 kernels and keeps the float32 islands float32,
  which is NVIDIA's recommended way ("use explicit quantization with strong typing; precision-control build flags
  are not required and should not be specified"). ``BuilderFlag.INT8`` / ``FP8`` (trtexec ``--int8`` /
  ``--fp8``) are what weakly typed networks need to accept the Q/DQ pairs, not strongly typed ones; ``FP16``
  would let a weakly typed build run the float32 islands in fp16, outside what the parity gate measured.
  ``build_engines.sh`` (:mod:`dcae_deploy.engines.script`) passes the same: ``--stronglyTyped`` to trtexec, no
  precision flag to either tool.
* A TensorRT too old to have ``STRONGLY_TYPED`` (8.x) builds weakly typed with the one flag the graph needs
  (:data:`WEAKLY_TYPED_FLAGS`: FP16, BF16, INT8 or FP8); the sidecar then says ``strongly_typed: false``.

fp8 engines need compute capability 8.9 or later (FP8 tensor cores): an fp8 export's TensorRT-RTX portable target
is ``sm89+`` and a target below 8.9 is refused before building (:func:`~dcae_deploy.engines.common.resolve_target`);
the sidecar records ``min_compute_capability`` ("8.9"), and the runtime refuses an older GPU in words
(:func:`~dcae_deploy.tensorrt_support.plan_device_problem`).

Quantized graphs whose biases are DequantizeLinear nodes of int32 constants (ONNX Runtime's default bias
quantization) do not parse: TensorRT's DequantizeLinear takes int8 / fp8 / int4 / fp4 inputs only. The parser's
error is then explained (:func:`_parse_hint`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import re
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
from dcae_deploy.tensorrt_support import (
    PLAN_SUFFIX,
    SIDECAR_SUFFIX,
    EngineInfo,
    precision_min_cc,
    stale_engines,
    strictest_precision,
)

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
    # the target must suit every selected graph's precision: the one needing the newest GPU decides (fp8: 8.9+)
    strictest = strictest_precision(manifest.precision_of(c.name) for c in selected)
    target = resolve_target(flavour, compute_capability, strictest)
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
            f"target {target.name}, {manifest.precision_of(component.name)})",
        )
        start = time.perf_counter()
        plan, cache_bytes, strongly_typed = _build_one(
            flavour, target, component, onnx_path, cache_bytes, manifest.precision_of(component.name), progress=progress,
            verbose=verbose, stream=stream,
        )
        seconds = time.perf_counter() - start
        infos[component.name] = _write_engine(
            engine_dir, plan, component, manifest, manifest_sha, folder, flavour, target, seconds, strongly_typed
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
    precision: str,
    *,
    progress: bool,
    verbose: bool,
    stream: IO[str],
) -> tuple[memoryview, bytes | None, bool]:
    """Parse, configure and build one component; return the plan bytes, the updated timing cache and whether the
    network was strongly typed."""
    trt = flavour.trt
    logger = _make_logger(trt, verbose, stream)
    builder = trt.Builder(logger)
    creation_flags, builder_flags, strongly_typed = network_flags(flavour, precision)
    network = builder.create_network(creation_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        errors = errors or logger.errors
        raise EngineBuildError(
            f"{flavour.name} {flavour.version} cannot parse {onnx_path}:\n  " + "\n  ".join(errors)
            + _parse_hint(errors + logger.errors, precision)
        )
    _check_io_names(network, component, onnx_path)

    config = builder.create_builder_config()
    for flag in builder_flags:
        config.set_flag(flag)
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
            f"(target {target.name}, {precision}):\n  {detail}" + _build_hint(logger.errors, precision)
        )
    plan = memoryview(serialized).cast("B")  # no copy: plans of full-size models are hundreds of MB
    if not plan.nbytes:
        raise EngineBuildError(f"{flavour.name} returned an empty plan for {component.name}")
    new_cache = None
    if cache is not None:
        new_cache = bytes(memoryview(config.get_timing_cache().serialize()))
    return plan, new_cache if new_cache is not None else cache_bytes, strongly_typed


#: The builder flag a weakly typed network needs for each precision's graph (only for a TensorRT without
#: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): Q/DQ pairs of int8 / float8 and the fp16 / bf16 graph types
#: are refused without them. Strongly typed networks take none.
WEAKLY_TYPED_FLAGS: dict[str, tuple[str, ...]] = {"fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8",),
                                                  "fp8": ("FP8",)}


def network_flags(flavour: TensorRTFlavour, precision: str) -> tuple[int, list[Any], bool]:
    """``(create_network flags, builder flags, strongly typed)`` for an export of ``precision``: strongly typed
    with no builder flag wherever the flavour can (see the module docstring), else weakly typed with
    :data:`WEAKLY_TYPED_FLAGS`."""
    trt = flavour.trt
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 9.x/10; TensorRT 11 and TensorRT-RTX keep it or make it the only mode
        return 1 << int(strongly_typed), [], True
    flags = []
    for name in WEAKLY_TYPED_FLAGS.get(precision, ()):
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise EngineBuildError(
                f"{flavour.name} {flavour.version} has neither strongly typed networks nor BuilderFlag.{name}: it "
                f"cannot build {precision} engines; install TensorRT 10 or later"
            )
        flags.append(flag)
    return 0, flags, False


def _parse_hint(errors: Sequence[str], precision: str) -> str:
    """What to do about a parser failure that an export (not the user's machine) causes."""
    text = "\n".join(errors)
    if "DequantizeLinear" in text and re.search(r"\bInt32\b|\bINT32\b", text):
        return ("\n(the graph dequantizes int32 constants: ONNX Runtime's quantizer stored the biases as int32 "
                "(its QuantizeBias default), and TensorRT's DequantizeLinear takes only int8 / fp8 / int4 / fp4 "
                f"inputs. Re-export with --precision {precision} using a dcae_deploy whose quantizer keeps biases "
                "float32 (quantize_static extra option QuantizeBias=False))")
    return ""


def _build_hint(errors: Sequence[str], precision: str) -> str:
    text = "\n".join(errors)
    need = precision_min_cc(precision)
    if need is not None and ("HW-specific datatypes" in text or "fp8" in text.lower()):
        return (f"\n({precision} engines need a GPU of compute capability {need[0]}.{need[1]} or later; full "
                "TensorRT builds for the GPU it runs on, TensorRT-RTX for --compute-capability)")
    return ""


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
    strongly_typed: bool = True,
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
        precision=manifest.precision_of(component.name),
        manifest_checkpoint=manifest.checkpoint,
        manifest_sha256=manifest_sha,
        strongly_typed=strongly_typed,
        min_compute_capability=_min_cc_text(manifest.precision_of(component.name)),
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


def _min_cc_text(precision: str) -> str | None:
    need = precision_min_cc(precision)
    return f"{need[0]}.{need[1]}" if need is not None else None


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


__all__ = ["WEAKLY_TYPED_FLAGS", "EngineBuildError", "build_engines", "network_flags"]
