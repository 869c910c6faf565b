"""Three changes to a decoder step, measured on ONNX Runtime's own kernels before building any of
them: each as a graph of one step's operators of that kind (whisper-small's shape), the way the
bundles run them against the alternative.

    python benchmarks/decoder_levers.py [--levers cross,weights,head] [--rounds 4] [--threads 2]
        [--cpu-mask avx2|vnni] [--out decoder_levers.json]

* cross: the 24 cross-attention products of a step (onnx_cross_int8: per head, keys first, then
  probabilities times values; with the codes of the decoder graph a bundle runs on this CPU)
  against one product per layer over all heads at once: keys [F, H*Dh] times a block-diagonal
  query [H*Dh, H], and values [H*Dh, F] times the probabilities [F, H] (the same sums, each head's
  column zero outside its block). Why asked: each head's product has one column, and the kernels
  work on 8 to 16 at a time. Also per head with the values transposed (read in place on the left,
  not packed on the right at every call) or the keys transposed (the query one row on the left),
  and where the CPU has VNNI the keys transposed as int8 with a uint8 query (its fast pairing).
* weights: the step's Linear layers (q, k, v, o and cross q, o at d x d; fc1, fc2) as the bundles
  hold them, 8-bit MatMulNBits in blocks of 128 with int8 activations (accuracy_level 4), against
  DynamicQuantizeMatMul with 7-bit per-channel weights, the uint8 x int8 kind an AVX2 CPU can run
  without saturating (backends/onnx_avx2).
* head: the projection onto the token table (8-bit MatMulNBits) against a 4-bit table that picks
  the top --top-k tokens, whose logits the 8-bit table then computes again (TopK,
  GatherBlockQuantized, MatMul, ScatterElements): greedy decoding would choose as with the 8-bit
  table while reading half its bytes.

Random weights and inputs (the kernels' time does not depend on the values), the graphs of a lever
in alternation, each timed over --calls runs per round; writes benchmarks/results/decoder_levers.json
(--out) after every round. tests/test_decoder_levers.py checks that each lever's graphs compute
the same numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import add_cpu_mask_option, run_masked, write_json
from matmul_nbits import step_products
from onnx import TensorProto, helper, numpy_helper

from edgeq.backends.onnx_quant import _quantize_rows
from edgeq.bench.env import fingerprint
from edgeq.runtime.int8_kernels import vnni_kernels

# whisper-small: heads, head size, encoder frames of a full window, layers, ffn, vocabulary
SMALL = {"heads": 12, "head_dim": 64, "frames": 1500, "layers": 12, "ffn": 3072, "vocab": 51865}
LEVERS = ("cross", "weights", "head")
MS = "com.microsoft"


def _model(nodes, inputs, outputs, inits=()) -> bytes:
    graph = helper.make_graph(nodes, "lever", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(MS, 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _info(name: str, kind: int, shape) -> object:
    return helper.make_tensor_value_info(name, kind, shape)


def cross_graphs(heads: int, head_dim: int, frames: int, layers: int, signed: bool,
                 rng) -> dict[str, tuple[bytes, dict]]:
    """{variant: (model, feed)} of one step's cross-attention products, int32 outputs, with the codes
    the bundle multiplies: uint8 keys/values (zero point 128) and probabilities (0), and the query
    int8 (`signed`: decoder.vnni.onnx, where the kernels are VNNI's) or uint8 around 128
    (decoder.onnx). The probabilities are 0..127 so that they are int8 as well where a variant's
    layout needs them so; the feeds of both variants hold the same numbers in their layouts."""
    hd = heads * head_dim
    q_kind, q_type, q_zero = (np.int8, TensorProto.INT8, "zp0_s8") if signed else (np.uint8, TensorProto.UINT8, "zp128")
    zeros = [numpy_helper.from_array(np.array(128, np.uint8), "zp128"),
             numpy_helper.from_array(np.array(0, np.uint8), "zp0"),
             numpy_helper.from_array(np.array(0, np.int8), "zp0_s8")]
    keys = [rng.integers(0, 256, (heads, frames, head_dim), dtype=np.uint8) for _ in range(layers)]
    values = [rng.integers(0, 256, (heads, frames, head_dim), dtype=np.uint8) for _ in range(layers)]
    query = (rng.integers(-127, 128, (heads, head_dim, 1)) + (0 if signed else 128)).astype(q_kind)
    probs = rng.integers(0, 128, (heads, 1, frames)).astype(np.uint8)

    nodes, inputs, outputs = [], [], []
    for i in range(layers):
        inputs += [_info(f"k{i}", TensorProto.UINT8, [heads, frames, head_dim]),
                   _info(f"v{i}", TensorProto.UINT8, [heads, frames, head_dim])]
        nodes += [helper.make_node("MatMulInteger", [f"k{i}", "q", "zp128", q_zero], [f"scores{i}"]),
                  helper.make_node("MatMulInteger", ["p", f"v{i}", "zp0", "zp128"], [f"mixed{i}"])]
        outputs += [_info(f"scores{i}", TensorProto.INT32, None), _info(f"mixed{i}", TensorProto.INT32, None)]
    inputs += [_info("q", q_type, [heads, head_dim, 1]), _info("p", TensorProto.UINT8, [heads, 1, frames])]
    feed = {**{f"k{i}": k for i, k in enumerate(keys)}, **{f"v{i}": v for i, v in enumerate(values)},
            "q": query, "p": probs}
    per_head = (_model(nodes, inputs, outputs, zeros), feed)

    # One product per layer. Block-diagonal query: column h holds head h's query in rows h*Dh..,
    # the zero point elsewhere; the probabilities' column h, head h's row.
    block_q = np.full((hd, heads), 0 if signed else 128, q_kind)
    for h in range(heads):
        block_q[h * head_dim:(h + 1) * head_dim, h] = query[h, :, 0]
    p_kind, p_type, p_zero = (np.int8, TensorProto.INT8, "zp0_s8") if signed else (np.uint8, TensorProto.UINT8, "zp0")
    nodes, inputs, outputs = [], [], []
    for i in range(layers):
        inputs += [_info(f"k{i}", TensorProto.UINT8, [frames, hd]), _info(f"v{i}", TensorProto.UINT8, [hd, frames])]
        nodes += [helper.make_node("MatMulInteger", [f"k{i}", "q", "zp128", q_zero], [f"scores{i}"]),
                  helper.make_node("MatMulInteger", [f"v{i}", "p", "zp128", p_zero], [f"mixed{i}"])]
        outputs += [_info(f"scores{i}", TensorProto.INT32, None), _info(f"mixed{i}", TensorProto.INT32, None)]
    inputs += [_info("q", q_type, [hd, heads]), _info("p", p_type, [frames, heads])]
    feed = {"q": block_q, "p": np.ascontiguousarray(probs[:, 0, :].T.astype(p_kind))}
    for i in range(layers):
        feed[f"k{i}"] = np.ascontiguousarray(keys[i].transpose(1, 0, 2).reshape(frames, hd))  # [F, H*Dh]
        feed[f"v{i}"] = np.ascontiguousarray(values[i].transpose(0, 2, 1).reshape(hd, frames))  # [H*Dh, F]
    block_diagonal = (_model(nodes, inputs, outputs, zeros), feed)

    # Per head, the values transposed: V^T [H, Dh, F] times the probabilities [H, F, 1]. The values
    # become the left operand, which MLAS reads in place; as the right one (as built) they are a
    # runtime B matrix that ONNX Runtime packs on every call (keys are already on the left).
    nodes, inputs, outputs = [], [], []
    for i in range(layers):
        inputs += [_info(f"k{i}", TensorProto.UINT8, [heads, frames, head_dim]),
                   _info(f"vt{i}", TensorProto.UINT8, [heads, head_dim, frames])]
        nodes += [helper.make_node("MatMulInteger", [f"k{i}", "q", "zp128", q_zero], [f"scores{i}"]),
                  helper.make_node("MatMulInteger", [f"vt{i}", "pt", "zp128", "zp0"], [f"mixed{i}"])]
        outputs += [_info(f"scores{i}", TensorProto.INT32, None), _info(f"mixed{i}", TensorProto.INT32, None)]
    inputs += [_info("q", q_type, [heads, head_dim, 1]), _info("pt", TensorProto.UINT8, [heads, frames, 1])]
    feed = {**{f"k{i}": k for i, k in enumerate(keys)},
            **{f"vt{i}": np.ascontiguousarray(v.transpose(0, 2, 1)) for i, v in enumerate(values)},
            "q": query, "pt": np.ascontiguousarray(probs.transpose(0, 2, 1))}
    values_left = (_model(nodes, inputs, outputs, zeros), feed)

    # Per head, the keys transposed: the query [H, 1, Dh] times K^T [H, Dh, F], so that both
    # products have one row on the left and a wide runtime matrix on the right, as the values' has.
    nodes, inputs, outputs = [], [], []
    for i in range(layers):
        inputs += [_info(f"kt{i}", TensorProto.UINT8, [heads, head_dim, frames]),
                   _info(f"v{i}", TensorProto.UINT8, [heads, frames, head_dim])]
        nodes += [helper.make_node("MatMulInteger", ["qr", f"kt{i}", q_zero, "zp128"], [f"scores{i}"]),
                  helper.make_node("MatMulInteger", ["p", f"v{i}", "zp0", "zp128"], [f"mixed{i}"])]
        outputs += [_info(f"scores{i}", TensorProto.INT32, None), _info(f"mixed{i}", TensorProto.INT32, None)]
    inputs += [_info("qr", q_type, [heads, 1, head_dim]), _info("p", TensorProto.UINT8, [heads, 1, frames])]
    feed = {**{f"kt{i}": np.ascontiguousarray(k.transpose(0, 2, 1)) for i, k in enumerate(keys)},
            **{f"v{i}": v for i, v in enumerate(values)},
            "qr": np.ascontiguousarray(query.transpose(0, 2, 1)), "p": probs}
    keys_right = (_model(nodes, inputs, outputs, zeros), feed)
    made = {"per head (as built)": per_head, "one per layer, block-diagonal": block_diagonal,
            "per head, values transposed": values_left, "per head, keys transposed": keys_right}
    if signed:
        # The keys transposed with VNNI's own pairing: the query uint8 around 128 on the left, the
        # keys int8 (their codes less 128) on the right, uint8 x int8 (`vpdpbusd`); the layout above
        # keeps the bundle's int8 query and uint8 keys, which has no fast kernel. The same sums.
        nodes, inputs = [], []
        for i in range(layers):
            inputs += [_info(f"kt{i}", TensorProto.INT8, [heads, head_dim, frames]),
                       _info(f"v{i}", TensorProto.UINT8, [heads, frames, head_dim])]
            nodes += [helper.make_node("MatMulInteger", ["qr", f"kt{i}", "zp128", "zp0_s8"], [f"scores{i}"]),
                      helper.make_node("MatMulInteger", ["p", f"v{i}", "zp0", "zp128"], [f"mixed{i}"])]
        inputs += [_info("qr", TensorProto.UINT8, [heads, 1, head_dim]), _info("p", TensorProto.UINT8, [heads, 1, frames])]
        # C order: ONNX Runtime copies a strided numpy input on every call (astype keeps a transpose's strides)
        feed = {**{f"kt{i}": np.ascontiguousarray((k.transpose(0, 2, 1).astype(np.int16) - 128).astype(np.int8))
                   for i, k in enumerate(keys)},
                **{f"v{i}": v for i, v in enumerate(values)},
                "qr": np.ascontiguousarray((query.transpose(0, 2, 1).astype(np.int16) + 128).astype(np.uint8)), "p": probs}
        made["per head, keys transposed, uint8 query"] = (_model(nodes, inputs, outputs, zeros), feed)
    return made


def cross_per_head(outputs: dict, heads: int, head_dim: int) -> dict:
    """A variant's outputs in the per-head layout: scores [H, F, 1], mixed [H, 1, Dh]."""
    out = {}
    for name, value in outputs.items():
        if value.ndim == 3:  # per head: values transposed, mixed [H, Dh, 1]; keys transposed, scores [H, 1, F]
            wrong = value.shape[1] == 1 if name.startswith("scores") else value.shape[2] == 1
            out[name] = value.transpose(0, 2, 1) if wrong else value
            continue
        if name.startswith("scores"):  # [F, H]
            out[name] = value.T[:, :, None]
        else:  # [H*Dh, H]: head h's block is rows h*Dh.., column h
            out[name] = np.stack([value[h * head_dim:(h + 1) * head_dim, h] for h in range(heads)])[:, None, :]
    return out


def weight_graphs(d: int, ffn: int, layers: int, rng) -> dict[str, tuple[bytes, dict]]:
    """{variant: (model, feed)} of one step's Linear layers on a [1, d] (fc2: [1, ffn]) input; both
    variants hold the same 7-bit weights (per output channel) so that they compute the same products."""
    weights = [(rng.integers(-63, 64, (k, n)).astype(np.int8), (rng.random(n, dtype=np.float32) + 0.5) / 64)
               for k, n in step_products(d, ffn, layers, vocab=0)[:-1]]  # the Linear layers, not the head
    feed = {f"x{k}": rng.standard_normal((1, k)).astype(np.float32) for k in (d, ffn)}
    inputs = [_info(f"x{k}", TensorProto.FLOAT, [1, k]) for k in (d, ffn)]
    nbits, dq, inits_n, inits_d, outputs = [], [], [], [], []
    for i, (w, scale) in enumerate(weights):
        k, n = w.shape
        # MatMulNBits: [N, K/128, 128] codes + 128 (its implicit zero point), one scale per block
        codes = (w.T.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // 128, 128)
        inits_n += [numpy_helper.from_array(codes, f"w{i}"),
                    numpy_helper.from_array(np.repeat(scale, k // 128), f"s{i}")]
        nbits.append(helper.make_node("MatMulNBits", [f"x{k}", f"w{i}", f"s{i}"], [f"y{i}"], domain=MS,
                                      K=k, N=n, bits=8, block_size=128, accuracy_level=4))
        inits_d += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(scale, f"s{i}")]
        dq.append(helper.make_node("DynamicQuantizeMatMul", [f"x{k}", f"w{i}", f"s{i}"], [f"y{i}"], domain=MS))
        outputs.append(_info(f"y{i}", TensorProto.FLOAT, None))
    return {"MatMulNBits 8-bit, blocks of 128 (as built)": (_model(nbits, inputs, outputs, inits_n), feed),
            "DynamicQuantizeMatMul, 7-bit per channel": (_model(dq, inputs, outputs, inits_d), feed)}


def head_graphs(d: int, vocab: int, top_k: int, rng) -> dict[str, tuple[bytes, dict]]:
    """{variant: (model, feed)} of the projection onto a [vocab, d] token table."""
    table = rng.standard_normal((vocab, d)).astype(np.float32) * 0.05
    q8, s8 = _quantize_rows(table, 8, 128)
    q4, s4 = _quantize_rows(table, 4, 128)
    blocks = d // 128
    feed = {"hidden": rng.standard_normal((1, d)).astype(np.float32)}
    inputs, outputs = [_info("hidden", TensorProto.FLOAT, [1, d])], [_info("logits", TensorProto.FLOAT, [1, vocab])]
    exact = helper.make_node("MatMulNBits", ["hidden", "q8", "s8"], ["logits"], domain=MS, K=d, N=vocab, bits=8,
                             block_size=128, accuracy_level=4)
    inits8 = [numpy_helper.from_array(q8, "q8"), numpy_helper.from_array(s8, "s8")]
    coarse = [
        helper.make_node("MatMulNBits", ["hidden", "q4", "s4"], ["approx"], domain=MS, K=d, N=vocab, bits=4,
                         block_size=128, accuracy_level=4),
        helper.make_node("TopK", ["approx", "k"], ["top_values", "top"], axis=-1),
        helper.make_node("GatherBlockQuantized", ["q8", "top", "s8_rows"], ["rows_blocked"], domain=MS,
                         gather_axis=0, quantize_axis=2, block_size=128, bits=8),
        helper.make_node("Reshape", ["rows_blocked", "rows_shape"], ["rows"]),  # [1, K, d]
        helper.make_node("Reshape", ["hidden", "column_shape"], ["column"]),  # [1, d, 1]
        helper.make_node("MatMul", ["rows", "column"], ["rescored_column"]),
        helper.make_node("Reshape", ["rescored_column", "top_shape"], ["rescored"]),
        helper.make_node("ScatterElements", ["approx", "top", "rescored"], ["logits"], axis=1),
    ]
    inits4 = inits8 + [
        numpy_helper.from_array(q4, "q4"), numpy_helper.from_array(s4, "s4"),
        numpy_helper.from_array(s8.reshape(vocab, blocks, 1), "s8_rows"),
        numpy_helper.from_array(np.array([top_k], np.int64), "k"),
        numpy_helper.from_array(np.array([1, top_k, d], np.int64), "rows_shape"),
        numpy_helper.from_array(np.array([1, d, 1], np.int64), "column_shape"),
        numpy_helper.from_array(np.array([1, top_k], np.int64), "top_shape")]
    return {"8-bit table (as built)": (_model([exact], inputs, outputs, inits8), feed),
            f"4-bit table, top {top_k} again in 8-bit": (_model(coarse, inputs, outputs, inits4), feed)}


def session(model: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    # as the decoder runs (onnx_engine: the decoder's threads spin between its small operators)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def graphs(lever: str, shape: dict, d: int, top_k: int, signed: bool, rng) -> dict[str, tuple[bytes, dict]]:
    if lever == "cross":
        return cross_graphs(shape["heads"], shape["head_dim"], shape["frames"], shape["layers"], signed, rng)
    if lever == "weights":
        return weight_graphs(d, shape["ffn"], shape["layers"], rng)
    return head_graphs(d, shape["vocab"], top_k, rng)


def summarize(rows: list[dict]) -> dict:
    out: dict = {}
    for row in rows:
        out.setdefault(row["lever"], {}).setdefault(row["variant"], []).append(row["ms"])
    return {lever: {v: {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "n": len(ms)}
                    for v, ms in variants.items()} for lever, variants in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levers", default=",".join(LEVERS), help="comma-separated, of " + ", ".join(LEVERS))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=64)
    add_cpu_mask_option(ap)
    ap.add_argument("--out", default="decoder_levers.json")
    args = ap.parse_args()
    run_masked(args.cpu_mask)
    levers = args.levers.split(",")
    if unknown := set(levers) - set(LEVERS):
        raise SystemExit(f"unknown lever(s) {sorted(unknown)}; choose from {', '.join(LEVERS)}")

    rng = np.random.default_rng(0)
    d = SMALL["heads"] * SMALL["head_dim"]
    signed = vnni_kernels()  # the codes of the decoder graph a bundle runs here
    made = {lever: {name: (session(model, args.threads), feed)
                    for name, (model, feed) in graphs(lever, SMALL, d, args.top_k, signed, rng).items()}
            for lever in levers}
    results = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "threads": args.threads, "shape": SMALL,
               "cross_query": "int8" if signed else "uint8", "top_k": args.top_k, "calls": args.calls, "rows": []}
    for r in range(args.rounds):
        for lever, variants in made.items():
            for name, (sess, feed) in variants.items():
                sess.run(None, feed)
                start = time.perf_counter()
                for _ in range(args.calls):
                    sess.run(None, feed)
                ms = 1e3 * (time.perf_counter() - start) / args.calls
                results["rows"].append({"round": r, "lever": lever, "variant": name, "ms": ms})
                print(f"round {r}  {lever:8s} {name:46s} {ms:7.3f} ms", flush=True)
        results["summary"] = summarize(results["rows"])
        write_json(args.out, results)


if __name__ == "__main__":
    main()
