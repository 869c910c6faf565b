"""Would one int8 product for a decoder layer's query, key and value beat three? A lever measured
on its own before any graph is rewritten for it.

    python benchmarks/qkv_fusion.py [--d-model 768] [--layers 12] [--threads 2] [--rounds 5]
                                    [--cpu-mask avx2|vnni] [--out FILE]

In an onnx-int8-dynamic decoder, a layer's self-attention query, key and value are three MatMuls
of the same LayerNorm output: ONNX Runtime quantizes that input once (DynamicQuantizeLinear) and
runs three MatMulIntegerToFloat nodes of [d, d] (36 a step on whisper-small's shape, 1.41 ms of a
profiled 15 ms step on the AMD EPYC; decoder_step.py --profile). Concatenated into one [d, 3d]
weight they would be one DynamicQuantizeMatMul. Two graphs of --layers such layers on one token
([1, 1, d]), quantized as the bundles are (quantize_dynamic, per-channel weights, MatMul only),
each layer's three results summed into the next layer's input so that both graphs do the same
arithmetic: "three" (three MatMuls) and "fused" (one MatMul, then Split). Sessions made as
edgeq makes its decoder's (intra-op threads spinning); the two alternate, 300 runs each a
round, median per round. Writes benchmarks/results/qkv_fusion.json (--out).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import add_cpu_mask_option, median_run_ms, optimized_op_counts, run_masked, write_json

RUNS = 300


def layers_graph(d: int, layers: int, fused: bool, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = [(rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32) for _ in range(3)]
        parts = [f"q{i}", f"k{i}", f"v{i}"]
        if fused:
            inits.append(numpy_helper.from_array(np.concatenate(w, axis=1), f"w{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"qkv{i}"]))
            inits.append(numpy_helper.from_array(np.array([d, d, d], np.int64), f"split{i}"))
            nodes.append(helper.make_node("Split", [f"qkv{i}", f"split{i}"], parts, axis=-1))
        else:
            for name, wi in zip(parts, w):
                inits.append(numpy_helper.from_array(wi, f"w_{name}"))
                nodes.append(helper.make_node("MatMul", [x, f"w_{name}"], [name]))
        nodes.append(helper.make_node("Add", parts[:2], [f"qk{i}"]))
        nodes.append(helper.make_node("Add", [f"qk{i}", parts[2]], [f"y{i}"]))
        x = f"y{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(nodes, "fused" if fused else "three",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantized(model, work: Path, name: str) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = work / f"{name}.float.onnx", work / f"{name}.onnx"
    onnx.save(model, src)
    quantize_dynamic(src, out, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})
    return out


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    from edgeq.bench.env import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    add_cpu_mask_option(ap)
    ap.add_argument("--out", default="qkv_fusion.json")
    args = ap.parse_args()
    run_masked(args.cpu_mask)

    x = np.random.default_rng(1).standard_normal((1, 1, args.d_model), dtype=np.float32)
    results = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "d_model": args.d_model,
               "layers": args.layers, "threads": args.threads, "runs": RUNS, "graphs": {}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: quantized(layers_graph(args.d_model, args.layers, name == "fused"), Path(tmp), name)
                 for name in ("three", "fused")}
        sessions = {name: session(p, args.threads) for name, p in paths.items()}
        outputs = {name: s.run(None, {"x": x})[0] for name, s in sessions.items()}
        for name, p in paths.items():
            results["graphs"][name] = {"ops": optimized_op_counts(p)}
    # the same weights, quantized per output channel either way: the sums agree to rounding
    results["max_rel_diff"] = float(np.abs(outputs["fused"] - outputs["three"]).max() / np.abs(outputs["three"]).max())
    for r in range(args.rounds):
        for name, s in sessions.items():
            row = {"round": r, "graph": name, "ms_per_run": median_run_ms(s, {"x": x}, RUNS)}
            results["rows"].append(row)
            print(f"round {r}  {name:6s} {row['ms_per_run']:.3f} ms for {args.layers} layers", flush=True)
        write_json(args.out, results)
    for name in sessions:
        ms = [r["ms_per_run"] for r in results["rows"] if r["graph"] == name]
        results["graphs"][name]["ms_per_run"] = {"median": float(np.median(ms)), "min": min(ms), "max": max(ms)}
    write_json(args.out, results)
    print({n: g["ops"] for n, g in results["graphs"].items()}, f"max rel diff {results['max_rel_diff']:.1e}")


if __name__ == "__main__":
    main()
