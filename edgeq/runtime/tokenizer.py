"""Token ids -> text, from the bundle's tokenizer.json (Whisper's byte-level BPE vocabulary).

A device only ever decodes: the prompts are token ids, never text. Decoding byte-level BPE needs
nothing but the id -> bytes table, so this reads that table from tokenizer.json with the json
module instead of building a `tokenizers.Tokenizer`, whose BPE merge tables (for encoding) cost
0.24 s of load time and ~15 MB resident on whisper-base (measured: the load is 0.5-0.9 s in all).
The output equals `Tokenizer.decode(ids, skip_special_tokens=True).strip()` for every id and for
random sequences (tests/runtime/test_tokenizer.py checks it against `tokenizers`).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from edgeq.errors import BundleError


@cache
def byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: each of the 256 bytes is spelled by one printable
    character in the vocabulary (printable bytes by themselves, the others from U+0100 on)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class WhisperTokenizer:
    def __init__(self, path: str | Path):
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            model, decoder = data["model"], data.get("decoder") or {}
            if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
                raise ValueError(f"a {model.get('type')} model with a {decoder.get('type')} decoder, "
                                 "not Whisper's byte-level BPE")
            byte_of = byte_of_char()
            added = {int(t["id"]): t for t in data.get("added_tokens", [])}
            size = max([*model["vocab"].values(), *added]) + 1
            pieces: list[bytes | None] = [b""] * size
            for token, i in model["vocab"].items():
                pieces[i] = bytes(byte_of[c] for c in token)
            for i, t in added.items():
                # Special tokens are skipped; the others (Whisper's <|0.00|>... timestamps) are kept as text.
                pieces[i] = None if t["special"] else t["content"].encode("utf-8")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise BundleError(f"{path}: not a readable Whisper tokenizer.json ({err})") from None
        self._pieces = pieces

    def decode(self, ids: list[int]) -> str:
        pieces, n = self._pieces, len(self._pieces)
        # An id the file does not name (a model whose vocabulary is larger) is skipped, as `tokenizers` does.
        raw = b"".join(p for i in ids if 0 <= i < n and (p := pieces[i]) is not None)
        return raw.decode("utf-8", errors="replace").strip()
