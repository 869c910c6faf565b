"""benchmarks/cpu_limits.py's arithmetic: the operations of one encoder window, by the kind of kernel
that runs them, and the table that compares a bundle with the floors made of them."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import cpu_limits
    import tables
finally:
    sys.path.remove(str(REPO / "benchmarks"))

# whisper-base's shapes (its config.json), written out so that the test runs without ../shared
BASE = {"d_model": 512, "max_source_positions": 1500, "encoder_ffn_dim": 2048, "num_mel_bins": 80,
        "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8, "decoder_ffn_dim": 2048,
        "vocab_size": 51865}


def test_an_encoder_window_counts_every_product_once_by_its_kernel():
    parts = cpu_limits.encoder_gop(BASE)
    t, d = 1500, 512
    # per layer: Q, K, V, O (d x d) and the MLP (d x 4d, 4d x d), 2 operations per multiply-add
    assert abs(parts["linear"] - 6 * 2 * t * (4 * d * d + 2 * d * 2048) / 1e9) < 1e-9
    # the decoder's 6 layers each take a key and a value projection of the encoder's output
    assert abs(parts["cross_kv"] - 6 * 2 * (2 * t * d * d) / 1e9) < 1e-9
    # QKᵀ and AV: t x t x d each, per layer
    assert abs(parts["attention"] - 6 * 2 * (2 * t * t * d) / 1e9) < 1e-9
    assert round(sum(parts.values()), 1) == 96.8  # the README's figure for whisper-base
    assert round(parts["attention"], 1) == 27.6


def test_attention_rates_are_measured_for_both_products():
    rates = cpu_limits.attention_gflops(t=32, heads=2, head_dim=8, threads=1)
    assert set(rates) == {"scores", "mix"} and all(r > 0 for r in rates.values())


def _result(tmp_path: Path, **extra) -> str:
    data = {"env": {"cpu": {"model": "test CPU", "key_flags": ["avx2"]}, "os": "Linux", "versions": {}},
            "threads": 2, "gemm_gops": {"1500x512x512": {"float32": 200.0, "int8": 400.0}},
            "read_bandwidth_gbs": 20.0, "encoder_gop_per_window": 96.8, "encoder_floor_s_at_int8": 0.242,
            "decoder_int8_mb_per_token": 48.6, "decoder_floor_ms_per_token": 2.43,
            "bundle": {"encoder_s_per_window": 0.4, "decoder_ms_per_token": 3.0}, **extra}
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(data))
    return tables.cpu_limits(str(path))


def test_the_table_adds_the_kernels_floor_where_the_run_measured_it(tmp_path):
    old = _result(tmp_path)
    assert "ONNX Runtime's kernels" not in old and "| 1.7 × |" in old  # 0.4 s over 0.242 s
    new = _result(tmp_path, encoder_gop_parts={"linear": 56.6, "cross_kv": 9.4, "attention": 27.6, "convs": 3.2},
                  attention_gflops={"scores": 180.0, "mix": 160.0}, encoder_floor_s_with_kernels=0.32)
    row = next(line for line in new.splitlines() if "ONNX Runtime's kernels" in line)
    assert "66.0 GOP int8" in row and "at 180 GFLOPS" in row and "| 1.25 × |" in row  # 0.4 s over 0.32 s
    assert "(QKᵀ, AV): 180, 160 GFLOPS" in new
