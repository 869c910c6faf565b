"""Long-form WER of edgeq bundles against the same model's float weights, over several recordings.

    python benchmarks/longform_wer.py [--recipes onnx-int8-dynamic,onnx-int8-dynamic-int4-decoder]
                                      [--bundles PATH ...] [--recordings 6] [--minutes 5]
                                      [--decodings greedy,default] [--cpu-mask avx2|vnni] [--out FILE]

Why several: one 5-minute recording (compare_systems.py --long) holds ~825 words, and where its
30 s windows fall decides a handful of them. On that recording whisper-base's float weights read
1.82 %; on five others joined from the same clips in other orders, 2.76-3.63 % (measured here). One
recording cannot tell "fp32 + 0.5" from the luck of the draw: an int8 bundle read 2.55 % on it and,
pooled over six, fp32 + 0.10.

Recording 1 is compare_systems --long's (the dataset's clips in order, then seeded orders until
--minutes); recording k > 1 starts from the clips in an order of its own. Every system transcribes
every recording whole through edgeq's long-form path, with each --decodings:

    greedy    temperature 0 once, timestamps, not conditioned on the previous text: what
              compare_systems --long runs for every system (peers included)
    default   edgeq's (openai-whisper's) defaults: temperature fallback when a window's text is
              repetitive or unlikely, conditioned on the previous text
    unconditioned  the defaults but not conditioned on the previous text (temperature fallback kept)

The float reference is the onnx-fp32 bundle of --model: the same runtime and loop, only the weights
differ. --transformers adds the same float checkpoint through transformers' sequential long-form
generate (compare_systems' transformers-fp32), with openai-whisper's defaults for *default*. Per
system and decoding: WER per recording, pooled WER (errors over all words), the
difference to fp32 per recording and pooled, and the longest run of inserted words (a decoding
loop: the same words again and again) and of deleted ones (a window lost). Results are written
after each system, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import SPEECH_DEV, WHISPER_BASE, add_cpu_mask_option, require_shared, run_masked, write_json
from compare_systems import MAX_NEW_TOKENS, USABLE_WER_POINTS, ensure_bundle

FLOAT_RECIPE = "onnx-fp32"


def recordings(dataset, minutes: float, count: int) -> list:
    """`count` joined recordings of at least `minutes`: the first as compare_systems --long joins
    it, each other from the clips in a seeded order of its own (join_utterances keeps the order it
    is given for its first pass, so a seed alone would start every recording alike)."""
    import numpy as np

    from edgeq.data.datasets import Dataset
    from edgeq.data.joined import join_utterances

    out = []
    for k in range(count):
        order = dataset if k == 0 else Dataset(dataset.spec, tuple(
            dataset.utterances[i] for i in np.random.default_rng(1000 + k).permutation(len(dataset))))
        out.append(join_utterances(order, minutes * 60, seed=k))
    return out


def check_bundles(paths) -> None:
    """Refuse, in one line and before anything is measured, a path that is not a bundle."""
    from edgeq.errors import EdgeqError
    from edgeq.format.bundle import open_bundle

    for path in paths:
        try:
            open_bundle(path, verify_hashes=False)
        except EdgeqError as e:
            raise SystemExit(f"error: {e}") from None


def decoding_options(name: str):
    from dataclasses import replace

    from edgeq.runtime.decoding import STUDY_OPTIONS, DecodeOptions

    if name == "greedy":
        return replace(STUDY_OPTIONS, timestamps=True, condition_on_previous_text=False)
    if name == "default":
        return DecodeOptions()
    if name == "unconditioned":
        return DecodeOptions(condition_on_previous_text=False)
    raise SystemExit(f"--decodings: greedy, default or unconditioned, not {name!r}")


def _row(label: str, k: int, joined, text: str, seconds: float, **extra) -> dict:
    """One system's transcript of recording k + 1, scored against its reference (and printed)."""
    from edgeq.data.wer import error_runs, word_errors

    e = word_errors(joined.reference, text)
    runs = error_runs(joined.reference, text)
    print(f"  {label} recording {k + 1}: WER {100 * e.wer:.2f} %, {seconds:.1f} s", flush=True)
    return {"recording": k + 1, "audio_s": round(len(joined.samples) / 16000, 1), "wer_pct": 100 * e.wer,
            **e.to_dict(), "seconds": round(seconds, 2), **extra,
            "longest_inserted_run": max(runs["inserted"], default=0),
            "longest_deleted_run": max(runs["deleted"], default=0)}


def measure(bundle: Path, joined: list, decodings: list[str], threads: int) -> dict:
    import edgeq

    t = edgeq.load(bundle, threads=threads, language="en")
    out = {}
    for name in decodings:
        options = decoding_options(name)
        rows = []
        for k, j in enumerate(joined):
            t0 = time.perf_counter()
            r = t.transcribe(j.samples, options=options)
            rows.append(_row(f"{bundle.name} {name}", k, j, r.text, time.perf_counter() - t0, windows=r.windows))
        out[name] = rows
    return out


# What openai-whisper's transcribe() defaults are in transformers' sequential long-form generate.
# With the previous text as prompt, prompt + max_new_tokens must fit the decoder's 448 positions:
# transformers refuses 224 new tokens after a 223-token prompt, so 220 there.
TRANSFORMERS_DECODINGS = {
    "greedy": {"condition_on_prev_tokens": False, "max_new_tokens": MAX_NEW_TOKENS},
    "default": {"condition_on_prev_tokens": True, "temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "do_sample": False,
                "compression_ratio_threshold": 2.4, "logprob_threshold": -1.0, "no_speech_threshold": 0.6,
                "max_new_tokens": 220},
}


def measure_transformers(model: Path, joined: list, decodings: list[str], threads: int) -> dict:
    """--transformers: the float checkpoint through transformers' own long-form loop (what
    compare_systems --long runs as transformers-fp32), with the same decodings."""
    import torch
    from compare_systems import transformers_long_form
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    torch.set_num_threads(threads)
    processor = WhisperProcessor.from_pretrained(model)
    whisper = WhisperForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
    out = {}
    for name in decodings:
        rows = []
        for k, j in enumerate(joined):
            t0 = time.perf_counter()
            ids = transformers_long_form(whisper, processor, j.samples, **TRANSFORMERS_DECODINGS[name])
            text = processor.batch_decode(ids, skip_special_tokens=True)[0]
            rows.append(_row(f"transformers {name}", k, j, text, time.perf_counter() - t0))
        out[name] = rows
    return out


def summarize(systems: dict, reference: str) -> dict:
    """Per system and decoding: pooled WER and its difference to the float reference's."""
    import statistics

    summary = {}
    for system, by_decoding in systems.items():
        for decoding, rows in by_decoding.items():
            ref_rows = systems.get(reference, {}).get(decoding)
            pooled = _pooled(rows)
            entry = {"pooled_wer_pct": pooled, "words": sum(r["ref_words"] for r in rows),
                     "recordings": len(rows), "wer_pct_range": [min(r["wer_pct"] for r in rows),
                                                                 max(r["wer_pct"] for r in rows)],
                     "longest_inserted_run": max(r["longest_inserted_run"] for r in rows),
                     "longest_deleted_run": max(r["longest_deleted_run"] for r in rows)}
            if ref_rows and len(ref_rows) == len(rows):
                deltas = [a["wer_pct"] - b["wer_pct"] for a, b in zip(rows, ref_rows)]
                fp32 = _pooled(ref_rows)
                entry.update(fp32_pooled_wer_pct=fp32, points_vs_fp32=pooled - fp32,
                             points_vs_fp32_per_recording={"median": statistics.median(deltas), "min": min(deltas),
                                                           "max": max(deltas)},
                             met=pooled <= fp32 + USABLE_WER_POINTS)
            summary.setdefault(system, {})[decoding] = entry
    return summary


def _pooled(rows: list[dict]) -> float:
    words = sum(r["ref_words"] for r in rows)
    return 100 * sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows) / words


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=WHISPER_BASE)
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--recipes", default="onnx-int8-dynamic,onnx-int8-dynamic-int4-decoder",
                    help="comma-separated recipes: bundles built from --model into --cache")
    ap.add_argument("--bundles", nargs="*", default=[], help="bundles measured beside them")
    ap.add_argument("--recordings", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--decodings", default="greedy,default")
    ap.add_argument("--transformers", action="store_true",
                    help="also the float checkpoint through transformers' long-form loop (transformers-fp32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edgeq-compare"))
    ap.add_argument("--out", help="results file [longform_wer.json, or longform_wer_cpuid_<mask>.json]")
    add_cpu_mask_option(ap)
    args = ap.parse_args()
    if args.recordings < 1 or args.minutes <= 0:
        raise SystemExit("--recordings must be 1 or more and --minutes more than 0")
    decodings = [d for d in args.decodings.split(",") if d]
    for d in decodings:
        decoding_options(d)
    if args.transformers and not (args.model / "config.json").is_file():
        raise SystemExit(f"--transformers needs --model as a local checkpoint folder, not {args.model}")
    require_shared()
    run_masked(args.cpu_mask)

    from edgeq.bench.env import fingerprint
    from edgeq.data.datasets import open_dataset

    bundles = {FLOAT_RECIPE: ensure_bundle(args.model, FLOAT_RECIPE, args.cache)}
    for recipe in filter(None, args.recipes.split(",")):
        bundles[recipe] = ensure_bundle(args.model, recipe, args.cache)
    for path in args.bundles:
        bundles[Path(path).name] = Path(path)
    check_bundles(bundles.values())
    joined = recordings(open_dataset(args.dataset), args.minutes, args.recordings)
    out_name = args.out or (f"longform_wer_cpuid_{args.cpu_mask}.json" if args.cpu_mask else "longform_wer.json")
    data = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "model": args.model.name,
            "dataset": args.dataset, "threads": args.threads, "minutes": args.minutes,
            "recordings": [{"audio_s": round(len(j.samples) / 16000, 1), "utterances": len(j.parts)} for j in joined],
            "reference": FLOAT_RECIPE, "systems": {}, "summary": {}}
    print(f"{len(joined)} recordings of {args.minutes:g}+ min; systems: {', '.join(bundles)}", flush=True)
    from edgeq.errors import EdgeqError

    systems = [(name, lambda path=path: measure(path, joined, decodings, args.threads)) for name, path in bundles.items()]
    if args.transformers:
        systems.append(("transformers-fp32", lambda: measure_transformers(args.model, joined, decodings, args.threads)))
    for name, run in systems:
        try:
            data["systems"][name] = run()
        except EdgeqError as e:  # e.g. a file changed since its manifest: what was measured is written
            raise SystemExit(f"error: {e}") from None
        data["summary"] = summarize(data["systems"], FLOAT_RECIPE)
        write_json(out_name, data)
    for name, by_decoding in data["summary"].items():
        for decoding, s in by_decoding.items():
            vs = f", {s['points_vs_fp32']:+.2f} vs fp32" if "points_vs_fp32" in s else ""
            print(f"{name:34s} {decoding:8s} pooled WER {s['pooled_wer_pct']:.2f} %{vs}, "
                  f"longest inserted run {s['longest_inserted_run']}")
    print(f"wrote {out_name}")


if __name__ == "__main__":
    main()
