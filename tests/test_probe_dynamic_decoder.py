"""benchmarks/probe_dynamic_decoder.py makes a bundle whose decoder graphs run DynamicQuantizeMatMul
instead of 8-bit MatMulNBits: it must open as a verified bundle and compute the same step, or its
timings (docs/performance.md) would be of some other decoder."""

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgeq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import probe_dynamic_decoder as probe
    from decoder_step import run as run_steps
finally:
    sys.path.remove(str(REPO / "benchmarks"))


def _ops(path: Path) -> dict[str, int]:
    ops: dict[str, int] = {}
    for node in onnx.load(path, load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def test_the_probe_runs_the_same_decoder_step_with_dynamic_int8_weights(tiny_model, tmp_path):
    from edgeq.spec.recipe import apply_overrides, load_recipe

    # The probe measured this lever before it was built in: it reads a decoder of 8-bit MatMulNBits,
    # which onnx-int8-dynamic now writes as per-channel int8 itself (options.decoder_int8).
    blocks = apply_overrides(load_recipe("onnx-int8-dynamic"), ["options.decoder_int8=blocks",
                                                                "weights.granularity=group", "weights.group_size=128"])
    bundle = edgeq.build(blocks, model=str(tiny_model), out=tmp_path / "b", language="en").path
    out = tmp_path / "probe"
    counts = probe.probe(bundle, out, levels=63)
    assert set(counts) == set(probe.DECODERS) and len(set(counts.values())) == 1 and counts["decoder.onnx"] > 0
    for name in probe.DECODERS:
        before, after = _ops(bundle / name), _ops(out / name)
        assert "MatMulNBits" not in after, name  # the head's projection is a graph of its own
        assert after["DynamicQuantizeMatMul"] == before["MatMulNBits"] == counts[name]

    features = np.random.default_rng(0).standard_normal((80, 3000)).astype(np.float32)
    logits = [run_steps(edgeq.load(b, threads=1, language="en"), features, steps=5)[1] for b in (bundle, out)]
    # 7-bit weights per channel against 8-bit blocks of 128: close, not equal (int8 bundles'
    # logits are checked to 0.1 of their range against float32 in tests/backends/test_onnx.py)
    difference = np.abs(logits[1] - logits[0]).max() / np.abs(logits[0]).max()
    assert 0 < difference < 0.1


def test_a_bundle_without_8_bit_decoder_weights_is_one_line(tiny_model, tmp_path, monkeypatch):
    bundle = edgeq.build("onnx-fp32", model=str(tiny_model), out=tmp_path / "b", language="en").path
    monkeypatch.setattr(sys, "argv", ["probe_dynamic_decoder.py", str(bundle), str(tmp_path / "probe")])
    with pytest.raises(SystemExit) as exit_info:
        probe.main()
    assert str(exit_info.value) == f"{bundle}: no 8-bit MatMulNBits in its decoder graphs"
