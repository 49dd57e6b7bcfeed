"""Runners: one component on one backend (see base.py for the contract). Backend modules import lazily."""

from dcae_deploy.runtime.runners.base import Runner, numpy_dtype

__all__ = ["Runner", "numpy_dtype"]
