"""The cross-attention keys/values as 8-bit integers (recipe option cross_kv = "int8").

Why: a window's keys/values are held while every token of it is decoded, 110 MB in float32 on a
full window of whisper-small's shape (whisper.cpp holds 55 MB of float16). float16
(`onnx_fusion.half_cross_attention`) halves them, but ONNX Runtime 1.32 has no float16 attention
kernel on an x86 CPU, so every step casts them back to float32: 110 MB written per step. Here they
are held as uint8, a quarter of float32, and each step multiplies them as they are with ONNX's
MatMulInteger, int32 accumulation; only the [heads, tokens, frames] scores and the output are
rescaled in float32.

How the scales are chosen so that one uint8 code per number is enough:
* keys [1, H, F, Dh]: a few channels carry most of the magnitude in every frame, so each channel
  is first divided by its largest magnitude over the window (`<k>_channel`, [1, H, 1, Dh]; the
  decoder multiplies its query by it instead, which leaves q.k unchanged), then each frame's key
  gets its own scale (`<k>_row`, [1, H, 1, F]: a column of the scores, applied after the product).
  Codes 1..255 around 128, stored as computed, [1, H, F, Dh]: the keys are the product's *first*
  operand, keys · queryᵀ → [1, H, F, T], transposed to scores afterwards (T is one token a step).
  MLAS copies a MatMulInteger's second operand into its packed layout on every call when it is
  not a constant; as the second operand ([1, H, Dh, F], the layout up to this version) each
  layer's keys were packed again every step. As the first, only the query is (Dh × T bytes).
* values [1, H, F, Dh]: one scale per head and channel (`<v>_scale`, [1, H, 1, Dh]), a column of
  the output, codes around 128.
* the query (per head and token) and the attention probabilities (per head and token, 0..255, the
  largest probability the top code) are quantized in each step; the probabilities' rows sum to 1,
  their codes are exact to 1/510 of the row's largest.
Both operands are uint8 (zero point 128 for keys, values and query): MLAS's u8·s8 kernels on
AVX2 without VNNI add pairs of products in saturating 16-bit (VPMADDUBSW), which 255 x 127 pairs
overflow; u8·u8 does not, on any x86 CPU. Where the CPU has VNNI the bundle's second pair of graphs
(encoder.vnni.onnx, decoder.vnni.onnx: `signed_cross_codes`) quantizes the query and the values
to int8 instead, the same numbers less 128, so that both products are u8·s8 (`vpdpbusd`).

Measured (2 threads, AMD EPYC with AVX-512 VNNI, 3 rounds in alternation, docs/design.md):
whisper-base onnx-int8-dynamic on speech-dev, peak 214-221 vs 221-231 MB, the same RTF, WER 2.43
vs 2.65 %; whisper-small's shape, 2 clips, 460 vs 522-524 MB (whisper.cpp q8_0: 469 MB), decoder
58-65 vs 67-72 tokens/s: each MatMulInteger takes ~0.19 ms of a ~17 ms step (ONNX Runtime packs
a B that is not a constant on every call), and the query/probability quantization adds ~20 small
nodes per layer. A per-tensor DynamicQuantizeLinear for the query instead was no faster and one
word worse on speech-dev (2.65 %). The keys as the first operand (this layout; the same codes and
int32 dots, so bit-identical logits): a profiled step of the small shape's full window spent 2.69
instead of 3.64 ms in its MatMulIntegers and 0.5 ms more in the Transposes it adds;
benchmarks/decoder_step.py, 6 rounds in alternation, 11.65-12.07 against 12.57-13.29 ms a step
(whisper-base 4.38-4.62 against 4.60-4.81 ms), faster in every round.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.backends.onnx_fusion import FusionError, _keep_needed, _Links, cross_attention_chains


class _Nodes:
    """Appends nodes with unique output names under one prefix."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.count = prefix, [], 0

    def __call__(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self.count += 1
        out = out or f"{self.prefix}_{op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        return out


def _constants(graph: onnx.GraphProto, prefix: str, heads: int = 0, head_dim: int = 0) -> dict[str, str]:
    values = {
        # "frames": the middle axis of the [H, F, Dh] view that _abs_max_over_frames reduces
        "last": np.array([-1], np.int64), "frames": np.array([1], np.int64),
        "tiny": np.array(1e-30, np.float32), "c127": np.array(127.0, np.float32),
        "one": np.array(1.0, np.float32), "c255": np.array(255.0, np.float32),
        "zp128": np.array(128, np.uint8), "zp0": np.array(0, np.uint8),
    }
    if heads:
        values["heads_frames_dims"] = np.array([heads, -1, head_dim], np.int64)
        values["one_heads_one_dims"] = np.array([1, heads, 1, head_dim], np.int64)
    names = {}
    for key, value in values.items():
        names[key] = f"{prefix}_{key}"
        graph.initializer.append(numpy_helper.from_array(value, names[key]))
    return names


def _codes(n: _Nodes, c: dict[str, str], x: str, scale: str, offset: bool, out: str | None = None) -> str:
    """uint8 codes of x / scale, rounded (+128 when `offset`, for a signed x).

    QuantizeLinear by 1 rounds half to even and adds the zero point, as Round, Add and Cast did, on
    numbers already in 0..255 (|x / scale| <= 127, or 255 for probabilities): the same codes, and no
    Round and Add outputs, two float32 copies of x (3 MB each per key and value of whisper-base's full
    window, 24 a window, each a fresh mapping with its page faults: runtime.heap)."""
    return n("QuantizeLinear", [n("Div", [x, scale]), c["one"], c["zp128" if offset else "zp0"]], out)


def _abs_max(n: _Nodes, c: dict[str, str], x: str, axis: str, out: str | None = None) -> str:
    """The largest magnitude of x along `axis` (kept), never 0 (an all-zero row divides by it).
    From the largest and the smallest: Abs would write a float32 copy of x to take its maximum."""
    largest = n("ReduceMax", [x, c[axis]], keepdims=1)
    smallest = n("ReduceMin", [x, c[axis]], keepdims=1)
    return n("Max", [largest, n("Neg", [smallest]), c["tiny"]], out)


def _abs_max_over_frames(n: _Nodes, c: dict[str, str], x: str, out: str) -> str:
    """`_abs_max` of a window's keys or values [1, H, F, Dh] over its frames, as [1, H, 1, Dh].

    Reduced as a [H, F, Dh] view, so that whatever ONNX Runtime's optimizer does around it the
    frames stay a middle axis. Why: on the 4-D tensor its transpose optimizer moves the encoder's
    head transpose ([1, F, H, Dh] -> [1, H, F, Dh]) past the reductions (it transposes the uint8
    codes instead, a quarter of the bytes), and the reductions then run over the *first* axis of
    [F, H x Dh]: ONNX Runtime's ReduceMax/ReduceMin kernel for that case walks each column down the
    rows, 2.2-2.6 ms for whisper-base's 1500 x 512 against 0.1 ms with the frames in the middle
    (Eigen's row-wise maximum). whisper-base onnx-int8-dynamic, encoder.vnni.onnx, one padded
    window, 2 threads, Xeon with AMX: the 24 reductions took 64 of 264 ms, with the view 5.7 of 209
    ms, outputs bit-identical (benchmarks/encoder_ops.py, results/encoder_ops_cross_reductions.json)."""
    view = n("Reshape", [x, c["heads_frames_dims"]])  # [H, F, Dh]: batch 1, as the outputs' shapes say
    return n("Reshape", [_abs_max(n, c, view, "frames"), c["one_heads_one_dims"]], out)


def _info(name: str, kind: int, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, kind, dims)


def _scale_infos(name: str, heads, frames, head_dim) -> list[onnx.ValueInfoProto]:
    if "_k_" in name:
        return [_info(f"{name}_channel", TensorProto.FLOAT, [1, heads, 1, head_dim]),
                _info(f"{name}_row", TensorProto.FLOAT, [1, heads, 1, frames])]
    return [_info(f"{name}_scale", TensorProto.FLOAT, [1, heads, 1, head_dim])]


def _code_info(name: str, heads, frames, head_dim) -> onnx.ValueInfoProto:
    return _info(name, TensorProto.UINT8, [1, heads, frames, head_dim])


def _dims(info: onnx.ValueInfoProto) -> list:
    return [d.dim_value or d.dim_param for d in info.type.tensor_type.shape.dim]


def int8_cross_attention(encoder: onnx.ModelProto, decoder: onnx.ModelProto, cross: list[str]) -> int:
    """Rewrite both graphs in place: the encoder outputs the `cross` keys/values as uint8 codes,
    then their scales (format.layout.cross_scale_names), and each decoder layer's cross-attention multiplies the codes
    as they are. Returns the number of decoder layers rewritten."""
    names = set(cross)
    g = encoder.graph
    outputs = {o.name: o for o in g.output}
    if set(outputs) & names != names or len(outputs) != len(names):
        raise FusionError(f"the encoder outputs {sorted(outputs)}, expected exactly {cross}")
    for node in g.node:
        for i, o in enumerate(node.output):
            if o in names:
                node.output[i] = f"{o}_float32"
    shapes = {tuple(_dims(outputs[name])[1::2]) for name in cross}  # (heads, head_dim) of each
    if len(shapes) != 1 or not all(isinstance(d, int) and d > 0 for d in next(iter(shapes))):
        raise FusionError(f"the encoder's keys/values have heads and head sizes {shapes}, expected one fixed pair")
    c = _constants(g, "cross_int8", *next(iter(shapes)))
    n = _Nodes("cross_int8")
    codes, scales = [], []
    for name in cross:
        x, (_, heads, frames, head_dim) = f"{name}_float32", _dims(outputs[name])
        if "_k_" in name:
            channel = _abs_max_over_frames(n, c, x, f"{name}_channel")  # [1, H, 1, Dh]
            normal = n("Div", [x, channel])
            row = n("Div", [_abs_max(n, c, normal, "last"), c["c127"]])  # [1, H, F, 1]
            _codes(n, c, normal, row, offset=True, out=name)
            n("Transpose", [row], f"{name}_row", perm=[0, 1, 3, 2])
        else:
            scale = n("Div", [_abs_max_over_frames(n, c, x, f"{name}_largest"), c["c127"]],
                      f"{name}_scale")  # [1, H, 1, Dh]
            _codes(n, c, x, scale, offset=True, out=name)
        codes.append(_code_info(name, heads, frames, head_dim))
        scales += _scale_infos(name, heads, frames, head_dim)
    del g.output[:]
    g.output.extend(codes + scales)
    # The encoder keeps every node (the new outputs need them all); what this drops is the constants of
    # _constants() that only the decoder's side reads, which ONNX Runtime removed with a warning at every load.
    _keep_needed(encoder, [*g.node, *n.nodes])

    g = decoder.graph
    c = _constants(g, "cross_int8")
    replace: dict[str, list[onnx.NodeProto]] = {}
    for scores, softmax, weighted, k, v in cross_attention_chains(g, _Links(g), names):
        # q.k: the query [1, H, T, Dh] (already scaled by 1/sqrt(Dh)) times the keys' channel scales,
        # quantized per head and token; the int32 dots rescaled by the query's and each frame's scale.
        n = _Nodes(f"{k}_scores")
        query = n("Mul", [scores.input[0], f"{k}_channel"])
        q_scale = n("Div", [_abs_max(n, c, query, "last"), c["c127"]])  # [1, H, T, 1]
        q_codes = n("Transpose", [_codes(n, c, query, q_scale, offset=True)], perm=[0, 1, 3, 2])  # [1, H, Dh, T]
        dots = n("Transpose", [n("MatMulInteger", [k, q_codes, c["zp128"], c["zp128"]])], perm=[0, 1, 3, 2])
        n("Mul", [n("Mul", [n("Cast", [dots], to=TensorProto.FLOAT), q_scale]), f"{k}_row"], scores.output[0])
        replace[scores.output[0]] = n.nodes
        # p.v: the probabilities in 0..255 per head and token (the largest is 255), the values' codes.
        n = _Nodes(f"{v}_mixed")
        p_scale = n("Div", [n("ReduceMax", [softmax.output[0], c["last"]], keepdims=1), c["c255"]])
        mixed = n("MatMulInteger", [_codes(n, c, softmax.output[0], p_scale, offset=False), v, c["zp0"], c["zp128"]])
        n("Mul", [n("Mul", [n("Cast", [mixed], to=TensorProto.FLOAT), p_scale]), f"{v}_scale"], weighted.output[0])
        replace[weighted.output[0]] = n.nodes
    if len(replace) != len(names):
        raise FusionError(f"found {len(replace) // 2} cross-attention chains in the decoder, expected {len(names) // 2}")
    inputs = {i.name: i for i in g.input}
    extra = []
    for name in cross:
        _, heads, frames, head_dim = _dims(inputs[name])
        inputs[name].CopyFrom(_code_info(name, heads, frames, head_dim))
        extra += _scale_infos(name, heads, frames, head_dim)
    g.input.extend(extra)
    nodes = [m for node in g.node for m in replace.get(node.output[0], [node])]
    _keep_needed(decoder, nodes)
    return len(replace) // 2


def signed_cross_codes(encoder: onnx.ModelProto, decoder: onnx.ModelProto, cross: list[str]) -> int:
    """Rewrite copies of graphs made by `int8_cross_attention` (in place) for x86 CPUs with VNNI:
    the encoder writes the value codes as int8 (v / scale, no +128), and the decoder quantizes its
    query to int8, so that both products of each layer are uint8 x int8. Returns the number of
    MatMulInteger nodes rewritten (2 per layer).

    Why: MLAS multiplies uint8 by int8 with `vpdpbusd` where the CPU has VNNI, and uint8 by uint8
    on AVX-512's slower widening path. Measured alone (one MatMulInteger, 12 heads of whisper-small's
    shape, 1500 frames, 2 threads, AVX-512 VNNI EPYC): keys · query 71 against 133 us, probabilities ·
    values 19.5 against 36 us. In the decoder (ONNX Runtime profiler, whisper-base, 50 steps) the 12
    products took 0.47 against 0.77-0.92 ms a step; whole steps of whisper-small's shape
    (benchmarks/decoder_step.py, 4 rounds) 9.10-10.00 against 10.33-11.42 ms, logits bit-identical:
    the same codes (less 128) and exact int32 sums. Not in the portable graphs: without VNNI the
    uint8 x int8 kernel adds pairs of products in saturating int16 (backends.onnx_vnni), which
    255 x 127 x 2 overflows."""
    g = encoder.graph
    names = set(cross)
    values = {n for n in names if "_v_" in n}
    zero = _int8_zero(g)
    written = 0
    for node in g.node:
        if node.op_type == "QuantizeLinear" and node.output[0] in values:
            node.input[2] = zero
            written += 1
    _as_int8(g.output, values)
    if written != len(values):
        raise FusionError(f"the encoder quantizes {written} of {len(values)} cross-attention values")

    g = decoder.graph
    zero = _int8_zero(g)
    links = _Links(g)
    rewritten = 0
    for node in g.node:
        if node.op_type != "MatMulInteger":
            continue
        if node.input[0] in names:  # keys · query codes: the query's QuantizeLinear, through a Transpose
            quantize = links.up(links.up(node.input[1], "Transpose").input[0], "QuantizeLinear")
            quantize.input[2] = zero
        elif node.input[1] not in values:
            continue
        node.input[3] = zero
        rewritten += 1
    _as_int8(g.input, values)
    if rewritten != len(names):
        raise FusionError(f"found {rewritten} cross-attention products in the decoder, expected {len(names)}")
    return rewritten


def _int8_zero(graph: onnx.GraphProto) -> str:
    """An int8 scalar 0 in `graph`'s initializers, a zero point that makes QuantizeLinear write int8."""
    name = "cross_int8_zp0_s8"
    graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), name))
    return name


def _as_int8(infos, names: set[str]) -> None:
    """Declare the graph inputs or outputs among `infos` named in `names` int8."""
    for info in infos:
        if info.name in names:
            info.type.tensor_type.elem_type = TensorProto.INT8
