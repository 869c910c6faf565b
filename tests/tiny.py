"""A tiny random Whisper checkpoint folder, built from a config in a second (no download).

It has the layout of a real checkpoint (config, generation config, tokenizer.json, safetensors
weights) so it goes through exactly the code paths a real model does. The tokenizer is a
byte-level BPE over 256 byte symbols plus Whisper's special tokens, in Whisper's order.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
]
# Whisper's 1501 timestamp tokens (<|0.00|> .. <|30.00|>) follow the specials, as in a real model:
# long audio is sought by them, and with only a few the seek loop would advance 0.1 s per window.
N_TIMESTAMPS = 1501
VOCAB_SIZE = 256 + len(SPECIALS) + N_TIMESTAMPS


def _ids() -> dict[str, int]:
    return {tok: 256 + i for i, tok in enumerate(SPECIALS)}


def make_tokenizer(folder: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "add_prefix_space": False, "model_max_length": 1024,
    }, indent=1))


def make_tiny_whisper(folder: Path, seed: int = 0, d_model: int = 128, layers: int = 2) -> Path:
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    ids = _ids()
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=VOCAB_SIZE, num_mel_bins=80, d_model=d_model,
        encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model,
        max_source_positions=1500, max_target_positions=48,
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        begin_suppress_tokens=[ids["<|endoftext|>"]], suppress_tokens=[],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    # Larger-than-init weights so that logits are far apart and greedy paths are stable.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    model.save_pretrained(folder, safe_serialization=True)
    generation = {
        "decoder_start_token_id": sot, "eos_token_id": eot, "pad_token_id": eot, "bos_token_id": eot,
        "no_timestamps_token_id": ids["<|notimestamps|>"], "prev_sot_token_id": ids["<|startofprev|>"],
        "lang_to_id": {"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
        "task_to_id": {"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        "suppress_tokens": [ids["<|startoflm|>"]], "begin_suppress_tokens": [220 % 256, eot],
        "is_multilingual": True, "max_length": 48,
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=1))
    make_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80, "hop_length": 160,
        "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "chunk_length": 30,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False, "sampling_rate": 16000,
    }, indent=1))
    return folder
