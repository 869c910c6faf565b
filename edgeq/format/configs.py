"""The parts of config.json and generation_config.json that edgeq's decoder reads, as schemas.

transformers writes many more keys (they stay allowed); the ones read here are checked for their
type first, so an edited config is one line naming the file and key, not a traceback mid-decode.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeq.errors import BundleError
from edgeq.util import loc_text


class _Read(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class ModelConfig(_Read):
    vocab_size: int = Field(gt=0)
    max_target_positions: int = Field(448, gt=0)
    num_mel_bins: int = Field(80, gt=0)


class GenerationConfig(_Read):
    decoder_start_token_id: int = Field(ge=0)
    eos_token_id: int = Field(ge=0)
    no_timestamps_token_id: int | None = Field(None, ge=0)
    lang_to_id: dict[str, int] | None = None
    task_to_id: dict[str, int] | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    prev_sot_token_id: int | None = Field(None, ge=0)  # <|startofprev|>: the previous-text prompt


def parse(model: type[_Read], data: Any, where: str, error: type[Exception] = BundleError):
    """`data` (read from the file `where`) validated as `model`; `error` in one line if not."""
    if not isinstance(data, dict):
        raise error(f"{where}: not a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        key = loc_text(e["loc"])
        what = f"lacks {key!r}" if e["type"] == "missing" else f"{key}: {e['msg']}"
        raise error(f"{where}: {what}") from None
