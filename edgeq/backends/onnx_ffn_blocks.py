"""Each encoder layer's feed-forward block computed over frame blocks (recipe option ffn_blocks).

Why: on a padded 30 s window the encoder's feed-forward block holds, at once, fc1's output and
the GELU's (1500 x 2048 float32, 12.3 MB each on whisper-base, 18.4 MB on whisper-small's shape),
plus the activations' 8-bit copy in a dynamic int8 graph. That live set is the encoder's peak,
and on whisper-base it was the whole process's: one padded window raised the RSS 35-41 MB above
where it stood before the call and gave it back after. Every operator of that block works row
by row (one frame at a time), so the frames can be split into blocks that run one after the
other: Split(frames) -> the block's nodes, once per block -> Concat(frames). Only one block's
fc1/GELU outputs are alive at a time.

On float, weight-only (MatMulNBits) and static graphs the result is the same numbers. In a
dynamic int8 graph each block's activations get their own scale (DynamicQuantizeLinear is per
tensor), a finer granularity than one scale for the window.

Runs on the quantized encoder: before quantization, quantize_dynamic would quantize the shared
weights once per block copy. A feed-forward block is found by its structure, not by names (the
exporter shares identical initializers between layers, so a LayerNorm's weight may have any
name): from a LayerNormalization to the residual Add that reads both the LayerNorm's input and
something computed from its output, when every node between works frame by frame (ROW_WISE; a
MatMul's right side from outside the block). The attention block between the other LayerNorm
and its residual is not (Reshape, Transpose, attention); the encoder's last LayerNorm has no
residual.
"""

from __future__ import annotations

import onnx
from onnx import helper

from edgeq.backends.onnx_fusion import _Links


class FfnBlockError(RuntimeError):
    """A feed-forward block whose tensors are read outside it, or fewer blocks than layers (an
    exporter change): the build stops rather than write a graph that computes something else."""


def blocked_ffn(encoder: onnx.ModelProto, blocks: int) -> int:
    """Rewrite `encoder` in place so that each layer's feed-forward block runs over `blocks` frame
    blocks (axis 1 of [batch, frames, d_model]); returns the number of layers rewritten."""
    graph = encoder.graph
    nodes = list(graph.node)
    links = _Links(graph)
    plans = [plan for ln in nodes if ln.op_type == "LayerNormalization"
             for plan in [_segment(ln, nodes, links.producer, links.consumers)] if plan is not None]
    replaced: dict[int, list[onnx.NodeProto]] = {}
    drop = set()
    for x, y, segment in plans:
        drop |= {id(n) for n in segment}
        # at the block's last node: whatever its nodes read from outside it comes before that
        replaced[id(segment[-1])] = _blocked(x, y, segment, blocks)
    out = []
    for n in nodes:
        if id(n) in replaced:
            out.extend(replaced[id(n)])
        elif id(n) not in drop:
            out.append(n)
    del graph.node[:]
    graph.node.extend(out)
    return len(plans)


# Operators that compute each frame (row of [batch, frames, d_model]) from that frame alone, and
# DynamicQuantizeLinear, whose one scale per tensor becomes one per block (by design, see above).
ROW_WISE = {"MatMul", "MatMulNBits", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
            "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "Add", "Sub", "Mul", "Div", "Erf",
            "Gelu", "BiasGelu", "FastGelu", "Relu", "Tanh", "Sigmoid", "Cast", "Identity"}
MATMULS = {"MatMul", "MatMulNBits", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def _segment(ln, nodes, producer, consumers) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """(LayerNorm output, block output, the block's nodes in graph order) when `ln` starts a
    feed-forward block; None when what follows it is not one."""
    x, residual = ln.output[0], ln.input[0]
    below = _descendants(x, consumers)
    adds = [n for n in consumers.get(residual, []) if n.op_type == "Add" and id(n) in below]
    if len(adds) != 1:
        return None  # no residual after it (the encoder's last LayerNorm)
    y = next(i for i in adds[0].input if i != residual)
    above = _ancestors(y, producer)
    segment = [n for n in nodes if id(n) in below and id(n) in above]
    inside = {o for n in segment for o in n.output}
    if not segment or y not in inside or any(
            n.op_type not in ROW_WISE or (n.op_type in MATMULS and n.input[1] in inside) for n in segment):
        return None  # the attention block
    members = {id(n) for n in segment}
    for n in segment:  # nothing outside the block may read what it computes, but its output
        for o in n.output:
            if o != y and any(id(c) not in members for c in consumers.get(o, [])):
                raise FfnBlockError(f"feed-forward block after {ln.name!r}: {o!r} is read outside it")
    return x, y, segment


def _descendants(name: str, consumers) -> set[int]:
    seen, todo = {}, [name]
    while todo:
        for n in consumers.get(todo.pop(), []):
            if id(n) not in seen:
                seen[id(n)] = n
                todo.extend(n.output)
    return set(seen)


def _ancestors(name: str, producer) -> set[int]:
    seen, todo = {}, [name]
    while todo:
        n = producer.get(todo.pop())
        if n is not None and id(n) not in seen:
            seen[id(n)] = n
            todo.extend(n.input)
    return set(seen)


def _blocked(x: str, y: str, segment: list[onnx.NodeProto], blocks: int) -> list[onnx.NodeProto]:
    """Split(x) -> a renamed copy of `segment` per block -> Concat -> y."""
    parts = [f"{x}_ffn_block{b}" for b in range(blocks)]
    # Split's num_outputs (opset 18): equal blocks, the last one smaller when frames do not divide.
    out = [helper.make_node("Split", [x], parts, axis=1, num_outputs=blocks, name=f"{x}_ffn_split")]
    ends = []
    for b, part in enumerate(parts):
        rename = {x: part, **{o: f"{o}_ffn_block{b}" for n in segment for o in n.output}}
        for n in segment:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name = f"{n.name}_ffn_block{b}"
            copy.input[:] = [rename.get(i, i) for i in n.input]
            copy.output[:] = [rename[o] for o in n.output]
            out.append(copy)
        ends.append(rename[y])
    out.append(helper.make_node("Concat", ends, [y], axis=1, name=f"{y}_ffn_concat"))
    return out
