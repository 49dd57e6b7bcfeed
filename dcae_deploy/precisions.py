"""The export precisions: what each one stores in the graph, what its inputs are, and its parity tolerance.

One table (:data:`PRECISIONS`) read by the exporter, the parity gate, ``parity``, the engines stage and the
runtime. Torch-free.

=========  =====================================  ==================  ==============================================
precision  graph                                  float inputs        parity gate against PyTorch fp32
=========  =====================================  ==================  ==============================================
fp32       float32 weights and activations        float32             relative L2 <= 1e-4
fp16       float16 weights and activations        float16             relative L2 <= 1e-2, image PSNR >= 35 dB
bf16       bfloat16 weights and activations       bfloat16            relative L2 <= 1e-2, image PSNR >= 35 dB
int8       float32 graph with Q/DQ pairs: int8    float32             on held-out real inputs: image PSNR >= 30 dB,
           weights (per output channel) and int8                      other outputs relative L2 <= 0.2
           activations (per tensor), symmetric
fp8        as int8, float8 E4M3 (TensorRT on      float32             as int8
           compute capability 8.9+)
int4       weight-only: MatMul weights int4       float32             on held-out real inputs: relative L2 <= 0.3
           (symmetric, blocks of 32 input
           channels), embedding tables float16,
           float32 activations
=========  =====================================  ==================  ==============================================

int4 is meant for the text encoder (Gemma-2-2B: 2.6 B weights, most of a laptop's memory in fp16), exported with
``--component-precision text_encoder=int4`` beside any precision of the other components; it needs no calibration
(round to nearest per block) and is gated, like int8, on held-out real captions. Its limit is looser than int8's:
4-bit weights carry about 8% error each (a 16-level grid per block of 32), and the embeddings of the trained demo
text encoder move by 0.04 relative L2, those of a randomly initialised Gemma-2 (tiny-gemma-2-2304, no structure for
round-to-nearest to keep) by 0.21; 0.3 keeps random-weight structure checks passing and stays far below a wrong
graph (1 or more). What reaches the image is judged by ``python -m dcae_deploy.evaluate`` (demo: 80% prompt
adherence with an int4 text encoder, 79% fp32).

A quantized graph keeps float32 islands: only the layers that carry weights (Conv, MatMul and Gemm against a
weight) are quantized; linear attention's activation-by-activation products, normalisations and every other op
stay float32. Quantized tolerances apply to real inputs (the held-out part of the calibration set), never to the
gate's random tensors, on which a calibrated graph is not meant to be accurate. The 0.2 limit on a denoiser's
one-step output is what int8 reaches on the trained demo model's held-out trajectory steps (mean 0.07, worst
0.15, the worst near the end of sampling); what a user sees is judged by the decoded image's PSNR and by
``python -m dcae_deploy.evaluate`` (prompt adherence) on the quantized export.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcae_deploy.errors import DcaeDeployError


@dataclass(frozen=True)
class Precision:
    """One export precision.

    Attributes:
        name: the ``--precision`` value and the manifest's ``precision``.
        float_dtype: the numpy dtype name of the graph's float inputs and outputs.
        quantized: ``int8`` / ``fp8`` / ``int4`` for Q/DQ graphs (exported in fp32, then quantized), else None.
        weight_only: only weights are quantized (no activation Q/DQ, no calibration data).
        rel_l2: the gate's largest relative L2 error against PyTorch fp32.
        image_psnr_db: the gate's smallest PSNR of decoded images (None: no PSNR limit).
        image_rel_l2: the relative L2 limit of image outputs where it differs from ``rel_l2`` (quantized graphs
            are judged on images by PSNR; this only catches gross failures).
    """

    name: str
    float_dtype: str
    quantized: str | None
    rel_l2: float
    image_psnr_db: float | None
    description: str
    image_rel_l2: float | None = None
    weight_only: bool = False

    def rel_l2_limit(self, is_image: bool) -> float:
        return self.image_rel_l2 if is_image and self.image_rel_l2 is not None else self.rel_l2


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "float32", None, 1e-4, None, "float32 graph"),
        Precision("fp16", "float16", None, 1e-2, 35.0, "float16 graph"),
        Precision("bf16", "bfloat16", None, 1e-2, 35.0, "bfloat16 graph"),
        Precision("int8", "float32", "int8", 0.2, 30.0,
                  "int8 Q/DQ graph: int8 weights per channel, int8 activations per tensor, float32 islands", 0.2),
        Precision("fp8", "float32", "fp8", 0.2, 30.0,
                  "float8 (E4M3) Q/DQ graph for TensorRT on compute capability 8.9+, float32 islands", 0.2),
        Precision("int4", "float32", "int4", 0.3, 30.0,
                  "int4 weight-only graph: MatMul weights int4 in blocks of 32, embedding tables float16, "
                  "float32 activations", 0.2, weight_only=True),
    )
}
#: ONNX Runtime (1.32) graph transformers to switch off for Q/DQ graphs: with int8 activations, Q/DQ propagation
#: through Unsqueeze creates a QuantizeLinear whose output_dtype (int8) contradicts the uint8 zero point the
#: s8 -> u8 transformer gave it, and the session refuses the graph ("output_dtype INT8 does not match y_zero_point
#: type UINT8"). Without propagation the graph loads and runs with ORT's int8 kernels.
ORT_QDQ_DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)
#: the highest ONNX Runtime graph optimisation level that computes a precision's graphs correctly: ORT 1.32's
#: extended CPU transformations give float8 Q/DQ graphs 4x the error of its own unoptimised run, of OpenVINO and of
#: the ONNX reference evaluator (tiny decoder, relative L2 0.62 against 0.14)
ORT_OPTIMIZATION_LIMIT = {"fp8": "ORT_ENABLE_BASIC"}
QUANTIZED = tuple(name for name, p in PRECISIONS.items() if p.quantized)


def get_precision(name: str) -> Precision:
    """The :class:`Precision` called ``name``; a clear error for an unknown one."""
    if name not in PRECISIONS:
        raise DcaeDeployError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def is_quantized(name: str) -> bool:
    return get_precision(name).quantized is not None


def loosest(names) -> str:
    """Of the precisions ``names``, the one whose gate is loosest (an export whose components differ in precision
    is judged end to end by it)."""
    return max(names, key=lambda name: get_precision(name).rel_l2)
