"""The decoder's self-attention cache written in place (layout field self_cache = "shared").

Why: exported as Concat(past, new) the decoder makes a new [1, H, past + 1, Dh] tensor for every
layer's keys and values at every step, copying the whole cache (24 tensors on whisper-small's
shape, ~15 MB a step at 200 tokens) and allocating it anew. Measured with
benchmarks/decoder_step.py (full window, 220 steps, int8): whisper-base 4.05-4.27 -> 3.56-3.89 ms a
step, whisper-small's shape 11.8-12.0 -> 10.4-11.2 ms. ONNX Runtime's CPU kernel of
`com.microsoft.GroupQueryAttention` writes the new keys/values into the past buffer itself when its
present output is that same buffer (past_present_share_buffer): the runtime binds one
[1, H, max_target_positions, Dh] buffer per layer and name as both input and output, and a step
copies nothing but the new token's keys/values.

Each layer's chain, as onnx_export.DecoderGraph writes it,
    q [B, S, D] (scaled) -> Reshape -> Transpose --------------------\
    k [B, S, D] -> Reshape -> Transpose -> Concat(past_k) = present_k -> Transpose -> MatMul(q, kᵀ)
    -> Add(causal mask) -> Softmax -> MatMul(·, present_v) -> Transpose -> Reshape [B, S, D]
becomes GroupQueryAttention(q, k, v, past_k, past_v, seqlens_k, total_sequence_length,
num_heads = kv_num_heads = H, scale = 1) -> [B, S, D], present_k, present_v; GQA masks causally
itself. The graph's past length, read until now from past_k_0's shape, is the new int64 input
`past_length` (the buffers are always max_target_positions long).

Only the CPU provider can share the buffers this way with float32: ONNX Runtime's CUDA kernel of
GroupQueryAttention takes float16/bfloat16 only, so on a GPU these nodes would be placed on the CPU
provider (untested here: no GPU was lent); `--set options.self_cache=concat` builds the old graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.backends.onnx_fusion import MS_DOMAIN, FusionError, _keep_needed, _Links
from edgeq.format.layout import PAST_LENGTH


def shared_self_cache(decoder: onnx.ModelProto, past: list[str], present: list[str], heads: int) -> int:
    """Rewrite `decoder` (in place) so that each layer's self-attention is one GroupQueryAttention
    reading and writing the `past`/`present` buffers; returns the number of layers rewritten."""
    g = decoder.graph
    links = _Links(g)
    up, down = links.up, links.down
    past_names, present_names = set(past), set(present)

    def unheaded(name: str) -> str:
        return up(up(name, "Transpose").input[0], "Reshape").input[0]

    # Lengths as GroupQueryAttention wants them: total = past_length + S (int32 scalar) and
    # seqlens_k = [total - 1].
    length_nodes = [
        helper.make_node("Shape", ["input_ids"], ["sc_ids_shape"], start=1, end=2, name="sc_ids_shape"),
        helper.make_node("Reshape", [PAST_LENGTH, "sc_one_dim"], ["sc_past_1d"], name="sc_past_1d"),
        helper.make_node("Add", ["sc_past_1d", "sc_ids_shape"], ["sc_total_1d"], name="sc_total_1d"),
        helper.make_node("Cast", ["sc_total_1d"], ["sc_total_1d_i32"], to=TensorProto.INT32, name="sc_total_i32"),
        helper.make_node("Reshape", ["sc_total_1d_i32", "sc_scalar"], ["sc_total"], name="sc_total"),
        helper.make_node("Sub", ["sc_total_1d_i32", "sc_one_i32"], ["sc_seqlens"], name="sc_seqlens"),
    ]
    g.initializer.extend([
        numpy_helper.from_array(np.array([1], np.int64), "sc_one_dim"),
        numpy_helper.from_array(np.array([], np.int64), "sc_scalar"),
        numpy_helper.from_array(np.array([1], np.int32), "sc_one_i32"),
    ])

    replace: dict[str, list[onnx.NodeProto]] = {}  # first output of a replaced node -> new nodes
    for softmax in [n for n in g.node if n.op_type == "Softmax"]:
        masked = links.producer.get(softmax.input[0])
        if masked is None or masked.op_type != "Add":
            continue  # cross-attention: its scores go straight to the softmax
        scores = links.producer.get(masked.input[0])
        if scores is None or scores.op_type != "MatMul":
            raise FusionError(f"expected MatMul before the causal mask {masked.name!r}")
        concat_k = up(up(scores.input[1], "Transpose").input[0], "Concat")
        weighted = down(softmax.output[0], "MatMul")
        concat_v = up(weighted.input[1], "Concat")
        pk, pv = concat_k.input[0], concat_v.input[0]
        if pk not in past_names or pv not in past_names:
            raise FusionError(f"a masked decoder attention concatenates {pk!r}, {pv!r}, not past inputs")
        merged = down(down(weighted.output[0], "Transpose").output[0], "Reshape")
        q, k, v = unheaded(scores.input[0]), unheaded(concat_k.input[1]), unheaded(concat_v.input[1])
        out = merged.output[0]
        replace[out] = [helper.make_node(
            "GroupQueryAttention", [q, k, v, pk, pv, "sc_seqlens", "sc_total"],
            [out, concat_k.output[0], concat_v.output[0]], domain=MS_DOMAIN, name=f"{out}_gqa",
            num_heads=heads, kv_num_heads=heads, scale=1.0)]
        if concat_k.output[0] not in present_names or concat_v.output[0] not in present_names:
            raise FusionError(f"{concat_k.output[0]!r} / {concat_v.output[0]!r} are not the graph's present outputs")
    layers = len(replace)
    if layers * 2 != len(past):
        raise FusionError(f"found {layers} self-attention chains in the decoder, expected {len(past) // 2}")

    # Every other reader of a past buffer wants its length, Shape(start=2, end=3): now past_length.
    for n in g.node:
        if n.op_type == "Shape" and n.input[0] in past_names:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("start") != 2 or attrs.get("end") != 3:
                raise FusionError(f"{n.name!r} reads {n.input[0]!r}'s shape other than its length")
            replace[n.output[0]] = [helper.make_node("Reshape", [PAST_LENGTH, "sc_one_dim"], [n.output[0]],
                                                     name=f"{n.output[0]}_from_past_length")]
    # The Concats' outputs are now written by the GroupQueryAttention nodes.
    nodes = length_nodes + [m for n in g.node if not (n.op_type == "Concat" and n.output[0] in present_names)
                            for m in replace.get(n.output[0], [n])]
    g.input.append(helper.make_tensor_value_info(PAST_LENGTH, TensorProto.INT64, []))
    for o in g.output:
        if o.name in present_names:  # the buffer's length, not past + S
            o.type.tensor_type.shape.dim[2].dim_param = "max_positions"
    _keep_needed(decoder, nodes)
    return layers
