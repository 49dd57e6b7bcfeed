"""Generation over any backend: conditioning -> noise -> sampler + guidance (denoiser) -> latent / scaling_factor -> decoder.

The loop (:meth:`TextToImage.generate`) is written once over a *conditioning adapter*, chosen by the
manifest's ``pipeline.conditioning`` from :data:`CONDITIONINGS`: today :class:`TextConditioning` (tokenizer ->
text encoder -> the denoiser's caption inputs). An adapter turns a request into the denoiser's conditioning
inputs, one row per image (negative rows first when guided); the loop does the rest.

::

    from dcae_deploy.runtime import GenerationConfig, TextToImage

    with TextToImage.open("export/demo", backend="onnxruntime") as t2i:
        result = t2i.generate(GenerationConfig(prompts=("a red circle on a blue background",), seed=0))
    result.images[0]            # (H, W, 3) uint8

Seeds: image ``i`` of a batch starts from ``numpy.random.default_rng(seed + i).standard_normal`` (float32),
so the same seed gives the same initial noise, and therefore the same image up to the backend's numerics,
on every backend and machine; a prompt at batch position ``i`` matches that prompt alone with ``seed + i``.

The negative prompt defaults to the empty prompt, whose embedding SANA uses as the unconditional branch;
like SanaPipeline it is encoded without the complex human instruction (a second text-encoder call: the
two token lengths differ for Gemma-2). Guidance runs both branches in one doubled denoiser batch
(negative first) when ``guidance_scale > 1``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.manifest import SPLIT_DECODER
from dcae_deploy.runtime.artifacts import Artifacts, load_artifacts
from dcae_deploy.runtime.backends import Backend, BackendOptions, open_backend
from dcae_deploy.runtime.errors import NonFiniteError
from dcae_deploy.runtime.image import to_uint8
from dcae_deploy.runtime.progress import ProgressBar, Timings
from dcae_deploy.runtime.runners.base import Runner
from dcae_deploy.runtime.schedulers import SamplerConfig, sample
from dcae_deploy.runtime.tiling import TileConfig, decode_tiled

def initial_noise(seed: int, count: int, shape: tuple[int, int, int]) -> np.ndarray:
    """(count, *shape) float32 starting latents: image ``i`` from ``default_rng(seed + i)`` (the seeding rule above)."""
    return np.stack([np.random.default_rng(seed + i).standard_normal(shape, dtype=np.float32) for i in range(count)])


@dataclass(frozen=True)
class GenerationConfig:
    """One request. ``None`` fields take the manifest's defaults (``pipeline.defaults``). A text-to-image export
    takes ``prompts`` (one image per prompt), a class-conditional one ``class_labels`` (one image per label).

    ``tile_size`` (pixels, a multiple of the compression ratio) decodes in tiles of that side, to bound
    decoder memory; images larger than the decoder profile are tiled at the profile's largest side anyway.
    ``tile_overlap`` defaults to a quarter tile.
    """

    prompts: tuple[str, ...] = ()
    negative_prompt: str = ""
    class_labels: tuple[int, ...] = ()  # class-conditional pipelines: one image per label
    seed: int = 0
    steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    sampler: str | None = None
    tile_size: int | None = None
    tile_overlap: int | None = None


@dataclass
class GenerationResult:
    """``images`` (B, H, W, 3) uint8; ``stages`` holds each stage's output for parity checks:
    ``text_embeddings`` ([negative..., positive...] rows when guided), ``first_step`` (the denoiser's raw output
    at step 0), ``latent`` (final, scaled latent) and ``image`` (decoder output, float32 in about [-1, 1])."""

    images: np.ndarray
    stages: dict[str, np.ndarray]
    timings: dict[str, float] = field(default_factory=dict)


def check_prompts(prompts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(prompts, str):
        prompts = (prompts,)
    if not prompts:
        raise DcaeDeployError("no prompt given: pass --prompt 'a red circle on a blue background'")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise DcaeDeployError(
                "the prompt is empty: describe the image, e.g. --prompt 'a red circle on a blue background' "
                "(an empty prompt is only meaningful as --negative-prompt, its default)"
            )
    return tuple(prompts)


@dataclass
class Conditioning:
    """The denoiser's conditioning inputs for a request: ``feeds`` (input name -> rows, ``[negative * n,
    positive * n]`` when guided and ``paired``, else ``n`` rows) and the stage outputs worth keeping for parity
    checks."""

    feeds: dict[str, np.ndarray]
    stages: dict[str, np.ndarray]
    paired: bool = True  # guided rows come as [negative * n, positive * n] (False: the sampler adds its own)


class TextConditioning:
    """Captions: tokenizer -> text encoder -> ``encoder_hidden_states`` + ``encoder_attention_mask`` rows.

    The negative prompt (default: the empty prompt, SANA's unconditional branch) is encoded like
    SanaPipeline does: without the complex human instruction, in its own text-encoder call.
    """

    components = ("text_encoder",)

    def __init__(self, generator: "TextToImage", tokenizer=None) -> None:
        self.generator = generator
        self._tokenizer = tokenizer  # None: read the export's tokenizer files on first use

    def check(self, config: GenerationConfig) -> GenerationConfig:
        if config.class_labels:
            raise DcaeDeployError(f"{self.generator.artifacts.variant} is a text-to-image model: pass prompts "
                                  "(--prompt), not class labels")
        return replace(config, prompts=check_prompts(config.prompts))

    def count(self, config: GenerationConfig) -> int:
        return len(config.prompts)

    def steps(self, config: GenerationConfig, defaults) -> int:
        return defaults.steps if config.steps is None else config.steps

    def sampler(self, config: GenerationConfig) -> SamplerConfig:
        return SamplerConfig(config.sampler, config.steps, self.generator.artifacts.pipeline.defaults.flow_shift,
                             config.guidance_scale)

    def guided(self, config: GenerationConfig) -> bool:
        return self.sampler(config).uses_guidance

    def progress_total(self, config: GenerationConfig, chunks: int) -> int | None:
        return config.steps * chunks

    def denoise(self, runner: Runner, noise: np.ndarray, feeds: dict[str, np.ndarray], config: GenerationConfig,
                bar: ProgressBar) -> tuple[np.ndarray, np.ndarray]:
        """Flow-matching sampling of ``noise`` rows with ``feeds`` (``[negative, positive]`` rows when guided): the
        final latent and the denoiser's raw output at the first step."""
        g = self.generator
        sampler = self.sampler(config)
        scale = g.artifacts.pipeline.denoiser.timestep_scale
        n2 = len(next(iter(feeds.values())))
        states = runner.prepare({"latent": noise, "timestep": np.zeros(n2, np.float32), **feeds})
        first: list[np.ndarray] = []

        def velocity(x, t):
            v = np.asarray(runner.infer(dict(states, latent=x, timestep=np.full(len(x), t * scale, np.float32)))
                           ["velocity"], dtype=np.float32)
            g._check("denoiser", v)
            if not first:
                first.append(v)
            return v

        latent = sample(velocity, noise, sampler, callback=lambda i, v: bar.update())
        return latent, first[0]

    def tokenizer(self):
        """The export's torch-free tokenizer: a word vocabulary, or Gemma-2's (the ``tokenizers`` package)."""
        if self._tokenizer is None:
            from dcae_deploy.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.generator.artifacts.tokenizer_path())
        return self._tokenizer

    def encode_text(self, texts: Sequence[str], instruction: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 (N, L, C), attention mask int64 (N, L)) for ``texts``, in text-encoder batches.

        ``instruction=False`` encodes without the complex human instruction (Gemma-2 tokenizers only), as
        SANA encodes its negative prompt. ``L`` is the text encoder's output length: the mask keeps the
        positions the graph keeps (BOS + the last ``max_length - 1``).
        """
        from dcae_deploy.tokenizer import select_positions

        g = self.generator
        tokenizer = self.tokenizer()
        notes = dict.fromkeys(note for t in texts for note in tokenizer.check_prompt(t, instruction=instruction))
        for note in notes:  # raises for a prompt of which nothing would be read
            print(f"[generate] warning: {note}", file=sys.stderr)
        ids, mask = tokenizer(list(texts), instruction=instruction)
        runner = g._runner("text_encoder")
        chunk = g.artifacts.max_batch("text_encoder")
        out = []
        for s in range(0, len(ids), chunk):
            result = runner.infer({"input_ids": ids[s:s + chunk], "attention_mask": mask[s:s + chunk]})
            out.append(np.asarray(result["text_embeddings"], dtype=np.float32))
        emb = np.concatenate(out)
        g._check("text_encoder", emb)
        return emb, select_positions(mask, emb.shape[1]).astype(np.int64)

    def encode(self, config: GenerationConfig, guided: bool) -> Conditioning:
        n = len(config.prompts)
        emb, mask = self.encode_text(config.prompts)
        if guided:  # the negative rows, one per image, then the prompts: [neg * n, pos * n]
            neg, neg_mask = self.encode_text([config.negative_prompt], instruction=False)
            emb = np.concatenate([np.repeat(neg, n, axis=0), emb])
            mask = np.concatenate([np.repeat(neg_mask, n, axis=0), mask])
        self.generator._release("text_encoder")
        return Conditioning({"encoder_hidden_states": emb, "encoder_attention_mask": mask}, {"text_embeddings": emb})


#: manifest ``pipeline.conditioning`` -> its adapter (``class``: :mod:`dcae_deploy.runtime.class_conditioning`)
CONDITIONINGS: dict[str, type] = {"text": TextConditioning}


def register_conditioning(name: str):
    """Class decorator: add a conditioning adapter to :data:`CONDITIONINGS` under ``name``."""
    def add(cls: type) -> type:
        CONDITIONINGS[name] = cls
        return cls
    return add


class TextToImage:
    """A text-to-image pipeline over one artifacts folder and one backend.

    ``low_memory=True`` holds one stage's runner at a time (text encoder: load -> run -> close, then the
    denoiser, then the decoder); otherwise runners stay loaded between calls until :meth:`close`.
    """

    def __init__(self, artifacts: Artifacts, backend: Backend, *, low_memory: bool = False,
                 progress: bool = True, verbose: bool = False, tokenizer=None) -> None:
        self.artifacts, self.backend = artifacts, backend
        self.low_memory, self.progress, self.verbose = low_memory, progress, verbose
        self._runners: dict[str, Runner] = {}
        self.conditioning = CONDITIONINGS[artifacts.pipeline.conditioning](self, tokenizer=tokenizer)

    @classmethod
    def open(cls, folder: str | Path, backend: str = "onnxruntime", *, variant: str | None = None,
             options: BackendOptions | None = None, **kwargs) -> "TextToImage":
        artifacts = load_artifacts(folder, variant=variant)
        return cls(artifacts, open_backend(backend, artifacts, options), **kwargs)

    # --- runners ------------------------------------------------------------------------------

    def _runner(self, stage: str) -> Runner:
        if stage not in self._runners:
            self._runners[stage] = self.backend.runner(stage).load()
        return self._runners[stage]

    def _release(self, stage: str) -> None:
        if self.low_memory and stage in self._runners:
            self._runners.pop(stage).close()

    def close(self) -> None:
        while self._runners:
            self._runners.popitem()[1].close()

    def __enter__(self) -> "TextToImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- checks -------------------------------------------------------------------------------

    def tokenizer(self):
        """The text conditioning's tokenizer (see :meth:`TextConditioning.tokenizer`)."""
        return self.conditioning.tokenizer()

    def resolve(self, config: GenerationConfig) -> GenerationConfig:
        """Fill defaults from the manifest and check the request against the export's profiles."""
        d = self.artifacts.pipeline.defaults
        config = replace(
            config,
            guidance_scale=d.guidance_scale if config.guidance_scale is None else config.guidance_scale,
            height=d.height if config.height is None else config.height,
            width=d.width if config.width is None else config.width,
            sampler=d.sampler if config.sampler is None else config.sampler,
        )
        config = self.conditioning.check(replace(config, steps=self.conditioning.steps(config, d)))
        if config.seed < 0:
            raise DcaeDeployError(f"--seed must be a non-negative integer, got {config.seed}")
        ratio = self.artifacts.pipeline.autoencoder.spatial_compression_ratio
        allowed = self.artifacts.size_range("denoiser")
        for flag, side in (("--height", config.height), ("--width", config.width)):
            if side <= 0 or side % ratio:
                raise DcaeDeployError(
                    f"{flag} {side} must be a positive multiple of the compression ratio {ratio} "
                    f"(allowed: {allowed.describe()})"
                )
            if not allowed.min_side <= side <= allowed.max_side:
                raise DcaeDeployError(
                    f"{flag} {side} is outside this export's profile of {self.artifacts.variant}: "
                    f"{allowed.describe()}. Pick a size in that range, or re-export with --min-res/--max-res covering it"
                )
        if config.tile_size is not None:
            dec = self.artifacts.size_range("decoder")
            if config.tile_size % ratio or not dec.min_side <= config.tile_size <= dec.max_side:
                raise DcaeDeployError(
                    f"--tile-size {config.tile_size} must be a multiple of {ratio} inside the decoder profile "
                    f"({dec.describe()})"
                )
        return config

    def _check(self, stage: str, array: np.ndarray) -> None:
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - finite.sum())
            raise NonFiniteError(stage, self.backend.name, f"{bad} of {array.size} values in {array.shape}",
                                 precision=self._stage_precision(stage), cause=self.backend.nonfinite_cause(stage))

    def _stage_precision(self, stage: str) -> str:
        """The precision a stage's graph computes in: fp16 when any of its tensors is float16 (the export's
        precision otherwise), so that the overflow hint is given where fp16 can overflow."""
        manifest = self.artifacts.manifest
        if stage in manifest.components:
            component = manifest.component(stage)
            if any(t.dtype == "float16" for t in (*component.inputs, *component.outputs)):
                return "fp16"
        return self.artifacts.precision_of(stage) if stage in manifest.components else self.artifacts.precision

    # --- the stages ---------------------------------------------------------------------------

    def encode_text(self, texts: Sequence[str], instruction: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Caption embeddings and mask (see :meth:`TextConditioning.encode_text`)."""
        return self.conditioning.encode_text(texts, instruction=instruction)

    def generate(self, config: GenerationConfig) -> GenerationResult:
        config = self.resolve(config)
        timings = Timings()
        pipe = self.artifacts.pipeline
        ratio = pipe.autoencoder.spatial_compression_ratio
        n = self.conditioning.count(config)
        guided = self.conditioning.guided(config)
        with timings.stage(self.conditioning.components[0]):
            condition = self.conditioning.encode(config, guided)

        h, w = config.height // ratio, config.width // ratio
        noise = initial_noise(config.seed, n, (pipe.autoencoder.latent_channels, h, w))
        per_call = max(1, self.artifacts.max_batch("denoiser") // (2 if guided else 1))
        bar = ProgressBar(self.conditioning.progress_total(config, -(-n // per_call)), "denoise", enabled=self.progress)
        latents, first_steps = [], []
        with timings.stage("denoiser"):
            runner = self._runner("denoiser")
            for s in range(0, n, per_call):
                rows = list(range(s, min(s + per_call, n)))
                rows2 = rows + [n + r for r in rows] if guided and condition.paired else rows
                latent, first = self.conditioning.denoise(runner, noise[rows], {k: v[rows2] for k, v in
                                                                                 condition.feeds.items()}, config, bar)
                latents.append(latent)
                first_steps.append(first)
            bar.finish()
            self._release("denoiser")
        latent = np.concatenate(latents)

        with timings.stage("decoder"):
            image = self.decode(latent, config)
            self._release("decoder")
        result = GenerationResult(
            images=to_uint8(image),
            stages={**condition.stages, "first_step": np.concatenate(first_steps), "latent": latent, "image": image},
            timings=dict(timings.seconds),
        )
        if self.verbose:
            print(timings.report(), file=sys.stderr)
        return result

    def decode(self, latent: np.ndarray, config: GenerationConfig) -> np.ndarray:
        """Scaled latent (B, C, h, w) -> image (B, 3, H, W) float32; tiled beyond the decoder profile or ``tile_size``.

        Tiling uses the split decoder when the export has it (``decoder_global`` on the whole latent, then
        ``decoder_local`` tile by tile: exact up to the blend, since only the global stages see the whole
        image); otherwise the whole decoder per latent tile (approximate: DC-AE's attention then sees one tile).
        """
        pipe = self.artifacts.pipeline
        ratio = pipe.autoencoder.spatial_compression_ratio
        dec = self.artifacts.size_range("decoder")
        unscaled = (latent / np.float32(pipe.autoencoder.scaling_factor)).astype(np.float32)
        h, w = (s * ratio for s in latent.shape[2:])
        side = config.tile_size or (None if dec.contains(h, w) else dec.max_side)
        if side is None:
            image = self._run("decoder", unscaled)
        elif self._has_split_decoder(h, w):
            global_part, local_part = SPLIT_DECODER
            features = self._run(global_part, unscaled)
            self._release(global_part)
            image = self._tiled(local_part, features, h // features.shape[2], side, config)
            self._release(local_part)
        else:
            image = self._tiled("decoder", unscaled, ratio, side, config)
        self._check("decoder", image)
        return image

    def _run(self, component: str, x: np.ndarray) -> np.ndarray:
        """One single-input component over ``x`` in batches of its profile's largest batch."""
        runner, comp = self._runner(component), self.artifacts.component(component)
        batch = self.artifacts.max_batch(component)
        parts = [np.asarray(runner.infer({comp.inputs[0].name: x[s:s + batch]})[comp.outputs[0].name], dtype=np.float32)
                 for s in range(0, len(x), batch)]
        return np.concatenate(parts)

    def _tiled(self, component: str, x: np.ndarray, ratio: int, side: int, config: GenerationConfig) -> np.ndarray:
        """``component`` over tiles of ``side`` pixels (``ratio`` pixels per cell of ``x``), blended."""
        tile = side // ratio
        overlap = (config.tile_overlap // ratio) if config.tile_overlap is not None else max(1, tile // 4)
        return decode_tiled(lambda part: self._run(component, part), x, ratio, TileConfig(tile, min(overlap, tile - 1)))

    def _has_split_decoder(self, height: int, width: int) -> bool:
        """The backend runs both split-decoder graphs and ``decoder_global`` admits the whole latent."""
        if not all(self.backend.has(c) for c in SPLIT_DECODER):
            return False
        profile = self.artifacts.component(SPLIT_DECODER[0]).profiles["latent"]
        ratio = self.artifacts.pipeline.autoencoder.spatial_compression_ratio
        return all(lo <= s // ratio <= hi for s, lo, hi in zip((height, width), profile.min[2:], profile.max[2:]))


def generate(folder: str | Path, config: GenerationConfig, backend: str = "onnxruntime", **kwargs) -> GenerationResult:
    """One-shot: open ``folder`` on ``backend``, generate, close."""
    with TextToImage.open(folder, backend, **kwargs) as t2i:
        return t2i.generate(config)


from dcae_deploy.runtime import class_conditioning  # noqa: E402,F401  (registers the "class" adapter)
