"""Exceptions: user errors (bad input, bad files) versus bugs in dcae_deploy itself.

Every error a user can cause derives from :class:`DcaeDeployError`; command-line entry points
catch it, print the message without a traceback and exit with status 1.
"""

from __future__ import annotations


class DcaeDeployError(Exception):
    """Base class of all user-facing errors: the message says what was wrong and what to do."""


class UnknownVariantError(DcaeDeployError, KeyError):
    """A variant name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(DcaeDeployError):
    """A checkpoint that cannot be read, or that does not fit the variant it is loaded into."""


class InputShapeError(DcaeDeployError, ValueError):
    """A tensor whose shape does not fit the model (channels, spatial size, rank)."""
