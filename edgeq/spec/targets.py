"""Targets: the devices bundles are deployed to, as validated data in `targets/`.

A target says what the device is (architecture, CUDA or not, cores, memory) and how to run on it
(threads, PyTorch quantized engine, ONNX Runtime providers), and which recipes suit it. `edgeq
bench --target` takes its device and threads from here; `edgeq build --target` checks that the
recipe can run there.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeq.errors import TargetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    arch: Literal["arm64", "x86_64"]
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(gt=0, description="inference threads (physical cores, usually)")
    memory_mb: int = Field(gt=0, description="RAM of the smallest variant of the device")
    torch_engine: Literal["x86", "fbgemm", "qnnpack"] = Field(
        description="PyTorch quantized engine for torch.ao int8 bundles"
    )
    onnx_providers: list[str] = Field(["CPUExecutionProvider"], min_length=1)
    recommended: list[str] = Field([], description="recipes that suit this device, best first")
    why: str = Field("", description="one line on why these recipes")


def targets_dir() -> Path:
    here = Path(__file__).resolve().parents[1]  # the edgeq package
    packaged = here / "_data" / "targets"
    return packaged if packaged.is_dir() else here.parent / "targets"


def _load(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise TargetError(f"{path}: not valid TOML: {err}") from None
    data.setdefault("name", path.stem)
    try:
        return Target.model_validate(data)
    except ValidationError as err:
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
