"""Every shipped recipe on whisper-base and the speech-dev set, side by side with fp32, in one run.

    python benchmarks/recipes_speech_dev.py [--recipes a,b] [--threads 2] [--limit N]

Builds the bundles (skipping ones already built by an earlier run), then measures them with
`edgeq bench` (one process per bundle). Writes benchmarks/results/recipes_whisper-base.json and
a plot next to it; the per-utterance JSON lines stay in --work/bench.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import RESULTS, SPEECH_DEV, WHISPER_BASE, require_shared, write_json


def main() -> None:
    import edgeq
    from edgeq.bench import BenchSettings, run_bench
    from edgeq.bench.report import plot, rows
    from edgeq.bench.runner import make_systems
    from edgeq.format.bundle import is_bundle
    from edgeq.spec.recipe import list_recipes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", help="comma-separated subset (fp32 is always included)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--dataset", default=str(SPEECH_DEV / "LibriSpeech"),
                    help="default: the 8 LibriSpeech utterances of speech-dev (62 s; HQQ 3-bit runs "
                         "slower than real time on a CPU, the whole set would take an hour)")
    ap.add_argument("--with-fp16", action="store_true",
                    help="also time fp16 / onnx-fp16 (meant for CUDA; very slow on CPUs without fp16 math)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeq-recipes"))
    ap.add_argument("--resume", action="store_true", help="continue an interrupted measurement")
    args = ap.parse_args()
    require_shared()
    wanted = set(args.recipes.split(",")) | {"fp32"} if args.recipes else None
    bundles = []
    for recipe in list_recipes():
        if wanted and recipe.name not in wanted:
            continue
        if recipe.weights.format == "float16" and not args.with_fp16:
            continue
        out = args.work / "bundles" / recipe.name
        if not is_bundle(out):
            calib = str(SPEECH_DEV / "other") if recipe.scheme == "static" else None
            edgeq.build(recipe, model=str(WHISPER_BASE), out=out, calibration=calib, language="en", force=True)
        bundles.append(str(out))
    settings = BenchSettings(dataset=args.dataset, out=args.work / "bench", limit=args.limit,
                             threads=args.threads, resume=args.resume, force=not args.resume)
    summaries = run_bench(make_systems(bundles, []), settings,
                          progress=lambda name, i, n: print(f"\r{name}: {i}/{n}", end="", flush=True))
    print()
    # Systems measured by an earlier run and not this time are kept (`--recipes a,b` re-measures a, b).
    previous = RESULTS / "recipes_whisper-base.json"
    if previous.is_file():
        done = {s["system"] for s in summaries}
        kept = [s for s in json.loads(previous.read_text())["summaries"] if s["system"] not in done]
        summaries = sorted(kept + summaries, key=lambda s: s["system"])
    path = write_json("recipes_whisper-base.json", {"rows": rows(summaries), "summaries": summaries})
    plot(summaries, RESULTS / "recipes_whisper-base.png")
    for r in rows(summaries):
        if "failed" in r:
            print(f"{r['system']:22} FAILED {r['failed']}")
        else:
            print(f"{r['system']:22} {r['size_mb']:7.1f} MB  WER {r['wer_pct']:5.2f}%  RTF {r['rtf']:.3f}  "
                  f"p50 {r['p50_s']:.2f}s  load {r['load_s']:.2f}s  RSS {r['peak_rss_mb']:.0f} MB")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
