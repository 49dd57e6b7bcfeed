"""Runners: one component on one backend (see base.py for the contract). Backend modules import lazily."""

from dcae_deploy.runtime.runners.base import Binding, Runner, numpy_dtype

__all__ = ["Binding", "Runner", "numpy_dtype"]
