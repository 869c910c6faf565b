"""What a sweep will do: the recipes a selector names, the dataset conditions, and their cache keys."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeq.errors import EdgeqError
from edgeq.spec.recipe import Recipe, list_recipes, load_recipe

# ΔWER is measured against this recipe; a sweep always includes it.
BASELINE = "fp32"


@dataclass(frozen=True)
class SweepSettings:
    recipes: str  # "a,b", a glob ("hqq-*"), a recipe file, or "all"
    model: str
    datasets: tuple[str, ...]
    out: Path = Path("sweep-results")
    limit: int | None = None
    device: str = "cpu"
    threads: int | None = None
    warmup: int = 1
    language: str | None = None
    calibration: str | None = None
    # Each SNR (dB) adds a noisy copy of every dataset; None is the clean run.
    snrs: tuple[float | None, ...] = (None,)
    noise_source: str = "white"
    skip_float16: bool = False  # fp16 recipes are meant for CUDA; very slow on CPUs without fp16 math
    on: str | None = None  # user@host[:dir]: bench on that device over SSH (builds stay here)


@dataclass(frozen=True)
class Condition:
    """One dataset as measured: the spec, optional noise, and everything that changes the numbers."""

    dataset: str
    snr_db: float | None = None
    noise_source: str = "white"
    limit: int | None = None
    device: str = "cpu"
    threads: int | None = None
    warmup: int = 1
    language: str | None = None
    on: str | None = None  # the device (user@host) it is measured on; None: this machine
    label: str = field(default="", compare=False)

    def key_fields(self) -> dict:
        fields = {"dataset": self.dataset, "snr_db": self.snr_db,
                  "noise_source": self.noise_source if self.snr_db is not None else None,
                  "limit": self.limit, "device": self.device, "threads": self.threads, "warmup": self.warmup,
                  "language": self.language}
        if self.on is not None:
            # Another machine's numbers are another cell; a local cell's key is unchanged by this field
            # (the caches of earlier sweeps stay valid).
            fields["on"] = self.on
        return fields

    @property
    def key(self) -> str:
        """Folder name: readable label plus a hash of every field that changes the measurement."""
        return f"{_slug(self.label)}-{short_hash(self.key_fields())}"


def short_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def recipe_hash(recipe: Recipe) -> str:
    """Hash of the resolved recipe (not its file): an edited file or a --set change is a new cell."""
    return short_hash(recipe.to_dict())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def select_recipes(selector: str, skip_float16: bool = False) -> list[Recipe]:
    """Recipes named by `selector` (comma-separated names, globs or .toml files; `all`), plus the baseline."""
    shipped = {r.name: r for r in list_recipes()}
    chosen: dict[str, Recipe] = {}
    for part in (p.strip() for p in selector.split(",")):
        if not part:
            continue
        if part == "all":
            matched = list(shipped.values())
        elif any(c in part for c in "*?["):
            matched = [shipped[n] for n in sorted(fnmatch.filter(shipped, part))]
            if not matched:
                raise EdgeqError(f"--recipes {part!r} matches no recipe; run `edgeq recipes` for the names")
        else:
            matched = [load_recipe(part)]  # unknown names fail with the closest matches
        for r in matched:
            chosen.setdefault(r.name, r)
    if not chosen:
        raise EdgeqError("--recipes is empty: pass names, a glob such as 'onnx-*', or all")
    if skip_float16:
        chosen = {n: r for n, r in chosen.items() if r.weights.format != "float16"}
    chosen.setdefault(BASELINE, shipped[BASELINE])
    # Baseline first: the table reads top to bottom from fp32.
    return [chosen[BASELINE]] + [chosen[n] for n in sorted(chosen) if n != BASELINE]


def conditions(settings: SweepSettings) -> list[Condition]:
    out = []
    on = None
    if settings.on is not None:
        from edgeq.deploy.ssh import parse_remote

        on = str(parse_remote(settings.on))  # user@host: the folder on the device does not change the numbers
    names = [_dataset_name(d) for d in settings.datasets]
    for spec, name in zip(settings.datasets, names):
        spec = dataset_spec(spec)
        resolved = spec if spec.startswith("librispeech:") else str(Path(spec).expanduser().resolve())
        for snr in settings.snrs:
            label = name if snr is None else f"{name}@{snr:g}dB"
            out.append(Condition(resolved, snr, settings.noise_source, settings.limit, settings.device,
                                 settings.threads, settings.warmup, settings.language, on, label))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise EdgeqError(f"--dataset: two datasets share a name ({', '.join(labels)}); name them NAME=SPEC")
    return out


def _dataset_name(spec: str) -> str:
    """`NAME=SPEC` names a dataset; otherwise the split, manifest stem or folder name does."""
    if "=" in spec.split("/")[0]:
        return spec.split("=", 1)[0]
    if spec.startswith("librispeech:"):
        return spec.split(":", 1)[1]
    p = Path(spec.rstrip("/"))
    return p.stem if p.suffix in (".tsv", ".jsonl") and p.stem != "manifest" else (p.parent.name if p.suffix else p.name)


def dataset_spec(spec: str) -> str:
    """The spec without its `NAME=` prefix."""
    return spec.split("=", 1)[1] if "=" in spec.split("/")[0] else spec
