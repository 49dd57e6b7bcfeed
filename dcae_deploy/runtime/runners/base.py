"""The one runner contract every backend implements.

A runner runs one component (``text_encoder``, ``denoiser``, ``decoder``, ``encoder``)::

    with runner:                                   # load() ... close()
        out = runner.infer({"latent": z})          # named numpy inputs -> {output name: numpy array}

Inputs are cast to the dtypes the manifest declares (fp32 arrays feed an fp16 graph); outputs come back
in the graph's dtype as host numpy arrays. Input names must be exactly the manifest's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from dcae_deploy.manifest import Component
from dcae_deploy.runtime.errors import BackendError


def numpy_dtype(name: str) -> np.dtype:
    """Manifest dtype name -> numpy dtype (``bfloat16`` through ``ml_dtypes``)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as exc:
            raise BackendError("bfloat16 graphs need the ml_dtypes package: `pip install ml_dtypes`") from exc
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class Runner(ABC):
    """Runs one exported component on one backend. ``backend`` names it in errors and reports."""

    backend: str = "?"

    def __init__(self, component: Component) -> None:
        self.component = component
        self._dtypes = {t.name: numpy_dtype(t.dtype) for t in component.inputs}
        self._loaded = False

    @property
    def name(self) -> str:
        return self.component.name

    def load(self) -> "Runner":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the component on ``feeds`` (every manifest input, by name)."""
        if not self._loaded:
            self.load()
        return self._infer(self.prepare(feeds))

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = set(self._dtypes)
        if set(feeds) != expected:
            raise BackendError(
                f"{self.name}: inputs {sorted(feeds)} do not match the manifest's {sorted(expected)}"
            )
        return {k: np.ascontiguousarray(np.asarray(v).astype(self._dtypes[k], copy=False)) for k, v in feeds.items()}

    def __enter__(self) -> "Runner":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:
        pass
