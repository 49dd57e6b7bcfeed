"""Quantized graphs: ONNX Runtime's static quantizer turns an exported fp32 graph into a Q/DQ graph.

The Q/DQ ("quantize-dequantize") format is the one every runtime here consumes: TensorRT and TensorRT-RTX fuse
the pairs into int8 / fp8 kernels (explicit quantization), ONNX Runtime's CPU EP into its int8 kernels, OpenVINO
into int8 (its low-precision transformations). Settings, chosen for TensorRT:

* symmetric quantization (zero point 0) of activations (per tensor) and weights (per output channel for int8,
  per tensor for fp8 E4M3), activations calibrated by min/max (int8) or ONNX Runtime's distribution method (fp8,
  which requires it) over the calibration set of :mod:`dcae_deploy.export.calibration`;
* only layers with weights are quantized (Conv, MatMul and Gemm against an initializer): linear attention's
  activation-by-activation MatMuls, normalisations, softmax and every other op stay float32 islands.

int4 is weight-only (:func:`quantize_weights_int4`): ONNX Runtime's block-wise weight quantizer writes each MatMul
weight as int4 blocks of 32 input channels behind a DequantizeLinear (opset 21 block quantization, which TensorRT
and TensorRT-RTX read as weight-only int4, ONNX Runtime fuses into its MatMulNBits kernel and OpenVINO into its
compressed-weight MatMul), and the embedding tables float16 (:func:`compress_embeddings`).

NVIDIA ModelOpt's ONNX PTQ writes the same format but pins onnxruntime-gpu and an older onnx; ONNX Runtime's
quantizer ships with the onnxruntime this package already needs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dcae_deploy.errors import DcaeDeployError
from dcae_deploy.precisions import Precision

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# layers kept float by the module they come from (the exporter's name scopes): the embeddings of timestep, class,
# caption and patches, and the output projections. They are a small share of the compute and carry what the rest
# depends on (demo denoiser, held-out trajectory steps: max relative L2 0.171 -> 0.146 with them float).
# And the value projection of SANA's ReLU linear self-attention: with both its key and value projections int8,
# OpenVINO 2026.4's low-precision transformations return NaN (demo denoiser; ONNX Runtime is right, within 0.04 of
# fp32); with the value projection float OpenVINO and ONNX Runtime agree to 1e-4.
FLOAT_SCOPES = ("embed", "caption_projection", "proj_out", "final_layer", "decoder_pred", "attn1.to_v")
INT8_MAX = 127.0
EXTERNAL_DATA_BYTES = 1_800_000_000  # past this, the quantized graph keeps its weights in a .data file (protobuf 2 GB)


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


def weighted_nodes(model, keep_float: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """(names of the nodes to quantize, how many weighted layers stay float): Conv / MatMul / Gemm whose second
    input is a weight (an initializer), except those whose module path holds one of :data:`FLOAT_SCOPES` or
    ``keep_float``."""
    weights = {i.name for i in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    weighted = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in weights]
    scopes = FLOAT_SCOPES + tuple(keep_float)
    chosen = [n.name for n in weighted if not any(key in _scope(n) for key in scopes)]
    return chosen, len(weighted) - len(chosen)


def _scope(node) -> str:
    """The PyTorch module path the dynamo exporter recorded for ``node`` ('' when absent)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return prop.value
    return ""


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of named numpy inputs, with the ``__len__`` and
    ``set_range`` its strided calibration uses: one sample per stride, so the calibrator reduces each sample's
    intermediate tensors to their range before the next (all of them at once take tens of GB at 512 px; ORT's
    ``CalibMaxIntermediateOutputs`` drops the samples it flushes instead of reducing them)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._all = feeds
        self._feeds = iter(feeds)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._feeds = iter(self._all[start_index:end_index])

    def get_next(self):
        return next(self._feeds, None)


def quantize_graph(source: Path, target: Path, feeds: list[dict[str, np.ndarray]], precision: Precision,
                   component: str, keep_float: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write the Q/DQ graph of ``source`` to ``target`` calibrated on ``feeds`` (unused by weight-only precisions);
    return what was done (the manifest's record).

    fp8 starts as the int8 graph (min/max calibration) and rescales every pair to E4M3 (:func:`int8_to_fp8`):
    ONNX Runtime's own fp8 recipe sets scales from each tensor's standard deviation rather than its range, and its
    graphs miss the gate by far (tiny autoencoder decoder, held-out photographs: 13.7 dB).
    """
    if precision.weight_only:
        return quantize_weights_int4(source, target, component, keep_float)
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(source), load_external_data=False)
    nodes, kept_float = weighted_nodes(model, keep_float)
    if not nodes:
        raise DcaeDeployError(f"{component}: the graph has no Conv / MatMul / Gemm with weights to quantize; export it "
                              "with a float precision")
    fp8 = precision.quantized == "fp8"
    external = sum(f.stat().st_size for f in source.parent.glob(source.name + "*")) > EXTERNAL_DATA_BYTES
    start = time.perf_counter()
    log(f"{component}: quantizing {len(nodes)} weighted layers to {precision.quantized}, {kept_float} kept float "
        f"(ONNX Runtime {onnxruntime.__version__}, Q/DQ, min/max calibration on {len(feeds)} samples) ...")
    del model
    int8_path = target.with_name(target.stem + ".int8.onnx") if fp8 else target
    try:
        quantize_static(
            str(source), str(int8_path), _Reader(feeds),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, nodes_to_quantize=nodes, op_types_to_quantize=list(QUANTIZED_OPS),
            calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibStridedMinMax": 1,
                           "QuantizeBias": False},  # float biases: TensorRT refuses int32 DequantizeLinear
        )
    except DcaeDeployError:
        raise
    except Exception as exc:  # the quantizer raises plain ValueError / RuntimeError / ORT's own types
        raise DcaeDeployError(f"{component}: ONNX Runtime's quantizer failed ({type(exc).__name__}: {exc})") from exc
    if fp8:
        converted = int8_to_fp8(onnx.load(str(int8_path)), onnx.load(str(source)))
        for path in graph_files(int8_path):
            path.unlink()
        onnx.save(converted, str(target), save_as_external_data=external, location=target.name + ".data")
    log(f"{component}: quantized in {time.perf_counter() - start:.1f} s")
    return {
        "precision": precision.name,
        "tool": f"onnxruntime.quantization.quantize_static {onnxruntime.__version__}"
                + (" (int8), rescaled to float8 E4M3 by dcae_deploy.export.quantize.int8_to_fp8" if fp8 else ""),
        "format": "QDQ",
        "activations": f"{precision.quantized} symmetric, per tensor, min/max calibration",
        "weights": f"{precision.quantized} symmetric, {'per tensor' if fp8 else 'per output channel'}",
        "quantized_layers": len(nodes),
        "float_layers": kept_float,
        "float_islands": "every op but Conv / MatMul / Gemm with weights (attention products, norms, activations), "
                         f"and the weighted layers of {', '.join(FLOAT_SCOPES + tuple(keep_float))}",
    }


INT4_BLOCK_SIZE = 32  # input channels per int4 scale (ONNX Runtime GenAI's CPU default; 128 cost the demo's text
# encoder 0.068 relative L2 of its embeddings against 0.060 at 32 in a scratch comparison not in the repository, for
# 0.53 instead of 0.625 bytes a weight)


def quantize_weights_int4(source: Path, target: Path, component: str, keep_float: tuple[str, ...] = ()) -> dict[str, Any]:
    """Weight-only int4: ONNX Runtime's ``MatMulNBitsQuantizer`` (round to nearest, symmetric, blocks of
    :data:`INT4_BLOCK_SIZE`, Q/DQ format) on the MatMuls with weights outside :data:`FLOAT_SCOPES` / ``keep_float``,
    then :func:`compress_embeddings`."""
    import logging

    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(source))
    chosen, kept_float = weighted_nodes(model, keep_float)
    matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    nodes = [name for name in chosen if name in matmuls]
    if not nodes:
        raise DcaeDeployError(f"{component}: the graph has no MatMul with weights for int4 weight-only quantization "
                              "(int4 is for transformer text encoders); export it with another precision")
    start = time.perf_counter()
    log(f"{component}: int4 weight-only quantization of {len(nodes)} MatMul weights (blocks of {INT4_BLOCK_SIZE}, "
        f"ONNX Runtime {onnxruntime.__version__}) ...")
    config = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK_SIZE, is_symmetric=True, quant_format=QuantFormat.QDQ,
                                          op_types_to_quantize=("MatMul",))
    quiet = logging.getLogger("onnxruntime.quantization")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every node it visits at INFO
    try:
        quantizer = MatMulNBitsQuantizer(model, nodes_to_include=nodes, algo_config=config)
        quantizer.process()
    except Exception as exc:  # the quantizer raises plain ValueError / AssertionError
        raise DcaeDeployError(f"{component}: ONNX Runtime's weight quantizer failed ({type(exc).__name__}: {exc})") from exc
    finally:
        quiet.setLevel(level)
    quantized = quantizer.model.model
    tables = compress_embeddings(quantized)
    size = sum(i.ByteSize() for i in quantized.graph.initializer)
    onnx.save(quantized, str(target), save_as_external_data=size > EXTERNAL_DATA_BYTES, location=target.name + ".data")
    log(f"{component}: int4 weights in {time.perf_counter() - start:.1f} s ({len(tables)} embedding tables float16)")
    return {
        "precision": "int4",
        "tool": f"onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer {onnxruntime.__version__} "
                "(int4), embedding tables float16 (dcae_deploy.export.quantize.compress_embeddings)",
        "format": "QDQ",
        "activations": "float32 (weight-only)",
        "weights": f"MatMul: int4 symmetric, blocks of {INT4_BLOCK_SIZE} input channels, round to nearest; "
                   "embedding tables: float16",
        "quantized_layers": len(nodes),
        "float_layers": kept_float + len(chosen) - len(nodes),
        "float_islands": "every op but MatMul with weights and embedding lookups, and the weighted layers of "
                         f"{', '.join(FLOAT_SCOPES + tuple(keep_float))}",
    }


def compress_embeddings(model) -> list[str]:
    """Store every float32 embedding table (the data input of a Gather, e.g. on token ids) in float16, in place:
    ``Gather(table, ids)`` becomes ``Cast(Gather(table_fp16, ids), float32)``, half the memory (Gemma-2-2B: 590 M of
    its 2.6 B weights, 2.4 GB in float32) in standard ops every runtime runs as they are. Returns the tables' names.

    Not int8 rows: no one form runs well everywhere. TensorRT refuses an int8 constant that does not feed a
    DequantizeLinear, and ONNX Runtime (1.32, CPU) dequantizes a ``DequantizeLinear -> Gather`` table whole on every
    call (a 64000 x 2304 table: 84 ms and 470 MB more per call; measured with a scratch script, not in the
    repository)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    compressed, nodes = [], []
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if (table is None or table.data_type != onnx.TensorProto.FLOAT or len(table.dims) != 2
                or uses[table.name] > 1 or table.name in outputs):
            nodes.append(node)
            continue
        half = numpy_helper.to_array(table).astype(np.float16)
        graph.initializer.remove(table)
        graph.initializer.append(numpy_helper.from_array(half, f"{table.name}_fp16"))
        out = node.output[0]
        gather = helper.make_node("Gather", [f"{table.name}_fp16", node.input[1]], [f"{out}_fp16"],
                                  name=f"{node.name}_fp16")
        gather.attribute.extend(node.attribute)
        nodes += [gather, helper.make_node("Cast", [f"{out}_fp16"], [out], name=f"{node.name}_to_float",
                                           to=onnx.TensorProto.FLOAT)]
        compressed.append(table.name)
    del graph.node[:]
    graph.node.extend(nodes)
    return compressed


FP8_MAX = 448.0  # the largest float8 E4M3FN value


def int8_to_fp8(model, fp32_model):
    """The int8 Q/DQ ``model`` as float8 E4M3FN Q/DQ, in place: activation pairs keep their calibrated range
    (scale * 127 / 448, zero point fp8 0); weights are requantized from ``fp32_model``'s float weights per tensor
    (scale = max |w| / 448); int32 bias DQs become float initializers (TensorRT's fp8 layers take float bias)."""
    import onnx
    from ml_dtypes import float8_e4m3fn
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    originals = {i.name: i for i in fp32_model.graph.initializer}
    replaced: dict[str, Any] = {}
    dropped: list = []
    done: set[str] = set()

    def fp8_zero(name: str, like) -> None:
        dims = list(like.dims)
        replaced[name] = onnx.helper.make_tensor(name, onnx.TensorProto.FLOAT8E4M3FN, dims, [0.0] * max(1, int(np.prod(dims))))

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        data, scale, zero = node.input[0], node.input[1], node.input[2] if len(node.input) > 2 else ""
        if node.op_type == "DequantizeLinear" and data in inits:
            array = numpy_helper.to_array(inits[data])
            if array.dtype == np.int32:  # a quantized bias: fold to float
                value = array.astype(np.float32) * numpy_helper.to_array(inits[scale]).astype(np.float32)
                replaced[node.output[0]] = numpy_helper.from_array(value, node.output[0])
                dropped.append(node)
                continue
            original = originals.get(data[: -len("_quantized")] if data.endswith("_quantized") else data)
            if original is None:
                raise DcaeDeployError(f"fp8: cannot find the float weight of {data} in the fp32 graph")
            weight = numpy_helper.to_array(original).astype(np.float32)
            weight_scale = np.float32(max(float(np.abs(weight).max()), 1e-12) / FP8_MAX)
            quantized = (weight / weight_scale).astype(float8_e4m3fn)
            tensor = numpy_helper.from_array(quantized.astype(np.float32), data)
            tensor.data_type = onnx.TensorProto.FLOAT8E4M3FN
            tensor.ClearField("float_data")
            tensor.raw_data = quantized.tobytes()
            replaced[data] = tensor
            replaced[scale] = numpy_helper.from_array(np.array(weight_scale, np.float32), scale)
            if zero:
                replaced[zero] = onnx.helper.make_tensor(zero, onnx.TensorProto.FLOAT8E4M3FN, [], [0.0])
            for attr in list(node.attribute):
                if attr.name == "axis":
                    node.attribute.remove(attr)
            continue
        if scale in done:  # the pair's other node shares its scale and zero point
            continue
        done.add(scale)
        replaced[scale] = numpy_helper.from_array(
            (numpy_helper.to_array(inits[scale]).astype(np.float32) * (INT8_MAX / FP8_MAX)).astype(np.float32), scale)
        if zero:
            fp8_zero(zero, inits[zero])
    for node in dropped:
        graph.node.remove(node)
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept + list(replaced.values()))
    return model


def graph_files(target: Path) -> list[Path]:
    """The quantized graph and its external data file, if it has one."""
    return [p for p in (target, target.with_name(target.name + ".data")) if p.is_file()]
