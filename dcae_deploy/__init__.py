"""dcae_deploy: DC-AE and SANA from PyTorch to ONNX and TensorRT, with parity proven at every hop.

The autoencoder API in one screen::

    import torch
    from dcae_deploy import build_autoencoder, load_autoencoder, save_autoencoder

    ae = load_autoencoder("path/to/dc-ae-f32c32-sana-1.1-diffusers", "f32c32-sana-1.1")  # local folder or file
    images = torch.rand(1, 3, 512, 512) * 2 - 1            # RGB in [-1, 1], sides multiples of 32
    with torch.no_grad():
        latents = ae.encode(images, scaled=True)          # (1, 32, 16, 16), times ae.scaling_factor
        recon = ae.decode(latents, scaled=True)           # divides by the factor, then decodes
    save_autoencoder(ae, "my-ae")                         # model.safetensors + config.json

The torch-backed names (``DCAE``, ``build_autoencoder``, ``load_autoencoder``, ``save_autoencoder``)
are imported on first use (module ``__getattr__``), so that ``import dcae_deploy.runtime`` runs
ONNX Runtime / TensorRT without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from dcae_deploy.errors import CheckpointError, DcaeDeployError, InputShapeError, UnknownVariantError
from dcae_deploy.variants import get_variant, list_variants

__version__ = "0.1.0"

# name -> module that defines it; imported lazily because these modules import torch
_LAZY = {
    "DCAE": "dcae_deploy.models.autoencoder",
    "build_autoencoder": "dcae_deploy.models.autoencoder",
    "load_autoencoder": "dcae_deploy.models.autoencoder_io",
    "save_autoencoder": "dcae_deploy.models.autoencoder_io",
}

__all__ = [
    "DCAE",
    "CheckpointError",
    "DcaeDeployError",
    "InputShapeError",
    "UnknownVariantError",
    "build_autoencoder",
    "get_variant",
    "list_variants",
    "load_autoencoder",
    "save_autoencoder",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dcae_deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
