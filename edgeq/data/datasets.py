"""Speech datasets: what `edgeq bench` measures and what static recipes calibrate on.

A dataset spec is one of:
  * a LibriSpeech folder in the OpenSLR layout (`<split>/SPK/CHAPTER/*.flac` + `SPK-CHAPTER.trans.txt`),
    at any depth below the folder given;
  * a manifest file, TSV (header naming an audio column — file/path/audio — and a text column —
    transcript/text/reference/sentence) or JSONL (objects with the same keys); audio paths are
    relative to the manifest;
  * a folder holding any mix of the two (e.g. ../shared/data/speech-dev: LibriSpeech + other/manifest.tsv);
  * a folder of audio files without references (calibration and transcription only);
  * `librispeech:test-clean` / `librispeech:test-other` (and dev-*): the official split from the
    local cache (`$EDGEQ_DATA/LibriSpeech/<split>`, default ~/.cache/edgeq); on first use it is
    downloaded there from OpenSLR (resumable, sha256-checked; see edgeq.data.librispeech), reporting
    to the optional `progress(stage, done, total)` callback.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import DatasetError
from edgeq.util import one_line, parse_json, read_text

AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".ogg", ".opus")
_AUDIO_KEYS = ("file", "path", "audio", "audio_path", "audio_filepath", "filename")
_TEXT_KEYS = ("transcript", "text", "reference", "sentence", "transcription")
LIBRISPEECH_SPLITS = ("test-clean", "test-other", "dev-clean", "dev-other")


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: Path
    reference: str | None


@dataclass(frozen=True)
class Dataset:
    spec: str
    utterances: tuple[Utterance, ...]

    def __len__(self) -> int:
        return len(self.utterances)


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEQ_DATA", Path.home() / ".cache" / "edgeq"))


def open_dataset(spec: str | Path, limit: int | None = None, progress=None) -> Dataset:
    """Read a dataset spec; `progress(stage, done, total)` hears about a LibriSpeech download."""
    text = str(spec)
    if text.startswith("librispeech:"):
        utts = _cached_librispeech(text.split(":", 1)[1], progress)
    else:
        path = Path(text).expanduser()
        if path.is_file():
            utts = _manifest(path)
        elif path.is_dir():
            utts = _folder(path)
        else:
            raise DatasetError(
                f"dataset not found: {text} (expected a LibriSpeech folder, a .tsv/.jsonl manifest, "
                "a folder of audio files, or librispeech:test-clean)"
            )
    if not utts:
        raise DatasetError(f"{text}: holds no audio files")
    utts = sorted(utts, key=lambda u: u.id)
    if limit is not None:
        utts = utts[:limit]
    return Dataset(text, tuple(utts))


def _folder(root: Path) -> list[Utterance]:
    utts: list[Utterance] = []
    covered: set[Path] = set()
    for trans in sorted(root.rglob("*.trans.txt")):
        for utt in _librispeech_chapter(trans):
            utts.append(utt)
            covered.add(utt.audio.resolve())
    for manifest in sorted(list(root.rglob("*.tsv")) + list(root.rglob("*.jsonl"))):
        if manifest.name == "SOURCES.tsv":  # provenance tables are not manifests
            continue
        for utt in _manifest(manifest):
            utts.append(utt)
            covered.add(utt.audio.resolve())
    if not utts:
        for audio in sorted(root.rglob("*")):
            if audio.suffix.lower() in AUDIO_SUFFIXES and audio.resolve() not in covered:
                utts.append(Utterance(audio.relative_to(root).with_suffix("").as_posix(), audio, None))
    return utts


_UTTERANCE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _librispeech_chapter(trans: Path) -> list[Utterance]:
    utts = []
    for n, line in enumerate(read_text(trans, DatasetError, "transcript file").splitlines(), 1):
        if not line.strip():
            continue
        utt_id, _, text = line.strip().partition(" ")
        # The id names the audio file next to the transcript: a separator, ".." or a NUL byte in
        # it would point elsewhere (or make the path unusable), so only LibriSpeech-like ids pass.
        if not _UTTERANCE_ID.fullmatch(utt_id):
            raise DatasetError(f"{trans}:{n}: {utt_id[:40]!r} is not an utterance id (letters, digits, '-', '_', '.')")
        audio = trans.parent / f"{utt_id}.flac"
        if not text:
            raise DatasetError(f"{trans}:{n}: no transcript after the utterance id")
        utts.append(Utterance(utt_id, audio, text))
    return utts


def _manifest(path: Path) -> list[Utterance]:
    text = read_text(path, DatasetError, "dataset manifest")
    rows: list[tuple[str, dict]] = []  # (where, row)
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                row = parse_json(line, f"{path}:{n}", DatasetError)
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}:{n}: not a JSON object (expected {{\"file\": ..., \"text\": ...}})")
                rows.append((f"{path}:{n}", row))
    else:
        try:
            reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
            table = [r for r in reader if r]
        except csv.Error as err:
            raise DatasetError(f"{path}: not a valid TSV file ({one_line(err)})") from None
        header = table[0] if table else []
        for n, cells in enumerate(table[1:], 2):
            if len(cells) != len(header):
                raise DatasetError(f"{path}:{n}: {len(cells)} columns, the header has {len(header)} (a tab too many or too few?)")
            rows.append((f"{path}:{n}", dict(zip(header, cells))))
    if not rows:
        return []
    keys = set(rows[0][1])
    audio_key = next((k for k in _AUDIO_KEYS if k in keys), None)
    text_key = next((k for k in _TEXT_KEYS if k in keys), None)
    if audio_key is None:
        raise DatasetError(f"{path}: no audio column; name one of {', '.join(_AUDIO_KEYS)}")
    utts, seen = [], set()
    for where, row in rows:
        value, ref = row.get(audio_key), row.get(text_key) if text_key else None
        if not isinstance(value, str) or not value or "\x00" in value:
            raise DatasetError(f"{where}: {audio_key!r} must be an audio file path")
        if ref is not None and not isinstance(ref, str):
            raise DatasetError(f"{where}: {text_key!r} must be text")
        audio = Path(value)
        audio = audio if audio.is_absolute() else path.parent / audio
        rel = audio.relative_to(path.parent) if not Path(value).is_absolute() else audio
        utt_id = os.path.splitext(Path(rel).as_posix())[0] or value
        # The same file listed twice (e.g. with two references) is two utterances: resume and the
        # per-utterance results key on the id, so the second one gets its row number.
        if utt_id in seen:
            utt_id = f"{utt_id}#row{len(utts) + 2}"
        seen.add(utt_id)
        utts.append(Utterance(utt_id, audio, ref))
    return utts


def _cached_librispeech(split: str, progress=None) -> list[Utterance]:
    if split not in LIBRISPEECH_SPLITS:
        raise DatasetError(f"unknown LibriSpeech split {split!r}; choose one of {', '.join(LIBRISPEECH_SPLITS)}")
    folder = cache_dir() / "LibriSpeech" / split
    if not folder.is_dir():
        from edgeq.data.librispeech import download_split

        folder = download_split(split, cache_dir(), progress)
    return _folder(folder)
