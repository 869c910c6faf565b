"""What this CPU can do, and what Whisper asks of it: the floor under encoder and decoder times.

    python benchmarks/cpu_limits.py [--threads 2] [--model DIR] [--bundle ONNX_BUNDLE]
                                    [--cpu-mask avx2|vnni] [--out FILE]

Measures, with ONNX Runtime (the engine of edgeq's fast bundles) on --threads threads:
  - GEMM throughput at the encoder's shapes: float32 MatMul, and int8 (the graph
    onnxruntime.quantization.quantize_dynamic makes of it, as in onnx-int8-dynamic bundles);
  - float32 batched MatMul at self-attention's shapes (QKᵀ and AV of all heads of one window):
    ONNX Runtime has no low-precision attention kernel on x86 CPUs, so this is its roof there;
  - memory read bandwidth (numpy, one thread, a 512 MB array: larger than any cache).
Then the arithmetic: operations of one 30 s encoder window of --model (matmuls, the decoder's
cross-attention keys/values, attention, convs) over the int8 rate (a floor no engine reaches
while attention is float), and over the rates of the kernels an int8 bundle runs (its linear
layers int8, attention and convs float32); bytes of decoder weights read per token over the
bandwidth. With --bundle, the bundle's own encoder time per window and decoder time per token on
a 30 s clip are measured beside them. Writes benchmarks/results/cpu_limits.json (--out).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import WHISPER_BASE, add_cpu_mask_option, run_masked, write_json


def _best(fn, repeat: int = 5) -> float:
    fn()  # warm-up: prepacking, page faults
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_gops(m: int, k: int, n: int, threads: int) -> dict:
    """float32 and dynamic-int8 MatMul of [m, k] x [k, n] through ONNX Runtime, in GOPS."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32) * 0.05, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        f32, i8 = Path(tmp) / "f32.onnx", Path(tmp) / "i8.onnx"
        onnx.save(model, f32)
        quantize_dynamic(str(f32), str(i8), weight_type=QuantType.QInt8)
        x = rng.standard_normal((m, k)).astype(np.float32)
        for name, path in (("float32", f32), ("int8", i8)):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            seconds = _best(lambda s=s: s.run(None, {"x": x}))
            out[name] = 2 * m * k * n / seconds / 1e9
    return out


def attention_gflops(t: int, heads: int, head_dim: int, threads: int) -> dict:
    """float32 batched MatMul at one window's self-attention shapes, all heads at once, in GFLOPS:
    scores [H, T, Dh] x [H, Dh, T] and mix [H, T, T] x [H, T, Dh]."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    out = {}
    for name, (a_shape, b_shape) in {"scores": ([heads, t, head_dim], [heads, head_dim, t]),
                                     "mix": ([heads, t, t], [heads, t, head_dim])}.items():
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], name,
                                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape),
                                   helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = {"a": rng.standard_normal(a_shape).astype(np.float32), "b": rng.standard_normal(b_shape).astype(np.float32)}
        seconds = _best(lambda s=s, feed=feed: s.run(None, feed))
        out[name] = 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2] / seconds / 1e9
    return out


def read_bandwidth_gbs(mb: int = 512) -> float:
    a = np.ones(mb * 2**20 // 8, dtype=np.float64)
    return a.nbytes / _best(lambda: np.add.reduce(a), 3) / 1e9


def encoder_gop(c: dict) -> dict:
    """Multiply-adds x2 of one 30 s window, by the kind of kernel that runs them in an int8 bundle:
    the two convs (float32); per layer Q/K/V/O and the MLP (int8); the keys and values of every
    decoder layer's cross-attention, computed once per window from the encoder's output (int8: edgeq's
    encoder graph outputs them); and self-attention's QKᵀ and AV (float32)."""
    d, t, f, mels = c["d_model"], c["max_source_positions"], c["encoder_ffn_dim"], c["num_mel_bins"]
    return {"convs": (2 * (2 * t) * mels * d * 3 + 2 * t * d * d * 3) / 1e9,
            "linear": c["encoder_layers"] * 2 * t * (4 * d * d + 2 * d * f) / 1e9,
            "cross_kv": c["decoder_layers"] * 2 * 2 * t * d * d / 1e9,
            "attention": c["encoder_layers"] * 2 * 2 * t * t * d / 1e9}


def decoder_bytes_per_token(c: dict, bytes_per_weight: float = 1.0) -> float:
    """Weights read for one token: every decoder Linear (self- and cross-attention Q/O only: the
    cross K/V are computed once per window) and the tied vocabulary table for the logits."""
    d, f = c["d_model"], c["decoder_ffn_dim"]
    per_layer = 4 * d * d + 2 * d * d + 2 * d * f  # self q,k,v,o; cross q,o; fc1, fc2
    return (c["decoder_layers"] * per_layer + c["vocab_size"] * d) * bytes_per_weight


def bundle_phases(bundle: str, threads: int) -> dict:
    """Encoder seconds per full 30 s window and decoder ms per token (a 32-token continuation) of `bundle`."""
    import edgeq
    from edgeq.runtime.features import log_mel_spectrogram

    t = edgeq.load(bundle, threads=threads, language="en")
    features = log_mel_spectrogram(np.zeros(16000 * 30, dtype=np.float32))
    encode_s = _best(lambda: t.engine.encode(features), 3)
    state = t.engine.start(t.engine.encode(features))
    prompt = t.settings.prompt("en")
    _, state = t.engine.step(state, prompt)

    def steps(n=32):
        s = state
        for _ in range(n):
            _, s = t.engine.step(s, [220])

    step_s = _best(steps, 3) / 32
    return {"encoder_s_per_window": encode_s, "decoder_ms_per_token": 1000 * step_s, "tokens_per_s": 1 / step_s}


def main() -> None:
    from edgeq.bench.env import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=WHISPER_BASE, help="config.json of this checkpoint gives the shapes")
    ap.add_argument("--bundle", help="an ONNX bundle of --model: its measured phase times beside the floors")
    ap.add_argument("--out", default="cpu_limits.json")
    add_cpu_mask_option(ap, "measure")
    args = ap.parse_args()
    run_masked(args.cpu_mask)
    c = json.loads((args.model / "config.json").read_text())
    t = c["max_source_positions"]
    # The encoder's two GEMM shapes: attention projections [T, d] x [d, d], MLP [T, d] x [d, ffn].
    gemms = {f"{t}x{c['d_model']}x{n}": gemm_gops(t, c["d_model"], n, args.threads)
             for n in (c["d_model"], c["encoder_ffn_dim"])}
    heads = c["encoder_attention_heads"]
    attention = attention_gflops(t, heads, c["d_model"] // heads, args.threads)
    int8 = max(g["int8"] for g in gemms.values())
    float32 = max(g["float32"] for g in gemms.values())
    bandwidth = read_bandwidth_gbs()
    parts = encoder_gop(c)
    gop = sum(parts.values())
    # The floor with the kernels an int8 bundle runs: its int8 products at the best int8 rate,
    # attention at the better of the two attention shapes' float32 rates, the convs at float32's.
    kernels_s = ((parts["linear"] + parts["cross_kv"]) / int8 + parts["attention"] / max(attention.values())
                 + parts["convs"] / float32)
    per_token = decoder_bytes_per_token(c)
    result = {
        "env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "threads": args.threads, "model": str(args.model),
        "gemm_gops": gemms, "attention_gflops": attention,
        "read_bandwidth_gbs": bandwidth, "encoder_gop_per_window": gop, "encoder_gop_parts": parts,
        "encoder_floor_s_at_int8": gop / int8, "encoder_floor_s_with_kernels": kernels_s,
        "decoder_int8_mb_per_token": per_token / 1e6,
        "decoder_floor_ms_per_token": 1000 * per_token / (bandwidth * 1e9),
    }
    if args.bundle:
        result["bundle"] = {"path": args.bundle, **bundle_phases(args.bundle, args.threads)}
    path = write_json(args.out, result)
    for shape, g in gemms.items():
        print(f"GEMM {shape:16} float32 {g['float32']:6.1f} GOPS   int8 {g['int8']:6.1f} GOPS")
    print("attention float32 " + ", ".join(f"{k} {v:.1f} GFLOPS" for k, v in attention.items()))
    print(f"memory read {bandwidth:.1f} GB/s (one thread)")
    print(f"encoder: {gop:.1f} GOP per 30 s window -> >= {gop / int8:.2f} s at the best int8 rate, "
          f">= {kernels_s:.2f} s with float32 attention and convs")
    print(f"decoder: {per_token / 1e6:.1f} MB of int8 weights per token -> >= {result['decoder_floor_ms_per_token']:.1f} ms")
    if args.bundle:
        b = result["bundle"]
        print(f"bundle: encoder {b['encoder_s_per_window']:.2f} s per window, decoder {b['decoder_ms_per_token']:.1f} ms "
              f"per token ({b['tokens_per_s']:.0f} tokens/s)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
