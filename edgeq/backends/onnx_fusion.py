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

`half_cross_attention` (recipe option cross_kv = "float16") does the same for the decoder's
cross-attention, on the quantized graphs: MultiHeadAttention reads the encoder's keys/values
([1, H, frames, Dh], BNSH) as float16. ONNX Runtime 1.32's CPU provider has only a float32 kernel,
so it inserts a Cast of each layer's keys/values back to float32 in every step: what is held for
the window halves, what a step computes does not. whisper-small shape, onnx-int8-dynamic, two
clips in one process: peak 515-518 -> 475-484 MB, 59-65 -> 55 decoder tokens/s; onnx-int4:
446-449 -> 411 MB, 57-62 -> 51 tokens/s; whisper-base onnx-int4 on speech-dev: 226 -> 221 MB, 99-104 ->
94-100 tokens/s, the same WER (3.53 %). On float weights the logits are float32's to 1e-5.
"""

from __future__ import annotations

import onnx
from onnx import helper

MS_DOMAIN = "com.microsoft"


class FusionError(RuntimeError):
    """The exported graph does not have the attention chain the fusion expects (an exporter change)."""


class _Links:
    """Who writes and who reads each tensor of a graph, and one step along a chain of them."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def up(self, name: str, op: str) -> onnx.NodeProto:
        """The `op` node that writes `name`; FusionError if it is another op or a graph input."""
        node = self.producer.get(name)
        if node is None or node.op_type != op:
            raise FusionError(f"expected {op} before {name!r}, found {node.op_type if node else 'a graph input'}")
        return node

    def down(self, name: str, op: str) -> onnx.NodeProto:
        """The one `op` node that reads `name`; FusionError if there are others or none."""
        found = self.consumers.get(name, [])
        if len(found) != 1 or found[0].op_type != op:
            raise FusionError(f"expected one {op} after {name!r}, found {[n.op_type for n in found]}")
        return found[0]


def fuse_encoder_attention(model: onnx.ModelProto, heads: int, layers: int) -> int:
    """Replace each of the `layers` self-attention chains of `model` (in place); returns the count."""
    g = model.graph
    links = _Links(g)
    producer, up, down = links.producer, links.up, links.down

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
    _keep_needed(model, nodes)
    return len(replace)


def _keep_needed(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Set `model`'s nodes to those of `nodes` its outputs need (in order), with the opset of
    MS_DOMAIN declared."""
    g = model.graph
    needed = {o.name for o in g.output}
    kept = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(kept))
    # Initializers only the dropped nodes read would make ONNX Runtime warn at every load.
    read = needed | {o.name for o in g.output}
    unread = [t for t in g.initializer if t.name not in read]
    for t in unread:
        g.initializer.remove(t)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def cross_attention_chains(graph: onnx.GraphProto, links: _Links, names: set[str]):
    """Each decoder layer's cross-attention as (scores MatMul, Softmax, weighted MatMul, keys name,
    values name): the attentions whose scores go straight to their softmax, no mask between."""
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        scores = links.producer.get(softmax.input[0])
        if scores is None or scores.op_type != "MatMul":
            continue  # self-attention: its scores pass through the causal mask's Add first
        k = links.up(scores.input[1], "Transpose").input[0]
        weighted = links.down(softmax.output[0], "MatMul")
        v = weighted.input[1]
        if k not in names or v not in names:
            raise FusionError(f"a decoder attention without a mask reads {k!r}, {v!r}, not cross-attention inputs")
        yield scores, softmax, weighted, k, v


def half_cross_attention(encoder: onnx.ModelProto, decoder: onnx.ModelProto, cross: list[str], heads: int) -> int:
    """The cross-attention keys/values as float16 (in place): the encoder casts its `cross`
    outputs, and each decoder layer's cross-attention becomes one MultiHeadAttention node that
    reads them as they are, its query cast to float16 and its output back to float32.
    Returns the number of decoder layers rewritten."""
    g = encoder.graph
    names = set(cross)
    outputs = {o.name: o for o in g.output}
    if set(outputs) & names != names:
        raise FusionError(f"the encoder does not output {sorted(names - set(outputs))}")
    for n in g.node:
        for i, o in enumerate(n.output):
            if o in names:
                n.output[i] = f"{o}_float32"
    for name in cross:
        g.node.append(helper.make_node("Cast", [f"{name}_float32"], [name], to=onnx.TensorProto.FLOAT16,
                                       name=f"{name}_to_float16"))
        outputs[name].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16

    g = decoder.graph
    links = _Links(g)
    up, down = links.up, links.down
    replace: dict[str, list[onnx.NodeProto]] = {}
    for scores, _, weighted, k, v in cross_attention_chains(g, links, names):
        q = up(up(scores.input[0], "Transpose").input[0], "Reshape").input[0]
        merged = down(down(weighted.output[0], "Transpose").output[0], "Reshape")
        out = merged.output[0]
        replace[out] = [
            helper.make_node("Cast", [q], [f"{out}_q16"], to=onnx.TensorProto.FLOAT16, name=f"{out}_q_to_float16"),
            helper.make_node("MultiHeadAttention", [f"{out}_q16", k, v], [f"{out}_16"], domain=MS_DOMAIN,
                             name=f"{out}_mha", num_heads=heads, scale=1.0),
            helper.make_node("Cast", [f"{out}_16"], [out], to=onnx.TensorProto.FLOAT, name=f"{out}_to_float32"),
        ]
    if len(replace) * 2 != len(names):
        raise FusionError(f"found {len(replace)} cross-attention chains in the decoder, expected {len(names) // 2}")
    for i in g.input:
        if i.name in names:
            i.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    nodes = [m for n in g.node for m in (replace.get(n.output[0], [n]) if n.op_type == "Reshape" else [n])]
    _keep_needed(decoder, nodes)
    return len(replace)
