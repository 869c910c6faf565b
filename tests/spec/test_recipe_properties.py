"""Hostile input to the recipe and target readers: any bytes, any TOML, any one-edit change of a
shipped file, any --set. Each answers with a result or an `EdgeqError`, never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import tomli_w
from helpers import answers_or_one_line_error, json_values, mutated, property_settings
from hypothesis import given
from hypothesis import strategies as st

from edgeq.errors import RecipeError
from edgeq.spec.recipe import apply_overrides, load_recipe, load_recipe_file, recipe_to_toml
from edgeq.spec.targets import load_target, targets_dir

FAST = property_settings()



def _file(content: bytes, name: str) -> Path:
    path = Path(tempfile.mkdtemp()) / name
    path.write_bytes(content)
    return path


def _toml(doc) -> bytes:
    """`doc` as TOML when TOML can hold it (no nulls, a table at the top), else as JSON text."""
    try:
        return tomli_w.dumps(doc).encode()
    except (TypeError, ValueError, AttributeError):
        import json

        return json.dumps(doc).encode()


@FAST
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_recipe_or_target_bytes(content):
    answers_or_one_line_error(lambda: load_recipe_file(_file(content, "r.toml")))
    answers_or_one_line_error(lambda: load_target(str(_file(content, "t.toml"))))


@FAST
@given(data=st.data(), name=st.sampled_from(["quanto-int4", "onnx-int8-static", "pytorch-int8-static", "bnb-nf4"]))
def test_any_edit_of_a_shipped_recipe(data, name):
    import tomllib

    doc = mutated(tomllib.loads(recipe_to_toml(load_recipe(name))), data)
    answers_or_one_line_error(lambda: load_recipe_file(_file(_toml(doc), "r.toml")))


@FAST
@given(data=st.data())
def test_any_edit_of_a_shipped_target(data):
    import tomllib

    doc = mutated(tomllib.loads((targets_dir() / "rpi4.toml").read_text()), data)
    answers_or_one_line_error(lambda: load_target(str(_file(_toml(doc), "t.toml"))))


@FAST
@given(sets=st.lists(st.text(max_size=30) | st.sampled_from(["weights.format=int4", "options.engine=x86",
                                                              "modules=1", "a.b.c=[1, {x = 2}]"]), max_size=3))
def test_any_set(sets):
    answers_or_one_line_error(lambda: apply_overrides(load_recipe("pytorch-int8-dynamic"), sets))


@FAST
@given(value=json_values())
def test_any_value_anywhere_in_a_recipe_dict(value):
    from edgeq.spec.recipe import recipe_from_dict

    answers_or_one_line_error(lambda: recipe_from_dict({"name": "x", "backend": "hqq", "scheme": "weight-only",
                                       "weights": {"format": "int4", "granularity": "group", "group_size": 64},
                                       "options": value}, "r"))


def test_recipe_path_that_is_a_folder(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(RecipeError, match=r"dir.toml: is a folder, not a recipe file"):
        load_recipe(str(tmp_path / "dir.toml"))


def test_non_utf8_recipe(tmp_path):
    (tmp_path / "r.toml").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(RecipeError, match=r"r.toml: the recipe file is not UTF-8 text"):
        load_recipe(str(tmp_path / "r.toml"))


def test_unknown_option_lists_the_backends_options(tmp_path):
    (tmp_path / "r.toml").write_text('backend = "hqq"\nscheme = "weight-only"\n[weights]\nformat = "int4"\n'
                                     'granularity = "group"\ngroup_size = 64\n[options]\nwhatever = 1\n')
    with pytest.raises(RecipeError, match=r"unknown key 'whatever' \(allowed: axis\)$"):
        load_recipe(str(tmp_path / "r.toml"))
