"""``python -m dcae_deploy.parity``: one seeded generation per backend, each stage compared with PyTorch fp32.

::

    python -m dcae_deploy.parity --artifacts export/demo --backends torch,onnxruntime,tensorrt
    python -m dcae_deploy.parity --regenerate-golden --golden-dir tests/data/golden   # on purpose

Stages: the text embeddings, the denoiser's first-step output, the final latent and the decoded image.
Tolerances are the export gate's (:mod:`dcae_deploy.export.gate`): relative L2 <= 1e-4 for fp32 exports;
<= 1e-2 and image PSNR >= 35 dB for fp16/bf16. Exits with status 1 when any stage is past its tolerance.

Golden files (``<golden-dir>/<name>.npz``; this repository's are in ``tests/data/golden/``, made by the
``make_golden.py`` beside them) hold a recipe (variant, export profile, prompt, seed,
steps, size) and the PyTorch fp32 outputs of every stage for it, from randomly initialised weights
(``build_pipeline(variant, seed=0)``); ``tests/runtime/test_golden.py`` checks current outputs against them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dcae_deploy.cli import check_output_file, check_seed, run_cli
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.export.gate import REL_L2, ParityRecord, compare, image_psnr_limit
from dcae_deploy.precisions import loosest

#: the generation outputs compared per backend (GenerationResult.stages)
PARITY_STAGES = ("text_embeddings", "first_step", "latent", "image")


@dataclass(frozen=True)
class GoldenRecipe:
    """How a golden file was made: export profile + generation request (PyTorch fp32, random weights, seed 0)."""

    name: str = "demo-64px"
    variant: str = "demo"
    min_res: int = 64
    opt_res: int = 64
    max_res: int = 128
    max_batch: int = 2
    prompt: str = "a red circle on a blue background"
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 4
    height: int = 64
    width: int = 64
    guidance_scale: float = 4.0  # pinned: the golden file must not follow the demo's sampling default

    def generation(self):
        from dcae_deploy.runtime import GenerationConfig

        return GenerationConfig(prompts=(self.prompt,), negative_prompt=self.negative_prompt, seed=self.seed,
                                steps=self.steps, height=self.height, width=self.width,
                                guidance_scale=self.guidance_scale)

    def export(self, folder: str | Path):
        """Export the recipe's pipeline (random weights, seed 0) to ``folder``."""
        from dcae_deploy.export import export_model

        return export_model(self.variant, folder, checkpoint=None, precision="fp32", min_res=self.min_res,
                            opt_res=self.opt_res, max_res=self.max_res, max_batch=self.max_batch)


def run_backend(artifacts, backend: str, generation, options=None):
    """One generation on ``backend``: a :class:`~dcae_deploy.runtime.GenerationResult`."""
    from dcae_deploy.runtime import TextToImage, open_backend

    with TextToImage(artifacts, open_backend(backend, artifacts, options), progress=False) as t2i:
        return t2i.generate(generation)


def compare_stages(stages: dict, reference: dict, precision: str, runner: str) -> list[ParityRecord]:
    """One record per stage both runs have (a class-conditional pipeline has no ``text_embeddings``)."""
    return [
        compare(stage, stage, np.asarray(stages[stage], np.float32), np.asarray(reference[stage], np.float32),
                precision, is_image=stage == "image", runner=runner)
        for stage in PARITY_STAGES if stage in stages and stage in reference
    ]


def format_table(rows: list[tuple[str, ParityRecord]]) -> str:
    lines = [f"{'backend':<14} {'stage':<16} {'shape':<18} {'rel L2':>10} {'limit':>8} {'PSNR dB':>8}  verdict"]
    for backend, r in rows:
        psnr = "" if r.psnr_db is None else f"{r.psnr_db:.1f}"
        lines.append(f"{backend:<14} {r.component:<16} {str(r.shape):<18} {r.rel_l2:>10.3g} {r.rel_l2_limit:>8g} "
                     f"{psnr:>8}  {'ok' if r.passed else 'FAILED'}")
    return "\n".join(lines)


# --- golden files ------------------------------------------------------------------------------


def write_golden(path: Path, recipe: GoldenRecipe, stages: dict[str, np.ndarray]) -> Path:
    from dcae_deploy.checkpoints import atomic_write

    arrays = {k: np.asarray(stages[k], np.float32) for k in PARITY_STAGES}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, recipe=np.array(json.dumps(asdict(recipe))), **arrays)

    atomic_write(path, write)
    return path


def read_golden(path: Path) -> tuple[GoldenRecipe, dict[str, np.ndarray]]:
    if not path.is_file():
        raise DcaeDeployError(f"golden file {path} not found: create it with `python -m dcae_deploy.parity --regenerate-golden`")
    with np.load(path) as data:
        recipe = GoldenRecipe(**json.loads(str(data["recipe"])))
        return recipe, {k: data[k] for k in PARITY_STAGES}


def regenerate_golden(folder: Path, recipe: GoldenRecipe = GoldenRecipe()) -> Path:
    """Export the recipe's pipeline to a temporary folder, run PyTorch fp32, write ``folder/<name>.npz``."""
    from dcae_deploy.runtime import load_artifacts

    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        recipe.export(tmp)
        result = run_backend(load_artifacts(tmp, variant=recipe.variant), "torch", recipe.generation())
    return write_golden(Path(folder) / f"{recipe.name}.npz", recipe, result.stages)


# --- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", help="export folder of a text-to-image pipeline")
    p.add_argument("--backends", default="torch,onnxruntime", help="comma-separated; torch fp32 is the reference")
    p.add_argument("--prompt", default="a red circle on a blue background", help="text-to-image exports")
    p.add_argument("--class-labels", default="279", help="class-conditional exports: comma-separated ImageNet ids")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--checkpoint", default=None, help="torch weights (default: the manifest's checkpoint)")
    p.add_argument("--engine-dir", default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", default=None, help="also write the records to this JSON file")
    p.add_argument("--regenerate-golden", action="store_true",
                   help="rewrite the golden files in --golden-dir (on purpose: after an intended numerical change)")
    p.add_argument("--golden-dir", default=None, help="folder of the golden files (tests/data/golden in the repository)")
    args = p.parse_args(argv)

    if args.regenerate_golden:
        if not args.golden_dir:
            p.error("--regenerate-golden needs --golden-dir (the repository's are in tests/data/golden)")
        path = regenerate_golden(Path(args.golden_dir))
        print(f"wrote {path}")
        return 0
    if not args.artifacts:
        p.error("--artifacts is required (or --regenerate-golden)")

    from dcae_deploy.runtime import BACKENDS, BackendOptions, GenerationConfig, load_artifacts

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise DcaeDeployError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    check_seed(args.seed)
    if args.json:
        check_output_file(args.json, "--json")
    if args.engine_dir is not None and "tensorrt" not in backends:
        raise DcaeDeployError("--engine-dir holds TensorRT plans, but --backends has no tensorrt: add it, or drop --engine-dir")
    artifacts = load_artifacts(args.artifacts)
    options = BackendOptions(device=args.device, engine_dir=args.engine_dir, checkpoint=args.checkpoint)
    if artifacts.pipeline is not None and artifacts.pipeline.conditioning == "class":
        try:
            labels = tuple(int(v) for v in args.class_labels.split(",") if v.strip())
        except ValueError as exc:
            raise DcaeDeployError(f"--class-labels {args.class_labels!r} must be comma-separated integers") from exc
        request = dict(class_labels=labels)
    else:
        request = dict(prompts=(args.prompt,), negative_prompt=args.negative_prompt)
    generation = GenerationConfig(**request, seed=args.seed, steps=args.steps, height=args.height, width=args.width)
    reference = run_backend(artifacts, "torch", generation, options).stages
    rows = []
    # every stage is held to the loosest component's gate: an int4 text encoder's error reaches the image
    gate = loosest([artifacts.precision_of(name) for name in artifacts.manifest.components])
    for backend in (b for b in backends if b != "torch"):
        result = run_backend(artifacts, backend, generation, options)
        rows += [(backend, r) for r in compare_stages(result.stages, reference, gate, backend)]
    psnr = image_psnr_limit(gate)
    limit = f"rel L2 <= {REL_L2[gate]:g}" + ("" if psnr is None else f", image PSNR >= {psnr:g} dB")
    print(f"{artifacts.variant} ({artifacts.manifest.describe_precision()}) vs PyTorch fp32, seed {args.seed}; "
          f"tolerance {limit}")
    print(format_table(rows) if rows else "(only the torch reference ran: add --backends torch,onnxruntime)")
    if args.json:
        from dcae_deploy.checkpoints import write_json

        write_json(args.json, {"precision": artifacts.precision,
                               "records": [dict(r.to_dict(), backend=b) for b, r in rows]})
    failed = [r for _, r in rows if not r.passed]
    if failed:
        print(f"{len(failed)} stage(s) past tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
