"""What the evaluate subcommands share to run alone or under ``torchrun``: their run options and the entry point.

Each subcommand adds :func:`add_run_options` to its parser and hands its body to :func:`run_on_ranks`, which joins
the process group (``dcae_deploy.train.distributed``) and runs the body on every rank; a failing rank leaves at once
and its error is printed once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from dcae_deploy.errors import DcaeDeployError


def add_run_options(p: argparse.ArgumentParser, threads_help: str, engine_dir: bool = True) -> None:
    """``--device``, ``--threads``, ``--engine-dir`` (with ``engine_dir``), ``--no-progress``, ``--dist-timeout``."""
    from dcae_deploy.train.distributed import DEFAULT_TIMEOUT_S

    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, help=threads_help)
    if engine_dir:
        p.add_argument("--engine-dir", help="with --backend tensorrt: the folder of plans (default: found under the export)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others before failing")


def check_device(device: str) -> None:
    """``--device cuda`` where torch sees no GPU: refused before any rank starts."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise DcaeDeployError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU here; use --device cpu")


def run_on_ranks(args: argparse.Namespace, body: Callable[[argparse.Namespace, object], object]) -> int:
    """``body(args, info)`` on this process of the run (alone, or one rank under torchrun); the exit status."""
    from dcae_deploy.train.distributed import init_distributed, run_ranked

    info = init_distributed(None if args.device == "auto" else args.device, args.dist_timeout)
    return run_ranked(info, lambda: body(args, info))


def start_body(args: argparse.Namespace, info, tag: str) -> Callable[[str], None]:
    """A body's first step on each rank: torch's thread count from ``--threads``; returns ``say``, which prints
    ``[tag] message`` on the main rank only."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    def say(message: str) -> None:
        if info.is_main:
            print(f"[{tag}] {message}", file=sys.stderr, flush=True)

    return say
