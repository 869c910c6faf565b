"""backends.onnx_avx2 on small graphs: what ONNX Runtime folds the 7-bit graph into (codes within
+-63, scales widened to match), that its product is the uint8 graph's within 7-bit rounding, and
that a graph not shaped as quantize_dynamic writes it is refused rather than rewritten wrongly."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeq.backends.onnx_avx2 import LEVELS, Avx2GraphError, seven_bit_weights_graph  # noqa: E402
from edgeq.backends.onnx_quant import dynamic_int8  # noqa: E402

K, N = 64, 48


def _float_model(skew: float = 0.0) -> onnx.ModelProto:
    """x [2, K] -> MatMul(W1) -> Relu -> MatMul(W2): two weights; `skew` shifts W1's columns off
    zero so that their uint8 zero points are far from 128."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((K, N)).astype(np.float32) + skew * np.linspace(0, 1, N, dtype=np.float32)
    w2 = rng.standard_normal((N, K)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, K])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _quantized(skew: float = 0.0) -> onnx.ModelProto:
    return dynamic_int8(_float_model(skew), per_channel=True, reduce_range=False)


def _session(model: onnx.ModelProto, folded_to=None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if folded_to is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folding, not fusing
        options.optimized_model_filepath = str(folded_to)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("skew", [0.0, 6.0])
def test_the_folded_graph_holds_7_bit_codes_and_computes_what_the_uint8_graph_does(skew, tmp_path):
    quantized = _quantized(skew)
    seven, rewritten = seven_bit_weights_graph(quantized)
    assert rewritten == 2
    x = np.random.default_rng(1).standard_normal((2, K)).astype(np.float32)
    reference = _session(_float_model(skew)).run(None, {"x": x})[0]
    uint8 = _session(quantized).run(None, {"x": x})[0]
    out = _session(seven, tmp_path / "folded.onnx").run(None, {"x": x})[0]
    folded = onnx.load(str(tmp_path / "folded.onnx"))
    codes = [numpy_helper.to_array(t) for t in folded.graph.initializer if t.data_type == TensorProto.INT8]
    assert len(codes) == 2 and {c.shape for c in codes} == {(K, N), (N, K)}
    for c in codes:
        assert np.abs(c.astype(np.int16)).max(axis=0).tolist() == [LEVELS] * c.shape[1]  # each column's range used
    assert not [n for n in folded.graph.node if n.op_type in ("Round", "ReduceMax", "Abs")]  # all folded (no others here)
    # 7 bits against 8: the error against float grows, within twice the uint8 graph's and a bound.
    scale = np.abs(reference).max()
    assert np.abs(out - reference).max() / scale < 0.05
    assert np.abs(out - uint8).max() / scale < 0.05
    assert np.abs(out - reference).max() > np.abs(uint8 - reference).max() / 4  # not the same numbers


def test_the_original_graph_is_left_as_it_was():
    quantized = _quantized()
    before = quantized.SerializeToString()
    seven_bit_weights_graph(quantized)
    assert quantized.SerializeToString() == before


def test_a_graph_without_uint8_weights_is_not_rewritten():
    copy, rewritten = seven_bit_weights_graph(_float_model())
    assert rewritten == 0


def test_a_matmulinteger_without_the_scale_product_after_it_is_refused():
    quantized = _quantized()
    graph = quantized.graph
    cast = next(n for n in graph.node if n.op_type == "Cast")
    graph.output.append(helper.make_tensor_value_info(cast.output[0], TensorProto.FLOAT, None))  # a second reader
    relu = helper.make_node("Relu", [cast.output[0]], ["extra"], name="extra")
    graph.node.append(relu)
    with pytest.raises(Avx2GraphError, match="no Cast -> Mul"):
        seven_bit_weights_graph(quantized)
