"""TensorRT and TensorRT-RTX engines from an export folder: ``python -m dcae_deploy.engines``.

::

    from dcae_deploy.engines import build_engines, load_engine_info, write_build_script

    infos = build_engines("export/tiny", backend="tensorrt-rtx")   # no GPU needed for TensorRT-RTX
    # -> export/tiny/engines/tensorrt-rtx-1.7.1.116-sm86+-fp16/decoder.plan + decoder.json
    info = load_engine_info(infos["decoder"].plan_path.parent)["decoder"]
    info.inputs, info.profiles                                        # bind buffers by the manifest's names

TensorRT and TensorRT-RTX are imported only when an engine is built (``dcae_deploy/tensorrt_support.py``,
shared with the runtime, holds the flavours and the sidecar format).
"""

from dcae_deploy.engines.build import build_engines
from dcae_deploy.engines.common import (
    FLAVOURS,
    BuildTarget,
    EngineBuildError,
    EngineInfoError,
    TensorRTFlavour,
    engine_folder_name,
    load_flavour,
    resolve_target,
)
from dcae_deploy.engines.script import SCRIPT_NAME, render_build_script, write_build_script
from dcae_deploy.engines.sidecar import EngineInfo, list_engine_dirs, load_engine_info, read_sidecar

__all__ = [
    "FLAVOURS",
    "SCRIPT_NAME",
    "BuildTarget",
    "EngineBuildError",
    "EngineInfo",
    "EngineInfoError",
    "TensorRTFlavour",
    "build_engines",
    "engine_folder_name",
    "list_engine_dirs",
    "load_engine_info",
    "load_flavour",
    "read_sidecar",
    "render_build_script",
    "resolve_target",
    "write_build_script",
]
