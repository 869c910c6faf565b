"""benchmarks/node_overhead.py: its chains are n nodes that compute what they say (so that the time
of 600 against 100 of them is 500 nodes' cost), and a bundle's decoder nodes are counted as ONNX
Runtime runs them."""

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import node_overhead
finally:
    sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.parametrize("op", ["Add", "Transpose", "Reshape"])
def test_a_chain_is_n_nodes_that_compute_what_they_say(op):
    import onnxruntime as ort

    model = node_overhead.chain(7, op)
    assert [n.op_type for n in model.graph.node] == [op] * 7 + ["Identity"]
    x = np.random.default_rng(0).random(node_overhead.SHAPE, dtype=np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    (y,) = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    expected = {"Add": x + 7e-3, "Transpose": x.transpose(0, 2, 1, 3), "Reshape": x}[op]
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert node_overhead.run_ms(model, threads=1, spinning=False) > 0


def test_a_bundle_s_decoder_nodes_are_counted_after_optimization(tmp_path, tiny_model):
    import edgeq

    bundle = edgeq.build("onnx-int8-dynamic", model=str(tiny_model), out=tmp_path / "b", language="en")
    counts = node_overhead.decoder_nodes(bundle.path, threads=1)
    assert counts.get("DynamicQuantizeMatMul", 0) + counts.get("MatMulIntegerToFloat", 0) > 0
    assert "GroupQueryAttention" in counts and sum(counts.values()) > 20
