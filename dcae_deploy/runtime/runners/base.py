"""The one runner contract every backend implements.

A runner runs one component (``text_encoder``, ``denoiser``, ``decoder``, ``encoder``)::

    with runner:                                   # load() ... close()
        out = runner.infer({"latent": z})          # named numpy inputs -> {output name: numpy array}

Inputs are cast to the dtypes the manifest declares (fp32 arrays feed an fp16 graph); outputs come back
in the graph's dtype as host numpy arrays. Input names must be exactly the manifest's.

Repeated runs on the same inputs (benchmarks) skip the host copies, as Polygraphy's runners do with
``copy_outputs_to_host=False``::

    binding = runner.bind({"latent": z})           # inputs cast and placed once (on the GPU where there is one)
    runner.run_bound(binding)                      # one execution; outputs stay where they were computed
    out = runner.fetch(binding)                    # the last run's outputs, as host numpy arrays

The base class implements them for every runner: ``bind`` keeps the cast host arrays and each ``run_bound`` is
one ``infer`` without the cast, its outputs kept on the host. The GPU runners (``onnxruntime.py`` with the CUDA
EP, ``tensorrt.py``) override them to keep their inputs and outputs on the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass(eq=False)
class Binding:
    """Inputs placed for repeated :meth:`Runner.run_bound` calls (made by :meth:`Runner.bind`).

    ``inputs`` are the cast host arrays (kept alive: device copies may read from them); ``outputs`` holds the
    host outputs of the last run of a runner without a device (GPU runners keep theirs in a subclass).
    """

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray] | None = None


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

    @property
    def on_gpu(self) -> bool:
        """Whether the (loaded) runner computes on a GPU."""
        return False

    @property
    def version(self) -> str:
        """The version of the backend's library (``unknown`` where the runner cannot tell)."""
        return "unknown"

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

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Binding:
        """Cast ``feeds`` (every manifest input) once and place them for :meth:`run_bound` (loads the runner)."""
        self.load()
        return self._bind(self.prepare(feeds))

    def run_bound(self, binding: Binding) -> None:
        """Run once on a :meth:`bind` result; outputs stay where the runner computes (see :meth:`fetch`)."""
        binding.outputs = self._infer(binding.inputs)

    def fetch(self, binding: Binding) -> dict[str, np.ndarray]:
        """The outputs of the last :meth:`run_bound` of ``binding``, as host numpy arrays."""
        if binding.outputs is None:
            raise BackendError(f"{self.name}: fetch() before run_bound() of this binding")
        return dict(binding.outputs)

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

    def _bind(self, feeds: dict[str, np.ndarray]) -> Binding:
        """Place prepared inputs for :meth:`run_bound`; the default keeps them on the host."""
        return Binding(feeds)

    def _close(self) -> None:
        pass
