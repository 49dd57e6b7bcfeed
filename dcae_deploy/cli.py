"""Shared command-line plumbing: user errors exit with status 1 and a one-line message, no traceback."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dcae_deploy.errors import DcaeDeployError


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main``; print ``error: ...`` for user errors and return the process exit status."""
    start = time.perf_counter()
    try:
        status = main(argv) or 0
    except DcaeDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if status == 0:
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return status


def run_subcommand(parser, argv: list[str] | None) -> int:
    """Parse ``argv`` with a parser whose subcommands ``set_defaults(func=...)``, and run the chosen one."""
    args = parser.parse_args(argv)
    args.func(args)
    return 0


def check_output_file(path: str, flag: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """Refuse an output path before any work is done: a folder, a wrong suffix, a folder that cannot be
    created or written. ``suffixes``: allowed lower-case extensions (``(".png",)``); None allows any."""
    out = Path(path).expanduser()
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise DcaeDeployError(f"{flag} {path} must end in {' or '.join(suffixes)}")
    if out.is_dir():
        raise DcaeDeployError(f"{flag} {path} is a folder: name a file inside it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:  # the nearest folder that exists decides
        parent = parent.parent
    if not parent.is_dir():
        raise DcaeDeployError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    try:  # a real write says what permissions, read-only mounts and quotas allow (os.access does not, for root)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise DcaeDeployError(f"{flag} {path}: cannot write into {parent} ({exc.strerror}); choose another path") from exc
    if out.exists() and not os.access(out, os.W_OK):
        raise DcaeDeployError(f"{flag} {path} exists and is read-only; choose another path")
    return out


def check_seed(seed: int, flag: str = "--seed") -> int:
    """Seeds are non-negative integers (numpy's generators refuse negative ones)."""
    if seed < 0:
        raise DcaeDeployError(f"{flag} must be a non-negative integer, got {seed}")
    return seed
