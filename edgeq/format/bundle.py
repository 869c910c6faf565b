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
a folder that looks like a bundle; the staging folder is locked by its build, and the next build
next to it removes the leftovers of builds that were killed. Loading validates the manifest
(edgeq.format.manifest: types, safe file names, the runtime's required files), then checks every
listed file is a regular file inside the folder (no symlinks) with its size and sha256, before
anything is deserialised; loaders open files only through `Bundle.file`, which refuses unlisted ones.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import BundleError
from edgeq.format.manifest import (  # noqa: F401  (the file names are part of this module's API)
    CONFIG,
    DECODE_TABLE,
    FORMAT,
    FORMAT_VERSION,
    GENERATION_CONFIG,
    MANIFEST,
    QUANTIZATION,
    RECIPE,
    TOKENIZER,
    WEIGHTS,
    Manifest,
)
from edgeq.schema import convert
from edgeq.util import LockHeld, exclusive_lock, os_reason, parse_json, read_text, sha256_file

STAGING = ".edgeq-staging-"  # .NAME.edgeq-staging-TOKEN (+ .lock, + scratch folders TOKEN.*)


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
    """A bundle on disk and its manifest. Files are opened through `file()`, which hands out only
    files the manifest lists (and `open_bundle` verified): a loader cannot read an unchecked file."""

    path: Path
    manifest: Manifest

    @property
    def runtime(self) -> str:
        return self.manifest.runtime

    @property
    def recipe(self):
        return self.manifest.recipe

    @property
    def name(self) -> str:
        return self.manifest.recipe.name

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST)

    def require_runtime(self, runtime: str, label: str) -> None:
        """For an engine module: refuse a bundle of another runtime (`label`: the runtime's name for
        people). `edgeq.load` picks the engine from the catalogue; this guards direct callers."""
        if self.runtime != runtime:
            raise BundleError(f"{self.path}: bundle {self.name} runs on {self.runtime}, not {label}")

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise BundleError(
                f"{self.path}: {name} is not listed in the manifest, so it was not verified; "
                "the bundle is incomplete or was edited, rebuild it"
            )
        return self.path / name

    def required_files(self) -> list[str]:
        """Every file this bundle's runtime opens: the fixed names, and an ONNX bundle's graphs
        (named by onnx.json). Each is listed in the manifest, or BundleError."""
        names = list(self.manifest.required_files)
        if self.runtime == "onnxruntime":
            from edgeq.format.layout import graph_files, read_layout

            names += graph_files(self, read_layout(self))
        return names

    def layers_summary(self) -> str:
        """What the quantized layers are, in one line: an ONNX bundle's own record of its build
        (onnx.json's quantization: each graph's operators, layers per format, the table's blocks),
        else the recipe's spec (torch bundles: its scheme, weights and table)."""
        if self.runtime == "onnxruntime":
            from edgeq.format.layout import read_layout

            q = read_layout(self).quantization
            counts = q.get("decoder_layers_per_format") or q.get("layers_per_format")
            detail = (", ".join(f"{k} x{v}" for k, v in counts.items()) if isinstance(counts, dict)
                      else f"blocks of {q['block_size']}" if q.get("block_size") else "")
            detail = f" ({detail})" if detail else ""
            parts = []
            if q.get("encoder") == q.get("decoder") == "MatMulNBits":  # weight-only: one spec for both
                parts.append(f"encoder and decoder MatMulNBits {q.get('weights')}{detail}")
            else:
                if isinstance(q.get("encoder"), str):
                    parts.append(f"encoder {q['encoder']}")
                if isinstance(q.get("decoder"), str):
                    parts.append(f"decoder {q['decoder']}{detail}")
            table = q.get("tied_table")
            if isinstance(table, dict) and {"bits", "block_size"} <= set(table):
                parts.append(f"table int{table['bits']} blocks of {table['block_size']}")
            elif parts and self.recipe.modules.embeddings == "float":  # --set modules.embeddings=float
                parts.append("table float")
            if parts:
                return "; ".join(parts)
        r = self.recipe
        if r.scheme == "none":
            return f"not quantized ({r.weights.format})"
        overrides = len(r.modules.overrides)
        return (f"{r.scheme} {r.weights.format} {r.granularity_label}; table {r.embeddings_label}"
                + (f"; {overrides} per-layer override{'s' * (overrides != 1)}" if overrides else ""))

    def extra_files(self) -> list[str]:
        """Files in the folder the manifest does not list (nothing loads them; `info` shows them)."""
        return sorted(
            rel for rel in _walk(self.path) if rel != MANIFEST and rel not in self.manifest.files
        )


def _walk(folder: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):  # does not follow symlinked folders
        base = Path(root).relative_to(folder)
        out += [(base / f).as_posix() for f in files]
        out += [(base / d).as_posix() for d in dirs if (Path(root) / d).is_symlink()]
    return out


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def read_manifest(path: str | Path) -> Manifest:
    """The bundle's manifest, validated (BundleError naming the bundle if it is not one)."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle folder")
    if not path.is_dir():
        raise BundleError(f"{path}: a bundle is a folder, this is a file")
    manifest = path / MANIFEST
    if not manifest.exists() and not manifest.is_symlink():
        raise BundleError(f"{path}: not an edgeq bundle (no {MANIFEST}); build one with `edgeq build`")
    _check_plain_file(path, MANIFEST)
    data = parse_json(read_text(manifest, BundleError, "manifest"), str(manifest), BundleError)
    return Manifest.from_dict(data, str(path))


def _check_plain_file(bundle: Path, name: str) -> os.stat_result:
    """`name` is a regular file inside `bundle`, reached without following any symlink."""
    here = bundle
    for part in name.split("/"):
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            raise BundleError(f"{bundle}: {name} is missing (the bundle is incomplete)") from None
        except OSError as err:
            raise BundleError(f"{bundle}: cannot read {name} ({os_reason(err)})") from None
        if stat.S_ISLNK(st.st_mode):
            raise BundleError(f"{bundle}: {name} is a symbolic link; a bundle holds its own files, rebuild or copy it")
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{bundle}: {name} is not a regular file")
    return st


def verify(path: Path, manifest: Manifest, hashes: bool = True, reuse: bool = False) -> None:
    """Every file the manifest lists is a regular file inside `path` (no symlinks) with its size,
    and its sha256 when `hashes`. The manifest already lists every file the runtime opens.

    `reuse`: skip the hashing when the files are unchanged since their hashes last matched
    (edgeq.format.verified); a full check always stamps the bundle for the next one."""
    for name, entry in manifest.files.items():
        size = _check_plain_file(path, name).st_size
        if size != entry.size:
            raise BundleError(f"{path}: {name} has {size} bytes, the manifest says {entry.size} (corrupt or tampered)")
    if not hashes:
        return
    from edgeq.format import verified

    names = [*manifest.files, MANIFEST]
    manifest_sha = sha256_file(path / MANIFEST)
    if reuse and verified.still_verified(path, names, manifest_sha):
        return
    for name, entry in manifest.files.items():
        try:
            digest = sha256_file(path / name)
        except OSError as err:
            raise BundleError(f"{path}: cannot read {name} ({os_reason(err)})") from None
        if digest != entry.sha256:
            raise BundleError(f"{path}: {name} does not match its sha256 in the manifest (corrupt or tampered)")
    verified.remember(path, names, manifest_sha)


def open_bundle(path: str | Path, verify_hashes: bool = True, reuse_verification: bool = False) -> Bundle:
    """Read and check a bundle (see verify); `reuse_verification` is for loading it to run, where a
    bundle unchanged since its last full check is not hashed again (edgeq.format.verified)."""
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    verify(path, manifest, hashes=verify_hashes, reuse=reuse_verification)
    bundle = Bundle(path, manifest)
    bundle.required_files()  # an ONNX bundle's graphs: named by onnx.json, and listed
    return bundle


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.name != MANIFEST:
            rel = file.relative_to(folder).as_posix()
            entries[rel] = {"sha256": sha256_file(file), "size": file.stat().st_size}
    return entries


def check_destination(out: Path, force: bool) -> None:
    """Refuse to write over anything but an empty folder, unless `force` replaces a bundle; and
    refuse a destination that cannot be written (under a file, read-only, no permission), so a
    build fails in one line before it loads a model rather than after minutes of quantizing."""
    if out.exists():
        if not out.is_dir():
            raise BundleError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if not is_bundle(out):
                raise BundleError(f"{out}: folder is not empty and holds no bundle; choose another --out")
            if not force:
                try:
                    held = read_manifest(out).name
                except BundleError:
                    held = "unknown recipe"
                raise BundleError(f"{out}: already holds a bundle ({held}); pass --force to replace it")
    _check_writable(out)


def _check_writable(out: Path) -> None:
    # The nearest folder that exists is where the first folder (or the staging folder) is made.
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BundleError(f"{out}: cannot be created, {parent} is a file; choose another --out")
    try:
        probe = parent / f".{out.name}{STAGING}probe-{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise BundleError(f"{out}: cannot write in {parent} ({os_reason(err)}); choose another --out") from None


def sweep_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging and scratch folders of builds that died (kill -9, power loss) in `parent`.

    Each build holds an OS lock on `.NAME.edgeq-staging-TOKEN.lock` while it runs; the kernel drops
    it when the process dies, so a lock nobody holds marks leftovers, and a live build's (locked)
    folders are never touched. A bundle the dead build had moved aside to replace it (`.old`) is
    put back if the new one never took its place. Returns what was removed.
    """
    removed = []
    for lock in sorted(parent.glob(f".*{STAGING}*.lock")):
        stem = lock.name[: -len(".lock")]
        try:
            with exclusive_lock(lock):
                old, out = parent / f"{stem}.old", parent / stem[1 : stem.rindex(STAGING)]
                if old.is_dir() and not out.exists() and not out.is_symlink():
                    os.replace(old, out)  # killed between the two renames of swap_in
                for leftover in [parent / stem, *parent.glob(f"{stem}.*")]:
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover, ignore_errors=True)
                        removed.append(leftover)
                lock.unlink(missing_ok=True)
        except LockHeld:
            continue  # a live build
        except OSError:
            continue  # not ours to clean (permissions): leave it
    return removed


def write_bundle(
    out: str | Path,
    populate: Callable[[Path], dict[str, Any]],
    force: bool = False,
) -> Bundle:
    """Create a bundle at `out` atomically.

    `populate(staging)` writes every file into the staging folder and returns the manifest's
    fields but `files` and the totals of `size`; this function adds those, validates the whole
    `Manifest` (a builder bug fails here, not on a device), writes it last, then swaps the folder in.
    Scratch space a writer needs goes in folders named `staging.name + ".*"` next to it: they share
    the build's lock, so `sweep_stale_staging` removes them too if the build is killed.
    """
    out = Path(out).expanduser().resolve()
    check_destination(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(out.parent)
    except OSError as err:
        raise BundleError(f"{out}: cannot create its folder ({os_reason(err)}); choose another --out") from None
    token = uuid.uuid4().hex[:8]
    staging = out.parent / f".{out.name}{STAGING}{token}"
    lock = staging.with_name(staging.name + ".lock")
    try:
        with exclusive_lock(lock):
            try:
                staging.mkdir()
                manifest = _complete(populate(staging), staging)
                tmp = staging / (MANIFEST + ".tmp")
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(manifest.to_json())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, staging / MANIFEST)
                _fsync_dir(staging)
                swap_in(staging, out)
            except OSError as err:
                where = err.filename or staging
                raise BundleError(f"{out}: cannot write the bundle ({os_reason(err)}: {where})") from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
                for scratch in out.parent.glob(f"{staging.name}.*"):
                    if scratch not in (lock, staging.with_name(staging.name + ".old")):
                        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        lock.unlink(missing_ok=True)
    return Bundle(out, manifest)


def _complete(fields: dict[str, Any], staging: Path) -> Manifest:
    files = file_entries(staging)
    weights = sum(e["size"] for n, e in files.items() if is_weights_file(n))
    size = {
        **fields.get("size", {}),
        "bundle_bytes": sum(e["size"] for e in files.values()),
        "weights_bytes": weights,
    }
    ref = size.get("reference_fp32_weights_bytes")
    if ref:
        size["reduction_pct"] = round(100.0 * (1 - weights / ref), 2)
    return convert(Manifest, {**fields, "format": FORMAT, "format_version": FORMAT_VERSION, "size": size,
                              "files": files})


def swap_in(staging: Path, out: Path) -> None:
    """Rename a complete staging folder to `out` (builds, `edgeq unpack`), replacing what was there."""
    if out.exists():
        # Move the old folder aside first: at no moment is `out` a half-replaced bundle. Named
        # after the staging folder, so a build killed between the two renames has its old bundle
        # put back by sweep_stale_staging.
        old = staging.with_name(staging.name + ".old")
        os.replace(out, old)
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    _fsync_dir(out.parent)


def is_weights_file(name: str) -> bool:
    return name.endswith((".safetensors", ".onnx", ".onnx.data"))
