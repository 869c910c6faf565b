"""benchmarks/compare_systems.py reuses a bundle it built before only if it holds what the recipe asks
for now, built by the edgeq code there is now: a run that measured a stale bundle under the current recipe's name would credit (or
blame) a change for numbers it did not make."""

import hashlib
import json
import sys
from pathlib import Path

from edgeq.format.bundle import open_bundle

REPO = Path(__file__).resolve().parents[1]


def _ensure_bundle():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from compare_systems import ensure_bundle
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return ensure_bundle


def test_a_bundle_built_before_an_option_existed_is_rebuilt(tiny_model, tmp_path):
    ensure_bundle = _ensure_bundle()
    out = ensure_bundle(tiny_model, "onnx-fp32", tmp_path)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert ensure_bundle(tiny_model, "onnx-fp32", tmp_path) == out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp, "an up-to-date bundle was rebuilt"

    # As a bundle written before options.ffn_blocks existed: its recipe.toml lacks the key, and
    # resolving it again would fill in today's default as if the bundle held it.
    # The manifest records the recipe and recipe.toml's size and hash: both are written as that
    # older edgeq wrote them, so the bundle is consistent and only the recipe differs.
    recipe, manifest = out / "recipe.toml", out / "manifest.json"
    text = recipe.read_text()
    assert "ffn_blocks = 4" in text
    recipe.write_text("".join(line for line in text.splitlines(keepends=True) if not line.startswith("ffn_blocks")))
    meta = json.loads(manifest.read_text())
    del meta["recipe"]["options"]["ffn_blocks"]
    entry = meta["files"]["recipe.toml"]
    meta["size"]["bundle_bytes"] += recipe.stat().st_size - entry["size"]
    entry.update(sha256=hashlib.sha256(recipe.read_bytes()).hexdigest(), size=recipe.stat().st_size)
    manifest.write_text(json.dumps(meta, indent=2))
    assert open_bundle(out).recipe.options.get("ffn_blocks") is None  # consistent, hashes included
    ensure_bundle(tiny_model, "onnx-fp32", tmp_path)
    assert "ffn_blocks = 4" in recipe.read_text(), "a bundle without ffn_blocks was measured as the current recipe"


def test_a_bundle_built_by_other_edgeq_code_is_rebuilt(tiny_model, tmp_path):
    """The same recipe, built by different code (int8 bundles gained encoder.vnni.onnx that way):
    the hash of the sources that built it, kept beside it, no longer matches."""
    ensure_bundle = _ensure_bundle()
    out = ensure_bundle(tiny_model, "onnx-fp32", tmp_path)
    source = tmp_path / f"{out.name}.edgeq-source"
    built = (out / "manifest.json").stat().st_mtime_ns
    assert ensure_bundle(tiny_model, "onnx-fp32", tmp_path) == out
    assert (out / "manifest.json").stat().st_mtime_ns == built, "an up-to-date bundle was rebuilt"
    current = source.read_text()
    source.write_text("0" * 64)  # as if an older edgeq had built it
    ensure_bundle(tiny_model, "onnx-fp32", tmp_path)
    assert (out / "manifest.json").stat().st_mtime_ns != built, "a bundle built by other code was measured as current"
    assert source.read_text() == current
    source.unlink()  # a bundle cached before the stamp existed
    ensure_bundle(tiny_model, "onnx-fp32", tmp_path)
    assert source.read_text() == current
