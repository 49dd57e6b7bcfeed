"""ONNX Runtime-specific graph rewrites, applied in memory when a CPU session loads (the export stays as it is).

The exporter writes nearest 2x upsampling and channel ``repeat_interleave`` as ``Unsqueeze -> Expand ->
Reshape`` (TensorRT has no bf16 Resize); ONNX Runtime's CPU Expand materialises the broadcast and Reshape
copies it again. One ``Resize(nearest)`` computes the same values (bit for bit) writing the output once:
measured 18.4 -> 12.7 ms on the demo decoder at 128 px, 1 thread (benchmarks/README.md).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np


def rewrite_expand_to_resize(model) -> int:
    """Replace, in ``model`` (an ``onnx.ModelProto``), every ``Unsqueeze -> Expand -> Reshape`` (nearest 2x
    upsampling and channel ``repeat_interleave``, written that way for TensorRT's sake) by one
    ``Resize(nearest, asymmetric, floor)``; returns how many were replaced. Same values bit for bit."""
    from onnx import helper, numpy_helper

    g = model.graph
    tensors = {i.name: i for i in g.initializer}  # converted on demand: only small shape/axes tensors are read
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            tensors[n.output[0]] = n.attribute[0].t

    def value(name: str):
        return numpy_helper.to_array(tensors[name]) if name in tensors else ()

    producer = {o: n for n in g.node for o in n.output}
    uses = collections.Counter(i for n in g.node for i in n.input)
    drop, add = set(), {}
    for reshape in g.node:
        if reshape.op_type != "Reshape" or reshape.input[0] not in producer:
            continue
        expand = producer[reshape.input[0]]
        if expand.op_type != "Expand" or uses[expand.output[0]] != 1 or expand.input[0] not in producer:
            continue
        unsq = producer[expand.input[0]]
        if unsq.op_type != "Unsqueeze" or uses[unsq.output[0]] != 1 or unsq.input[1] not in tensors:
            continue
        axes = [int(a) for a in np.atleast_1d(value(unsq.input[1]))]
        shape = [int(a) for a in value(expand.input[1])]
        if axes == [3, 5] and len(shape) == 6 and shape[3] == shape[5] and shape[:3] == [1, 1, 1] and shape[4] == 1:
            scales = [1.0, 1.0, float(shape[3]), float(shape[5])]
        elif axes == [2] and len(shape) == 5 and shape[:2] == [1, 1] and shape[3:] == [1, 1]:
            scales = [1.0, float(shape[2]), 1.0, 1.0]
        else:
            continue
        name = f"{reshape.name or reshape.output[0]}_resize"
        scale_name = name + "_scales"
        g.initializer.append(numpy_helper.from_array(np.array(scales, np.float32), scale_name))
        add[id(reshape)] = helper.make_node(
            "Resize", [unsq.input[0], "", scale_name], [reshape.output[0]], name=name, mode="nearest",
            coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        drop.update({id(unsq), id(expand)})
    nodes = [add.get(id(n), n) for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    return len(add)


def load_rewritten(graph: Path) -> tuple[bytes, int] | None:
    """``graph`` with :func:`rewrite_expand_to_resize` applied, serialised for ``InferenceSession``, and the number
    of rewrites; None when nothing changes, the ``onnx`` package is missing, or weights are external (> 2 GB)."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(graph), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return None
    count = rewrite_expand_to_resize(model)
    return (model.SerializeToString(), count) if count else None
