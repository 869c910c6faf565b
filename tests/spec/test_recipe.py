from __future__ import annotations

import sys

import pytest

from edgeq.errors import RecipeError
from edgeq.spec.recipe import (
    apply_overrides,
    list_recipes,
    load_recipe,
    load_recipe_file,
    recipe_to_toml,
    recipes_dir,
    shipped_recipe_names,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STUDY_GRID = [
    "fp32", "fp16", "pytorch-int8-dynamic", "pytorch-int8-static",
    "quanto-int8-dynamic", "quanto-int8-weights", "quanto-int4", "quanto-int2", "quanto-float8",
    "quanto-w8a8-static",
    "hqq-int8-g64", "hqq-int8-g128", "hqq-int4-g64", "hqq-int4-g128", "hqq-int3-g64", "hqq-int3-g128",
    "hqq-int2-g64", "hqq-int2-g128",
    "bnb-int8", "bnb-nf4", "bnb-fp4", "bnb-nf4-dq",
]


def test_study_grid_is_shipped():
    missing = [n for n in STUDY_GRID if n not in shipped_recipe_names()]
    assert not missing


def test_every_shipped_recipe_validates_and_is_named_by_its_file():
    recipes = list_recipes()
    assert len(recipes) >= len(STUDY_GRID)
    for r in recipes:
        assert r.description, r.name
    # A shipped file that set its own `name` could shadow another recipe: the stem is the name.
    named = [p.name for p in recipes_dir().glob("*.toml") if "name" in tomllib.loads(p.read_text())]
    assert not named, named


def test_show_round_trips(tmp_path):
    for r in list_recipes():
        path = tmp_path / f"{r.name}.toml"
        path.write_text(recipe_to_toml(r))
        assert load_recipe_file(path) == r


def _write(tmp_path, body: str):
    path = tmp_path / "mine.toml"
    path.write_text(body)
    return path


BASE = 'backend = "quanto"\nscheme = "weight-only"\n[weights]\nformat = "int4"\ngranularity = "group"\ngroup_size = 64\n'


def test_user_recipe_file_loads(tmp_path):
    r = load_recipe(str(_write(tmp_path, BASE)))
    assert r.name == "mine" and r.weights.bits == 4


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    path = _write(tmp_path, BASE.replace('group_size = 64', 'group_size = 64\ngruop = 3'))
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    msg = str(err.value)
    assert str(path) in msg and "weights.gruop" in msg and "group_size" in msg
    assert "\n" not in msg


def test_bad_value_lists_allowed_values(tmp_path):
    with pytest.raises(RecipeError, match=r"weights.format: 'int9' is not allowed; expected .*'int8'"):
        load_recipe(str(_write(tmp_path, BASE.replace('"int4"', '"int9"'))))


def test_backend_scheme_format_mismatch(tmp_path):
    body = BASE.replace('"quanto"', '"hqq"').replace('"int4"', '"nf4"')
    with pytest.raises(RecipeError, match=r"backend 'hqq' has no weight-only/nf4"):
        load_recipe(str(_write(tmp_path, body)))


def test_group_needs_size(tmp_path):
    with pytest.raises(RecipeError, match="needs group_size"):
        load_recipe(str(_write(tmp_path, BASE.replace("group_size = 64\n", ""))))


def test_static_needs_calibration(tmp_path):
    body = 'backend = "torch"\nscheme = "static"\n[weights]\nformat = "int8"\n[activations]\nformat = "int8"\n'
    with pytest.raises(RecipeError, match="needs a \\[calibration\\] table"):
        load_recipe(str(_write(tmp_path, body)))


def test_backend_options_are_validated(tmp_path):
    body = BASE.replace('backend = "quanto"', 'backend = "hqq"') + "[options]\naxis = 2\n"
    with pytest.raises(RecipeError, match=r"options: axis"):
        load_recipe(str(_write(tmp_path, body)))


def test_unknown_recipe_suggests_close_names():
    with pytest.raises(RecipeError, match="did you mean.*quanto-int8-dynamic"):
        load_recipe("quanto-int8-dynamc")


def test_invalid_toml(tmp_path):
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(str(_write(tmp_path, "backend = \n")))



def test_the_table_s_block_is_its_own_field_on_the_onnx_backend_only():
    r = apply_overrides(load_recipe("onnx-int4"), ["modules.embeddings_group_size=64"])
    assert r.table_group_size == 64 and r.weights.group_size == 32 and r.embeddings_label == "int4 group 64"
    # unset, the table's block is the weights'
    assert load_recipe("onnx-int4").table_group_size == 32
    with pytest.raises(RecipeError, match="embeddings_group_size needs the onnx backend"):
        apply_overrides(load_recipe("hqq-int4-g64"), ["modules.embeddings_group_size=64"])
    with pytest.raises(RecipeError, match="embeddings_group_size needs modules.embeddings 'int8' or 'int4'"):
        apply_overrides(load_recipe("onnx-int4"), ["modules.embeddings=float", "modules.embeddings_group_size=64"])
    assert load_recipe("hqq-int4-g64").embeddings_label == "int8"  # torch backends: one scale per row


def test_set_changes_values_validates_them_and_labels_the_name():
    r = apply_overrides(load_recipe("hqq-int4-g64"), ["weights.group_size=32", "modules.embeddings=float"])
    assert r.weights.group_size == 32 and r.modules.embeddings == "float"
    assert r.name == "hqq-int4-g64[weights.group_size=32,modules.embeddings=float]"
    # Bare words are strings, TOML values keep their type, and the result is validated like a file.
    assert apply_overrides(load_recipe("bnb-int8"), ["options.threshold=4.5"]).typed_options.threshold == 4.5
    with pytest.raises(RecipeError, match="weights.group_size: Expected `int` >= 1"):
        apply_overrides(load_recipe("hqq-int4-g64"), ["weights.group_size=0"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        apply_overrides(load_recipe("fp32"), ["weights.format"])
    with pytest.raises(RecipeError, match="'weights' is not a table"):
        apply_overrides(load_recipe("fp32"), ["weights=1", "weights.format=int8"])


def test_set_takes_a_size_away_with_what_it_belonged_to():
    # a float table loses the recipe's table blocks; per-channel weights lose the recipe's groups
    r = apply_overrides(load_recipe("onnx-int8-dynamic"), ["modules.embeddings=float"])
    assert r.modules.embeddings == "float" and r.modules.embeddings_group_size is None
    r = apply_overrides(load_recipe("onnx-int8-dynamic"), ['modules={embeddings="float"}'])
    assert r.modules.embeddings_group_size is None
    r = apply_overrides(load_recipe("hqq-int4-g64"), ["weights.granularity=per-channel"])
    assert r.weights.granularity == "per-channel" and r.weights.group_size is None
    # a size given in the same list stays, and the pair is refused as it is in a file
    with pytest.raises(RecipeError, match="group_size is only allowed with granularity 'group'"):
        apply_overrides(load_recipe("hqq-int4-g64"), ["weights.granularity=per-channel", "weights.group_size=32"])
    # a group size for per-channel weights names the --set it lacks
    with pytest.raises(RecipeError, match=r"weights.group_size needs groups, and its weights are per-channel: "
                                          r"add --set weights.granularity=group$"):
        apply_overrides(load_recipe("quanto-int8-dynamic"), ["weights.group_size=64"])
    r = apply_overrides(load_recipe("quanto-int8-dynamic"), ["weights.group_size=64", "weights.granularity=group"])
    assert (r.weights.granularity, r.weights.group_size) == ("group", 64)


def test_set_can_add_a_table_the_recipe_did_not_have():
    r = apply_overrides(load_recipe("quanto-int8-dynamic"), ['modules.overrides."*fc2"={format="float"}'])
    assert r.modules.overrides["*fc2"].format == "float"
