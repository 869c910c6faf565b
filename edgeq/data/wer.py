"""Word error rate as LibriSpeech WER is reported for Whisper: jiwer after Whisper's English normalizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return " ".join(_normalizer()(text).split())


@dataclass
class WordErrors:
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.errors / self.ref_words if self.ref_words else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "wer": self.wer}


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Errors of one utterance after normalization. The reference must not normalize to nothing."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        raise ValueError("the reference is empty after normalization")
    if not hyp:  # jiwer refuses an empty hypothesis: every reference word is a deletion
        n = len(ref.split())
        return WordErrors(0, n, 0, 0, n)
    out = jiwer.process_words(ref, hyp)
    return WordErrors(out.substitutions, out.deletions, out.insertions, out.hits, out.hits + out.substitutions + out.deletions)


def corpus_wer(items: list[WordErrors]) -> float:
    words = sum(i.ref_words for i in items)
    return sum(i.errors for i in items) / words if words else float("nan")


def error_runs(reference: str, hypothesis: str) -> dict[str, list[int]]:
    """Lengths of the runs of consecutive deleted and inserted words, after normalization.

    A long transcript that loses a sentence at a window edge shows up as one long deletion run
    (and one that decodes it twice as an insertion run), which a corpus WER averages away.
    """
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not hyp:
        return {"deleted": [len(ref.split())] if ref else [], "inserted": []}
    runs: dict[str, list[int]] = {"deleted": [], "inserted": []}
    for chunk in jiwer.process_words(ref, hyp).alignments[0]:
        if chunk.type == "delete":
            runs["deleted"].append(chunk.ref_end_idx - chunk.ref_start_idx)
        elif chunk.type == "insert":
            runs["inserted"].append(chunk.hyp_end_idx - chunk.hyp_start_idx)
    return runs
