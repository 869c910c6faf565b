"""edgeq.schema: msgspec's errors read back as (kind, key path, text), and data read strictly."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest

from edgeq.schema import Lenient, Meta, Schema, SchemaError, allowed_keys, convert, field


class Inner(Schema):
    format: Literal["int8", "int4"]
    size: Annotated[int, Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        if self.size == 7:
            raise ValueError("seven is not a size")


class Outer(Schema, kw_only=True):
    name: str
    inner: Inner
    more: dict[str, Inner] = field(default_factory=dict)
    maybe: Inner | None = None


class Loose(Lenient):
    name: str


def _problem(data):
    with pytest.raises(SchemaError) as err:
        convert(Outer, data)
    return err.value.problem


def test_each_kind_of_problem_names_its_key():
    ok = {"name": "a", "inner": {"format": "int8"}}
    assert convert(Outer, ok).inner.format == "int8"
    p = _problem({"inner": {"format": "int8"}})
    assert (p.kind, p.loc, p.text()) == ("missing", ("name",), "lacks 'name'")
    p = _problem({**ok, "inner": {"format": "int8", "bits": 8}})
    assert (p.kind, p.loc, p.text()) == ("unknown", ("inner", "bits"), "unknown key 'inner.bits'")
    p = _problem({**ok, "maybe": {"format": "int9"}})
    assert (p.kind, p.loc, p.choices) == ("choice", ("maybe", "format"), ("int8", "int4"))
    assert p.text() == "maybe.format: 'int9' is not allowed; expected 'int8', 'int4'"
    p = _problem({**ok, "inner": {"format": "int8", "size": 7}})  # a validator's own words, at its record
    assert (p.kind, p.loc, p.message) == ("value", ("inner",), "seven is not a size")
    p = _problem({**ok, "more": {"x.y": {"format": "int8", "size": -1}}})
    assert p.loc == ("more", "...", "size") and ">= 0" in p.message


@pytest.mark.parametrize("value", ["3", True, 3.0, None])
def test_numbers_are_read_strictly(value):
    # A size stored as text (or a bool, or a float) is refused, not coerced.
    p = _problem({"name": "a", "inner": {"format": "int8", "size": value}})
    assert p.loc == ("inner", "size") and p.message.startswith("Expected `int`")


def test_lenient_records_ignore_keys_they_do_not_declare():
    assert convert(Loose, {"name": "a", "other": 1}).name == "a"
    with pytest.raises(SchemaError, match="lacks 'name'"):
        convert(Loose, {"other": 1})


def test_allowed_keys_follow_optional_and_mapping_types():
    assert allowed_keys(Outer, ()) == ["name", "inner", "more", "maybe"]
    assert allowed_keys(Outer, ("maybe",)) == ["format", "size"]
    assert allowed_keys(Outer, ("more", "...")) == ["format", "size"]
    assert allowed_keys(Outer, ("name",)) == []
