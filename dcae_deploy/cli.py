"""Shared command-line plumbing: user errors exit with status 1 and a one-line message, no traceback."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

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
