"""The bundle: a self-contained folder that a device can run with nothing else.

Layout (fixed file names, so tools and people know where to look):

    manifest.json            format version, provenance, recipe, sha256 + size of every file
    recipe.toml              the resolved recipe, replayable with `edgeq build --recipe`
    config.json              the Whisper config
    generation_config.json   decoder settings (prompt tokens, suppressed tokens)
    tokenizer.json ...       tokenizer and feature-extractor files
    model.safetensors        weights (torch runtime) + quantization.json to rebuild the modules
    encoder.onnx, decoder.onnx (+ .onnx.data)   for the ONNX runtime

A bundle is written into a hidden staging folder next to its destination and renamed into place
only when complete (the manifest is the last file written), so an interrupted build never leaves
a folder that looks like a bundle. Loading checks every file's size and sha256 against the
manifest before anything is deserialised.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import BundleError
from edgeq.util import sha256_file

FORMAT = "edgeq-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECIPE = "recipe.toml"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER = "tokenizer.json"
WEIGHTS = "model.safetensors"
QUANTIZATION = "quantization.json"

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]

    @property
    def recipe(self) -> dict[str, Any]:
        return self.manifest["recipe"]

    @property
    def name(self) -> str:
        return self.manifest["recipe"]["name"]

    @property
    def size_bytes(self) -> int:
        return self.manifest["size"]["bundle_bytes"]

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST)

    def file(self, name: str) -> Path:
        return self.path / name


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle folder")
    if not path.is_dir():
        raise BundleError(f"{path}: a bundle is a folder, this is a file")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: not an edgeq bundle (no {MANIFEST}); build one with `edgeq build`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: {MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: {MANIFEST} is not an edgeq bundle manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version!r} is not supported by this edgeq "
            f"(reads version {FORMAT_VERSION}); rebuild it or install the edgeq that wrote it"
        )
    for key in ("runtime", "recipe", "files", "size"):
        if key not in manifest:
            raise BundleError(f"{path}: {MANIFEST} lacks {key!r}")
    return manifest


def verify(path: Path, manifest: dict[str, Any], hashes: bool = True) -> None:
    """Every file the manifest lists is present with its size (and sha256 when `hashes`)."""
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: {name} is missing (the bundle is incomplete)")
        size = file.stat().st_size
        if size != entry["size"]:
            raise BundleError(
                f"{path}: {name} has {size} bytes, the manifest says {entry['size']} (corrupt or tampered)"
            )
    if hashes:
        for name, entry in manifest["files"].items():
            if sha256_file(path / name) != entry["sha256"]:
                raise BundleError(f"{path}: {name} does not match its sha256 in the manifest (corrupt or tampered)")


def open_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    verify(path, manifest, hashes=verify_hashes)
    return Bundle(path, manifest)


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.name != MANIFEST:
            rel = file.relative_to(folder).as_posix()
            entries[rel] = {"sha256": sha256_file(file), "size": file.stat().st_size}
    return entries


def check_destination(out: Path, force: bool) -> None:
    """Refuse to write over anything but an empty folder, unless `force` replaces a bundle."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BundleError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if is_bundle(out):
        if force:
            return
        try:
            held = json.loads((out / MANIFEST).read_text())["recipe"]["name"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            held = "unknown recipe"
        raise BundleError(f"{out}: already holds a bundle ({held}); pass --force to replace it")
    raise BundleError(f"{out}: folder is not empty and holds no bundle; choose another --out")


def write_bundle(
    out: str | Path,
    populate: Callable[[Path], dict[str, Any]],
    force: bool = False,
) -> Bundle:
    """Create a bundle at `out` atomically.

    `populate(staging)` writes every file into the staging folder and returns the manifest
    fields; this function adds the file table, writes the manifest last, then swaps the folder in.
    """
    out = Path(out).expanduser().resolve()
    check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = out.parent / f".{out.name}.edgeq-staging-{token}"
    staging.mkdir()
    try:
        manifest = populate(staging)
        files = file_entries(staging)
        weights = sum(e["size"] for n, e in files.items() if _is_weights(n))
        manifest["files"] = files
        manifest["size"] = {
            **manifest.get("size", {}),
            "bundle_bytes": sum(e["size"] for e in files.values()),
            "weights_bytes": weights,
        }
        ref = manifest["size"].get("reference_fp32_weights_bytes")
        if ref:
            manifest["size"]["reduction_pct"] = round(100.0 * (1 - weights / ref), 2)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
        tmp = staging / (MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, staging / MANIFEST)
        _fsync_dir(staging)
        swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle(out, manifest)


def swap_in(staging: Path, out: Path) -> None:
    """Rename a complete staging folder to `out` (builds, `edgeq unpack`), replacing what was there."""
    if out.exists():
        # Move the old folder aside first: at no moment is `out` a half-replaced bundle.
        old = out.parent / f".{out.name}.edgeq-old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    _fsync_dir(out.parent)


def _is_weights(name: str) -> bool:
    return name.endswith((".safetensors", ".onnx", ".onnx.data"))
