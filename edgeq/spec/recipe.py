"""Recipes: a quantization plan as validated data.

A recipe is a TOML file in `recipes/` (or any path a user passes). The schema below is the single
source of truth for what a recipe may say; unknown keys and values outside the allowed sets are
rejected with the file, the key and the allowed values named. Everything a backend needs to know
comes from here, so a bundle's resolved recipe (stored in its manifest) is enough to rebuild it.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from edgeq.errors import RecipeError
from edgeq.schema import Meta, Problem, Schema, SchemaError, allowed_keys, convert, field, replace, to_dict
from edgeq.spec.catalogue import BACKENDS
from edgeq.util import read_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

Scheme = Literal["none", "weight-only", "dynamic", "static"]
WeightFormat = Literal[
    "float32", "float16", "bfloat16", "int8", "int4", "int3", "int2", "int1", "nf4", "fp4", "float8"
]
Granularity = Literal["per-tensor", "per-channel", "group"]
Device = Literal["cpu", "cuda"]

# Bits of storage per weight, used to state what a recipe promises before it is built.
FORMAT_BITS = {
    "float32": 32, "float16": 16, "bfloat16": 16, "float8": 8, "int8": 8,
    "int4": 4, "nf4": 4, "fp4": 4, "int3": 3, "int2": 2, "int1": 1,
}
FLOAT_FORMATS = {"float32", "float16", "bfloat16"}


_Strict = Schema
Positive = Annotated[int, Meta(gt=0)]


class WeightSpec(_Strict):
    """How weights of quantized modules are stored."""

    format: WeightFormat  # storage format of the weights
    granularity: Granularity = "per-channel"  # one scale per tensor, per output channel, or per group
    group_size: Positive | None = None  # weights per scale when granularity is 'group'
    double_quant: bool = False  # quantize the quantization scales too (bitsandbytes 4-bit)

    def __post_init__(self) -> None:
        if self.granularity == "group" and self.group_size is None:
            raise ValueError("granularity 'group' needs group_size")
        if self.granularity != "group" and self.group_size is not None:
            raise ValueError("group_size is only allowed with granularity 'group'")

    @property
    def bits(self) -> int:
        return FORMAT_BITS[self.format]


class WeightOverride(_Strict):
    """A per-module change of the weight spec; format 'float' keeps the module unquantized."""

    format: Literal[WeightFormat, "float"]
    granularity: Granularity | None = None
    group_size: Positive | None = None


class ActivationSpec(_Strict):
    """How Linear inputs are quantized: not at all, per call (dynamic) or from calibration (static)."""

    format: Literal["float", "int8", "float8"] = "float"


class ModuleSpec(_Strict):
    """Which modules are quantized. Names are transformers' (`model.encoder.layers.0.fc1`)."""

    encoder: bool = True  # quantize the encoder's Linear layers
    decoder: bool = True  # quantize the decoder's Linear layers
    include: list[str] = field(default_factory=lambda: ["*"])  # fnmatch patterns a Linear must match
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns that keep a Linear float
    # The token embedding, tied to proj_out (the LM head): kept float or stored once as int8 rows
    # used by both (int4 blocks: onnx backend only).
    embeddings: Literal["float", "int8", "int4"] = "float"
    # The onnx backend's table blocks (MatMulNBits, symmetric); unset, weights.group_size. A field of
    # its own so that a recipe's Linear layers and its table can differ in block size without the
    # table's block posing as the recipe's (onnx-int8-dynamic-int4-decoder: layers 64, table 128).
    # Torch backends store the table per row and refuse it.
    embeddings_group_size: Positive | None = None
    overrides: dict[str, WeightOverride] = field(default_factory=dict)  # fnmatch pattern -> weight spec


class CalibrationSpec(_Strict):
    """Audio used to calibrate static activation scales."""

    samples: Positive = 16  # number of utterances to run
    dataset: str | None = None  # dataset spec (folder, manifest); `--calibration` overrides it


class TorchOptions(_Strict):
    # Quantized engine; auto picks qnnpack on ARM, x86 elsewhere, at load.
    engine: Literal["auto", "x86", "fbgemm", "qnnpack"] = "auto"
    # In a static recipe, fnmatch patterns of Linear layers quantized dynamically instead.
    dynamic: list[str] = field(default_factory=list)


class QuantoOptions(_Strict):
    # In a static recipe, fnmatch patterns of Linear layers whose input scale is set per call.
    dynamic: list[str] = field(default_factory=list)


class HqqOptions(_Strict):
    axis: Literal[0, 1] = 1  # axis along which groups are formed


class BnbOptions(_Strict):
    threshold: Annotated[float, Meta(ge=0)] = 6.0  # LLM.int8() outlier threshold


class OnnxOptions(_Strict):
    # The dynamo exporter emits opset 18 (e.g. Split's num_outputs); converting down fails the checker.
    opset: Annotated[int, Meta(ge=18, le=23)] = 18
    per_channel: bool = True
    reduce_range: bool = False
    # In a static recipe, fnmatch patterns of Linear layers quantized dynamically instead.
    dynamic: list[str] = field(default_factory=list)
    # MatMulNBits compute type (4 = int8 activations, 0 = unset). 8-bit blocks need 4 (refused
    # otherwise: ONNX Runtime has no float kernel for them, backends.onnx._check_recipe); 4-bit blocks
    # compute in float below 4, 1.1-3.6x slower on x86 (benchmarks/matmul_nbits.py --accuracy-levels).
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    # Store the float tensors left (convolutions, positional tables) as float16, computed in float32.
    float16_storage: bool = False
    # The encoder's self-attention: "fused" into ONNX Runtime's MultiHeadAttention (flash
    # attention on CPU), or "blocks" of queries, which peak higher on whisper-base and on
    # whisper-small's shape (the measurements are in edgeq/backends/onnx_fusion.py).
    attention: Literal["blocks", "fused"] = "fused"
    # The encoder's self-attention in the graph for CPUs with VNNI (encoder.vnni.onnx, int8 encoders
    # only): "int8" computes QKᵀ and PV as uint8 x int8 products, head by head in query blocks
    # (backends.onnx_int8_attention); every other CPU runs encoder.onnx's float32 attention. Needs
    # attention = "fused". Measured in docs/performance.md "Where the time goes".
    vnni_attention: Literal["float32", "int8"] = "float32"
    # The cross-attention keys/values the encoder hands the decoder, held for a whole window:
    # float16 halves them (110 -> 55 MB on a full window of whisper-small's shape) but ONNX Runtime
    # 1.32 has no float16 attention kernel on CPU, so each decoder step casts them back to float32
    # layer by layer. Measured (onnx_fusion.half_cross_attention): -35 to -40 MB peak on the
    # whisper-small shape, 7-10 % fewer decoder tokens/s; whisper-base's peak -0 to -6 MB.
    # int8: uint8 codes multiplied as they are (MatMulInteger), a quarter of float32: with the
    # shared self-attention cache, the whisper-small shape's int8 peaks at 444-457 instead of
    # 481-501 MB for 3-8 % fewer decoder tokens/s; whisper-base: 2-10 MB lower, RTF 0.31x vs 0.30x
    # the fastest peer's, WER within one word (AVX2 host; docs/design.md, backends.onnx_cross_int8).
    # onnx-int4, float16 -> int8: whisper-base's padded-window peak -15 MB, speed the same; the
    # small shape's peak the same, fitted windows 7-10 % slower (docs/design.md).
    # onnx-int8-dynamic and onnx-int4 set int8; the float recipes keep float32, and float16 graphs
    # cannot take int8 (refused).
    cross_kv: Literal["float32", "float16", "int8"] = "float32"
    # The decoder's self-attention cache: "shared", one buffer per layer that each step writes its
    # new keys/values into (ONNX Runtime's GroupQueryAttention), or "concat", a new cache per step
    # (Concat of past and new). A decoder step, int8, full window (benchmarks/decoder_step.py):
    # whisper-base 4.05-4.27 -> 3.56-3.89 ms, whisper-small's shape 11.8-12.0 -> 10.4-11.2 ms;
    # small's peak RSS -12 to -25 MB (backends.onnx_self_cache, docs/design.md).
    self_cache: Literal["shared", "concat"] = "shared"
    # Each encoder layer's feed-forward block computed over this many frame blocks, one after the
    # other (backends.onnx_ffn_blocks): only one block's fc1/GELU outputs are alive at a time. On a
    # padded window of whisper-base int8 that live set was the process's peak: beside whisper.cpp
    # (compare_systems, AVX2 host) 242-250 -> 227-229 MB, WER 2.87 -> 2.65 % (a scale per block
    # for dynamic int8 activations). Costs there: the padded window's encoder +19 % with sleeping
    # threads, and load on whisper-small's shape (each block's node packs the shared weight again).
    # 1 = one block, as before.
    ffn_blocks: Annotated[int, Meta(ge=1, le=64)] = 4
    # Whether ONNX Runtime prepacks the encoder's weights when the session is made (the layout its
    # GEMM kernels read). For dynamic int8 MatMuls it need not: DynamicQuantizeMatMul packs the
    # int8 weight per call, cheap beside hundreds of frames' rows. Without it, whisper-small's
    # shape: its int8 encoder session made in 0.15 instead of 0.54 s (a raw ONNX Runtime session, 2
    # threads, AVX2 host); the bundle loaded in 0.46-0.50 instead of 0.66-0.77 s, with the same peak
    # RSS and encoder time (compare_systems, 3 rounds; docs/design.md). MatMulNBits (int4) and
    # float encoders keep prepacking: not measured without. onnx-int8-dynamic sets false.
    encoder_prepack: bool = True
    # The int8 schemes' 8-bit decoder MatMuls: "blocks", MatMulNBits blocks of weights.group_size
    # with int8 activations; or "channels", ONNX Runtime's DynamicQuantizeMatMul with 7-bit
    # per-channel int8 weights (quantize_dynamic, reduce_range: |code| <= 64, which AVX2's
    # uint8 x int8 kernel multiplies without saturating, so one graph serves every x86 CPU). Its
    # int8 GEMM (MLAS QGEMM) runs a step's products faster than MatMulNBits' 8-bit kernel without
    # AMX: whisper-small's shape 6 % (VNNI) and 10 % (AVX2) less a step, 2 % more on AMX (numbers in
    # recipes/onnx-int8-dynamic.toml, which sets it; docs/performance.md "Where the time goes").
    # 4-bit layers (weights.format int4, overrides) stay MatMulNBits; the tied table too.
    decoder_int8: Literal["blocks", "channels"] = "blocks"


class FloatOptions(_Strict):
    pass


OPTIONS: dict[str, type[_Strict]] = {
    "float": FloatOptions,
    "torch": TorchOptions,
    "quanto": QuantoOptions,
    "hqq": HqqOptions,
    "bnb": BnbOptions,
    "onnx": OnnxOptions,
}


class Recipe(_Strict, kw_only=True):
    """A post-training quantization plan for a Whisper checkpoint."""

    name: str
    description: str = ""
    backend: Literal["float", "torch", "quanto", "hqq", "bnb", "onnx"]
    scheme: Scheme
    weights: WeightSpec
    activations: ActivationSpec = field(default_factory=ActivationSpec)
    modules: ModuleSpec = field(default_factory=ModuleSpec)
    calibration: CalibrationSpec | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # of everything left unquantized, and of compute
    devices: Annotated[list[Device], Meta(min_length=1)] = field(default_factory=lambda: ["cpu", "cuda"])
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific: OPTIONS[backend], as typed_options

    def __post_init__(self) -> None:
        spec = BACKENDS[self.backend]
        if (self.scheme, self.weights.format) not in spec.supports:
            ok = ", ".join(sorted(f"{s}/{f}" for s, f in spec.supports))
            raise ValueError(
                f"backend {self.backend!r} has no {self.scheme}/{self.weights.format}; it supports {ok}"
            )
        if self.scheme == "static" and self.calibration is None:
            raise ValueError("scheme 'static' needs a [calibration] table")
        if self.scheme == "static" and self.activations.format == "float":
            raise ValueError("scheme 'static' needs activations.format int8 or float8")
        if self.scheme in ("none", "weight-only") and self.activations.format != "float":
            raise ValueError(f"scheme {self.scheme!r} keeps activations float")
        if self.modules.embeddings == "int4" and spec.runtime != "onnxruntime":
            raise ValueError("modules.embeddings 'int4' needs the onnx backend; use 'int8' or 'float'")
        if self.modules.embeddings_group_size is not None:
            if spec.runtime != "onnxruntime":
                raise ValueError("modules.embeddings_group_size needs the onnx backend (torch backends "
                                 "store the table per row)")
            if self.modules.embeddings == "float":
                raise ValueError("modules.embeddings_group_size needs modules.embeddings 'int8' or 'int4'")
        self.typed_options  # noqa: B018 - checked here, so a recipe with bad options never exists

    @property
    def typed_options(self) -> Any:
        """The backend's options record (TorchOptions, QuantoOptions, ...); ValueError if they do not fit it."""
        model = OPTIONS[self.backend]
        try:
            return convert(model, self.options)
        except SchemaError as err:
            raise ValueError(_format_error("options", err, model)) from None  # options: unknown key 'x' (allowed: axis)

    def resolved(self) -> "Recipe":
        """This recipe with every backend option written out, defaults included. A bundle records
        this one: replayed by a later edgeq whose defaults changed (the ONNX encoder's attention
        became "fused"), it still builds what the bundle holds, and it says what the bundle is."""
        return replace(self, options=to_dict(self.typed_options))

    @property
    def runtime(self) -> str:
        return BACKENDS[self.backend].runtime

    @property
    def table_group_size(self) -> int | None:
        """The onnx backend's block size for the tied token table."""
        return self.modules.embeddings_group_size or self.weights.group_size

    @property
    def embeddings_label(self) -> str:
        """The table's format as the recipe tables show it: onnx blocks with their size."""
        emb = self.modules.embeddings
        if emb == "float" or self.runtime != "onnxruntime" or self.table_group_size is None:
            return emb
        return f"{emb} group {self.table_group_size}"

    @property
    def granularity_label(self) -> str:
        w = self.weights
        if w.format in FLOAT_FORMATS:
            return "-"
        return f"group {w.group_size}" if w.granularity == "group" else w.granularity

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# --------------------------------------------------------------------------- loading


def recipes_dir() -> Path:
    """Shipped recipes: inside the wheel (edgeq/_data/recipes) or the source checkout (recipes/)."""
    here = Path(__file__).resolve().parents[1]  # the edgeq package
    packaged = here / "_data" / "recipes"
    return packaged if packaged.is_dir() else here.parent / "recipes"


def shipped_recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def _problem_text(source: str, p: Problem, model: type | None = None) -> str:
    """One line for a validation problem: the file, the key, what is allowed (the keys of the
    record around an unknown key, below `model`, default the Recipe schema)."""
    loc = p.where or "(top level)"
    if p.kind == "unknown":
        allowed = allowed_keys(model or Recipe, p.loc[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{source}: unknown key {loc!r}{hint}"
    if p.kind == "missing":
        return f"{source}: missing key {loc!r}"
    return f"{source}: {loc}: {p.message}" if p.loc else f"{source}: {p.message}"


def _format_error(source: str, err: SchemaError, model: type | None = None) -> str:
    return _problem_text(source, err.problem, model)


def recipe_from_dict(data: dict[str, Any], source: str) -> Recipe:
    try:
        return convert(Recipe, data)
    except SchemaError as err:
        raise RecipeError(_format_error(source, err)) from None


def load_recipe_file(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path}")
    data = read_toml(path, RecipeError, "recipe file")
    data.setdefault("name", path.stem)
    return recipe_from_dict(data, str(path))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or a recipe file by path."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix == ".toml" or path.is_file() or "/" in text:
        return load_recipe_file(path)
    shipped = recipes_dir() / f"{text}.toml"
    if shipped.is_file():
        return load_recipe_file(shipped)
    names = shipped_recipe_names()
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `edgeq recipes` for the list"
    raise RecipeError(f"unknown recipe {text!r}{hint}")


def as_recipe(recipe: Recipe | str | Path) -> Recipe:
    """A Recipe as it is, or a shipped recipe's name / a recipe file's path loaded."""
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def list_recipes() -> list[Recipe]:
    return [load_recipe_file(p) for p in sorted(recipes_dir().glob("*.toml"))]


def recipe_to_toml(recipe: Recipe) -> str:
    import tomli_w

    data = recipe.to_dict()
    # TOML has no null: drop unset optional values so the output loads back as the same recipe.
    def strip(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if v is not None}
        return d

    return tomli_w.dumps(strip(data))


def apply_overrides(recipe: Recipe, assignments: list[str] | tuple[str, ...]) -> Recipe:
    """`key.path=value` changes (TOML keys and values; a bare word is a string), validated like a file.

    The key is parsed as a TOML dotted key, so a quoted part may hold dots and wildcards:
    `modules.overrides."model.encoder.*"={format="float"}`. The recipe's name records the change so
    two bundles that differ are never shown alike.
    """
    if not assignments:
        return recipe
    data = recipe.to_dict()
    labels, given = [], set()
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. modules.embeddings=float")
        change = _parse_assignment(key, raw.strip(), item)
        _merge(data, change, item)
        labels.append(f"{key}={raw.strip()}")
        given |= _leaf_paths(change)
    _follow_coupled_fields(data, given, recipe.name)
    data["name"] = f"{recipe.name}[{','.join(labels)}]"
    return recipe_from_dict(data, f"recipe {recipe.name} with --set")


def _leaf_paths(change: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = set()
    for key, value in change.items():
        paths |= _leaf_paths(value, (*prefix, key)) if isinstance(value, dict) else {(*prefix, key)}
    return paths


def _follow_coupled_fields(data: dict[str, Any], given: set[tuple[str, ...]], name: str) -> None:
    """A --set that takes away what a size belongs to takes the size with it, unless the same --set
    list gives that size: `modules.embeddings=float` on a recipe with a table block size
    (onnx-int8-dynamic: embeddings_group_size = 128), `weights.granularity=per-channel` on one with
    groups (hqq-int4-g64: group_size = 64). A size given for the recipe's own per-channel or
    per-tensor weights says which --set it lacks, rather than only that the pair is invalid."""
    modules, weights = data.get("modules"), data.get("weights")
    if (isinstance(modules, dict) and modules.get("embeddings") == "float"
            and ("modules", "embeddings_group_size") not in given):
        modules.pop("embeddings_group_size", None)
    granularity = weights.get("granularity", "per-channel") if isinstance(weights, dict) else "group"
    if granularity != "group":
        if ("weights", "group_size") not in given:
            weights.pop("group_size", None)
        elif ("weights", "granularity") not in given:
            raise RecipeError(f"recipe {name} with --set: weights.group_size needs groups, and its weights are "
                              f"{granularity}: add --set weights.granularity=group")


def _parse_assignment(key: str, raw: str, item: str) -> dict[str, Any]:
    import json

    for value in (raw, json.dumps(raw)):  # a TOML value, else the bare word as a string
        try:
            return tomllib.loads(f"{key} = {value}")
        except tomllib.TOMLDecodeError:
            continue
    raise RecipeError(f"--set {item!r}: {key!r} is not a valid key (quote parts with dots: a.\"b.c\")")


def _merge(data: dict[str, Any], change: dict[str, Any], item: str) -> None:
    for key, value in change.items():
        if isinstance(value, dict):
            child = data.get(key)
            if child is None:
                child = data[key] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {item!r}: {key!r} is not a table")
            _merge(child, value, item)
        else:
            data[key] = value
