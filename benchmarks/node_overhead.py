"""What ONNX Runtime spends per node, apart from the node's work: the share of a decoder step that
fusing nodes could save.

    python benchmarks/node_overhead.py [--bundle ONNX_BUNDLE] [--threads 2] [--cpu-mask avx2|vnni]
                                       [--out FILE]

A decoder step of whisper-small's shape runs about 570 nodes (ONNX Runtime's profiler, 2026-12-07),
many of them small: Transpose, Reshape, the keys' range. Chains of 100 and 600 trivial nodes (Add
of a constant, Transpose, Reshape) on one token's [1, 12, 1, 64] tensor, in a session made as
edgeq makes its decoder's (--threads intra-op threads, spinning on and off, graph optimizations
off so that none is folded away), time a run; the difference between the chains over 500 nodes
is the cost of one node. With --bundle, the nodes of the bundle's decoder graph after ONNX
Runtime's optimizations are counted, and times that cost is what all of them take a step.
Writes benchmarks/results/node_overhead.json (--out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import add_cpu_mask_option, median_run_ms, optimized_op_counts, run_masked, write_json

SHAPE = (1, 12, 1, 64)  # one token's keys of one layer, whisper-small's 12 heads of 64
CHAINS = (100, 600)
RUNS = 300


def chain(n: int, op: str):
    from onnx import TensorProto, helper

    nodes, prev = [], "x"
    for i in range(n):
        out = f"t{i}"
        if op == "Add":
            nodes.append(helper.make_node("Add", [prev, "c"], [out]))
        elif op == "Transpose":
            nodes.append(helper.make_node("Transpose", [prev], [out], perm=[0, 2, 1, 3]))
        else:
            nodes.append(helper.make_node("Reshape", [prev, "s"], [out]))
        prev = out
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    inits = [helper.make_tensor("c", TensorProto.FLOAT, [1], [1e-3])] if op == "Add" else \
        [helper.make_tensor("s", TensorProto.INT64, [len(SHAPE)], list(SHAPE))] if op == "Reshape" else []
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_ms(model, threads: int, spinning: bool) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    return median_run_ms(session, {"x": x}, RUNS, warmup=50)


def decoder_nodes(bundle: Path, threads: int) -> dict:
    """The decoder graph's nodes as ONNX Runtime runs them (after its optimizations), by op type."""
    from edgeq.format.layout import DECODER_ONNX

    return optimized_op_counts(bundle / DECODER_ONNX, threads)


def main() -> None:
    from edgeq.bench.env import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="an ONNX bundle whose decoder's nodes to count")
    ap.add_argument("--threads", type=int, default=2)
    add_cpu_mask_option(ap)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    run_masked(args.cpu_mask)
    rows = []
    for spinning in (True, False):
        for op in ("Add", "Transpose", "Reshape"):
            ms = {n: run_ms(chain(n, op), args.threads, spinning) for n in CHAINS}
            us = 1e3 * (ms[CHAINS[1]] - ms[CHAINS[0]]) / (CHAINS[1] - CHAINS[0])
            rows.append({"op": op, "spinning": spinning, "ms_per_run": ms, "us_per_node": us})
            print(f"spinning {'on ' if spinning else 'off'} {op:9s}: {us:.2f} us a node "
                  f"({', '.join(f'{n} nodes {v:.3f} ms' for n, v in ms.items())})", flush=True)
    out = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "threads": args.threads, "shape": list(SHAPE),
           "chains": list(CHAINS), "rows": rows}
    if args.bundle:
        nodes = decoder_nodes(args.bundle, args.threads)
        total = sum(nodes.values())
        worst = max(r["us_per_node"] for r in rows)
        out["bundle"] = {"path": str(args.bundle), "decoder_nodes": total, "by_op": nodes,
                         "overhead_ms_per_step_at_most": total * worst / 1e3}
        print(f"{args.bundle.name}: {total} decoder nodes after optimization; at {worst:.2f} us a node, "
              f"{total * worst / 1e3:.2f} ms a step", flush=True)
    print(f"wrote {write_json(args.out or 'node_overhead.json', out)}")


if __name__ == "__main__":
    main()
