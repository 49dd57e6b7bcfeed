"""Every registered variant, as data: the named configs of each model family and the pipelines.

>>> from dcae_deploy.variants import get_variant
>>> cfg = get_variant("f32c32-sana")
>>> cfg.spatial_compression_ratio, cfg.latent_channels, cfg.scaling_factor
(32, 32, 0.41407)

This module holds registrations only. The config dataclasses live beside their models
(``dcae_deploy/models/<family>_family.py``), the lookup in :mod:`dcae_deploy.registry`. Names prefixed
``tiny-`` are narrow test variants of the same architecture, small enough for fast CPU tests.
"""

from __future__ import annotations

import dataclasses

from dcae_deploy.models.autoencoder_family import AutoencoderConfig, DecoderConfig, EncoderConfig
from dcae_deploy.manifest import SamplerDefaults
from dcae_deploy.models.class_pipeline_config import ClassPipelineConfig
from dcae_deploy.models.denoiser_family import DenoiserConfig
from dcae_deploy.models.dit_family import DiTConfig
from dcae_deploy.models.pipeline_config import PipelineConfig
from dcae_deploy.models.text_encoder_family import TextEncoderConfig
from dcae_deploy.models.uvit_family import UViTConfig
from dcae_deploy.registry import get_variant, list_variants, register

__all__ = [
    "AutoencoderConfig",
    "ClassPipelineConfig",
    "DecoderConfig",
    "DenoiserConfig",
    "DiTConfig",
    "EncoderConfig",
    "PipelineConfig",
    "TextEncoderConfig",
    "UViTConfig",
    "get_variant",
    "list_variants",
    "register",
]

# ---------------------------------------------------------------------------------------------
# DC-AE variants (values: the released checkpoints' configs, efficientvit dc_ae_model_zoo / diffusers AutoencoderDC)
# ---------------------------------------------------------------------------------------------

R, E = "ResBlock", "EfficientViTBlock"
_IN_MIX_WIDTHS = {
    "f32c32": (128, 256, 512, 512, 1024, 1024),
    "f64c128": (128, 256, 512, 512, 1024, 1024, 2048),
    "f128c512": (128, 256, 512, 512, 1024, 1024, 2048, 2048),
}
_IN_MIX_SCALING = {
    ("f32c32", "in"): 0.3189,
    ("f32c32", "mix"): 0.4552,
    ("f64c128", "in"): 0.2889,
    ("f64c128", "mix"): 0.4538,
    ("f128c512", "in"): 0.4883,
    ("f128c512", "mix"): 0.3620,
}
_DATASET_TEXT = {"in": "ImageNet", "mix": "mixed datasets"}


def _in_mix_config(name: str, widths: tuple[int, ...], latent: int, scaling: float, enc_depths, dec_depths, description):
    """The in/mix family: ResBlocks in the first three stages, EfficientViT blocks after; BN+ReLU decoder head stages."""
    n = len(widths)
    blocks = (R,) * 3 + (E,) * (n - 3)
    return AutoencoderConfig(
        name=name,
        latent_channels=latent,
        scaling_factor=scaling,
        description=description,
        encoder=EncoderConfig(
            widths=widths,
            depths=enc_depths,
            block_types=blocks,
            qkv_multiscales=((),) * n,
            downsample="pixel_unshuffle",
        ),
        decoder=DecoderConfig(
            widths=widths,
            depths=dec_depths,
            block_types=blocks,
            qkv_multiscales=((),) * n,
            norms=("batch_norm",) * 3 + ("rms_norm",) * (n - 3),
            acts=("relu",) * 3 + ("silu",) * (n - 3),
            upsample="pixel_shuffle",
        ),
    )


def _sana_config(name: str, widths, enc_depths, dec_depths, description: str) -> AutoencoderConfig:
    """The SANA family: RMSNorm + SiLU everywhere, multi-scale (5x5) attention, strided-conv down, nearest+conv up."""
    n = len(widths)
    blocks = (R,) * 3 + (E,) * (n - 3)
    scales = ((),) * 3 + ((5,),) * (n - 3)
    return AutoencoderConfig(
        name=name,
        latent_channels=32,
        scaling_factor=0.41407,
        description=description,
        encoder=EncoderConfig(
            widths=widths, depths=enc_depths, block_types=blocks, qkv_multiscales=scales, downsample="conv"
        ),
        decoder=DecoderConfig(
            widths=widths,
            depths=dec_depths,
            block_types=blocks,
            qkv_multiscales=scales,
            norms=("rms_norm",) * n,
            acts=("silu",) * n,
            upsample="interpolate",
        ),
    )


for _family, _widths in _IN_MIX_WIDTHS.items():
    _latent = int(_family.split("c")[1])
    _n = len(_widths)
    for _data in ("in", "mix"):
        register(
            _in_mix_config(
                f"{_family}-{_data}",
                _widths,
                _latent,
                _IN_MIX_SCALING[(_family, _data)],
                enc_depths=(0, 4, 8) + (2,) * (_n - 3),
                dec_depths=(0, 5, 10) + (2,) * (_n - 3),
                description=f"DC-AE {_family} trained on {_DATASET_TEXT[_data]} (dc-ae-{_family}-{_data}-1.0)",
            ),
            f"dc-ae-{_family}-{_data}-1.0",
        )

_SANA_WIDTHS = (128, 256, 512, 512, 1024, 1024)
register(
    _sana_config(
        "f32c32-sana",
        _SANA_WIDTHS,
        (2, 2, 2, 3, 3, 3),
        (3, 3, 3, 3, 3, 3),
        "DC-AE f32c32 used by SANA 1.0 (dc-ae-f32c32-sana-1.0)",
    ),
    "f32c32-sana-1.0",
    "dc-ae-f32c32-sana-1.0",
)
register(
    dataclasses.replace(
        get_variant("f32c32-sana"),
        name="f32c32-sana-1.1",
        description="DC-AE f32c32 SANA 1.1: same architecture and encoder as 1.0, better decoder weights",
    ),
    "dc-ae-f32c32-sana-1.1",
)

# Tiny test variants: the same block graph with narrow widths and shallow stages.
_TINY = (8, 16, 32, 32, 64, 64)
register(
    _sana_config("tiny-f32c32-sana", _TINY, (1,) * 6, (1,) * 6, "narrow f32c32-sana for tests"),
)
register(
    _in_mix_config(
        "tiny-f32c32-in", _TINY, 32, 0.3189, (0, 1, 2, 1, 1, 1), (0, 1, 2, 1, 1, 1), "narrow f32c32-in for tests"
    )
)
register(
    _in_mix_config(
        "tiny-f64c128-mix",
        _TINY + (128,),
        128,
        0.4538,
        (0, 1, 1, 1, 1, 1, 1),
        (0, 1, 1, 1, 1, 1, 1),
        "narrow f64c128-mix for tests",
    )
)
register(
    _in_mix_config(
        "tiny-f128c512-in",
        _TINY + (128, 512),
        512,
        0.4883,
        (0, 1, 1, 1, 1, 1, 1, 1),
        (0, 1, 1, 1, 1, 1, 1, 1),
        "narrow f128c512-in for tests",
    )
)


# ---------------------------------------------------------------------------------------------
# SANA linear DiT variants (values: the released checkpoints' diffusers SanaTransformer2DModel configs)
# ---------------------------------------------------------------------------------------------

register(
    DenoiserConfig(
        "sana-600m",
        num_attention_heads=36,
        attention_head_dim=32,
        num_layers=28,
        num_cross_attention_heads=16,
        cross_attention_head_dim=72,
        description="SANA 0.6B linear DiT (SanaMS_600M_P1_D28), 512px and 1024px checkpoints",
    ),
    "SanaMS_600M_P1_D28",
    "sana-0.6b",
)
register(
    DenoiserConfig(
        "sana-1600m",
        num_attention_heads=70,
        attention_head_dim=32,
        num_layers=20,
        num_cross_attention_heads=20,
        cross_attention_head_dim=112,
        description="SANA 1.6B linear DiT (SanaMS_1600M_P1_D20), 512px and 1024px checkpoints",
    ),
    "SanaMS_1600M_P1_D20",
    "sana-1.6b",
)
register(
    DenoiserConfig(
        "tiny-sana",
        num_attention_heads=2,
        attention_head_dim=32,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=32,
        caption_channels=64,
        description="narrow SANA linear DiT for tests",
    )
)


# --- demo model: trained by this project on the procedural shapes set (dcae_deploy/demo/) -------

DEMO_VOCABULARY = (
    ("a", "an", "on", "background")
    + ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
    + ("circle", "square", "triangle", "star")
)

register(
    dataclasses.replace(
        _sana_config(
            "demo-f32c32",
            (16, 32, 64, 64, 128, 128),
            (1, 1, 1, 1, 1, 1),
            (1, 1, 1, 1, 1, 1),
            "small f32c32 DC-AE (SANA family) of the shipped demo model, trained on 128px procedural shapes",
        ),
        scaling_factor=0.27583,  # 1 / RMS of its latents, measured by scripts/train_demo.py
    )
)
register(
    DenoiserConfig(
        "demo-denoiser",
        num_attention_heads=4,
        attention_head_dim=32,
        num_layers=6,
        num_cross_attention_heads=4,
        cross_attention_head_dim=32,
        caption_channels=128,
        sample_size=4,
        description="small SANA linear DiT of the shipped demo model",
    )
)
register(
    TextEncoderConfig(
        "demo-text",
        family="word",
        hidden_size=128,
        max_length=16,
        num_layers=2,
        num_heads=4,
        vocab_size=3 + len(DEMO_VOCABULARY),
        description="the demo's own small transformer text encoder over a 19-word vocabulary",
    )
)
register(
    PipelineConfig(
        "demo",
        autoencoder="demo-f32c32",
        denoiser="demo-denoiser",
        text_encoder="demo-text",
        sampling=SamplerDefaults(
            height=128,
            width=128,
            steps=20,
            # chosen on 100 training prompts (python -m dcae_deploy.evaluate --prompt-split train --guidance G):
            # shape 72% at 2, 80% at 3, 84% at 4, 79% at 5, 78% at 6, 74% at 8; foreground colour 99-100% at each
            guidance_scale=4.0,
        ),
        description="shipped demo: coloured shapes from captions ('a red circle on a blue background')",
    )
)


# --- SANA text-to-image: Gemma-2 text encoder and the pipelines (export helper) -----------------

register(
    TextEncoderConfig(
        "gemma-2-2b-it",
        family="gemma2",
        hidden_size=2304,
        max_length=300,
        arch=dict(
            vocab_size=256000,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=4096,
            max_position_embeddings=8192,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            hidden_activation="gelu_pytorch_tanh",
        ),
        description="Gemma-2-2B-IT (Efficient-Large-Model/gemma-2-2b-it), SANA's text encoder: BOS + last 299 "
        "of the instruction-prefixed prompt, 2304 channels",
    )
)
register(
    TextEncoderConfig(
        "tiny-gemma-2",
        family="gemma2",
        hidden_size=64,
        max_length=24,
        arch=dict(
            vocab_size=512,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=4096,
            max_position_embeddings=2048,
        ),
        description="tiny random Gemma-2 for tests (built-in 320-token BPE tokenizer)",
    )
)
register(
    TextEncoderConfig(
        "tiny-gemma-2-2304",
        family="gemma2",
        hidden_size=2304,
        max_length=24,
        arch=dict(
            vocab_size=512,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
            query_pre_attn_scalar=64,
            sliding_window=4096,
            max_position_embeddings=2048,
        ),
        description="tiny random Gemma-2 with SANA's 2304-channel states (real-size SANA denoisers in tests)",
    )
)
register(
    PipelineConfig(
        "tiny-t2i",
        autoencoder="tiny-f32c32-sana",
        denoiser="tiny-sana",
        text_encoder="tiny-gemma-2",
        sampling=SamplerDefaults(
            height=64,
            width=64,
            steps=4,
            guidance_scale=4.5,
        ),
        description="tiny text-to-image pipeline for tests: tiny DC-AE + tiny SANA DiT + tiny Gemma-2",
    )
)
register(
    PipelineConfig(
        "sana-600m-tiny-gemma",
        autoencoder="f32c32-sana",
        denoiser="sana-600m",
        text_encoder="tiny-gemma-2-2304",
        sampling=SamplerDefaults(
            height=256,
            width=256,
            steps=2,
            guidance_scale=4.5,
            flow_shift=3.0,
        ),
        description="real-size DC-AE f32c32-sana + SANA-600M with a tiny Gemma-2: end-to-end checks against diffusers",
    )
)
register(
    PipelineConfig(
        "sana-600m-t2i",
        autoencoder="f32c32-sana",
        denoiser="sana-600m",
        text_encoder="gemma-2-2b-it",
        sampling=SamplerDefaults(
            height=1024,
            width=1024,
            steps=20,
            guidance_scale=4.5,
            flow_shift=3.0,
        ),
        description="SANA 0.6B text-to-image (Sana_600M_1024px): DC-AE f32c32-sana + SANA-600M + Gemma-2-2B-IT",
    )
)
register(
    PipelineConfig(
        "sana-1600m-t2i",
        autoencoder="f32c32-sana",
        denoiser="sana-1600m",
        text_encoder="gemma-2-2b-it",
        sampling=SamplerDefaults(
            height=1024,
            width=1024,
            steps=20,
            guidance_scale=4.5,
            flow_shift=3.0,
        ),
        description="SANA 1.6B text-to-image (Sana_1600M_1024px): DC-AE f32c32-sana + SANA-1600M + Gemma-2-2B-IT",
    )
)


# ---------------------------------------------------------------------------------------------
# DC-AE-Diffusion: class-conditional ImageNet 512px UViT / USiT / DiT (values: efficientvit diffusion_model_zoo.py
# and its builders; patch size 1, input_size = 512 / the DC-AE's compression). Parameter counts (meta device) equal
# the release's: UViT-S 44.79 M, UViT-H 500.87 M, UViT-2B 1580.40 M, DiT-XL 674.89 M.
# ---------------------------------------------------------------------------------------------

_UVIT_SIZES = {"s": (512, 12, 8), "h": (1152, 28, 16), "2b": (2048, 28, 32)}  # hidden, depth, heads
_C2I_AUTOENCODERS = {"f32c32": ("f32c32-in", 32, 32), "f64c128": ("f64c128-in", 128, 64)}  # AE, channels, ratio


def _uvit(name: str, size: str, latent: str, convention: str, description: str) -> UViTConfig:
    hidden, depth, heads = _UVIT_SIZES[size]
    _, channels, ratio = _C2I_AUTOENCODERS[latent]
    return UViTConfig(name, input_size=512 // ratio, patch_size=1, in_channels=channels, hidden_size=hidden,
                      depth=depth, num_heads=heads, timestep_convention=convention, spatial_compression_ratio=ratio,
                      description=description)


for _size, _latent in (("s", "f32c32"), ("h", "f32c32"), ("2b", "f32c32"), ("h", "f64c128"), ("2b", "f64c128")):
    register(_uvit(f"uvit-{_size}-{_latent}", _size, _latent, "uvit-dpm",
                   f"UViT-{_size.upper()} on DC-AE {_latent}-in latents (eps prediction, DPM-Solver++ time t*1000)"))
for _size in ("h", "2b"):
    register(_uvit(f"usit-{_size}-f32c32", _size, "f32c32", "sit",
                   f"USiT-{_size.upper()}: UViT-{_size.upper()} trained with the SiT objective on DC-AE f32c32-in "
                   "latents (velocity prediction, t in [0, 1])"))
register(DiTConfig("dit-xl-f32c32", input_size=16, patch_size=1, in_channels=32, hidden_size=1152, depth=28,
                   num_heads=16, description="DiT-XL on DC-AE f32c32-in latents (eps + learned variance, ADM steps)"))
register(UViTConfig("tiny-uvit", input_size=4, patch_size=1, in_channels=32, hidden_size=64, depth=2, num_heads=2,
                    description="narrow UViT for tests (tiny-f32c32-in latents, 128 px)"))
register(UViTConfig("tiny-usit", input_size=4, patch_size=1, in_channels=32, hidden_size=64, depth=2, num_heads=2,
                    timestep_convention="sit", description="narrow USiT (UViT, SiT velocity) for tests"))
register(DiTConfig("tiny-dit", input_size=4, patch_size=1, in_channels=32, hidden_size=64, depth=2, num_heads=2,
                   description="narrow DiT for tests (tiny-f32c32-in latents, 128 px)"))

# Sampling defaults: the reference's eval samplers; guidance as the release's evaluation commands
# (applications/dc_ae/README.md): 1.3 for DiT-XL, 1.5 for the UViTs, 1.2 USiT-H and 1.15 USiT-2B (their FID 1.88 /
# 1.72 runs); the demo script's 6.0 is for pictures, not FID.
_UVIT_SAMPLING = SamplerDefaults(height=512, width=512, steps=30, guidance_scale=1.5, flow_shift=1.0,
                                 sampler="dpm-solver++-uvit")
_DIT_SAMPLING = SamplerDefaults(height=512, width=512, steps=250, guidance_scale=1.3, flow_shift=1.0, sampler="adm")
_USIT_SAMPLING = SamplerDefaults(height=512, width=512, steps=250, guidance_scale=1.2, flow_shift=1.0,
                                 sampler="sit-dopri5")  # steps: dopri5's output grid (its own steps are adaptive)
# name -> (denoiser, sampling, published FID without / with guidance)
_C2I = {
    "dc-ae-f32c32-in-1.0-dit-xl-in-512px": ("dit-xl-f32c32", _DIT_SAMPLING, "9.56 / 2.84"),
    "dc-ae-f32c32-in-1.0-dit-xl-in-512px-trainbs1024": ("dit-xl-f32c32", _DIT_SAMPLING, "6.88 / 2.41"),
    "dc-ae-f32c32-in-1.0-uvit-s-in-512px": ("uvit-s-f32c32", _UVIT_SAMPLING, "46.12 / 18.08"),
    "dc-ae-f32c32-in-1.0-uvit-h-in-512px": ("uvit-h-f32c32", _UVIT_SAMPLING, "9.83 / 2.53"),
    "dc-ae-f32c32-in-1.0-uvit-2b-in-512px": ("uvit-2b-f32c32", _UVIT_SAMPLING, "8.13 / 2.30"),
    "dc-ae-f32c32-in-1.0-usit-h-in-512px": ("usit-h-f32c32", _USIT_SAMPLING, "3.80 / 1.89"),
    "dc-ae-f32c32-in-1.0-usit-2b-in-512px": (
        "usit-2b-f32c32", dataclasses.replace(_USIT_SAMPLING, guidance_scale=1.15), "2.90 / 1.72"),
    "dc-ae-f64c128-in-1.0-uvit-h-in-512px": ("uvit-h-f64c128", _UVIT_SAMPLING, "13.96 / 3.01"),
    "dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k": ("uvit-h-f64c128", _UVIT_SAMPLING, "12.26 / 2.66"),
    "dc-ae-f64c128-in-1.0-uvit-2b-in-512px": ("uvit-2b-f64c128", _UVIT_SAMPLING, "7.78 / 2.47"),
    "dc-ae-f64c128-in-1.0-uvit-2b-in-512px-train2000k": ("uvit-2b-f64c128", _UVIT_SAMPLING, "6.50 / 2.25"),
}
for _name, (_denoiser, _sampling, _fid) in _C2I.items():
    _ae = _C2I_AUTOENCODERS[_name.split("-")[2]][0]
    register(ClassPipelineConfig(_name, autoencoder=_ae, denoiser=_denoiser, sampling=_sampling,
                                 description=f"DC-AE-Diffusion, ImageNet 512px class-conditional (published FID {_fid} "
                                 "without / with guidance)"))
register(ClassPipelineConfig(
    "tiny-uvit-c2i", autoencoder="tiny-f32c32-in", denoiser="tiny-uvit",
    sampling=dataclasses.replace(_UVIT_SAMPLING, height=128, width=128, steps=4),
    description="tiny class-conditional pipeline for tests (UViT, 128 px)",
))
register(ClassPipelineConfig(
    "tiny-dit-c2i", autoencoder="tiny-f32c32-in", denoiser="tiny-dit",
    sampling=dataclasses.replace(_DIT_SAMPLING, height=128, width=128, steps=4),
    description="tiny class-conditional pipeline for tests (DiT, 128 px)",
))
register(ClassPipelineConfig(
    "tiny-usit-c2i", autoencoder="tiny-f32c32-in", denoiser="tiny-usit",
    sampling=dataclasses.replace(_USIT_SAMPLING, height=128, width=128),
    description="tiny class-conditional pipeline for tests (USiT, SiT ODE, 128 px)",
))
