"""The shapes of bench results, checked where they are read back.

A results file (.jsonl) and a summary (.json) can come from another edgeq, be cut by a crash or
be edited: each record and summary is validated against these schemas when it is loaded, so a
malformed one is one line naming the file (and line), never a KeyError in a table. Extra keys are
allowed (newer edgeq versions add fields); the ones the summaries and tables read are typed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from edgeq.errors import EdgeqError
from edgeq.util import loc_text

Num = float | None


class _Rec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


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


class RunRecord(_Rec):
    type: Literal["run"]
    system: str
    system_info: SystemInfo
    settings: Settings
    load: Load
    env: Env


class UtteranceRecord(_Rec):
    type: Literal["utterance"]
    id: str
    audio_s: float = Field(ge=0)
    latency_s: float
    decode_s: float
    tokens: int = Field(ge=0)
    ref_words: int | None = Field(None, ge=0)
    substitutions: int | None = Field(None, ge=0)
    deletions: int | None = Field(None, ge=0)
    insertions: int | None = Field(None, ge=0)
    encoder_s: Num = None
    per_token_s: Num = None
    rtf: Num = None
    tokens_per_s: Num = None
    peak_rss_mb: Num = None

    @model_validator(mode="after")
    def _scored(self) -> UtteranceRecord:
        if self.ref_words and None in (self.substitutions, self.deletions, self.insertions):
            raise ValueError("a scored utterance (ref_words) needs substitutions, deletions and insertions")
        return self


class ErrorRecord(_Rec):
    type: Literal["error"]
    id: str


class EndRecord(_Rec):
    type: Literal["end"]
    remaining: int = 0
    peak_rss_sampled_mb: Num = None
    peak_rss_os_mb: Num = None
    cuda_peak_allocated_mb: Num = None


_RECORD = TypeAdapter(Annotated[RunRecord | UtteranceRecord | ErrorRecord | EndRecord, Field(discriminator="type")])


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


class Summary(_Rec):
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


def _where(err: ValidationError, union: bool = False) -> str:
    e = err.errors()[0]
    loc = loc_text(e["loc"][1:] if union else e["loc"])  # [0]: the union member
    return f"{loc}: {e['msg']}" if e["type"] != "missing" else f"lacks {loc!r}"


def check_record(record: Any, where: str) -> dict:
    """A results line as read (a dict), after checking it; records of unknown types pass."""
    if not isinstance(record, dict):
        raise EdgeqError(f"{where}: not a JSON object")
    if record.get("type") not in ("run", "utterance", "error", "end"):
        return record
    try:
        _RECORD.validate_python(record)
    except ValidationError as err:
        raise EdgeqError(f"{where}: not an edgeq results record ({_where(err, union=True)})") from None
    return record


def check_summary(summary: Any, where: str) -> dict:
    if not isinstance(summary, dict):
        raise EdgeqError(f"{where}: not an edgeq bench summary")
    try:
        (Failed if "failed" in summary else Summary).model_validate(summary)
    except ValidationError as err:
        raise EdgeqError(f"{where}: not an edgeq bench summary ({_where(err)})") from None
    return summary
