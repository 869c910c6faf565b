"""The encoder's self-attention as one ONNX Runtime MultiHeadAttention node per layer.

Why: exported as MatMul(QKᵀ) → Softmax → MatMul(V), a 30 s window materialises every head's
1500 x 1500 score matrix, and its softmax, in float32 (whisper-base: 8 heads, 72 MB each). ONNX
Runtime's CPU kernel of `com.microsoft.MultiHeadAttention`, given Q, K and V without mask, bias or
cache, runs MLAS flash attention in L2-sized tiles and never holds the scores. The exporter's
other form, 6 blocks of queries, was meant to hold one block's scores at a time, and ONNX Runtime
does run each block's QK^T, softmax and AV in turn (profiled), yet it peaks higher, and 12 blocks
as high as 6 (what holds the memory is not found yet: run alone with every block of 128 KB or more
mapped, the live set grows by 125 MB in blocks against 48 MB fused, 35 MB of it the outputs).
Measured with edgeq's heap handling (runtime/heap.py), int8, 2 threads: one
30 s window of whisper-base raises the RSS by 46 MB fused against 118-121 MB in blocks; all of
speech-dev peaks at 218-223 vs 224-231 MB, two clips of whisper-small's shape at 511-523 vs
550-563 MB. (Before the encoder's large blocks were mapped, the small shape had peaked higher
fused, 587-608 vs 535 MB on one window: heap fragmentation, not the kernel.) float32 outputs
equal to 3e-4 of 7.8; WER on speech-dev 2.65 vs 2.43 % (one word of 453). Hence the default;
`options.attention = "blocks"` keeps the exported chain. The decoder keeps
its graph: its attention is over one new token.

The exporter (onnx_export.EncoderGraph) writes each layer as
    q, k, v [B, S, D] -> Reshape [B, S, H, Dh] -> Transpose -> MatMul(q, kᵀ) -> Softmax -> MatMul(·, v)
    -> Transpose [B, S, H, Dh] -> Reshape [B, S, D]
with q already scaled; `fuse_encoder_attention` finds that chain from each Softmax and replaces it
with MultiHeadAttention(q, k, v, num_heads=H, scale=1), then drops what nothing reads. A chain it
cannot follow is an error, not a silent skip: the float export is then checked against PyTorch.
"""

from __future__ import annotations

import onnx
from onnx import helper

MS_DOMAIN = "com.microsoft"


class FusionError(RuntimeError):
    """The exported graph does not have the attention chain the fusion expects (an exporter change)."""


def fuse_encoder_attention(model: onnx.ModelProto, heads: int, layers: int) -> int:
    """Replace each of the `layers` self-attention chains of `model` (in place); returns the count."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def up(name: str, op: str) -> onnx.NodeProto:
        node = producer.get(name)
        if node is None or node.op_type != op:
            raise FusionError(f"expected {op} before {name!r}, found {node.op_type if node else 'a graph input'}")
        return node

    def down(name: str, op: str) -> onnx.NodeProto:
        found = consumers.get(name, [])
        if len(found) != 1 or found[0].op_type != op:
            raise FusionError(f"expected one {op} after {name!r}, found {[n.op_type for n in found]}")
        return found[0]

    def unheaded(name: str) -> str:
        # Back through the Transposes (one or two: the exporter may merge kᵀ's) to the Reshape
        # that split the heads, and its [B, S, D] input.
        node = up(name, "Transpose")
        while producer.get(node.input[0]) is not None and producer[node.input[0]].op_type == "Transpose":
            node = producer[node.input[0]]
        return up(node.input[0], "Reshape").input[0]

    replace: dict[str, onnx.NodeProto] = {}  # output name of the last Reshape -> the fused node
    for softmax in [n for n in g.node if n.op_type == "Softmax"]:
        scores = up(softmax.input[0], "MatMul")
        weighted = down(softmax.output[0], "MatMul")
        merged = down(down(weighted.output[0], "Transpose").output[0], "Reshape")
        q, k, v = unheaded(scores.input[0]), unheaded(scores.input[1]), unheaded(weighted.input[1])
        out = merged.output[0]
        replace[out] = helper.make_node("MultiHeadAttention", [q, k, v], [out], domain=MS_DOMAIN,
                                        name=f"{merged.name or out}_mha", num_heads=heads, scale=1.0)
    if len(replace) != layers:
        raise FusionError(f"found {len(replace)} self-attention chains in the encoder, expected {layers}")
    nodes = [replace.get(n.output[0], n) if n.op_type == "Reshape" else n for n in g.node]
    # Keep what the outputs need: the scores, softmax and head reshapes are now read by nothing.
    needed = {o.name for o in g.output}
    kept = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(kept))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(replace)
