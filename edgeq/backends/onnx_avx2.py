"""A third encoder graph for x86 CPUs without VNNI: the uint8 weights as 7-bit signed codes.

Without VNNI (AVX2, AVX-512 without VNNI) ONNX Runtime's MLAS has two int8 GEMM kernels: u8 x s8
with `vpmaddubsw`, which adds each pair of products into an int16 *with saturation*, and u8 x u8,
which widens both operands to int16 first and so does half the products per instruction. The
portable encoder (`encoder.onnx`) stores uint8 weights and runs the slower one, because its
weights span 8 bits and 255 x 127 x 2 overflows an int16 (backends.onnx_vnni, runtime.int8_kernels).

Weights within +-63 cannot overflow it: 255 x 63 x 2 = 32130 < 32767. So this graph reads the
portable encoder's uint8 weights file and, with nodes that ONNX Runtime folds when it makes the
session, turns each output column's codes w (zero point z, scale s) into

    q = round((w - z) * 63 / m),  m = max |w - z| over the column,   scale s * m / 63,

int8 codes without zero point that the u8 x s8 kernel multiplies exactly. Unlike the VNNI graph
this is not the same product: a column keeps 127 levels of its range instead of up to 256 (what
PyTorch's fbgemm does instead is keep 8-bit weights and quantize the activations to 7 bits). Its
cost in WER and its gain in speed are measured in docs/performance.md ("Other CPUs' kernels on the AMX
host"); the runtime picks it only on x86-64 CPUs whose u8 x s8 product is not exact, and
EDGEQ_AVX2=0 keeps the portable graph there.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

AVX2_ONNX = "encoder.avx2.onnx"
LEVELS = 63  # |q| <= 63: 255 * 63 * 2 fits vpmaddubsw's int16
_AXIS0, _LEVELS, _ONE = "edgeq_avx2_axis0", "edgeq_avx2_levels", "edgeq_avx2_one"


class Avx2GraphError(ValueError):
    """The quantized encoder is not shaped as onnxruntime.quantization.quantize_dynamic writes it."""


def seven_bit_weights_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` whose MatMulInteger nodes read 7-bit int8 weights, computed from their
    uint8 weights and zero points by nodes ONNX Runtime folds, with their weight scales widened to
    match; returns it and how many weights it rewrote (0: none, and the copy is of no use). The
    initializers are shared as they are: saved after `model` was saved with external data, the
    copy points at the same file."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    made: dict[str, tuple[str, str, str]] = {}  # weight -> (its zero point, its scale, the new codes)
    new_nodes: list[onnx.NodeProto] = []
    for node in list(graph.node):
        weight = node.input[1] if node.op_type == "MatMulInteger" and len(node.input) > 1 else None
        if weight is None or weight not in inits or inits[weight].data_type != TensorProto.UINT8:
            continue
        zero = node.input[3] if len(node.input) > 3 and node.input[3] else None
        if zero is not None and (zero not in inits or inits[zero].data_type != TensorProto.UINT8):
            raise Avx2GraphError(f"MatMulInteger {node.name}: weight zero point {zero} is not a uint8 constant")
        scale_mul = _scale_product(node, consumers, producer, inits)
        scale = next(i for i in scale_mul.input if i in inits)
        if weight in made:
            if made[weight][:2] != (zero, scale):
                raise Avx2GraphError(f"MatMulInteger {node.name}: weight {weight} read with another zero point or scale")
        else:
            made[weight] = (zero, scale, _seven_bit(weight, zero, scale, new_nodes))
        node.input[1] = made[weight][2]
        del node.input[3:]  # int8 codes around 0: no zero point
        scale_mul.input[list(scale_mul.input).index(scale)] = f"{scale}_7bit"
    if not made:
        return copy, 0
    graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), _AXIS0),
                              numpy_helper.from_array(np.array(LEVELS, np.float32), _LEVELS),
                              numpy_helper.from_array(np.array(1, np.float32), _ONE)])
    nodes = new_nodes + list(graph.node)  # before their readers: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    return copy, len(made)


def _scale_product(node, consumers, producer, inits) -> onnx.NodeProto:
    """The Mul(activation scale, weight scale) that quantize_dynamic writes after `node`:
    MatMulInteger -> Cast -> Mul(·, that product)."""
    try:
        (cast,) = consumers[node.output[0]]
        (mul,) = consumers[cast.output[0]]
        other = next(i for i in mul.input if i != cast.output[0])
        product = producer[other]
        if cast.op_type == "Cast" and mul.op_type == "Mul" and product.op_type == "Mul" \
                and sum(i in inits for i in product.input) == 1:
            return product
    except (KeyError, ValueError, StopIteration):
        pass
    raise Avx2GraphError(f"MatMulInteger {node.name}: no Cast -> Mul by (activation scale x weight scale) after it")


def _seven_bit(weight: str, zero: str | None, scale: str, nodes: list) -> str:
    """Nodes computing `weight`'s 7-bit codes and `scale`'s widened values; returns the codes' name."""
    w = f"{weight}_7bit"
    centered = f"{w}_centered"
    nodes.append(helper.make_node("Cast", [weight], [f"{w}_f"], to=TensorProto.FLOAT))
    if zero is None:  # no zero point is 0
        nodes.append(helper.make_node("Identity", [f"{w}_f"], [centered]))
    else:
        nodes += [helper.make_node("Cast", [zero], [f"{w}_zf"], to=TensorProto.FLOAT),
                  helper.make_node("Sub", [f"{w}_f", f"{w}_zf"], [centered])]
    nodes += [
        helper.make_node("Abs", [centered], [f"{w}_abs"]),
        # the largest |w - z| of each output column (weights are [in, out]); at least 1
        helper.make_node("ReduceMax", [f"{w}_abs", _AXIS0], [f"{w}_m0"], keepdims=0),
        helper.make_node("Max", [f"{w}_m0", _ONE], [f"{w}_m"]),
        helper.make_node("Div", [_LEVELS, f"{w}_m"], [f"{w}_factor"]),
        helper.make_node("Mul", [centered, f"{w}_factor"], [f"{w}_scaled"]),
        helper.make_node("Round", [f"{w}_scaled"], [f"{w}_rounded"]),
        helper.make_node("Cast", [f"{w}_rounded"], [w], to=TensorProto.INT8),
        helper.make_node("Div", [f"{w}_m", _LEVELS], [f"{w}_widen"]),
        helper.make_node("Mul", [scale, f"{w}_widen"], [f"{scale}_7bit"]),
    ]
    return w
