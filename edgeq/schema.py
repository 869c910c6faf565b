"""Validated data (recipes, targets, manifests, layouts, results) on msgspec, and its errors in one line.

Every schema in edgeq is a `Schema` (unknown keys refused) or a `Lenient` (unknown keys ignored:
files other tools write too, such as transformers' config.json); `convert` checks data read from
a file against one, strictly (a size stored as "1000" is refused, not compared as text), and
`Problem.of` turns msgspec's error into what a message needs: the kind, the key path, the text.

Why msgspec rather than pydantic: a device reads a bundle's manifest, recipe and ONNX layout on
every load, and pydantic's import and schema building cost 17 MB resident and ~0.06 s of a 0.2 s
load of whisper-base onnx-int8-dynamic (the whole difference in load time to whisper.cpp); msgspec
costs 1.5 MB. Note that a msgspec constructor does not check types: data from outside is always
read through `convert`.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from msgspec import Meta, Struct, ValidationError, field

from edgeq.util import loc_text

__all__ = ["Schema", "Lenient", "Meta", "field", "convert", "to_dict", "replace", "Problem", "SchemaError",
           "field_type", "allowed_keys"]

T = TypeVar("T")


class Schema(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A frozen record whose data may hold no key it does not declare."""


class Lenient(Struct, frozen=True, kw_only=True):
    """A frozen record that reads the keys it declares and ignores the others."""


class SchemaError(ValueError):
    """`data` is not a `model`; `problem` says where and why."""

    def __init__(self, problem: Problem):
        super().__init__(problem.text())
        self.problem = problem


def convert(model: type[T], data: Any) -> T:
    """`data` (JSON or TOML values) as a `model`, or SchemaError."""
    try:
        return msgspec.convert(data, model, strict=True)
    except ValidationError as err:
        raise SchemaError(Problem.of(err, model)) from None


def to_dict(obj: Struct) -> dict[str, Any]:
    """JSON-ready values, fields in declaration order (nested records as dicts)."""
    return msgspec.to_builtins(obj)


def replace(obj: T, **changes: Any) -> T:
    """A copy with `changes`; like a constructor, it checks no types: for values edgeq computes."""
    return msgspec.structs.replace(obj, **changes)


# msgspec's messages: "<what> - at `$.a.b[0]`"; the location is left out at the top level.
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_PART = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")
# A key may hold backticks and newlines itself (a tampered file): the name runs to the last one.
_FIELD = re.compile(r"^Object (?P<kind>missing required|contains unknown) field `(?P<name>.*)`$", re.S)
_ENUM = re.compile(r"^Invalid enum value (?P<value>.+)$", re.S)


@dataclass(frozen=True)
class Problem:
    """One validation error: `kind` is "missing", "unknown" (key), "choice" (a value outside a
    Literal; `choices` says which are allowed) or "value"; `loc` the key path ("..." for a
    mapping's key msgspec does not name), `message` msgspec's or a validator's own text."""

    kind: str
    loc: tuple[str, ...]
    message: str
    choices: tuple[Any, ...] = ()

    @classmethod
    def of(cls, err: ValidationError, model: type | None = None) -> Problem:
        m = _AT.match(str(err))
        msg, path = m["msg"], m["path"] or ""
        loc = tuple(a if a else b for a, b in _PART.findall(path))
        if f := _FIELD.match(msg):
            kind = "missing" if f["kind"].startswith("missing") else "unknown"
            return cls(kind, loc + (f["name"],), msg)
        if (e := _ENUM.match(msg)) and model is not None:
            choices = typing.get_args(_unwrap(field_type(model, loc)))
            return cls("choice", loc, f"{e['value']} is not allowed; expected {', '.join(map(repr, choices))}", choices)
        return cls("value", loc, msg)

    @property
    def where(self) -> str:
        """The key path as `a.b.0`, odd keys quoted (edgeq.util.loc_text)."""
        return loc_text(self.loc)

    def text(self) -> str:
        # loc_text already quotes a path with odd keys; quoting it again would escape it twice.
        where = self.where if self.where != ".".join(map(str, self.loc)) else repr(self.where)
        if self.kind == "missing":
            return f"lacks {where}"
        if self.kind == "unknown":
            return f"unknown key {where}"
        return f"{self.where}: {self.message}" if self.loc else self.message


def _unwrap(tp: Any) -> Any:
    """Annotated[X, ...] -> X; Optional[X] and X | None -> X (the first record type of a union)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    args = typing.get_args(tp)
    if args and (typing.get_origin(tp) is typing.Union or type(tp).__name__ == "UnionType"):
        members = [a for a in args if a is not type(None)]
        tp = next((a for a in members if isinstance(a, type) and issubclass(a, Struct)), members[0])
        return _unwrap(tp)
    return tp


def field_type(model: Any, loc: tuple[str, ...]) -> Any:
    """The declared type at `loc` below `model`, or None where the path leaves the schema."""
    tp = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, Struct):
            tp = typing.get_type_hints(tp, include_extras=True).get(part)
        elif typing.get_origin(tp) in (list, tuple, dict):
            tp = typing.get_args(tp)[-1]  # an item of a list, a value of a dict
        else:
            return None
        if tp is None:
            return None
    return tp


def allowed_keys(model: Any, loc: tuple[str, ...]) -> list[str]:
    """The keys the record at `loc` below `model` declares ([] where it is no record)."""
    tp = _unwrap(field_type(model, loc))
    return list(tp.__struct_fields__) if isinstance(tp, type) and issubclass(tp, Struct) else []
