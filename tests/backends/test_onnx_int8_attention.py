"""The encoder's self-attention in int8 for CPUs with VNNI (recipe option vnni_attention = "int8",
backends.onnx_int8_attention)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgeq.backends.onnx_int8_attention import QUERY_BLOCKS, int8_self_attention  # noqa: E402
from edgeq.errors import RecipeError  # noqa: E402
from edgeq.runtime.int8_kernels import vnni_kernels  # noqa: E402

HEADS, FRAMES, HEAD_DIM = 4, 96, 16


def _attention_graph():
    """One fused MultiHeadAttention as edgeq's fusion writes it: q (already scaled), k, v [1, F, H * Dh]."""
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, FRAMES, HEADS * HEAD_DIM]) for n in ("q", "k", "v")]
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"], name="mha", domain="com.microsoft",
                            num_heads=HEADS, scale=1.0)
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, FRAMES, HEADS * HEAD_DIM])
    return helper.make_model(helper.make_graph([node], "g", io, [out]),
                             opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def _run(model, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _feeds(seed=0):
    # Attention as peaked as a trained encoder's: queries scaled so that each row's largest scores stand out.
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((1, FRAMES, HEADS * HEAD_DIM)).astype(np.float32) for _ in range(3))
    return {"q": q * np.float32(2.0 / np.sqrt(HEAD_DIM)), "k": k, "v": v}


def _scan_bodies(graph):
    from onnx import helper

    return [helper.get_attribute_value(a) for n in graph.node if n.op_type == "Scan" for a in n.attribute
            if a.name == "body"]


def test_the_rewrite_replaces_every_fused_attention_with_a_scan_over_heads_of_int8_products_in_query_blocks():
    import onnx

    model = _attention_graph()
    assert int8_self_attention(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "MultiHeadAttention" not in ops
    assert ops.count("Scan") == 1  # one iteration per head
    # no float32 copy of k or v to take max |x| from, and k is not transposed to [H, B, Dh, F] in one
    # step, which ONNX Runtime does element by element (onnx_int8_attention, where k is quantized)
    assert "Abs" not in ops
    perms = [list(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]
    assert [2, 0, 3, 1] not in perms and [2, 3, 0, 1] in perms
    [body] = _scan_bodies(model.graph)
    body_ops = [n.op_type for n in body.node]
    assert body_ops.count("MatMulIntegerToFloat") == 2 * QUERY_BLOCKS
    assert body_ops.count("Softmax") == QUERY_BLOCKS
    assert int8_self_attention(model) == 0  # nothing left to rewrite


def test_a_fusion_it_does_not_know_is_refused():
    from onnx import helper

    from edgeq.backends.onnx_fusion import FusionError

    model = _attention_graph()
    model.graph.node[0].attribute.append(helper.make_attribute("mask_filter_value", -1e4))
    model.graph.node[0].attribute[1].f = 0.5  # scale 0.5: q not scaled beforehand
    with pytest.raises(FusionError, match="scale 1"):
        int8_self_attention(model)


def test_on_any_cpu_the_int8_graph_runs_and_keeps_the_output_shape():
    # Shapes and reshapes are checked wherever ONNX Runtime runs; the numbers and the head/block
    # order only on VNNI, below (an AVX2 CPU's u8 x s8 products may saturate).
    model = _attention_graph()
    feeds = _feeds()
    reference = _run(model, feeds)
    int8_self_attention(model)
    assert _run(model, feeds).shape == reference.shape


@pytest.mark.skipif(not vnni_kernels(), reason="this CPU has no VNNI: ONNX Runtime's u8 x s8 products may saturate here")
def test_on_a_vnni_cpu_int8_attention_is_float32_attention_within_quantization_error():
    model = _attention_graph()
    for seed in range(3):
        feeds = _feeds(seed)
        reference = _run(model, feeds)
        rewritten = _attention_graph()
        int8_self_attention(rewritten)
        got = _run(rewritten, feeds)
        error = np.linalg.norm(got - reference) / np.linalg.norm(reference)
        assert error < 0.05, f"relative error {error:.3f}"
        # the heads and query blocks in their places: each output row is closest to its own reference row
        rows = got.reshape(FRAMES, HEADS, HEAD_DIM).transpose(1, 0, 2)
        ref_rows = reference.reshape(FRAMES, HEADS, HEAD_DIM).transpose(1, 0, 2)
        for h in range(HEADS):
            distance = ((rows[h][:, None] - ref_rows[h][None]) ** 2).sum(-1)
            assert (distance.argmin(1) == np.arange(FRAMES)).mean() > 0.95


def test_the_option_builds_an_int8_bundle_whose_portable_encoder_keeps_float32_attention(tiny_model, tmp_path):
    import onnx

    import edgeq
    from edgeq.backends.onnx_vnni import VNNI_ONNX
    from edgeq.format.layout import ENCODER_ONNX
    from edgeq.spec.recipe import apply_overrides, load_recipe

    config = json.loads((tiny_model / "config.json").read_text())
    recipe = apply_overrides(load_recipe("onnx-int8-dynamic"), ["options.vnni_attention=int8"])
    bundle = edgeq.build(recipe, model=str(tiny_model), out=tmp_path / "b", language="en")
    graphs = {name: onnx.load(str(bundle.path / name), load_external_data=False).graph for name in (ENCODER_ONNX, VNNI_ONNX)}
    ops = {name: [n.op_type for n in g.node] for name, g in graphs.items()}
    assert ops[ENCODER_ONNX].count("MultiHeadAttention") == config["encoder_layers"]
    assert "MultiHeadAttention" not in ops[VNNI_ONNX]
    assert ops[VNNI_ONNX].count("Scan") == config["encoder_layers"]
    assert sum([n.op_type for n in body.node].count("MatMulIntegerToFloat")
               for body in _scan_bodies(graphs[VNNI_ONNX])) == 2 * config["encoder_layers"] * QUERY_BLOCKS
    layout = json.loads((bundle.path / "onnx.json").read_text())
    assert "vnni_attention" in layout["quantization"]
    assert bundle.recipe.options["vnni_attention"] == "int8"
    text = edgeq.load(bundle.path, language="en").transcribe(np.zeros(16000, np.float32)).text
    assert isinstance(text, str)


@pytest.mark.parametrize("recipe, override, message", [
    ("onnx-int8-dynamic", "options.attention=blocks", "needs options.attention = 'fused'"),
    ("onnx-int4", None, "only an int8 encoder has"),
    ("onnx-fp32", None, "only an int8 encoder has"),
])
def test_recipes_it_cannot_apply_to_are_refused_in_one_line(recipe, override, message, tiny_model, tmp_path):
    import edgeq
    from edgeq.spec.recipe import apply_overrides, load_recipe

    r = apply_overrides(load_recipe(recipe), ["options.vnni_attention=int8", *([override] if override else [])])
    with pytest.raises(RecipeError, match=message) as err:
        edgeq.build(r, model=str(tiny_model), out=tmp_path / "b", language="en")
    assert "\n" not in str(err.value)
