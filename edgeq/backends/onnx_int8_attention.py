"""The encoder's self-attention in int8, in the graph for CPUs with VNNI (recipe option
vnni_attention = "int8").

Why: on a padded 30 s window the fused float32 MultiHeadAttention was about 45 % of whisper-base's
int8 encoder on an AVX-512 VNNI host (153 ms of ~0.3 s), running near the CPU's float32 GEMM rate,
while the int8 products beside it run at 2-3x that rate. ONNX Runtime 1.32 has no low-precision
attention kernel on x86 CPUs, so this composes one from its operators:

    q  -> DynamicQuantizeLinear (uint8, one scale and zero point per window and layer)
    kᵀ -> int8 codes of one symmetric scale (max |k| / 127), v likewise
    scores = MatMulIntegerToFloat(q, kᵀ)  -> Softmax (float32)
    p  -> uint8 codes of 1/255 (p is in [0, 1])
    out = MatMulIntegerToFloat(p, v)

head by head (one iteration of an ONNX Scan per head) and in QUERY_BLOCKS blocks of queries, so
that one block's [F / QUERY_BLOCKS, F] scores are alive at a time and each head's scratch is freed
before the next head's is made. (All heads at once held the [H, F, F] scores, probabilities and
codes: whisper-base peaked at 347-349 MB against 265-266 MB with float32 attention, both sessions
made from the graph file. The heads unrolled, each block's small output lived until the heads'
Concat and split the freed score blocks, so new ones came from the top of the heap: 228-271 MB
in the pipeline, 217-237 MB with the Scan and 8 blocks.) The products are uint8 x int8, which VNNI's
`vpdpbusd` computes exactly and AVX2's `vpmaddubsw` saturates (255 * 127 * 2 > 32767): so only
encoder.vnni.onnx, the graph the runtime runs where ONNX Runtime's u8 x s8 product checks exact
(runtime.int8_kernels), is rewritten; encoder.onnx keeps float32 attention. The two graphs then no
longer give bit-identical outputs: a VNNI host transcribes with int8 attention, every other CPU
with float32 attention (docs/performance.md, "Where the time goes", has both WERs).

Probabilities under 1/510 become 0: a frame that gets less than that of a query's attention drops
out of its average. On real speech that cost one word of 453 on speech-dev (docs/performance.md, "Where the time goes": WER 2.87
against 2.65 % on padded windows; docs/performance.md has its speed and memory).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.backends.onnx_fusion import MS_DOMAIN, FusionError

# Per head, the queries in this many blocks: whisper-base's full window then holds [188, 1500]
# float32 scores (1.1 MB) at a time. With 4 blocks (2.25 MB each) the blocks did not fit the holes
# the window's other tensors leave in the heap and took new memory at its top: the encoder's heap
# spanned 54-58 against 40-41 MB (LD_PRELOAD trace, 3 padded windows), the process peaked at
# 223-263 against 217-237 MB, for a window 3 % faster (0.272 against 0.279 s, one process, 12
# alternating calls; whisper-base, AVX-512 VNNI, docs/performance.md "Where the time goes").
QUERY_BLOCKS = 8


class _Graph:
    """Nodes and constants added under one attention node's prefix."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.constants = prefix, [], []

    def const(self, name: str, value) -> str:
        self.constants.append(numpy_helper.from_array(np.asarray(value), self.prefix + name))
        return self.prefix + name

    def __call__(self, op: str, inputs: list[str], outputs, **attrs):
        names = [self.prefix + o for o in ([outputs] if isinstance(outputs, str) else outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{names[0]}_node", **attrs))
        return names[0] if isinstance(outputs, str) else names


def _attend(n: _Graph, qq: str, kq: str, vq: str, scales: dict[str, str], tag: str) -> str:
    """int8 q·kᵀ, softmax, p as codes of 1/255, int8 p·v."""
    scores = n("MatMulIntegerToFloat", [qq, kq, scales["q"], scales["k"], scales["q_zero"]], tag + "scores",
               domain=MS_DOMAIN)
    probs = n("Softmax", [scores], tag + "probs", axis=-1)
    codes = n("QuantizeLinear", [probs, scales["p"], scales["p_zero"]], tag + "codes")
    return n("MatMulIntegerToFloat", [codes, vq, scales["p"], scales["v"]], tag + "mixed", domain=MS_DOMAIN)


def _replacement(node: onnx.NodeProto) -> _Graph:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = [i for i in node.input if i]
    if len(inputs) != 3 or len(node.input) != 3 or attrs.get("scale", 1.0) != 1.0 or "num_heads" not in attrs:
        # edgeq's fusion (onnx_fusion) writes q already scaled, k, v and nothing else
        raise FusionError(f"MultiHeadAttention {node.name}: expected inputs q, k, v and scale 1")
    heads = attrs["num_heads"]
    q, k, v = inputs
    n = _Graph(f"{node.name}_int8_")
    split = n.const("heads", np.array([0, 0, heads, -1], np.int64))
    merged = n.const("merged", np.array([0, 0, -1], np.int64))
    c127, zero8 = n.const("c127", np.float32(127)), n.const("zero8", np.int8(0))
    scales = {"p": n.const("p_scale", np.float32(1 / 255)), "p_zero": n.const("p_zero", np.uint8(0))}

    def headed(x: str, perm: list[int]) -> str:  # [B, F, H * Dh] -> [B, F, H, Dh], then transposed by perm
        return n("Transpose", [n("Reshape", [x, split], f"{x}_split")], f"{x}_heads", perm=perm)

    def symmetric(x: str, key: str) -> str:
        # max |x| from the largest and the smallest: Abs would write a float32 copy of x (3 MB) first
        largest = n("ReduceMax", [x], f"{key}_max", keepdims=0)
        magnitude = n("Max", [largest, n("Neg", [n("ReduceMin", [x], f"{key}_min", keepdims=0)], f"{key}_neg_min")],
                      f"{key}_magnitude")
        scales[key] = n("Div", [magnitude, c127], f"{key}_scale")
        return n("QuantizeLinear", [x, scales[key], zero8], f"{key}_codes")

    # Transposed in float32, then quantized. (Quantizing first and moving the codes, a quarter of the
    # bytes, gave the same numbers but peaked higher: 268-274 against 241-253 MB, whisper-base, 3
    # runs each; the float32 copies, 3 MB each, are mapped and unmapped (runtime.heap), the codes
    # came from the heap and grew it.)
    # Heads first ([H, B, F, Dh]; k as [H, B, Dh, F]): the Scan below iterates over axis 0, which it
    # slices in place; over another axis ONNX Runtime transposes its inputs and output first.
    qq, scales["q"], scales["q_zero"] = n("DynamicQuantizeLinear", [headed(q, [2, 0, 1, 3])], ["q_codes", "q_scale", "q_zero"])
    # k to [H, Dh, B, F] first, then B (1: the export fixes it; Squeeze fails on any other) moved by
    # Squeeze and Unsqueeze, which move no bytes. ONNX Runtime 1.32 transposes [B, F, H, Dh] to
    # [H, B, Dh, F] element by element (2.9 ms for whisper-base's [1, 1500, 8, 64]) but to
    # [H, Dh, B, F] as one [F, H * Dh] matrix (0.25 ms); two Transposes in a row it merges into one.
    k_hdf = n("Squeeze", [headed(k, [2, 3, 0, 1]), n.const("batch_axis", np.array([2], np.int64))], "k_hdf")
    kq = symmetric(n("Unsqueeze", [k_hdf, n.const("head_axis", np.array([1], np.int64))], "k_hbdf"), "k")
    vq = symmetric(headed(v, [2, 0, 1, 3]), "v")
    # One head per iteration of a Scan: its scratch (scores, probabilities, codes and the query blocks'
    # outputs) is freed at the end of each iteration and the next one's comes from the same heap
    # blocks. Unrolled, the small per-block outputs stayed alive until the heads' Concat and split
    # the freed score blocks, so each new one came from the top of the heap (why, and what it cost:
    # docs/performance.md, "Where the time goes").
    body = _Graph(n.prefix + "head_")
    inputs = [helper.make_tensor_value_info(body.prefix + x, dtype, None)
              for x, dtype in (("q", TensorProto.UINT8), ("k", TensorProto.INT8), ("v", TensorProto.INT8))]
    blocks = body("Split", [body.prefix + "q"], [f"q_b{b}" for b in range(QUERY_BLOCKS)], axis=1,
                  num_outputs=QUERY_BLOCKS)
    mixed = [_attend(body, blocks[b], body.prefix + "k", body.prefix + "v", scales, f"b{b}_") for b in range(QUERY_BLOCKS)]
    head_out = body("Concat", mixed, "mixed", axis=1)
    graph = helper.make_graph(body.nodes, f"{n.prefix}head", inputs,
                              [helper.make_tensor_value_info(head_out, TensorProto.FLOAT, None)])
    heads_out = n("Scan", [qq, kq, vq], "heads_mixed", body=graph, num_scan_inputs=3)
    out = n("Transpose", [heads_out], "mixed_frames", perm=[1, 2, 0, 3])  # [B, F, H, Dh]
    n.nodes.append(helper.make_node("Reshape", [out, merged], [node.output[0]], name=f"{n.prefix}merge_node"))
    return n


def int8_self_attention(model: onnx.ModelProto) -> int:
    """Rewrite `model` (an encoder with fused MultiHeadAttention) in place: every MultiHeadAttention
    becomes int8 products as above. Returns how many were rewritten."""
    g = model.graph
    nodes, constants, count = [], [], 0
    for node in g.node:
        if node.op_type == "MultiHeadAttention" and node.domain == MS_DOMAIN:
            made = _replacement(node)
            nodes += made.nodes
            constants += made.constants
            count += 1
        else:
            nodes.append(node)
    if count:
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(constants)
    return count

