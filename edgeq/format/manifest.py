"""manifest.json as a strict schema: what a bundle is, where it came from, and every file in it.

The builder fills a `Manifest` and writes `to_json()`; a device reads it back with
`Manifest.from_json`, which checks the format and version first, then every field's *type* (a
size stored as "1000" is refused, not compared as text), the recipe against the recipe schema,
and every file name: relative, '/'-separated, no '.' or '..' parts, no absolute paths, so no entry
can point outside the bundle. `REQUIRED_FILES` says which files each runtime's loader opens; a
manifest that does not list them all is refused, so nothing a loader reads escapes verification.

The JSON shape is the one edgeq has written since its first bundles (format_version 1): bundles
built before this schema existed load unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Annotated, Any, Literal

from edgeq.errors import BundleError
from edgeq.schema import Meta, Schema, SchemaError, convert, to_dict
from edgeq.spec.catalogue import BACKENDS, RUNTIMES
from edgeq.spec.recipe import Recipe
from edgeq.util import one_line

FORMAT = "edgeq-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECIPE = "recipe.toml"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER = "tokenizer.json"
# The id -> bytes table of tokenizer.json that decoding needs, written by `edgeq build` since it loads
# in 9 ms instead of 0.1 s (edgeq.runtime.tokenizer); optional: older bundles decode from tokenizer.json.
DECODE_TABLE = "tokenizer.decode.bin"
WEIGHTS = "model.safetensors"
QUANTIZATION = "quantization.json"
LAYOUT = "onnx.json"  # edgeq.format.layout.LAYOUT_FILE

# What each runtime's loader opens, by fixed name. They live here, with the names, rather than in
# the catalogue's RuntimeSpec: the format owns its file names and spec/ does not import format/.
# An ONNX bundle's graphs are named by onnx.json and checked when it is read (onnx_engine).
_COMMON = (CONFIG, GENERATION_CONFIG, TOKENIZER)
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "torch": (*_COMMON, WEIGHTS, QUANTIZATION),
    "onnxruntime": (*_COMMON, LAYOUT),
}

# One path part: no separators, not "." or "..", no control characters or backslashes (a
# Windows separator). Names are joined with "/" as file_entries writes them.
_PART = re.compile(r"^(?!\.{1,2}$)[^/\\\x00-\x1f]{1,255}$")
SHA256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Meta(ge=0)]


def check_file_name(name: str) -> str:
    """`name` if it is a safe relative path inside a bundle, else ValueError saying why."""
    if not name or name.startswith("/") or not all(_PART.match(p) for p in name.split("/")):
        raise ValueError(f"file name {name[:100]!r} is not a plain relative path inside the bundle")
    if name == MANIFEST:
        raise ValueError(f"{MANIFEST} cannot list itself")
    return name


class FileEntry(Schema):
    sha256: SHA256
    size: Count


class Source(Schema):
    model: str
    revision: str | None
    weights_sha256: SHA256


class BackendInfo(Schema):
    name: str
    library: str
    version: str | None


class Requires(Schema):
    extra: Annotated[str, Meta(pattern=r"^[a-z0-9_-]+$")]  # shown as pip install 'edgeq[extra]'
    packages: dict[str, str]
    devices: Annotated[list[Literal["cpu", "cuda"]], Meta(min_length=1)]


class Decoding(Schema):
    language: str | None
    task: Literal["transcribe", "translate"]


class BuildInfo(Schema):
    seconds: Annotated[float, Meta(ge=0)]
    host: dict[str, str]
    libraries: dict[str, str]


class Size(Schema):
    reference_fp32_weights_bytes: Count
    bundle_bytes: Count
    weights_bytes: Count
    reduction_pct: float | None = None


class Manifest(Schema, kw_only=True):
    format: Literal["edgeq-bundle"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    edgeq_version: str
    created: str
    runtime: str
    source: Source
    recipe: Recipe
    backend: BackendInfo
    requires: Requires
    decoding: Decoding
    build: BuildInfo
    size: Size
    files: dict[str, FileEntry]

    def __post_init__(self) -> None:
        for name in self.files:
            check_file_name(name)
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} is unknown; this edgeq runs {', '.join(RUNTIMES)}")
        expected = BACKENDS[self.recipe.backend].runtime
        if self.runtime != expected:
            raise ValueError(f"runtime {self.runtime!r} does not run backend {self.recipe.backend!r} ({expected} does)")
        if self.backend.name != self.recipe.backend:
            raise ValueError(f"backend.name {self.backend.name!r} is not the recipe's {self.recipe.backend!r}")
        missing = [n for n in REQUIRED_FILES[self.runtime] if n not in self.files]
        if missing:
            raise ValueError(f"does not list {', '.join(missing)}, which a {self.runtime} bundle needs")
        total = sum(e.size for e in self.files.values())
        if self.size.bundle_bytes != total:
            raise ValueError(f"size.bundle_bytes is {self.size.bundle_bytes}, the files listed sum to {total}")

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def required_files(self) -> tuple[str, ...]:
        return REQUIRED_FILES[self.runtime]

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        if data["size"]["reduction_pct"] is None:
            del data["size"]["reduction_pct"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        """Validate `data` read from `where`'s manifest.json; BundleError in one line if it is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"{where}: {MANIFEST} is not an edgeq bundle manifest")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format version {version!r} is not supported by this edgeq "
                f"(reads version {FORMAT_VERSION}); rebuild it or install the edgeq that wrote it"
            )
        files = data.get("files")
        try:
            if isinstance(files, dict):
                # Names first, so an unsafe one is reported as such (not as a bad entry); each
                # entry on its own, so an error names its file (msgspec does not name mapping keys).
                for name, entry in files.items():
                    check_file_name(name)
                    _entry(name, entry)
            return convert(cls, data)
        except ValueError as err:  # SchemaError, a recipe's own check, or a name check_file_name refuses
            problem = one_line(err)
            if "unknown key" in problem or "is not allowed; expected" in problem:
                # A key or a value this edgeq does not know (schema.Problem's words, also in a
                # recipe's options): most likely what a later edgeq added, since a bundle's recipe
                # lists every option, defaults included. Not damage.
                from edgeq import __version__

                if data.get("edgeq_version") == __version__:  # a newer checkout of the same version
                    raise BundleError(
                        f"{where}: {MANIFEST}: {problem}: written by a later build of edgeq {__version__} "
                        "than this one, or edited; update this edgeq, or rebuild the bundle with it") from None
                raise BundleError(
                    f"{where}: {MANIFEST}: {problem}: written by an edgeq that knows more than this one "
                    f"({__version__}; the bundle says edgeq {data.get('edgeq_version')}), or edited; "
                    f"install that edgeq here, or rebuild the bundle with this one") from None
            raise BundleError(f"{where}: {MANIFEST}: {problem}; the bundle is damaged, rebuild it") from None


def _entry(name: str, entry: Any) -> None:
    try:
        convert(FileEntry, entry)
    except SchemaError as err:
        raise SchemaError(dataclasses.replace(err.problem, loc=("files", name, *err.problem.loc))) from None
