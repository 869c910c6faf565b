"""backends.onnx_head on small graphs: the split gives the same logits, and a decoder that does not
end in a projection with constant weights is refused, not split wrongly."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeq.backends.onnx_head import HeadSplitError, split_head  # noqa: E402

D, V = 8, 40


def _decoder(tail: str = "gemm") -> onnx.ModelProto:
    """x -> Mul(scale) -> h -> projection onto the table -> logits; the table is also embedded."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((V, D)).astype(np.float32), "table")
    scale = numpy_helper.from_array(np.full((1, D), 0.5, np.float32), "scale")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("Add", ["x", "emb"], ["xe"], name="add"),
             helper.make_node("Mul", ["xe", "scale"], ["h"], name="norm")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, V]),
               helper.make_tensor_value_info("xe", TensorProto.FLOAT, [1, D])]
    if tail == "gemm":
        nodes.append(helper.make_node("Gemm", ["h", "table"], ["logits"], name="head", transB=1))
    elif tail == "gemm+cast":
        nodes += [helper.make_node("Gemm", ["h", "table"], ["l16"], name="head", transB=1),
                  helper.make_node("Cast", ["l16"], ["logits"], name="cast", to=TensorProto.FLOAT)]
    elif tail == "not a projection":
        nodes.append(helper.make_node("Add", ["h", "h"], ["logits"], name="add2"))
    elif tail == "read twice":
        nodes += [helper.make_node("Gemm", ["h", "table"], ["logits"], name="head", transB=1),
                  helper.make_node("ReduceMax", ["logits"], ["top"], name="top", keepdims=1)]
        outputs.append(helper.make_tensor_value_info("top", TensorProto.FLOAT, [1, 1]))
    graph = helper.make_graph(
        nodes, "decoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        outputs, [table, scale],
        value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, D])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("tail", ["gemm", "gemm+cast"])
def test_the_decoder_and_its_head_give_the_logits_the_whole_decoder_gave(tail):
    whole = _decoder(tail)
    feeds = {"x": np.arange(D, dtype=np.float32)[None] / D, "ids": np.array([3], np.int64)}
    logits, other = _run(whole, feeds)
    body = onnx.ModelProto()
    body.CopyFrom(whole)
    head = split_head(body)
    onnx.checker.check_model(body, full_check=True)
    onnx.checker.check_model(head, full_check=True)
    assert [o.name for o in body.graph.output] == ["hidden", "xe"]
    assert [n.op_type for n in head.graph.node] == (["Gemm"] if tail == "gemm" else ["Gemm", "Cast"])
    # the table stays in the decoder for its embedding, and the head has its own reference to it
    assert [t.name for t in body.graph.initializer] == ["table", "scale"]
    assert [t.name for t in head.graph.initializer] == ["table"]
    hidden, other_again = _run(body, feeds)
    np.testing.assert_array_equal(other_again, other)
    np.testing.assert_array_equal(_run(head, {"hidden": hidden})[0], logits)


@pytest.mark.parametrize("tail, message", [
    ("not a projection", r"'logits' comes from Add 'add2', not from a projection"),
    ("read twice", r"the projection's outputs are read elsewhere in the decoder \('top'\)"),
])
def test_a_decoder_that_does_not_end_in_a_projection_is_not_split(tail, message):
    model = _decoder(tail)
    before = model.SerializeToString()
    with pytest.raises(HeadSplitError, match=message):
        split_head(model)
    assert model.SerializeToString() == before  # refused before anything was changed
