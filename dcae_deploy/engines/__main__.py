"""``python -m dcae_deploy.engines``: build TensorRT / TensorRT-RTX engines from an export folder.

build DIR    one engine per component of DIR/manifest.json -> DIR/engines/<backend>-<version>-<target>-<precision>/
script DIR   (re)write DIR/build_engines.sh, the same builds as trtexec / tensorrt_rtx command lines
info ENGINES describe the engines of a folder written by `build` (from their sidecars), or of every engine folder
             of an export; each is checked against the export's manifest: a plan built from other graphs (the
             folder was re-exported since, or the engines belong to another export) is marked STALE and the
             command exits with status 1
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
    from pathlib import Path

    from dcae_deploy.engines.sidecar import (
        EngineInfoError,
        check_freshness,
        engine_export,
        list_engine_dirs,
        load_engine_info,
    )
    from dcae_deploy.manifest import MANIFEST_FILE, read_manifest

    target = Path(args.engine_dir)
    if (target / MANIFEST_FILE).is_file():  # an export folder: every engine folder under it
        folders = list_engine_dirs(target / "engines")
        if not folders:
            raise EngineInfoError(f"{target} has no engines (no engine folder under {target / 'engines'}): build them "
                                  f"with `python -m dcae_deploy.engines build {target}`")
        export_arg = args.export or target
    else:
        folders, export_arg = [target], args.export
    stale_exports: dict[Path, list[str]] = {}
    for folder in folders:
        infos = load_engine_info(folder, verify=not args.no_verify)
        export = engine_export(folder, infos, export_arg)
        stale = check_freshness(infos, read_manifest(export, verify=False)) if export is not None else {}
        if export is None:
            print(f"{folder}: not checked against an export (no {MANIFEST_FILE} beside it or where it was built "
                  "from; pass --export EXPORT_DIR)")
        else:
            state = f"{len(stale)} of {len(infos)} STALE" if stale else "fresh (every plan built from its graphs)"
            print(f"{folder}: checked against {export / MANIFEST_FILE}: {state}")
        for name, info in infos.items():
            mark = "STALE " if name in stale else ""
            needs = f" (needs compute capability {info.min_compute_capability}+)" if info.min_compute_capability else ""
            print(
                f"{mark}{name}: {info.backend} {info.backend_version}, target {info.target}, {info.precision}{needs}, "
                f"{info.plan_bytes / 1e6:.1f} MB, from {info.onnx_file} ({info.variant})"
            )
            if name in stale:
                print(f"  STALE: built from other graphs than the export's: {stale[name]}")
            for tensor in info.inputs:
                p = info.profiles.get(tensor.name)
                shapes = f" min {list(p.min)} opt {list(p.opt)} max {list(p.max)}" if p else ""
                print(f"  in  {tensor.name} {tensor.dtype} {list(tensor.shape)}{shapes}")
            for tensor in info.outputs:
                print(f"  out {tensor.name} {tensor.dtype} {list(tensor.shape)}")
        if stale:
            stale_exports.setdefault(export, []).extend(str(folder / f"{name}.plan") for name in stale)
    if stale_exports:
        raise EngineInfoError("; ".join(
            f"{len(plans)} stale engine(s) ({', '.join(plans)}): built from other graphs than {export / MANIFEST_FILE} "
            f"lists (the folder was re-exported since, or they belong to another export); the runtime refuses them. "
            f"Rebuild: `python -m dcae_deploy.engines build {export}`"
            for export, plans in stale_exports.items()
        ))


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
        help=f"TensorRT-RTX GPU target: 'portable' (default, {PORTABLE_TARGET}: runs on 8.6, 8.9, 12.x and later; "
        "sm89+ for an fp8 export), a list such as 8.6,8.9,12.0, or 'current' (this machine's GPU). Turing (7.5) "
        "fails: no FP32 GEMM there; fp8 exports need 8.9 or later",
    )
    p.add_argument("--timing-cache", default=None, metavar="FILE", help="load tactic timings from FILE, save them back")
    p.add_argument("--output", default=None, metavar="ENGINE_ROOT", help="engine root (default: FOLDER/engines)")
    p.add_argument("--verbose", action="store_true", help="print the builder's info messages")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_build)

    p = sub.add_parser("script", help="(re)write FOLDER/build_engines.sh (trtexec / tensorrt_rtx commands)")
    p.add_argument("folder")
    p.set_defaults(func=_script)

    p = sub.add_parser("info", help="describe the engines of a folder written by `build` and check them against the "
                       "export (exit status 1 if any is stale)")
    p.add_argument("engine_dir", help="an engine folder, or an export folder (all its engine folders)")
    p.add_argument("--export", default=None, metavar="EXPORT_DIR",
                   help="the export to check the engines against (default: the export holding the engine folder, "
                   "else the one they were built from)")
    p.add_argument("--no-verify", action="store_true", help="skip the plan SHA-256 check")
    p.set_defaults(func=_info)

    return run_subcommand(parser, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
