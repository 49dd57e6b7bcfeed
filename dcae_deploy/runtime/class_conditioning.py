"""Class labels as conditioning: DC-AE-Diffusion's UViT / USiT / DiT exports, on any backend, torch-free.

The generation loop (:meth:`dcae_deploy.runtime.generation.TextToImage.generate`) is the same as for text: initial
noise per image (``default_rng(seed + i)``), the denoiser in batches of its profile, then latent / scaling factor ->
DC-AE decoder. This adapter turns ``class_labels`` into the denoiser's ``class_labels`` input and samples with the
model's own sampler from :data:`dcae_deploy.diffusion_samplers.CLASS_SAMPLERS` (the export's ``defaults.sampler``,
or ``--sampler``), which calls the graph with the reference's timestep convention and applies the reference's
classifier-free guidance (UViT: two calls; DiT and USiT: one doubled batch, DiT guiding its first C channels).

::

    with TextToImage.open("export/uvit-h", backend="onnxruntime") as c2i:
        images = c2i.generate(GenerationConfig(class_labels=(279, 333), guidance_scale=6.0)).images

ADM's per-step noise comes from ``default_rng([seed, 1])``: the same request gives the same image on every backend.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dcae_deploy.diffusion_samplers import CLASS_SAMPLERS, sample_class_conditional
from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.runtime.generation import Conditioning, GenerationConfig, register_conditioning
from dcae_deploy.runtime.progress import ProgressBar
from dcae_deploy.runtime.runners.base import Runner

ADM_NOISE_STREAM = 1  # default_rng([seed, ADM_NOISE_STREAM]) draws ADM's per-step noise
#: a sampler's reference family -> the denoiser timestep convention (manifest ``denoiser.timestep_convention``) it calls
CONVENTIONS = {"uvit": "uvit-dpm", "dit": "adm", "usit": "sit"}


@register_conditioning("class")
class ClassConditioning:
    """Class labels -> the denoiser's ``class_labels`` rows; sampling with the model's own sampler."""

    components = ("class_labels",)

    def __init__(self, generator, tokenizer=None) -> None:
        self.generator = generator

    @property
    def facts(self):
        return self.generator.artifacts.pipeline.denoiser

    def check(self, config: GenerationConfig) -> GenerationConfig:
        variant = self.generator.artifacts.variant
        if config.prompts or config.negative_prompt:
            raise DcaeDeployError(f"{variant} is class-conditional: pass class labels (--class-labels 279,333), "
                                  "not prompts")
        if not config.class_labels:
            raise DcaeDeployError(f"{variant} is class-conditional: pass class labels, e.g. --class-labels 279,333 "
                                  f"(ImageNet ids 0 to {self.facts.num_classes - 1})")
        bad = [y for y in config.class_labels if not 0 <= int(y) < self.facts.num_classes]
        if bad:
            raise DcaeDeployError(f"class label(s) {', '.join(map(str, bad))} out of range: {variant} knows labels 0 to "
                                  f"{self.facts.num_classes - 1}")
        if config.sampler not in CLASS_SAMPLERS:
            raise DcaeDeployError(f"unknown sampler {config.sampler!r} for {variant}; choose one of "
                                  f"{', '.join(self.samplers())}")
        sampler = CLASS_SAMPLERS[config.sampler]
        if CONVENTIONS[sampler.family] != self.facts.timestep_convention:
            raise DcaeDeployError(
                f"sampler {config.sampler} is {sampler.family.upper()}'s (timesteps {sampler.model_time}), but "
                f"{variant}'s denoiser takes {self.facts.timestep_convention!r} timesteps; choose one of "
                f"{', '.join(self.samplers())}")
        return replace(config, class_labels=tuple(int(y) for y in config.class_labels))

    def samplers(self) -> list[str]:
        """The samplers that call this export's denoiser in its own timestep convention."""
        return [name for name, s in CLASS_SAMPLERS.items() if CONVENTIONS[s.family] == self.facts.timestep_convention]

    def count(self, config: GenerationConfig) -> int:
        return len(config.class_labels)

    def steps(self, config: GenerationConfig, defaults) -> int | None:
        """The user's steps; else the export's default for its own sampler, the chosen sampler's default for another
        (None for an adaptive sampler, which takes none)."""
        if config.steps is not None:
            return config.steps
        sampler = CLASS_SAMPLERS.get(config.sampler)
        if sampler is None or sampler.default_steps is None:
            return None
        return defaults.steps if config.sampler == defaults.sampler else sampler.default_steps

    def guided(self, config: GenerationConfig) -> bool:
        return config.guidance_scale != 1.0  # the reference guides at any scale but exactly 1

    def progress_total(self, config: GenerationConfig, chunks: int) -> int | None:
        nfe = CLASS_SAMPLERS[config.sampler].nfe(config.steps)
        return None if nfe is None else nfe * chunks

    def encode(self, config: GenerationConfig, guided: bool) -> Conditioning:
        labels = np.asarray(config.class_labels, dtype=np.int64)
        return Conditioning({"class_labels": labels}, {}, paired=False)  # the sampler adds the null-class rows

    def denoise(self, runner: Runner, noise: np.ndarray, feeds: dict[str, np.ndarray], config: GenerationConfig,
                bar: ProgressBar) -> tuple[np.ndarray, np.ndarray]:
        """The sampled latent of ``noise`` rows and the model's raw output at its first call."""
        g = self.generator
        first: list[np.ndarray] = []
        output = g.artifacts.component("denoiser").outputs[0].name

        def raw_model(x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
            out = np.asarray(runner.infer({"latent": x.astype(np.float32), "timestep": t.astype(np.float32),
                                           "class_labels": y.astype(np.int64)})[output], dtype=np.float32)
            g._check("denoiser", out)
            if not first:
                first.append(out)
            return out

        latent = sample_class_conditional(
            config.sampler, raw_model, noise, feeds["class_labels"], config.guidance_scale, steps=config.steps,
            rng=np.random.default_rng([config.seed, ADM_NOISE_STREAM]), callback=lambda done, total: bar.update(),
            null_label=self.facts.null_class if self.facts.null_class is not None else self.facts.num_classes,
        )
        return np.asarray(latent, dtype=np.float32), first[0]
