"""Write a Hugging Face Whisper checkpoint as a whisper.cpp ggml model file (f16, optionally q8_0, q5_0).

    python benchmarks/convert_ggml.py [--model DIR] [--out /tmp/ggml/ggml-base.bin]
                                      [--q8_0 /tmp/ggml/ggml-base-q8_0.bin] [--q5_0 /tmp/ggml/ggml-base-q5_0.bin]
                                      [--mel-filters mel_filters.npz]

whisper.cpp is one of the systems compare_systems.py measures, and its models normally come from
its own download script, which these machines cannot reach. This script rebuilds the file from the
shared transformers checkpoint instead, following the legacy ggml layout that whisper.cpp's
`models/convert-h5-to-ggml.py` writes and `whisper_model_load` reads (all integers little-endian
int32):

    magic 0x67676d6c ("ggml")
    hparams  n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
             n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype
    mel filters  n_mel, n_fft, then n_mel*n_fft float32
    tokenizer    n_tokens, then per token: byte length, raw bytes
    tensors      per tensor: n_dims, name length, tensor type, dims (innermost first), name, data

--q8_0 / --q5_0 additionally write what whisper.cpp's `quantize` tool would make of the f16 file
(that tool is not in the pywhispercpp wheel): every 2-D tensor except the conv biases and positional
embeddings becomes GGML_TYPE_Q8_0 (Q5_0), and the header's ftype becomes 1000 * qnt-version + 7 (8).
The block layouts and rounding follow ggml's reference quantize_row_q8_0_ref / quantize_row_q5_0_ref
(ggml/src/ggml-quants.c, whisper.cpp v1.8.5).

Only numpy and safetensors are needed (no torch); the mel filters come from openai-whisper's
mel_filters.npz when given, else from transformers' WhisperFeatureExtractor (same slaney filters,
within 2e-9).
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np
from safetensors import safe_open

GGML_MAGIC = 0x67676D6C
GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q5_0, GGML_TYPE_Q8_0 = 0, 1, 6, 8
GGML_FTYPE_MOSTLY_Q8_0, GGML_FTYPE_MOSTLY_Q5_0 = 7, 8
GGML_QNT_VERSION, GGML_QNT_VERSION_FACTOR = 2, 1000
QK8_0 = 32  # values per q8_0 block: one float16 scale + 32 int8
QK5_0 = 32  # values per q5_0 block: one float16 scale, 32 high bits, 32 nibbles

# Tensors that whisper.cpp wants in float32 even in an f16 file, and that its quantize tool leaves alone.
KEEP_F32 = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"}

# HF module names -> the openai-whisper names whisper.cpp looks tensors up by.
SUBLAYER = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
TOP_LEVEL = {
    "encoder.layer_norm.weight": "encoder.ln_post.weight", "encoder.layer_norm.bias": "encoder.ln_post.bias",
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "decoder.layer_norm.weight": "decoder.ln.weight", "decoder.layer_norm.bias": "decoder.ln.bias",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
}


def ggml_name(hf_name: str) -> str | None:
    """'model.encoder.layers.3.self_attn.q_proj.weight' -> 'encoder.blocks.3.attn.query.weight'."""
    if hf_name == "proj_out.weight":
        return None  # tied to decoder.embed_tokens; whisper.cpp reuses the token embedding
    parts = hf_name.split(".")[1:]  # drop the leading "model."
    if parts[1] == "layers":
        module, leaf = ".".join(parts[3:-1]), parts[-1]
        return ".".join([parts[0], "blocks", parts[2], SUBLAYER[module], leaf])
    name = ".".join(parts)
    return TOP_LEVEL.get(name, name)


def load_vocab(model: Path) -> list[bytes]:
    """The BPE tokens by id, as raw bytes. Special tokens (<|endoftext|> onwards) are left out on
    purpose: whisper.cpp names the ids past the written vocabulary itself ([_EOT_], [_SOT_], ...),
    exactly as with the ggml files made from openai-whisper's tiktoken vocabulary."""
    if (model / "vocab.json").is_file():
        vocab = json.loads((model / "vocab.json").read_text(encoding="utf-8"))
    else:
        vocab = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    from edgeq.runtime.tokenizer import byte_of_char  # GPT-2's byte-level alphabet, as edgeq decodes it

    byte_of = byte_of_char()
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _, i in ordered] == list(range(len(ordered))), "token ids must be contiguous from 0"
    return [bytes(byte_of[c] for c in token) for token, _ in ordered]


def load_mel_filters(n_mels: int, npz: Path | None) -> np.ndarray:
    """(n_mels, 201) float32: whisper.cpp computes its log-mel spectrogram with the filters in the file."""
    if npz is not None:
        with np.load(npz) as f:
            return f[f"mel_{n_mels}"].astype(np.float32)
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels).mel_filters.T.astype(np.float32)


def quantize_q8_0(x: np.ndarray) -> bytes:
    """ggml's reference q8_0 (quantize_row_q8_0_ref): per block of 32, d = max|x| / 127 stored as float16,
    q = roundf(x / d) as int8. Float32 arithmetic and round-half-away-from-zero, as in C."""
    blocks = x.astype(np.float32).reshape(-1, QK8_0)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    scaled = blocks * inv
    q = (np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))).astype(np.int8)
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", (QK8_0,))])
    out["d"], out["qs"] = d[:, 0].astype(np.float16), q
    return out.tobytes()


def quantize_q5_0(x: np.ndarray) -> bytes:
    """ggml's reference q5_0: per block of 32, d = (the value of largest magnitude) / -16 as float16,
    q = min(31, (int)(x / d + 16.5)); the low nibbles of values j and j+16 share byte j, the fifth
    bits go to a 32-bit mask (bit j for value j)."""
    blocks = x.astype(np.float32).reshape(-1, QK5_0)
    pick = np.abs(blocks).argmax(axis=1)
    d = blocks[np.arange(len(blocks)), pick][:, None] / np.float32(-16)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(31, np.trunc(blocks * inv + np.float32(16.5)).astype(np.int32)).astype(np.uint32)
    lo, hi = q[:, : QK5_0 // 2], q[:, QK5_0 // 2 :]
    qs = ((lo & 0x0F) | ((hi & 0x0F) << 4)).astype(np.uint8)
    bits = (q >> 4) & 1  # value j's fifth bit at position j (the second half at 16..31)
    qh = (bits << np.arange(QK5_0, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (QK5_0 // 2,))])
    out["d"], out["qh"], out["qs"] = d[:, 0].astype(np.float16), qh, qs
    return out.tobytes()


def write_header(f, cfg: dict, ftype: int, filters: np.ndarray, tokens: list[bytes]) -> None:
    ints = [GGML_MAGIC, cfg["vocab_size"], cfg["max_source_positions"], cfg["d_model"],
            cfg["encoder_attention_heads"], cfg["encoder_layers"],
            # n_text_ctx: old HF configs called it max_length; both are 448 for every Whisper size
            cfg.get("max_target_positions", cfg.get("max_length")), cfg["d_model"],
            cfg["decoder_attention_heads"], cfg["decoder_layers"], cfg["num_mel_bins"], ftype]
    f.write(struct.pack("<12i", *ints))
    f.write(struct.pack("<2i", *filters.shape))
    f.write(filters.astype("<f4").tobytes())
    f.write(struct.pack("<i", len(tokens)))
    for tok in tokens:
        f.write(struct.pack("<i", len(tok)) + tok)


def write_tensor(f, name: str, data: np.ndarray, ttype: int) -> None:
    raw = name.encode("utf-8")
    f.write(struct.pack("<3i", data.ndim, len(raw), ttype))
    f.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))  # ggml lists the innermost dim first
    f.write(raw)
    if ttype == GGML_TYPE_Q8_0:
        f.write(quantize_q8_0(data))
    elif ttype == GGML_TYPE_Q5_0:
        f.write(quantize_q5_0(data))
    else:
        f.write(data.astype("<f4" if ttype == GGML_TYPE_F32 else "<f2").tobytes())


QUANTIZED = {"q8_0": (GGML_TYPE_Q8_0, GGML_FTYPE_MOSTLY_Q8_0), "q5_0": (GGML_TYPE_Q5_0, GGML_FTYPE_MOSTLY_Q5_0)}


def convert(model: Path, out: Path, q8_out: Path | None, mel_npz: Path | None, q5_out: Path | None = None) -> None:
    cfg = json.loads((model / "config.json").read_text())
    filters = load_mel_filters(cfg["num_mel_bins"], mel_npz)
    tokens = load_vocab(model)
    files = [(out, None)] + [(p, q) for p, q in ((q8_out, "q8_0"), (q5_out, "q5_0")) if p is not None]
    outputs = []
    for path, quant in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "wb")
        ftype = GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + QUANTIZED[quant][1] if quant else 1
        write_header(f, cfg, ftype, filters, tokens)
        outputs.append((f, quant))
    n = 0
    with safe_open(model / "model.safetensors", framework="np") as st:
        for hf_name in st.keys():
            name = ggml_name(hf_name)
            if name is None:
                continue
            # squeeze as the reference converter does; the checkpoint is float16, upcasting is exact
            data = st.get_tensor(hf_name).squeeze().astype(np.float32)
            if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(-1, 1)  # whisper.cpp adds the bias as an [n, 1] tensor to the conv output
            for f, quant in outputs:
                if data.ndim < 2 or name in KEEP_F32:
                    ttype = GGML_TYPE_F32  # norms, biases, positional tables
                elif quant and data.ndim == 2:
                    ttype = QUANTIZED[quant][0]  # the linear weights and the token embedding
                else:
                    ttype = GGML_TYPE_F16  # incl. the 3-D conv kernels, which quantize leaves as they are
                write_tensor(f, name, data, ttype)
            n += 1
    for f, _ in outputs:
        f.close()
    print(f"{n} tensors, {len(tokens)} tokens -> " + ", ".join(f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p, _ in files))


def main() -> None:
    from _common import WHISPER_BASE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=WHISPER_BASE, help="transformers Whisper folder")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ggml/ggml-base.bin"), help="f16 ggml file")
    ap.add_argument("--q8_0", type=Path, help="also write a q8_0 ggml file here")
    ap.add_argument("--q5_0", type=Path, help="also write a q5_0 ggml file here")
    ap.add_argument("--mel-filters", type=Path, help="openai-whisper's whisper/assets/mel_filters.npz")
    args = ap.parse_args()
    convert(args.model, args.out, args.q8_0, args.mel_filters, args.q5_0)


if __name__ == "__main__":
    main()
