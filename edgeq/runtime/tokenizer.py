"""Text <-> token ids through the bundle's tokenizer.json (the `tokenizers` package alone)."""

from __future__ import annotations

from pathlib import Path

from edgeq.errors import BundleError


class WhisperTokenizer:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for a malformed file
            raise BundleError(f"{path}: not a readable tokenizer.json ({err})") from None

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True).strip()
