"""A second encoder graph for x86 CPUs with VNNI: the same uint8 weights, read as signed int8.

ONNX Runtime's dynamic int8 MatMuls multiply uint8 activations by the weights. The encoder stores
them as uint8 (onnx_quant.dynamic_int8) because that is exact on every CPU: without VNNI (AVX2,
AVX-512 without VNNI) MLAS's u8 x s8 kernel multiplies with `vpmaddubsw`, which adds pairs of
products into int16 *with saturation* (255 * 127 * 2 does not fit), and whisper-base built with
signed weights lost WER 2.82 -> 4.5 % on an AVX2 host; its u8 x u8 kernel widens to int16 first.
With VNNI (AVX-512 VNNI, AVX-VNNI; AMX) the u8 x s8 kernel is `vpdpbusd`, one instruction that
multiplies unsigned by signed bytes into int32 without saturating, while u8 x u8 has no VNNI form
and stays on AVX-512's slower path (mlas/lib/platform.cpp picks the kernels per CPU).

So the bundle carries both: `encoder.onnx`, and `encoder.vnni.onnx`, a graph of a few hundred kB
that reads the *same* weights file and turns each uint8 weight w (and zero point z) into
int8 w - 128 (z - 128) with Cast -> Sub -> Cast nodes, which ONNX Runtime's constant folding
computes once when the session is made. w - 128 against z - 128 is the same number as w against z,
so the result is exact: whisper-base's encoder outputs were bit-identical, and a padded window took
0.298 instead of 0.465 s in a raw ONNX Runtime session (AVX-512 VNNI host, 2 threads). The runtime
picks the graph where the CPU's flags list VNNI and ONNX Runtime's u8 x s8 product checks exact
(edgeq.runtime.int8_kernels: under an emulator the flags are the host's); the bundle grows by the
graph only.

With int8 cross-attention (recipe option cross_kv = "int8") the pair goes further: the VNNI encoder
writes the cross-attention value codes as int8, and a second decoder graph, `decoder.vnni.onnx`
(again reading the portable decoder's weights file), quantizes its query to int8, so that both
cross-attention products of every step are u8 x s8 as well (backends.onnx_cross_int8.
signed_cross_codes; the runtime runs it only with encoder.vnni.onnx).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VNNI_ONNX = "encoder.vnni.onnx"
# With int8 cross-attention, the decoder that goes with it (onnx_cross_int8.signed_cross_codes).
DECODER_VNNI_ONNX = "decoder.vnni.onnx"
_OFFSET = "edgeq_vnni_128"


def signed_weights_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` whose MatMulInteger nodes read their uint8 weights and weight zero points as
    int8 (shifted by -128, computed by nodes ONNX Runtime folds); returns it and how many weights it
    shifts (0: nothing to shift, and the copy is of no use). The initializers are shared as they
    are: saved after `model` was saved with external data, the copy points at the same file."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    uint8 = {t.name for t in graph.initializer if t.data_type == TensorProto.UINT8}
    made: dict[str, str] = {}
    cast_nodes = []

    def signed(name: str) -> str:
        if name not in made:
            made[name] = f"{name}_s8"
            cast_nodes.extend([
                helper.make_node("Cast", [name], [f"{name}_i16"], to=TensorProto.INT16),
                helper.make_node("Sub", [f"{name}_i16", _OFFSET], [f"{name}_m128"]),
                helper.make_node("Cast", [f"{name}_m128"], [made[name]], to=TensorProto.INT8),
            ])
        return made[name]

    weights = set()
    for node in graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) < 2 or node.input[1] not in uint8:
            continue
        weights.add(node.input[1])
        node.input[1] = signed(node.input[1])
        if len(node.input) > 3 and node.input[3]:
            if node.input[3] not in uint8:
                raise ValueError(f"MatMulInteger {node.name}: weight zero point {node.input[3]} is not a uint8 constant")
            node.input[3] = signed(node.input[3])
        else:  # no zero point is 0 for uint8, so -128 once signed
            while len(node.input) < 4:
                node.input.append("")
            node.input[3] = signed(_zero_point(graph))
    if not weights:
        return copy, 0
    graph.initializer.append(numpy_helper.from_array(np.array(128, np.int16), _OFFSET))
    nodes = cast_nodes + list(graph.node)  # before their readers: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    return copy, len(weights)


def _zero_point(graph) -> str:
    name = "edgeq_vnni_uint8_zero"
    if not any(t.name == name for t in graph.initializer):
        graph.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), name))
    return name
