"""Process-group setup: ``torchrun`` environment (RANK / WORLD_SIZE / LOCAL_RANK) or a single process.

Failure handling (no silent hang): a rank that fails must not wait for the others, who may be blocked
in a collective it will never join. :func:`fail` records the failure in the rendezvous store (so that
exactly one rank reports it), tears the process group down without a barrier and lets the process exit
non-zero; ``torchrun`` then stops the other ranks, and a rank blocked in a collective gets an error
(peer gone) or, at the latest, the group's timeout (``--dist-timeout``) instead of waiting forever.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dcae_deploy.errors import DcaeDeployError

#: Default bound (seconds) on how long a collective waits for the other ranks before failing.
DEFAULT_TIMEOUT_S = 1800.0
_FAILURE_KEY = "dcae_deploy/first_failure"
_STORE_TIMEOUT = timedelta(seconds=10)  # store operations on the error path never wait longer


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Join the process group described by the environment (nccl on GPU, gloo on CPU), or run alone.

    ``device``: "cuda" or "cpu"; default: CUDA when available. Under torchrun each process takes GPU
    ``LOCAL_RANK``. ``timeout_s`` bounds every collective (default :data:`DEFAULT_TIMEOUT_S`): a rank
    that waits longer for the others fails instead of hanging. Calling it again in an initialised
    process returns the existing group's info.
    """
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    if timeout_s <= 0:
        raise DcaeDeployError(f"the distributed timeout must be a positive number of seconds, got {timeout_s:g}")
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 1, 0, torch.device("cuda" if use_cuda else "cpu"), timeout_s)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank, dev, timeout_s)


def shutdown(info: DistInfo) -> None:
    """Success path: wait for every rank, then leave the group. Never call it after a failure (see :func:`fail`)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abort(info: DistInfo) -> None:
    """Error path: leave the group at once, without a barrier (the other ranks may never reach one)."""
    if not (info.distributed and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "nccl" and hasattr(dist.distributed_c10d, "_abort_process_group"):
            dist.distributed_c10d._abort_process_group()  # destroy could wait on a collective in flight
        else:
            dist.destroy_process_group()
    except Exception:  # best effort: the process exits right after this
        pass


def is_comm_error(exc: BaseException) -> bool:
    """An error of the collective layer: a peer died, closed its connection, or did not answer in time."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out")
    )


def comm_error(info: DistInfo, exc: BaseException) -> DcaeDeployError:
    """A user-facing message for a collective that failed on this rank (first failure of the run)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return DcaeDeployError(
        f"rank {info.rank} of {info.world_size} lost contact with the other training processes ({first[:300]}); "
        f"another process died without reporting an error (killed, out of memory?) or did not answer within "
        f"{info.timeout_s:g} s. If a step legitimately takes longer (e.g. rank 0 caching latents of a large "
        "data set), raise --dist-timeout"
    )


def fail(info: DistInfo, exc: BaseException) -> bool:
    """Error path of one rank: record the failure, leave the process group without waiting, and say
    whether this rank should report ``exc``.

    Exactly one rank reports a failure: the first one recorded in the rendezvous store. The others stay
    quiet when their error is the same message (every rank hit the same bad argument or file) or a
    consequence of the first failure (a collective whose peer is gone); a different error is reported too.
    In a single process this only returns True.
    """
    if not info.distributed:
        return True
    first = _claim_first_failure(info, exc)
    abort(info)
    if first is None or first[0] == info.rank:
        return True
    if isinstance(exc, DcaeDeployError):
        return str(exc) != first[1]
    return not is_comm_error(exc)


def run_ranked(info: DistInfo, body: Callable[[], object]) -> int:
    """Run ``body`` on this rank and leave the process group: exit status 0 after a barrier on success.

    On failure there is no barrier (see :func:`fail`): returns 1 without a word when another rank reports
    the failure, else raises the error to report (a collective's failure as a :class:`DcaeDeployError`
    that says what happened). Command-line entry points wrap this in :func:`dcae_deploy.cli.run_cli`.
    """
    try:
        body()
    except BaseException as exc:
        if not fail(info, exc):
            return 1
        if info.distributed and not isinstance(exc, DcaeDeployError) and is_comm_error(exc):
            raise comm_error(info, exc) from exc
        raise
    shutdown(info)
    return 0


def _claim_first_failure(info: DistInfo, exc: BaseException) -> tuple[int, str] | None:
    """Atomically record ``(rank, message)`` unless a failure is recorded already; return the first one
    (None when the store cannot be reached: then every failing rank reports)."""
    key = f"{_FAILURE_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"  # one record per restart
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(_STORE_TIMEOUT)
        value = store.compare_set(key, "", f"{info.rank}\n{exc}")
        text = value.decode() if isinstance(value, bytes) else str(value)
        rank, _, message = text.partition("\n")
        return int(rank), message
    except Exception:
        return None


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def same_on_all_ranks(info: DistInfo, value: int) -> bool:
    """Whether every rank passed the same ``value`` (True in a single process)."""
    if not info.distributed:
        return True
    t = torch.tensor([value, -value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0]) == value and -int(t[1]) == value


def sum_over_ranks(info: DistInfo, count: int) -> int:
    """An integer summed over all ranks (itself in a single process)."""
    if not info.distributed:
        return count
    t = torch.tensor([count], dtype=torch.int64, device=info.device)
    dist.all_reduce(t)
    return int(t.item())


def mean_over_ranks(info: DistInfo, values: dict[str, float]) -> dict[str, float]:
    """Average scalars over all ranks (identity in a single process)."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}
