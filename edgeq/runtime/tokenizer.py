"""Token ids -> text, from the bundle's tokenizer.json (Whisper's byte-level BPE vocabulary).

A device only ever decodes: the prompts are token ids, never text. Decoding byte-level BPE needs
nothing but the id -> bytes table, so this reads that table from tokenizer.json with the json
module instead of building a `tokenizers.Tokenizer`, whose BPE merge tables (for encoding) cost
0.24 s of load time and ~15 MB resident on whisper-base (measured: the load is 0.5-0.9 s in all).
The output equals `Tokenizer.decode(ids, skip_special_tokens=True).strip()` for every id and for
random sequences (tests/runtime/test_tokenizer.py checks it against `tokenizers`).

Even so, parsing the 3.9 MB tokenizer.json (with its BPE merges, which decoding never uses) was
the largest part of a bundle's load: 0.11 s and 6 MB kept resident (28 MB at its peak) on
whisper-base. So `edgeq build` also writes the table itself, `tokenizer.decode.bin`, and a bundle
that has it loads that instead (measured in the commit that added it); bundles built before it
still read tokenizer.json.
"""

from __future__ import annotations

import json
import struct
from functools import cache
from pathlib import Path

import numpy as np

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


# tokenizer.decode.bin: MAGIC, uint32 N, N flag bytes (1: a special token, decoded as nothing),
# N + 1 uint32 offsets into the blob of every piece's bytes, the blob. Little-endian.
MAGIC = b"edgeq-decode-table-1\n"


def write_decode_table(tokenizer_json: Path, out: Path) -> None:
    """The id -> bytes table of `tokenizer_json`, in the binary form `WhisperTokenizer` loads fast."""
    pieces = WhisperTokenizer(tokenizer_json)._pieces
    offsets, blob = [0], bytearray()
    for p in pieces:
        blob += p or b""
        offsets.append(len(blob))
    flags = bytes(p is None for p in pieces)
    out.write_bytes(MAGIC + struct.pack("<I", len(pieces)) + flags + struct.pack(f"<{len(offsets)}I", *offsets)
                    + bytes(blob))


class _DecodeTable:
    """The pieces of a decode table, each sliced out of the file's bytes when a token is decoded.
    Why: making all 51,865 bytes objects at load took 8 of the table's 12 ms on whisper-base, for
    the few hundred tokens a transcript decodes."""

    __slots__ = ("_blob", "_offsets", "_flags")

    def __init__(self, blob: bytes, offsets: np.ndarray, flags: bytes):
        self._blob, self._offsets, self._flags = blob, offsets.tolist(), flags

    def __len__(self) -> int:
        return len(self._flags)

    def __getitem__(self, i: int) -> bytes | None:
        return None if self._flags[i] else self._blob[self._offsets[i]:self._offsets[i + 1]]


def _read_decode_table(path: Path) -> _DecodeTable:
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise ValueError("not an edgeq decode table (or one of another version)")
    at = len(MAGIC)
    (n,) = struct.unpack_from("<I", data, at)
    flags, at = data[at + 4:at + 4 + n], at + 4 + n
    if len(data) < at + 4 * (n + 1):
        raise ValueError("truncated")
    offsets = np.frombuffer(data, dtype="<u4", count=n + 1, offset=at).astype(np.int64)
    blob = data[at + 4 * (n + 1):]
    if len(flags) != n or offsets[0] != 0 or offsets[-1] != len(blob) or bool(np.any(offsets[1:] < offsets[:-1])):
        raise ValueError("truncated or inconsistent")
    return _DecodeTable(blob, offsets, flags)


class WhisperTokenizer:
    def __init__(self, path: str | Path):
        """From a tokenizer.json, or from the decode table `edgeq build` writes beside it (.bin)."""
        path = Path(path)
        if path.suffix == ".bin":
            try:
                self._pieces = _read_decode_table(path)
            except (OSError, ValueError, struct.error) as err:
                raise BundleError(f"{path}: not a readable edgeq decode table ({err})") from None
            return
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
