"""``python -m dcae_deploy.engines``: build TensorRT / TensorRT-RTX engines from an export folder.

build DIR    one engine per component of DIR/manifest.json -> DIR/engines/<backend>-<version>-<target>-<precision>/
script DIR   (re)write DIR/build_engines.sh, the same builds as trtexec / tensorrt_rtx command lines
info ENGINES describe the engines of a folder written by `build` (from their sidecars)
"""

from __future__ import annotations

import argparse
import sys

from dcae_deploy.cli import run_cli, run_subcommand
from dcae_deploy.engines.common import FLAVOURS, PORTABLE_TARGET


def _build(args: argparse.Namespace) -> None:
    from dcae_deploy.engines.build import build_engines

    infos = build_engines(
        args.folder,
        backend=args.backend,
        components=args.components,
        compute_capability=args.compute_capability,
        timing_cache=args.timing_cache,
        output=args.output,
        progress=not args.quiet,
        verbose=args.verbose,
    )
    for name, info in infos.items():
        print(f"{name}: {info.plan_path} ({info.plan_bytes / 1e6:.1f} MB, built in {info.build_seconds:.1f} s)")


def _script(args: argparse.Namespace) -> None:
    from dcae_deploy.engines.script import write_build_script
    from dcae_deploy.manifest import read_manifest

    path = write_build_script(args.folder, read_manifest(args.folder, verify=False))
    print(path)


def _info(args: argparse.Namespace) -> None:
    from dcae_deploy.engines.sidecar import load_engine_info

    for name, info in load_engine_info(args.engine_dir, verify=not args.no_verify).items():
        print(
            f"{name}: {info.backend} {info.backend_version}, target {info.target}, {info.precision}, "
            f"{info.plan_bytes / 1e6:.1f} MB, from {info.onnx_file} ({info.variant})"
        )
        for tensor in info.inputs:
            p = info.profiles.get(tensor.name)
            shapes = f" min {list(p.min)} opt {list(p.opt)} max {list(p.max)}" if p else ""
            print(f"  in  {tensor.name} {tensor.dtype} {list(tensor.shape)}{shapes}")
        for tensor in info.outputs:
            print(f"  out {tensor.name} {tensor.dtype} {list(tensor.shape)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dcae_deploy.engines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build one engine per exported component")
    p.add_argument("folder", help="export folder holding manifest.json (from `python -m dcae_deploy.export`)")
    p.add_argument(
        "--backend",
        choices=("auto", *FLAVOURS),
        default="auto",
        help="TensorRT flavour (default auto: tensorrt when importable, else tensorrt-rtx)",
    )
    p.add_argument("--components", nargs="+", default=None, metavar="NAME", help="subset of components (default: all)")
    p.add_argument(
        "--compute-capability",
        default=None,
        metavar="CCS",
        help=f"TensorRT-RTX GPU target: 'portable' (default, {PORTABLE_TARGET}: runs on 8.6, 8.9, 12.x and later), "
        "a list such as 8.6,8.9,12.0, or 'current' (this machine's GPU). Turing (7.5) fails: no FP32 GEMM there",
    )
    p.add_argument("--timing-cache", default=None, metavar="FILE", help="load tactic timings from FILE, save them back")
    p.add_argument("--output", default=None, metavar="ENGINE_ROOT", help="engine root (default: FOLDER/engines)")
    p.add_argument("--verbose", action="store_true", help="print the builder's info messages")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_build)

    p = sub.add_parser("script", help="(re)write FOLDER/build_engines.sh (trtexec / tensorrt_rtx commands)")
    p.add_argument("folder")
    p.set_defaults(func=_script)

    p = sub.add_parser("info", help="describe the engines of a folder written by `build`")
    p.add_argument("engine_dir")
    p.add_argument("--no-verify", action="store_true", help="skip the plan SHA-256 check")
    p.set_defaults(func=_info)

    return run_subcommand(parser, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
