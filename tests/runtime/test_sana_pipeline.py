"""The runtime's text-to-image loop reproduces diffusers ``SanaPipeline`` on the real SANA-600M architecture.

Random weights of SANA-600M and DC-AE f32c32-sana (full size), with a tiny random Gemma-2 of SANA's
2304-channel width (``sana-600m-tiny-gemma``), built by diffusers / transformers and saved in their
layouts; ours loads the saved folders. Both pipelines then run the same prompts from the same initial
latents, fp32, 256x256, two DPM-Solver++ steps with guidance: same text states, same final latents,
same decoded image. Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcae_deploy.models.autoencoder_io import load_autoencoder
from dcae_deploy.models.denoiser import load_denoiser
from dcae_deploy.models.gemma import build_gemma
from dcae_deploy.models.pipeline import PipelineModels
from dcae_deploy.models.text_encoder import default_tokenizer
from dcae_deploy.runtime import GenerationConfig
from dcae_deploy.runtime.eager import open_pytorch
from dcae_deploy.tokenizer import SANA_INSTRUCTION
from dcae_deploy.variants import get_variant

diffusers = pytest.importorskip("diffusers")

PROMPTS = ("A red circle on a blue background", "a small green star, detailed")
SEED = 11
TOLERANCE = 1e-4  # relative L2, fp32: two guided steps through 28 layers, then the full decoder


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.mark.slow
def test_runtime_matches_diffusers_sana_pipeline(tmp_path):
    from transformers import AutoTokenizer

    config = get_variant("sana-600m-tiny-gemma", kind="pipeline")
    parts = config.parts()
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    try:
        transformer = diffusers.SanaTransformer2DModel(**parts["denoiser"].to_diffusers_config()).eval()
        transformer.save_pretrained(tmp_path / "transformer")
        vae = diffusers.AutoencoderDC(**parts["autoencoder"].to_diffusers_config()).eval()
        vae.save_pretrained(tmp_path / "vae")
        text_encoder = build_gemma(parts["text_encoder"]).eval()
        with torch.no_grad():  # Gemma's RMSNorm weights start at 0 (scale 1 + w): make every weight matter
            for p in text_encoder.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        tokenizer = default_tokenizer(parts["text_encoder"])
        tokenizer.save(tmp_path / "tokenizer")

        reference = diffusers.SanaPipeline(
            tokenizer=AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer"), local_files_only=True),
            text_encoder=text_encoder.model,
            vae=vae,
            transformer=transformer,
            scheduler=diffusers.DPMSolverMultistepScheduler(
                flow_shift=config.sampling.flow_shift, use_flow_sigmas=True, prediction_type="flow_prediction"
            ),
        )
        ours = PipelineModels(
            config=config,
            autoencoder=load_autoencoder(tmp_path / "vae", config.autoencoder).eval(),
            denoiser=load_denoiser(tmp_path / "transformer", config.denoiser).eval(),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )
        request = GenerationConfig(prompts=PROMPTS, seed=SEED)
        with open_pytorch(ours, device="cpu", progress=False) as t2i:
            result = t2i.generate(request)
            request = t2i.resolve(request)

        # the runtime's initial noise (numpy, seed + i), handed to diffusers as its latents
        channels, side = parts["autoencoder"].latent_channels, config.sampling.height // 32
        noise = np.stack([np.random.default_rng(SEED + i).standard_normal((channels, side, side), dtype=np.float32)
                          for i in range(len(PROMPTS))])
        captured = {}

        def keep_embeddings(pipe, step, timestep, kwargs):
            captured.setdefault("prompt_embeds", kwargs["prompt_embeds"].clone())
            return {}

        with torch.no_grad():
            latents = reference(
                prompt=list(PROMPTS), negative_prompt=request.negative_prompt,
                num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                height=request.height, width=request.width, latents=torch.from_numpy(noise),
                output_type="latent", use_resolution_binning=False,
                max_sequence_length=parts["text_encoder"].max_length,
                complex_human_instruction=list(SANA_INSTRUCTION),
                callback_on_step_end=keep_embeddings, callback_on_step_end_tensor_inputs=["prompt_embeds"],
            ).images
            image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    finally:
        torch.set_num_threads(threads)

    assert request.steps == 2 and request.guidance_scale > 1  # guided: both branches, negative first
    embeddings = captured["prompt_embeds"].numpy()  # diffusers' CFG batch: [negative, prompts]
    assert embeddings.shape == result.stages["text_embeddings"].shape == (4, parts["text_encoder"].max_length, 2304)
    errors = {
        "text_embeddings": _rel(result.stages["text_embeddings"], embeddings),
        "latent": _rel(result.stages["latent"], latents.numpy()),
        "image": _rel(result.stages["image"], image.numpy()),
    }
    print("relative L2 against diffusers SanaPipeline:", errors)
    assert errors["text_embeddings"] <= 1e-5, errors
    assert errors["latent"] <= TOLERANCE and errors["image"] <= TOLERANCE, errors
    assert _rel(result.stages["latent"], noise) > 0.1  # the two steps really moved the latents
