"""Transcripts as files: txt, srt, vtt, json, tsv — the formats openai-whisper writes.

One file per input audio, `<output dir>/<audio stem>.<format>`, written atomically (a temporary
file in the same folder, then a rename), so an interrupted run never leaves half a subtitle file
that looks complete. An existing file is refused unless `force`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError

FORMATS = ("txt", "srt", "vtt", "json", "tsv")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise EdgeqError(f"--format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    return fmt


def timestamp(seconds: float, marker: str = ".") -> str:
    """HH:MM:SS.mmm (SRT wants a comma as `marker`)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{marker}{ms:03d}"


def _cues(transcription) -> list:
    return [s for s in transcription.segments if s.text.strip()]


def to_txt(transcription, meta: dict[str, Any]) -> str:
    return "".join(f"{s.text.strip()}\n" for s in _cues(transcription))


def to_srt(transcription, meta: dict[str, Any]) -> str:
    blocks = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(_cues(transcription), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcription, meta: dict[str, Any]) -> str:
    blocks = [f"{timestamp(s.start)} --> {timestamp(s.end)}\n{s.text.strip()}\n" for s in _cues(transcription)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_tsv(transcription, meta: dict[str, Any]) -> str:
    # Integer milliseconds, as openai-whisper's tsv: no float formatting to argue about.
    rows = ["start\tend\ttext"]
    rows += [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{' '.join(s.text.split())}" for s in _cues(transcription)]
    return "\n".join(rows) + "\n"


def to_json(transcription, meta: dict[str, Any]) -> str:
    return json.dumps({**meta, **transcription.to_dict()}, ensure_ascii=False, indent=1) + "\n"


RENDERERS: dict[str, Callable[[Any, dict[str, Any]], str]] = {
    "txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json, "tsv": to_tsv,
}


def render(transcription, fmt: str, meta: dict[str, Any] | None = None) -> str:
    return RENDERERS[check_format(fmt)](transcription, meta or {})


def output_paths(audio: list[Path], fmt: str, output_dir: Path, force: bool = False) -> list[Path]:
    """Where each input's transcript goes; refuses clashes and existing files before any work."""
    check_format(fmt)
    if output_dir.exists() and not output_dir.is_dir():
        raise EdgeqError(f"--output-dir {output_dir} is a file, not a folder")
    paths = [output_dir / f"{Path(a).stem}.{fmt}" for a in audio]
    seen: dict[Path, Path] = {}
    for a, p in zip(audio, paths):
        if p in seen:
            raise EdgeqError(f"{seen[p]} and {a} would both be written to {p}; transcribe them into different --output-dir")
        seen[p] = Path(a)
        if p.exists() and not force:
            raise EdgeqError(f"{p} exists; pass --force to replace it")
    return paths


def write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
