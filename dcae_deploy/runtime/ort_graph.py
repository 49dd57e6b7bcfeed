"""ONNX Runtime-specific graph rewrites, applied in memory when a CPU session loads (the export stays as it is).

ONNX Runtime's CPU EP runs convolutions in a blocked channel layout (NCHWc, 16 channels per block on AVX-512)
and reorders every tensor that reaches an op outside that layout back to NCHW and forth again. The exported
graph is written for TensorRT, so four patterns leave the blocked layout at full resolution. Each rewrite
computes the same function with ops that stay inside it:

- ``Unsqueeze -> Expand -> Reshape`` (nearest 2x upsampling and channel ``repeat_interleave``; TensorRT has no bf16
  Resize): ORT's Expand materialises the broadcast and Reshape copies it again. One ``Resize(nearest)`` gives the
  same values bit for bit (demo decoder, 128 px, 1 thread: 18.4 -> 12.7 ms).
- DC-AE's channel RMSNorm (``Pow -> ReduceMean -> Add(eps) -> Sqrt -> Reciprocal -> Mul -> Mul(w) -> Add(b)``):
  the channel mean becomes a 1x1 Conv with weights 1/C, the per-pixel 1/rms is broadcast back to C channels by a
  1x1 Conv from one channel, and the affine part is a depthwise 1x1 Conv, into which ORT then fuses the residual
  Add. Only the one-channel statistics leave the blocked layout.
- GLUMBConv's ``Conv(C -> 2H) -> SiLU -> depthwise Conv(2H) -> Split -> a * SiLU(g)``: two half-width branches
  (the convolution weights split by output channel), so no Split and no reorders.
- DC-AE's upsampling ``Resize(nearest 2x) -> Conv 3x3``: each of the four output phases (pixels (2i+a, 2j+b)) is
  a 2x2 convolution of the small input with summed taps, interleaved by ``DepthToSpace``: 4/9 of the
  multiply-adds, and the upsampled tensor is never written.
- a residual ``Add(Conv, DepthToSpace | Resize)`` (the upsampling shortcuts): the shortcut passes an identity
  depthwise 1x1 Conv, so the residual stream after it stays blocked.

All but the first change float rounding only (relative L2 ~1e-6 on the f32c32-sana decoder at 512 px). Measured with
``benchmarks/ort_cpu_options.py`` and ``benchmarks/bench_stages.py`` (benchmarks/README.md).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np


class _Graph:
    """Lookups over an ``onnx.GraphProto`` for pattern rewrites; nodes are swapped in one pass by :meth:`commit`."""

    def __init__(self, model) -> None:
        self.graph = model.graph
        self.initializers = {i.name: i for i in self.graph.initializer}  # and Constant nodes; converted on demand
        for n in self.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
                self.initializers[n.output[0]] = n.attribute[0].t
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list] = collections.defaultdict(list)
        for n in self.graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self._replace: dict[int, list] = {}
        self._drop: set[int] = set()

    def constant(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.initializers[name]) if name in self.initializers else None

    @staticmethod
    def attributes(node) -> dict:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def sole_consumer(self, tensor: str, op_type: str):
        """The only node reading ``tensor`` if it is an ``op_type``, else None."""
        users = self.consumers[tensor]
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def sole_producer(self, tensor: str, op_type: str):
        """The node writing ``tensor`` if it is an ``op_type`` and nothing else reads ``tensor``, else None."""
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == op_type and len(self.consumers[tensor]) == 1 else None

    def add_constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def replace(self, first, nodes: list, drop: tuple = ()) -> None:
        """Put ``nodes`` where ``first`` was and remove ``drop`` (which must not have been claimed before)."""
        self._replace[id(first)] = nodes
        self._drop.update(id(n) for n in drop)

    def claimed(self, *nodes) -> bool:
        return any(id(n) in self._replace or id(n) in self._drop for n in nodes)

    def commit(self) -> int:
        nodes = [m for n in self.graph.node if id(n) not in self._drop for m in self._replace.get(id(n), [n])]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        return len(self._replace)


def rewrite_expand_to_resize(model) -> int:
    """Replace, in ``model`` (an ``onnx.ModelProto``), every ``Unsqueeze -> Expand -> Reshape`` (nearest 2x
    upsampling and channel ``repeat_interleave``, written that way for TensorRT's sake) by one
    ``Resize(nearest, asymmetric, floor)``; returns how many were replaced. Same values bit for bit. Only a
    Reshape straight to 4-D matches (the model's ``upsample_nearest_2x`` / ``duplicate_channels``); a chain of
    partial flattens is left alone."""
    from onnx import helper

    g = _Graph(model)
    for reshape in g.graph.node:
        expand = g.sole_producer(reshape.input[0], "Expand") if reshape.op_type == "Reshape" else None
        unsq = g.sole_producer(expand.input[0], "Unsqueeze") if expand is not None else None
        if unsq is None:
            continue
        axes, shape = g.constant(unsq.input[1]), g.constant(expand.input[1])
        if axes is None or shape is None or _target_rank(g, reshape.input[1]) != 4:
            continue
        axes, shape = [int(a) for a in np.atleast_1d(axes)], [int(a) for a in shape]
        if axes == [3, 5] and len(shape) == 6 and shape[3] == shape[5] and shape[:3] == [1, 1, 1] and shape[4] == 1:
            scales = [1.0, 1.0, float(shape[3]), float(shape[5])]
        elif axes == [2] and len(shape) == 5 and shape[:2] == [1, 1] and shape[3:] == [1, 1]:
            scales = [1.0, float(shape[2]), 1.0, 1.0]
        else:
            continue
        name = f"{reshape.name or reshape.output[0]}_resize"
        scale_name = g.add_constant(name + "_scales", np.array(scales, np.float32))
        g.replace(reshape, [helper.make_node(
            "Resize", [unsq.input[0], "", scale_name], [reshape.output[0]], name=name, mode="nearest",
            coordinate_transformation_mode="asymmetric", nearest_mode="floor")], drop=(unsq, expand))
    return g.commit()


def _target_rank(g: "_Graph", shape: str) -> int | None:
    """Length of a Reshape's target shape: a constant's size, or the input count of the Concat that builds it
    (how dynamic exports spell ``reshape(b, c, 2 * h, 2 * w)``); None when neither."""
    value = g.constant(shape)
    if value is not None:
        return int(value.size)
    concat = g.producer.get(shape)
    return len(concat.input) if concat is not None and concat.op_type == "Concat" else None


def _float32(*arrays) -> bool:
    return all(a is not None and a.dtype == np.float32 for a in arrays)


def rewrite_rms_norm_blocked(model) -> int:
    """Rewrite every channel RMSNorm with affine weight and bias (``RMSNorm2d`` of the DC-AE export, fp32) to ops
    that ORT's NCHWc layout keeps blocked (see the module docstring); returns how many."""
    from onnx import helper

    g = _Graph(model)
    for pow_node in g.graph.node:
        exponent = g.constant(pow_node.input[1]) if pow_node.op_type == "Pow" else None
        if exponent is None or exponent.size != 1 or float(exponent) != 2.0:
            continue
        x = pow_node.input[0]
        mean = g.sole_consumer(pow_node.output[0], "ReduceMean")
        axes = g.constant(mean.input[1]) if mean is not None and len(mean.input) > 1 else None
        if axes is None or axes.tolist() != [1]:
            continue
        add_eps = g.sole_consumer(mean.output[0], "Add")
        eps = g.constant(add_eps.input[1]) if add_eps is not None else None
        sqrt = g.sole_consumer(add_eps.output[0], "Sqrt") if eps is not None and eps.size == 1 else None
        recip = g.sole_consumer(sqrt.output[0], "Reciprocal") if sqrt is not None else None
        scale = g.sole_consumer(recip.output[0], "Mul") if recip is not None else None
        if scale is None or sorted(scale.input) != sorted([x, recip.output[0]]):
            continue
        mul_w = g.sole_consumer(scale.output[0], "Mul")
        weight = g.constant(mul_w.input[1]) if mul_w is not None else None
        add_b = g.sole_consumer(mul_w.output[0], "Add") if weight is not None else None
        bias = g.constant(add_b.input[1]) if add_b is not None else None
        if not _float32(weight, bias, eps) or weight.shape != bias.shape or weight.ndim != 3 or weight.shape[1:] != (1, 1):
            continue
        chain = (mean, add_eps, sqrt, recip, scale, mul_w, add_b)
        if g.claimed(pow_node, *chain):
            continue
        c, name = weight.shape[0], f"{pow_node.output[0]}_blocked"
        const = lambda suffix, value: g.add_constant(f"{name}_{suffix}", value.astype(np.float32))  # noqa: E731
        conv = lambda inputs, out, **attrs: helper.make_node(  # noqa: E731
            "Conv", inputs, [out], name=out, kernel_shape=[1, 1], **attrs)
        g.replace(pow_node, [
            helper.make_node("Mul", [x, x], [f"{name}_sq"], name=f"{name}_sq"),
            conv([f"{name}_sq", const("mean_w", np.full((1, c, 1, 1), 1.0 / c)), const("eps", eps.reshape(1))],
                 f"{name}_ms"),
            helper.make_node("Sqrt", [f"{name}_ms"], [f"{name}_rms"], name=f"{name}_rms"),
            helper.make_node("Reciprocal", [f"{name}_rms"], [f"{name}_inv"], name=f"{name}_inv"),
            conv([f"{name}_inv", const("ones", np.ones((c, 1, 1, 1)))], f"{name}_inv_c"),
            helper.make_node("Mul", [x, f"{name}_inv_c"], [f"{name}_normed"], name=f"{name}_normed"),
            conv([f"{name}_normed", const("w", weight.reshape(c, 1, 1, 1)), const("b", bias.reshape(c))],
                 add_b.output[0], group=c),
        ], drop=chain)
    return g.commit()


def rewrite_glu_split(model) -> int:
    """Rewrite ``Conv(C->2H) -> SiLU -> depthwise Conv(2H) -> Split(2) -> (a, g)`` into two half-width branches
    producing ``a`` and ``g`` directly (GLUMBConv); returns how many. Each output channel is computed as before."""
    from onnx import helper

    g = _Graph(model)
    for split in g.graph.node:
        if split.op_type != "Split" or len(split.output) != 2 or (len(split.input) > 1 and split.input[1]):
            continue
        depthwise = g.sole_producer(split.input[0], "Conv") if g.attributes(split).get("axis") == 1 else None
        if depthwise is None:
            continue
        dw_w = g.constant(depthwise.input[1])
        dw_b = g.constant(depthwise.input[2]) if len(depthwise.input) > 2 else None
        dw_attrs = g.attributes(depthwise)
        if dw_w is None or dw_b is None or dw_attrs.get("group") != dw_w.shape[0] or dw_w.shape[0] % 2:
            continue
        silu = g.sole_producer(depthwise.input[0], "Mul")
        if silu is None:
            continue
        inverted, sigmoid = (g.producer.get(i) for i in silu.input)
        if inverted is None or sigmoid is None or inverted.op_type != "Conv" or sigmoid.op_type != "Sigmoid":
            continue
        if sigmoid.input[0] != inverted.output[0] or len(g.consumers[inverted.output[0]]) != 2:
            continue
        inv_w = g.constant(inverted.input[1])
        inv_b = g.constant(inverted.input[2]) if len(inverted.input) > 2 else None
        if inv_w is None or inv_b is None or g.claimed(inverted, sigmoid, silu, depthwise, split):
            continue
        inv_attrs = g.attributes(inverted)
        half = dw_w.shape[0] // 2
        nodes = []
        for out, part in zip(split.output, (slice(0, half), slice(half, 2 * half))):
            p = f"{out}_branch"
            nodes += [
                helper.make_node("Conv", [inverted.input[0], g.add_constant(f"{p}_inv_w", inv_w[part]),
                                          g.add_constant(f"{p}_inv_b", inv_b[part])], [f"{p}_inv"], name=f"{p}_inv",
                                 **inv_attrs),
                helper.make_node("Sigmoid", [f"{p}_inv"], [f"{p}_sig"], name=f"{p}_sig"),
                helper.make_node("Mul", [f"{p}_inv", f"{p}_sig"], [f"{p}_act"], name=f"{p}_act"),
                helper.make_node("Conv", [f"{p}_act", g.add_constant(f"{p}_dw_w", dw_w[part]),
                                          g.add_constant(f"{p}_dw_b", dw_b[part])], [out], name=f"{p}_dw",
                                 **{**dw_attrs, "group": half}),
            ]
        g.replace(inverted, nodes, drop=(sigmoid, silu, depthwise, split))
    return g.commit()


def rewrite_shortcut_blocked(model) -> int:
    """Route the shortcut of each ``Add(Conv, DepthToSpace | Resize)`` (fp32) through an identity depthwise 1x1
    Conv, so the residual stream after it stays in ORT's blocked layout; returns how many."""
    from onnx import helper

    g = _Graph(model)
    for add in g.graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        sources = [g.producer.get(i) for i in add.input]
        kinds = [s.op_type if s is not None else None for s in sources]
        if "Conv" not in kinds or not {"DepthToSpace", "Resize"} & set(kinds):
            continue
        conv_weight = g.constant(sources[kinds.index("Conv")].input[1])
        if not _float32(conv_weight):
            continue
        k = 1 - kinds.index("Conv")
        c, out = conv_weight.shape[0], f"{add.input[k]}_{add.output[0]}_blocked"
        weight = g.add_constant(f"{out}_w", np.ones((c, 1, 1, 1), np.float32))
        identity = helper.make_node("Conv", [add.input[k], weight], [out], name=out, kernel_shape=[1, 1], group=c)
        add.input[k] = out
        g.replace(add, [identity, add])
    return g.commit()


def _phase_kernels(weight: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """For a 3x3 kernel applied (padding 1) to a nearest-2x-upsampled input: the 2x2 kernel and pads
    (top, left, bottom, right) that give output phase (a, b), i.e. pixels (2i+a, 2j+b), from the input itself.
    Phase 0 reads source rows (i-1, i) with taps (W0, W1+W2); phase 1 reads (i, i+1) with (W0+W1, W2)."""
    def fold(w: np.ndarray, axis: int, phase: int) -> np.ndarray:
        t = [np.take(w, k, axis=axis) for k in range(3)]
        pair = (t[0], t[1] + t[2]) if phase == 0 else (t[0] + t[1], t[2])
        return np.stack(pair, axis=axis)

    out = []
    for a in (0, 1):
        for b in (0, 1):
            kernel = fold(fold(weight, 2, a), 3, b).astype(weight.dtype)
            out.append((kernel, [1 - a, 1 - b, a, b]))
    return out


def rewrite_upsample_conv(model) -> int:
    """Rewrite ``Resize(nearest 2x) -> Conv 3x3 (pad 1)`` (DC-AE's interpolate-conv upsampling, fp32) as four 2x2
    convolutions on the small input, one per output phase, interleaved by ``DepthToSpace``: 4/9 of the
    multiply-adds and no upsampled tensor. Returns how many."""
    from onnx import helper

    g = _Graph(model)
    for resize in g.graph.node:
        if resize.op_type != "Resize" or len(resize.input) < 3:
            continue
        attrs = g.attributes(resize)
        scales = g.constant(resize.input[2])
        if scales is None or scales.tolist() != [1.0, 1.0, 2.0, 2.0] or attrs.get("mode") != b"nearest" or (
            attrs.get("coordinate_transformation_mode") != b"asymmetric" or attrs.get("nearest_mode") != b"floor"
        ):
            continue
        conv = g.sole_consumer(resize.output[0], "Conv")
        weight = g.constant(conv.input[1]) if conv is not None else None
        bias = g.constant(conv.input[2]) if conv is not None and len(conv.input) > 2 and conv.input[2] else None
        conv_attrs = g.attributes(conv) if conv is not None else {}
        if not _float32(weight) or weight.shape[2:] != (3, 3) or conv_attrs.get("pads") != [1, 1, 1, 1] or (
            conv_attrs.get("group", 1) != 1 or set(conv_attrs.get("strides", [1, 1])) != {1}
            or set(conv_attrs.get("dilations", [1, 1])) != {1} or conv_attrs.get("auto_pad", b"NOTSET") != b"NOTSET"
        ) or g.claimed(resize, conv):
            continue
        name = f"{conv.output[0]}_phases"
        bias_inputs = [conv.input[2]] if bias is not None else []
        phases = [helper.make_node("Conv", [resize.input[0], g.add_constant(f"{name}{k}_w", kernel), *bias_inputs],
                                   [f"{name}{k}"], name=f"{name}{k}", kernel_shape=[2, 2], pads=pads)
                  for k, (kernel, pads) in enumerate(_phase_kernels(weight))]
        g.replace(resize, [
            *phases,
            helper.make_node("Concat", [p.output[0] for p in phases], [name], name=name, axis=1),
            helper.make_node("DepthToSpace", [name], [conv.output[0]], name=f"{name}_interleave", blocksize=2,
                             mode="DCR"),
        ], drop=(conv,))
    return g.commit()


CPU_REWRITES = (  # (what the report calls it, the rewrite); applied in this order
    ("Unsqueeze-Expand-Reshape -> Resize", rewrite_expand_to_resize),
    ("upsample+conv3x3 -> 4 phase convs", rewrite_upsample_conv),
    ("RMSNorm -> blocked convs", rewrite_rms_norm_blocked),
    ("GLU split -> two branches", rewrite_glu_split),
    ("shortcut -> blocked", rewrite_shortcut_blocked),
)


def load_rewritten(graph: Path, rewrites: tuple = CPU_REWRITES) -> tuple[bytes, dict[str, int]] | None:
    """``graph`` with ``rewrites`` (default: all :data:`CPU_REWRITES`) applied, serialised for ``InferenceSession``,
    and how many of each were made; None when nothing changes, the ``onnx`` package is missing, or weights are
    external (> 2 GB)."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(graph), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return None
    counts = {label: rewrite(model) for label, rewrite in rewrites}
    return (model.SerializeToString(), counts) if any(counts.values()) else None
