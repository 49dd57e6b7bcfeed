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
=========  =====================================  ==================  ==============================================

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
        quantized: ``int8`` / ``fp8`` for Q/DQ graphs (exported in fp32, then quantized), else None.
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
