"""The decoder's last operator, the projection onto the token table, as a graph of its own.

Why: ONNX Runtime prepacks a constant weight into the layout its kernels read when it makes a
session, one operator after the other, in the thread that makes the session. The token table is
the largest weight of the decoder (27 % of whisper-base), and packing its 8-bit MatMulNBits for int8
activations takes 36 ms of whisper-base onnx-int8-dynamic's 63-68 ms decoder session (AMX Xeon;
without prepacking the projection takes 61 ms a step instead of 0.56 ms, so it must be packed).
The runtime makes the encoder's session in a second thread, done after 8 ms: with the projection in
`decoder_head.onnx`, that thread makes the head's session after the encoder's, while the first
makes the rest of the decoder (29-31 ms). A whole edgeq.load then took 0.88-0.92x as long on
whisper-base and 0.72-0.76x on whisper-small's shape, steps the same within the noise
(benchmarks/results/load_head_split_amx.json, decoder_step_head_amx*.json; docs/performance.md).

    decoder.onnx        ... -> hidden [1, d_model] (the last position, after the final layer norm), present_*
    decoder_head.onnx   hidden -> logits [1, vocab]   (the projection, and in float16 bundles the Cast to float32)

The head's weights stay in decoder.onnx.data, where the decoder's embedding lookup reads the same
tied table: the head graph points into that file, so the bundle holds the table once. A decode
step runs the two sessions one after the other (IOBinding hands the hidden state over as an
OrtValue, on the GPU where the decoder runs there).
"""

from __future__ import annotations

import onnx
from onnx import helper

from edgeq.format.layout import HIDDEN, LOGITS

HEAD_ONNX = "decoder_head.onnx"
# What the chain from the logits back to the projection may hold: the float16 graphs end in a Cast
# to float32 (onnx_quant.to_float16 keeps the logits float32).
_PASS_THROUGH = {"Cast"}
_PROJECTIONS = {"MatMul", "Gemm", "MatMulNBits"}


class HeadSplitError(RuntimeError):
    """The decoder does not end in a projection with constant weights (a graph this module does not know)."""


def split_head(decoder: onnx.ModelProto) -> onnx.ModelProto:
    """Move the nodes from the projection to `logits` out of `decoder` (changed in place, its first
    output now HIDDEN) into a new model, which it returns. The initializers only those nodes read
    move with them, as they are: if they point into an external data file, so does the head."""
    graph = decoder.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name: init for init in graph.initializer}
    head, name = [], LOGITS
    while True:
        node = producer.get(name)
        if node is None:
            raise HeadSplitError(f"no node makes {name!r}")
        head.append(node)
        data = [i for i in node.input if i and i not in constants]
        if node.op_type in _PROJECTIONS:
            break
        if node.op_type not in _PASS_THROUGH or len(data) != 1:
            raise HeadSplitError(f"{name!r} comes from {node.op_type} {node.name!r}, not from a projection")
        name = data[0]
    if len(data) != 1 or graph.output[0].name != LOGITS:
        raise HeadSplitError(f"the projection {node.name!r} takes {len(data)} inputs that are not weights")
    hidden = data[0]
    inside = {out for n in head for out in n.output}
    readers = [n for n in graph.node if n not in head and any(i in inside for i in n.input)]
    if readers or any(o.name in inside for o in graph.output[1:]):
        raise HeadSplitError(f"the projection's outputs are read elsewhere in the decoder ({readers[0].name!r})"
                             if readers else "the projection's outputs are outputs of the decoder too")
    hidden_type = _value_type(decoder, hidden)
    logits_info = graph.output[0]

    head_inits = sorted({i for n in head for i in n.input if i in constants})
    for node in head:
        graph.node.remove(node)
    still_read = {i for n in graph.node for i in n.input}
    moved = [constants[i] for i in head_inits]
    for init in moved:
        if init.name not in still_read:
            graph.initializer.remove(init)
    # The hidden state gets the name the layout knows: renamed where it is made and where it is read.
    for node in graph.node:
        node.output[:] = [HIDDEN if o == hidden else o for o in node.output]
        node.input[:] = [HIDDEN if i == hidden else i for i in node.input]
    hidden_info = _named(HIDDEN, hidden_type)
    graph.output.remove(logits_info)
    graph.output.insert(0, hidden_info)
    for info in list(graph.value_info):
        if info.name in inside or info.name == hidden:
            graph.value_info.remove(info)

    nodes = []
    for node in reversed(head):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [HIDDEN if i == hidden else i for i in copy.input]
        nodes.append(copy)
    inits = []
    for init in moved:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        inits.append(copy)
    out = onnx.ValueInfoProto()
    out.CopyFrom(logits_info)
    head_graph = helper.make_graph(nodes, "decoder_head", [_named(HIDDEN, hidden_type)], [out], inits)
    model = helper.make_model(head_graph, opset_imports=list(decoder.opset_import), ir_version=decoder.ir_version,
                              producer_name=decoder.producer_name, producer_version=decoder.producer_version)
    return model


def _named(name: str, kind: onnx.TypeProto) -> onnx.ValueInfoProto:
    info = onnx.ValueInfoProto(name=name)
    info.type.CopyFrom(kind)
    return info


def _value_type(model: onnx.ModelProto, name: str) -> onnx.TypeProto:
    """The type (element type and shape) of tensor `name`, from the graph's shape information."""
    infos = list(model.graph.value_info)
    if not any(info.name == name for info in infos):
        # Not recorded (the exporter records it): inferred from the graph alone, which the weights'
        # types and dims in their TensorProtos allow whether their bytes are external or not.
        infos = list(onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.value_info)
    for info in infos:
        if info.name == name and info.type.tensor_type.elem_type and info.type.tensor_type.HasField("shape"):
            return info.type
    raise HeadSplitError(f"cannot tell the type of the decoder's hidden state {name!r}")
