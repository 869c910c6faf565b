"""The shapes of bench results, checked where they are read back.

A results file (.jsonl) and a summary (.json) can come from another edgeq, be cut by a crash or
be edited: each record and summary is validated against these schemas when it is loaded, so a
malformed one is one line naming the file (and line), never a KeyError in a table. Extra keys are
allowed (newer edgeq versions add fields); the ones the summaries and tables read are typed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from edgeq.errors import EdgeqError
from edgeq.schema import Lenient, Meta, SchemaError, convert

Num = float | None
Count = Annotated[int, Meta(ge=0)]
_Rec = Lenient


class Cpu(_Rec):
    model: str | None


class Env(_Rec):
    cpu: Cpu


class Settings(_Rec):
    threads: int | None = None


class SystemInfo(_Rec):
    recipe: str | None = None
    size_mb: Num = None


class Load(_Rec):
    seconds: float
    rss_before_mb: float
    rss_after_mb: float
    peak_rss_mb: float
    # ONNX bundles since 2026-12-07 (runtime.onnx_engine.OnnxEngine.prepared_copy); absent before
    prepared_copy: Literal["made", "reused", "off"] | None = None


class RunRecord(_Rec, kw_only=True):
    type: Literal["run"]
    system: str
    system_info: SystemInfo
    settings: Settings
    load: Load
    env: Env


class UtteranceRecord(_Rec, kw_only=True):
    type: Literal["utterance"]
    id: str
    audio_s: Annotated[float, Meta(ge=0)]
    latency_s: float
    decode_s: float
    tokens: Count
    ref_words: Count | None = None
    substitutions: Count | None = None
    deletions: Count | None = None
    insertions: Count | None = None
    encoder_s: Num = None
    per_token_s: Num = None
    rtf: Num = None
    tokens_per_s: Num = None
    peak_rss_mb: Num = None

    def __post_init__(self) -> None:
        if self.ref_words and None in (self.substitutions, self.deletions, self.insertions):
            raise ValueError("a scored utterance (ref_words) needs substitutions, deletions and insertions")


class ErrorRecord(_Rec, kw_only=True):
    type: Literal["error"]
    id: str


class EndRecord(_Rec, kw_only=True):
    type: Literal["end"]
    remaining: int = 0
    peak_rss_sampled_mb: Num = None
    peak_rss_os_mb: Num = None
    cuda_peak_allocated_mb: Num = None


_RECORDS: dict[str, type[_Rec]] = {"run": RunRecord, "utterance": UtteranceRecord, "error": ErrorRecord,
                                   "end": EndRecord}


class Stats(_Rec):
    p50: Num
    p90: Num


class Wer(_Rec):
    wer_pct: Num
    substitutions: int
    deletions: int
    insertions: int


class Latency(_Rec):
    latency_s: Stats
    encoder_s: Stats
    per_token_s: Stats


class Summary(_Rec, kw_only=True):
    system: str
    utterances: int
    errors: int
    wer: Wer
    latency: Latency
    rtf: Num
    tokens_per_s: Num = None
    size_mb: Num = None
    load: Load
    memory: dict[str, Num]
    settings: Settings
    system_info: SystemInfo
    env: Env


class Failed(_Rec):
    system: str
    failed: str


def check_record(record: Any, where: str) -> dict:
    """A results line as read (a dict), after checking it; records of unknown types pass."""
    if not isinstance(record, dict):
        raise EdgeqError(f"{where}: not a JSON object")
    kind = record.get("type")
    model = _RECORDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return record
    try:
        convert(model, record)
    except SchemaError as err:
        raise EdgeqError(f"{where}: not an edgeq results record ({err.problem.text()})") from None
    return record


def check_summary(summary: Any, where: str) -> dict:
    if not isinstance(summary, dict):
        raise EdgeqError(f"{where}: not an edgeq bench summary")
    try:
        convert(Failed if "failed" in summary else Summary, summary)
    except SchemaError as err:
        raise EdgeqError(f"{where}: not an edgeq bench summary ({err.problem.text()})") from None
    return summary
