"""The shared training loop: single process or ``torchrun`` DDP, AdamW, EMA, AMP (GPU only), gradient
clipping, rank-0 CSV log + progress line + loss-curve PNG, atomic checkpoints and exact resume.

A *task* (:class:`TrainTask`) owns the models and the losses; the loop owns everything else. Exact
resume: weights, optimizer states, EMA, step and every rank's RNG states are checkpointed, and the
data order is a pure function of (seed, step, rank), so the step after a resume computes the same
loss, bit for bit, as the uninterrupted run (same world size; on CPU, and on GPU as far as its kernels
are deterministic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dcae_deploy.errors import CheckpointError, DcaeDeployError
from dcae_deploy.train import checkpointing as ckpt
from dcae_deploy.train.distributed import (
    DistInfo,
    abort,
    barrier,
    init_distributed,
    mean_over_ranks,
    same_on_all_ranks,
    shutdown,
)
from dcae_deploy.train.logs import LossLog, Progress, plot_losses


@dataclass(frozen=True)
class OptimSpec:
    """AdamW hyperparameters of one trained module."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


def _constant(progress: float) -> float:
    return 1.0


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


LR_SCHEDULES = {"constant": _constant, "cosine": _cosine}  # progress after warmup in [0, 1] -> lr multiplier


def lr_multiplier(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step``: linear warmup over ``warmup_steps``, then ``schedule``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, steps - warmup_steps)
    return LR_SCHEDULES[schedule](min(1.0, (step - warmup_steps) / decay_steps))


@dataclass(frozen=True)
class LoopConfig:
    """Run-level settings. ``batch_size`` is per process (global batch = batch_size x world size)."""

    steps: int
    batch_size: int
    seed: int = 0
    ema_decay: float = 0.999
    grad_clip: float = 1.0  # max global grad norm per module; <= 0 disables clipping
    warmup_steps: int = 0  # linear learning-rate warmup
    lr_schedule: str = "constant"  # after warmup: "constant" or "cosine" (decays to 0 at ``steps``)
    amp: str = "bfloat16"  # autocast dtype on GPU ("bfloat16", "float16" or "none"); never on CPU
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 3
    num_workers: int = 0
    device: str | None = None  # None: CUDA when available

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise DcaeDeployError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.amp not in ("bfloat16", "float16", "none"):
            raise DcaeDeployError(f"amp must be 'bfloat16', 'float16' or 'none', got {self.amp!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise DcaeDeployError(f"lr_schedule must be one of {sorted(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise DcaeDeployError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


class TrainTask(Protocol):
    """What the loop trains. ``modules()["model"]`` is the model the EMA tracks and ``save_final`` writes."""

    name: str

    def modules(self) -> dict[str, nn.Module]:
        """Every module to train and checkpoint, by name; trainable = ``requires_grad`` parameters."""

    def optim_spec(self, module: str) -> OptimSpec: ...

    def describe(self) -> str:
        """Printed by rank 0 at the start (what trains, which losses are on)."""

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable configuration stored in every checkpoint."""

    def losses(self, nets: Mapping[str, nn.Module], batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One step's losses: ``({module: loss}, {term: value})``.

        ``nets`` are the (possibly DDP-wrapped) modules. Each loss is backpropagated into its module in
        the dict's order, and that module's optimizer steps (a GAN lists the generator first).
        """

    def save_final(self, folder: Path, model: nn.Module) -> None:
        """Write ``model`` in its loadable format (``folder`` is created by the caller)."""

    # Optional: ``check_resume(saved_task_config, folder)`` raises a DcaeDeployError when a checkpoint's
    # task config cannot be continued by this task at all (e.g. another autoencoder phase).


@dataclass
class TrainResult:
    history: list[dict[str, float]]  # rank-0 (rank-averaged) loss terms of the steps run in this call
    step: int  # steps completed
    out_dir: Path


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EMA:
    """Exponential moving average of a module's trained parameters; buffers are copied, frozen
    parameters (which never change during a run) are left as they were at the start.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so short runs do not keep an EMA
    stuck at the initial weights.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        pairs = [(self.shadow[k], p) for k, p in module.named_parameters() if p.requires_grad]
        if pairs:
            torch._foreach_lerp_([s for s, _ in pairs], [p.detach() for _, p in pairs], 1.0 - decay)
        for k, b in module.named_buffers():
            if k in self.shadow:
                self.shadow[k].copy_(b)

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)


class StepBatchSampler:
    """Infinite batches of dataset keys; the batch of step ``s`` on rank ``r`` depends only on (seed, s, r).

    Epoch ``e`` is ``DistributedSampler(seed, epoch=e)``'s shuffled shard cut into full batches; a
    resume at step ``s`` starts inside its epoch without touching the skipped items. Keys are
    ``(index, draw_seed)`` pairs, so random augmentations are reproducible too (see
    :class:`dcae_deploy.train.data.ImageFolderDataset`).
    """

    def __init__(self, dataset: Dataset, info: DistInfo, batch_size: int, seed: int, start_step: int) -> None:
        self.sampler = DistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size, self.seed, self.start_step = batch_size, seed, start_step
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise DcaeDeployError(
                f"dataset of {len(dataset)} items is too small for batch size {batch_size} on "  # type: ignore[arg-type]
                f"{info.world_size} process(es): it needs at least {batch_size * info.world_size} items"
            )

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_step, self.batches_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for b in range(offset, self.batches_per_epoch):
                chunk = indices[b * self.batch_size : (b + 1) * self.batch_size]
                yield [(i, _draw_seed(self.seed, epoch, i)) for i in chunk]
            epoch, offset = epoch + 1, 0


def _draw_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def set_train_mode(module: nn.Module) -> None:
    """``train()``, except normalisation layers whose parameters are all frozen stay in eval mode
    (frozen BatchNorm must not update its running statistics)."""
    module.train()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            params = list(m.parameters(recurse=False))
            if not any(p.requires_grad for p in params):
                m.eval()


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def param_checksum(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names and bytes), to compare replicas."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _autocast(info: DistInfo, amp: str):
    if info.device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, amp))


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def run_training(
    task: TrainTask,
    dataset: Dataset,
    cfg: LoopConfig,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    info: DistInfo | None = None,
    allow_changed_config: bool = False,
) -> TrainResult:
    """Train ``task`` on ``dataset`` for ``cfg.steps`` steps in total (a resume continues the count).

    Writes to ``out_dir``: ``checkpoints/step-*/``, ``loss_log.csv`` (from the first completed step on),
    ``loss_curve.png`` and ``final/`` (the model and ``final/ema/`` via ``task.save_final``). Under
    torchrun, every rank calls this.

    ``resume``: a run, checkpoints or step folder; a run folder resumes from its newest intact
    checkpoint (corrupt newer ones are reported and skipped). A resume refuses settings that differ from
    the checkpoint's (anything but the step count and logging/checkpointing cadence), listing them,
    unless ``allow_changed_config`` (then it warns).
    """
    out_dir = Path(out_dir)
    own_group = info is None
    info = info or init_distributed(cfg.device)
    try:
        result = _run(task, dataset, cfg, out_dir, resume, info, allow_changed_config)
    except BaseException:
        if own_group:
            abort(info)  # no barrier: the other ranks may be blocked where this one failed
        raise
    if own_group:
        shutdown(info)
    return result


def _run(task: TrainTask, dataset: Dataset, cfg: LoopConfig, out_dir: Path, resume, info: DistInfo,
         allow_changed_config: bool = False) -> TrainResult:
    modules = task.modules()
    if "model" not in modules:
        raise ValueError(f"task {task.name} must provide a module named 'model'")
    for m in modules.values():
        m.to(info.device)
    nets: dict[str, nn.Module] = {}
    for name, m in modules.items():
        if info.distributed and trainable(m):
            ids = [info.local_rank] if info.device.type == "cuda" else None
            nets[name] = DistributedDataParallel(m, device_ids=ids)
        else:
            nets[name] = m
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for name, m in modules.items():
        if trainable(m):
            spec = task.optim_spec(name)
            optimizers[name] = torch.optim.AdamW(
                trainable(m), lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay
            )
    if not optimizers:
        raise DcaeDeployError(f"task {task.name} has no trainable parameters")
    scaler = torch.amp.GradScaler("cuda") if info.device.type == "cuda" and cfg.amp == "float16" else None
    ema = EMA(modules["model"], cfg.ema_decay)
    run_config = {
        "task": task.name,
        "task_config": task.config_dict(),
        "loop_config": dataclasses.asdict(cfg),
        "world_size": info.world_size,
    }

    seed_everything(cfg.seed + 1_000_003 * info.rank)  # per-rank noise; replicas were broadcast by DDP
    start = 0
    if resume is not None:
        start = _restore(Path(resume), info, task, modules, optimizers, ema, scaler, run_config, allow_changed_config)
    if start >= cfg.steps:
        raise DcaeDeployError(f"checkpoint is at step {start}, nothing left to do for steps={cfg.steps}")

    loader = DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(dataset, info, cfg.batch_size, cfg.seed, start),
        num_workers=cfg.num_workers,
        pin_memory=info.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
        persistent_workers=cfg.num_workers > 0,
    )
    log = LossLog(out_dir / "loss_log.csv", start) if info.is_main else None
    progress = Progress(cfg.steps, start, cfg.log_every)
    if info.is_main:
        print(f"[{task.name}] {info.world_size} process(es) on {info.device}, steps {start}->{cfg.steps}, "
              f"batch {cfg.batch_size}/process, EMA {cfg.ema_decay}", flush=True)
        print(task.describe(), flush=True)
    for m in modules.values():
        set_train_mode(m)

    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    batches = iter(loader)
    for step in range(start, cfg.steps):
        batch = _to_device(_next_batch(batches), info.device)
        lr_scale = lr_multiplier(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)
        with _autocast(info, cfg.amp):
            losses, terms = task.losses(nets, batch)
        for name, loss in losses.items():
            opt = optimizers[name]
            for group in opt.param_groups:
                group["lr"] = task.optim_spec(name).lr * lr_scale
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(opt)
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(trainable(modules[name]), cfg.grad_clip)
                terms[f"grad_norm_{name}"] = float(norm)
            if scaler:
                scaler.step(opt)
            else:
                opt.step()
        if scaler:
            scaler.update()
        ema.update(modules["model"], step)
        terms = mean_over_ranks(info, terms)
        lr = task.optim_spec("model").lr * lr_scale
        if log is not None:
            log.append(step, terms, lr, time.perf_counter() - t0)
            history.append({"step": step, **terms})
            progress.update(step, terms, lr)
        done = step + 1
        if done == cfg.steps or (cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0):
            _save(out_dir, done, info, modules, ema, optimizers, run_config, cfg, scaler)

    if info.distributed:
        (out_dir / "replicas").mkdir(parents=True, exist_ok=True)
        sums = "".join(f"{name} {param_checksum(m)}\n" for name, m in modules.items())
        (out_dir / "replicas" / f"rank{info.rank}.sha256").write_text(sums)
    if info.is_main:
        final = out_dir / "final"
        final.mkdir(parents=True, exist_ok=True)
        task.save_final(final, modules["model"])
        ema_model = _ema_copy(modules["model"], ema)
        (final / "ema").mkdir(exist_ok=True)
        task.save_final(final / "ema", ema_model)
        if log is not None:
            plot_losses(log.rows, out_dir / "loss_curve.png")
        print(f"[{task.name}] wrote {final} and {out_dir / 'loss_curve.png'}", flush=True)
    barrier(info)
    return TrainResult(history=history, step=cfg.steps, out_dir=out_dir)


def _next_batch(batches: Iterator[Any]) -> Any:
    """The next batch; a user error raised in a DataLoader worker comes back as its own message (the
    DataLoader re-raises it with the worker's whole traceback inside the message)."""
    try:
        return next(batches)
    except DcaeDeployError as exc:
        text = str(exc)
        marker = f"{type(exc).__name__}: "
        if "Original Traceback" not in text or marker not in text:
            raise
        message = text[text.rindex(marker) + len(marker):].strip()
        try:
            clean = type(exc)(message)
        except Exception:
            clean = DcaeDeployError(message)
        raise clean from None


def _ema_copy(model: nn.Module, ema: EMA) -> nn.Module:
    import copy

    clone = copy.deepcopy(model)
    clone.load_state_dict(ema.shadow)
    return clone.eval()


def _save(out_dir, step, info, modules, ema, optimizers, run_config, cfg, scaler) -> None:
    folder = ckpt.step_folder(out_dir / "checkpoints", step)
    ckpt.save_checkpoint(
        folder, rank=info.rank, step=step, world_size=info.world_size, modules=modules,
        ema=ema.shadow, optimizers=optimizers, config=run_config,
    )
    if scaler is not None and info.is_main:
        ckpt.torch_save_atomic(scaler.state_dict(), folder / "grad_scaler.pt")
    barrier(info)
    if info.is_main:
        ckpt.finish_checkpoint(folder, step, info.world_size, cfg.keep_checkpoints)
    barrier(info)


#: Loop settings that do not change what a step computes: a resume may change them freely (and the step
#: count, see :func:`config_changes`).
_FREE_LOOP_KEYS = frozenset({"log_every", "checkpoint_every", "keep_checkpoints", "num_workers", "device"})


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(setting, checkpoint's value, new value)`` for every training setting of run config ``current``
    that differs from checkpoint config ``saved``.

    Settings of the loop (``batch_size``, ``seed``, ...) are named as they are; the task's as dotted paths
    (``phase.lr``). Not counted: the step count (unless the lr schedule is cosine, whose curve depends
    on it), logging/checkpointing cadence, workers, device, world size (see :func:`_restore`), and keys
    only one side has (written by another version of dcae_deploy). A value stored twice (the loop's and
    the phase's batch size) is listed once.
    """
    current = json.loads(json.dumps(current))  # tuples -> lists, as the checkpoint stores them
    cosine = {(config.get("loop_config") or {}).get("lr_schedule") for config in (saved, current)}
    changes: list[tuple[str, Any, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for section in ("loop_config", "task_config"):
        old, new = _flatten(saved.get(section) or {}), _flatten(current.get(section) or {})
        for key in [k for k in old if k in new]:
            leaf = key.rsplit(".", 1)[-1]
            if old[key] == new[key] or (section == "loop_config" and key in _FREE_LOOP_KEYS):
                continue
            if leaf == "steps" and "cosine" not in cosine:  # a longer run, same steps so far
                continue
            signature = (leaf, json.dumps(old[key]), json.dumps(new[key]))
            if signature in seen:
                continue
            seen.add(signature)
            changes.append((key, old[key], new[key]))
    return changes


def _check_resume_config(folder: Path, saved: Mapping[str, Any], run_config: Mapping[str, Any], task, info: DistInfo,
                         allow_changed_config: bool) -> None:
    saved_task = saved.get("task")
    if saved_task != task.name:
        raise CheckpointError(f"checkpoint {folder} was written by task {saved_task!r}, not {task.name!r}")
    saved_tc, current_tc = saved.get("task_config") or {}, run_config.get("task_config") or {}
    if saved_tc.get("variant") and current_tc.get("variant") and saved_tc["variant"] != current_tc["variant"]:
        raise CheckpointError(
            f"checkpoint {folder} trains variant {saved_tc['variant']!r}, not {current_tc['variant']!r}: "
            f"resume with --variant {saved_tc['variant']}"
        )
    check = getattr(task, "check_resume", None)
    if check is not None:
        check(saved_tc, folder)
    changes = config_changes(saved, run_config)
    if not changes:
        return
    listing = "\n".join(f"  {key}: {json.dumps(old)} -> {json.dumps(new)}" for key, old, new in changes)
    if not allow_changed_config:
        raise CheckpointError(
            f"cannot resume from {folder} exactly: {len(changes)} setting(s) differ from the checkpoint's "
            f"(checkpoint -> now):\n{listing}\nrun again with the checkpoint's values, or add --allow-changed-config "
            "to continue with the new ones anyway (not an exact continuation)"
        )
    if info.is_main:
        print(f"warning: --allow-changed-config: resuming from {folder} with {len(changes)} changed setting(s) "
              f"(checkpoint -> now), not an exact continuation:\n{listing}", flush=True)


def _restore(resume: Path, info: DistInfo, task, modules, optimizers, ema, scaler, run_config,
             allow_changed_config: bool = False) -> int:
    folder, data, skipped = ckpt.load_newest_intact(resume, info.rank)
    if info.is_main:
        for bad, why in skipped:
            print(f"warning: skipping {bad}: {why}", flush=True)
        if skipped:
            print(f"warning: resuming from {folder}, the newest intact checkpoint", flush=True)
    step = int(data["state"]["step"])
    if not same_on_all_ranks(info, step):
        raise CheckpointError(
            f"the training processes found different intact checkpoints under {resume} (this one: {folder}); "
            "resume from one step folder explicitly"
        )
    _check_resume_config(folder, data["config"], run_config, task, info, allow_changed_config)
    for name, module in modules.items():
        if name not in data["weights"]:
            raise CheckpointError(f"checkpoint {folder} has no weights for {name!r}")
        try:
            module.load_state_dict(data["weights"][name])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {folder}: {name} weights do not fit: {exc}") from exc
    ema.load(data["ema"])
    for name, opt in optimizers.items():
        if name not in data["optimizers"]:
            raise CheckpointError(f"checkpoint {folder} has no optimizer state for {name!r}")
        try:
            opt.load_state_dict(data["optimizers"][name])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {folder}: the optimizer state of {name} does not fit: {exc}") from exc
    if scaler is not None and (folder / "grad_scaler.pt").is_file():
        scaler.load_state_dict(ckpt.torch_load_weights_only(folder / "grad_scaler.pt"))
    saved_world = data["state"].get("world_size")
    if data["rng"] is not None and saved_world == info.world_size:
        ckpt.set_rng_state(data["rng"])
    elif info.is_main:
        print(f"warning: checkpoint from {saved_world} process(es), resuming on {info.world_size}: "
              "training continues but not bit-exactly", flush=True)
    if info.is_main:
        for old, new in ckpt.set_aside(skipped, folder):  # every rank has loaded ``folder`` (same_on_all_ranks)
            print(f"warning: moved the corrupt checkpoint {old} to {new}", flush=True)
        print(f"resumed from {folder} at step {step}", flush=True)
    return step
