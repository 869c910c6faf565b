"""Targets: the devices bundles are deployed to, as validated data in `targets/`.

A target says what the device is (architecture, CUDA or not, cores, memory) and how to run on it
(threads, spinning, PyTorch quantized engine, ONNX Runtime providers), and which recipes suit it.
`edgeq bench --target` takes its device, threads and spinning from here; `edgeq build --target`
checks that the recipe can run there.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal

from edgeq.errors import TargetError
from edgeq.schema import Meta, Schema, SchemaError, convert, field
from edgeq.spec.protocols import Spinning
from edgeq.util import read_toml


class Target(Schema, kw_only=True):
    name: str
    description: str
    arch: Literal["arm64", "x86_64"]
    device: Literal["cpu", "cuda"] = "cpu"
    threads: Annotated[int, Meta(gt=0)]  # inference threads (physical cores, usually)
    memory_mb: Annotated[int, Meta(gt=0)]  # RAM of the smallest variant of the device
    torch_engine: Literal["x86", "fbgemm", "qnnpack"]  # PyTorch quantized engine for torch.ao int8 bundles
    onnx_providers: Annotated[list[str], Meta(min_length=1)] = field(default_factory=lambda: ["CPUExecutionProvider"])
    # ONNX Runtime's decoder threads spin between operators ("decoder") or sleep ("off"): faster
    # where edgeq has the cores to itself, slower where other work shares them (docs/performance.md "Threads").
    spinning: Spinning = "off"
    recommended: list[str] = field(default_factory=list)  # recipes that suit this device, best first
    why: str = ""  # one line on why these recipes


def targets_dir() -> Path:
    here = Path(__file__).resolve().parents[1]  # the edgeq package
    packaged = here / "_data" / "targets"
    return packaged if packaged.is_dir() else here.parent / "targets"


def _load(path: Path) -> Target:
    data = read_toml(path, TargetError, "target file")
    data.setdefault("name", path.stem)
    try:
        return convert(Target, data)
    except SchemaError as err:
        from edgeq.spec.recipe import _format_error

        raise TargetError(_format_error(str(path), err)) from None


def list_targets() -> list[Target]:
    return [_load(p) for p in sorted(targets_dir().glob("*.toml"))]


def load_target(name_or_path: str) -> Target:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise TargetError(f"target file not found: {path}")
        return _load(path)
    shipped = targets_dir() / f"{name_or_path}.toml"
    if shipped.is_file():
        return _load(shipped)
    names = sorted(p.stem for p in targets_dir().glob("*.toml"))
    close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; choose one of {', '.join(names)}"
    raise TargetError(f"unknown target {name_or_path!r}{hint}")


# --------------------------------------------------------------------------- does a recipe fit


# Peak RSS of a whole transcribing process ~ BASE + SLOPE x weights MB, fitted to the whisper-base
# measurements in README ("Every recipe on whisper-base": 8 LibriSpeech utterances, 2 threads):
# onnxruntime fp32 295 MB -> 606 MB peak, int8 86 -> 300, int4 61 -> 296 (fit: 603, 299, 263);
# torch fp32 294 -> 817, int8 84 -> 700, hqq-int2 53 -> 608 (fit: 855, 687, 662). BASE is
# imports, tokenizer and one 30 s window's activations; larger checkpoints have larger windows,
# so this is an estimate, and is said to be one wherever it is shown.
_PEAK_FIT = {"onnxruntime": (175.0, 1.45), "torch": (620.0, 0.8)}


def check_recipe(target: Target, recipe) -> None:
    """What can be known from the recipe alone: the device kind and the PyTorch engine."""
    if target.device not in recipe.devices:
        raise TargetError(
            f"recipe {recipe.name} runs on {', '.join(recipe.devices)}; target {target.name} is {target.device}"
        )
    engine = getattr(recipe.typed_options, "engine", "auto")
    if engine in ("x86", "fbgemm") and target.arch != "x86_64":
        raise TargetError(
            f"recipe {recipe.name} uses PyTorch's {engine} engine, which runs on x86_64 only; target "
            f"{target.name} is {target.arch}: use --set options.engine={target.torch_engine} (or auto)"
        )


def expected_peak_mb(runtime: str, weights_bytes: int) -> float:
    base, slope = _PEAK_FIT[runtime]
    return base + slope * weights_bytes / 1e6


ESTIMATED = "estimated peak RSS (whisper-base fit)"
MEASURED = "measured peak RSS"


def check_memory(target: Target, what: str, peak_mb: float, basis: str = ESTIMATED) -> str:
    """A line saying how `what`'s peak memory (`basis`: ESTIMATED from expected_peak_mb, or
    MEASURED by `edgeq bench`) fits in the target's, or TargetError if it does not."""
    peak = peak_mb
    line = f"{what}: {basis} {peak:,.0f} MB of {target.name}'s {target.memory_mb:,} MB"
    if peak > target.memory_mb:
        raise TargetError(f"{line}: it does not fit; choose a smaller recipe or another target")
    return line
