"""Bundle size of every shipped recipe against fp32, for whisper-base (real weights) and the
whisper-small shape (random weights: size does not depend on the values).

    python benchmarks/sizes.py [--models base small] [--recipes a,b] [--work DIR]

Writes benchmarks/results/sizes.json (updated after each bundle, so an interrupted run keeps
what it measured).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import RESULTS, WHISPER_BASE, require_shared, whisper_small_random, write_json


def main() -> None:
    import edgeq
    from edgeq.bench.env import fingerprint
    from edgeq.schema import to_dict
    from edgeq.spec.recipe import apply_overrides, list_recipes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["base", "small"], choices=["base", "small"])
    ap.add_argument("--recipes", help="comma-separated subset")
    ap.add_argument("--calibration", default=None, help="dataset for static recipes [speech-dev/other]")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeq-sizes"))
    ap.add_argument("--keep", action="store_true", help="keep the bundles (e.g. to bench them) instead of deleting each")
    args = ap.parse_args()
    require_shared()
    from _common import SPEECH_DEV

    calibration = args.calibration or str(SPEECH_DEV / "other")
    recipes = [r for r in list_recipes() if not args.recipes or r.name in args.recipes.split(",")]
    models = {"base": str(WHISPER_BASE)}
    if "small" in args.models:
        models["small"] = str(whisper_small_random(args.work / "whisper-small-random"))
    # Rows not rebuilt this time are kept (e.g. `--models small` after a base run).
    previous = RESULTS / "sizes.json"
    redo = {(m, r.name) for m in args.models for r in recipes}
    rows = [r for r in json.loads(previous.read_text())["rows"] if (r["model"], r["recipe"]) not in redo] \
        if previous.is_file() else []
    out = {"env": fingerprint(), "rows": rows}
    for key in args.models:
        for recipe in recipes:
            target = args.work / f"{key}-{recipe.name}"
            t0 = time.perf_counter()
            r = recipe
            if key == "small" and recipe.scheme == "static":
                # Random weights decode to the token limit; the size does not depend on the
                # calibrated scales, so two utterances are enough here.
                r = apply_overrides(recipe, ["calibration.samples=2"])
            try:
                b = edgeq.build(r, model=models[key], out=target, force=True, language="en",
                                calibration=calibration if recipe.scheme == "static" else None)
            except Exception as err:  # record and go on: one broken recipe must not hide the rest
                rows.append({"model": key, "recipe": recipe.name, "error": f"{type(err).__name__}: {err}"})
                write_json("sizes.json", out)
                continue
            s = to_dict(b.manifest.size)
            rows.append({
                "model": key, "recipe": recipe.name, "backend": recipe.backend, "scheme": recipe.scheme,
                "weights": recipe.weights.format, "embeddings": recipe.modules.embeddings,
                "fp32_weights_mb": s["reference_fp32_weights_bytes"] / 1e6, "weights_mb": s["weights_bytes"] / 1e6,
                "bundle_mb": s["bundle_bytes"] / 1e6, "reduction_pct": s["reduction_pct"],
                "build_s": round(time.perf_counter() - t0, 1),
            })
            write_json("sizes.json", out)
            if not args.keep:
                shutil.rmtree(target, ignore_errors=True)
            print(f"{key:5} {recipe.name:22} {s['weights_bytes'] / 1e6:8.1f} MB  {s['reduction_pct']:6.1f}% smaller")


if __name__ == "__main__":
    main()
