"""The parts of config.json and generation_config.json that edgeq's decoder reads, as schemas.

transformers writes many more keys (they stay allowed); the ones read here are checked for their
type first, so an edited config is one line naming the file and key, not a traceback mid-decode.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from edgeq.errors import BundleError
from edgeq.schema import Lenient, Meta, SchemaError, convert

Positive = Annotated[int, Meta(gt=0)]
TokenId = Annotated[int, Meta(ge=0)]
C = TypeVar("C", bound=Lenient)


class ModelConfig(Lenient, kw_only=True):
    vocab_size: Positive
    max_target_positions: Positive = 448
    num_mel_bins: Positive = 80


class GenerationConfig(Lenient, kw_only=True):
    decoder_start_token_id: TokenId
    eos_token_id: TokenId
    no_timestamps_token_id: TokenId | None = None
    lang_to_id: dict[str, int] | None = None
    task_to_id: dict[str, int] | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    prev_sot_token_id: TokenId | None = None  # <|startofprev|>: the previous-text prompt


def parse(model: type[C], data: Any, where: str, error: type[Exception] = BundleError) -> C:
    """`data` (read from the file `where`) validated as `model`; `error` in one line if not."""
    if not isinstance(data, dict):
        raise error(f"{where}: not a JSON object")
    try:
        return convert(model, data)
    except SchemaError as err:
        raise error(f"{where}: {err.problem.text()}") from None
