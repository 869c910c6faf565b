"""ONNX Runtime's MatMulNBits at a Whisper decoder step's shapes: how long all of one step's
weight products take, by bit-width, block size and zero points.

    python benchmarks/matmul_nbits.py [--shape small|base] [--rounds 3] [--threads 2]
        [--accuracy-levels 4] [--configs 8/128,4/32z,...] [--cpu-mask avx2|vnni] [--out matmul_nbits.json]

One graph holds every Linear layer of the decoder (per layer: q, k, v, o and the cross-attention's
q and o at d_model x d_model, fc1 and fc2) and the tied vocabulary table, each a MatMulNBits node on
a [1, d_model] (or [1, ffn]) input, as one token's step runs them; random weights (the kernels'
time does not depend on the values). What it answered: the block size of the 4-bit decoder of
onnx-int8-dynamic-int4-decoder (blocks of 32 were hardly faster than 8-bit blocks of 128). Only
the products: a real step adds attention, LayerNorms and ~4 us per node around them
(benchmarks/decoder_step.py times whole steps). --accuracy-levels compares MatMulNBits' compute
types (4: the activations quantized to int8 per block, what edgeq's recipes set; 1: float32 with
the weights dequantized in the kernel); --cpu-mask runs it with another CPU's kernels
(benchmarks/cpuid_mask.c).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import add_cpu_mask_option, run_masked, write_json

from edgeq.bench.env import fingerprint

# (d_model, ffn, layers, vocab)
SHAPES = {"small": (768, 3072, 12, 51865), "base": (512, 2048, 6, 51865)}
# (bits, block, zero points), written BITS/BLOCK with a z for zero points
CONFIGS = "8/128,8/256,4/32z,4/64z,4/128z,4/128"


def parse_config(text: str) -> tuple[int, int, bool]:
    bits, block = text.rstrip("z").split("/")
    return int(bits), int(block), text.endswith("z")


def step_products(d: int, ffn: int, layers: int, vocab: int) -> list[tuple[int, int]]:
    """(K, N) of every weight product of one decoder step, in order."""
    per_layer = [(d, d)] * 6 + [(d, ffn), (ffn, d)]
    return [p for _ in range(layers) for p in per_layer] + [(d, vocab)]


def step_graph(d: int, ffn: int, layers: int, vocab: int, bits: int, block: int, zero_points: bool, level: int, rng):
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], []
    for i, (k, n) in enumerate(step_products(d, ffn, layers, vocab)):
        blocks = -(-k // block)
        inputs = [f"x{k}", f"w{i}", f"s{i}"]
        inits += [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8), f"w{i}"),
                  numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32) * 0.01 + 1e-3, f"s{i}")]
        if zero_points:
            inits.append(numpy_helper.from_array(
                rng.integers(0, 256, n * (-(-blocks * bits // 8)), dtype=np.uint8), f"z{i}"))
            inputs.append(f"z{i}")
        nodes.append(helper.make_node("MatMulNBits", inputs, [f"y{i}"], domain="com.microsoft", K=k, N=n, bits=bits,
                                      block_size=block, accuracy_level=level))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "step", [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k])
                                              for k in sorted({d, ffn})], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--accuracy-levels", default="4", help="comma-separated MatMulNBits accuracy_level values")
    ap.add_argument("--configs", default=CONFIGS, help="comma-separated BITS/BLOCK, z for zero points (4/32z)")
    add_cpu_mask_option(ap)
    ap.add_argument("--out", default="matmul_nbits.json")
    args = ap.parse_args()
    run_masked(args.cpu_mask)
    configs = [(*parse_config(c), int(level)) for c in args.configs.split(",")
               for level in args.accuracy_levels.split(",")]
    d, ffn, layers, vocab = SHAPES[args.shape]
    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")  # as edgeq's decoder with spinning
    sessions = {c: ort.InferenceSession(step_graph(d, ffn, layers, vocab, *c, rng).SerializeToString(), options,
                                        providers=["CPUExecutionProvider"]) for c in configs}
    feeds = {f"x{k}": rng.standard_normal((1, k)).astype(np.float32) for k in {d, ffn}}
    weights = sum(k * n for k, n in step_products(d, ffn, layers, vocab))
    data = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "shape": args.shape, "threads": args.threads,
            "weights_millions": weights / 1e6, "rows": []}
    for r in range(args.rounds):
        for (bits, block, zp, level), session in sessions.items():  # in alternation: a slow phase hits each alike
            for _ in range(5):
                session.run(None, feeds)
            start = time.perf_counter()
            for _ in range(args.calls):
                session.run(None, feeds)
            ms = (time.perf_counter() - start) / args.calls * 1e3
            data["rows"].append({"round": r, "bits": bits, "block": block, "zero_points": zp, "accuracy_level": level,
                                 "ms_per_step": ms})
            print(f"round {r}  {bits}-bit blocks of {block:3d}{' + zero points' if zp else '':14s} "
                  f"accuracy_level {level}: {ms:6.2f} ms", flush=True)
        write_json(args.out, data)  # after every round: a killed run keeps what it measured


if __name__ == "__main__":
    main()
