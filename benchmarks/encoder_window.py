"""What encoding only a clip's own length costs and saves: encoder window "full" (30 s, padded) vs "fit".

    python benchmarks/encoder_window.py --bundles B1 [B2 ...] [--rounds 3] [--threads 2] [--model DIR]

Every bundle (and --model, the float checkpoint through the torch engine) is loaded once in this
process; then, round after round, each (system, window) pair transcribes every clip of the dataset
with the study's decoding (greedy, no timestamps), in alternation, so a slow phase of a shared
machine slows every pair alike. Per pair: WER, words, encoder seconds, decoder seconds, total, and
the windows redone in full after a broken fitted decode; per round the fit/full ratios. Writes
benchmarks/results/encoder_window.json (or --out).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from _common import SPEECH_DEV, write_json

WINDOWS = ("full", "fit")


def main() -> None:
    import edgeq
    from edgeq.bench.env import fingerprint
    from edgeq.data.datasets import open_dataset
    from edgeq.data.wer import corpus_wer, word_errors
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.decoding import STUDY_OPTIONS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="*", default=[])
    ap.add_argument("--model", help="also the float checkpoint (torch engine)")
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out", default="encoder_window.json")
    args = ap.parse_args()

    systems = {Path(b).name: edgeq.load(b, threads=args.threads, language="en") for b in args.bundles}
    if args.model:
        from edgeq.torch_runtime import load_checkpoint

        systems[f"float:{Path(args.model).name}"], _ = load_checkpoint(args.model, threads=args.threads, language="en")
    data = open_dataset(args.dataset, limit=args.limit)
    clips = [(u, load_audio(u.audio)) for u in data.utterances]
    audio_s = sum(len(a) for _, a in clips) / 16000
    results = {"env": fingerprint(), "dataset": args.dataset, "threads": args.threads, "audio_s": audio_s,
               "clips": len(clips), "rounds": []}
    for t in systems.values():  # warm-up, untimed: first-call allocations, page faults
        for window in WINDOWS:
            t.transcribe(clips[0][1], options=replace(STUDY_OPTIONS, encoder_window=window))
    for r in range(args.rounds):
        rows = []
        for name, t in systems.items():
            for window in WINDOWS:
                options = replace(STUDY_OPTIONS, encoder_window=window)
                errors, enc, dec, refits = [], 0.0, 0.0, 0
                t0 = time.perf_counter()
                for utt, audio in clips:
                    out = t.transcribe(audio, options=options)
                    errors.append(word_errors(utt.reference, out.text))
                    enc += out.timings.encoder_s
                    dec += out.timings.decode_s
                    refits += out.timings.refits
                total = time.perf_counter() - t0
                row = {"system": name, "window": window, "wer_pct": 100 * corpus_wer(errors),
                       "words": sum(e.ref_words for e in errors), "encoder_s": enc, "decode_s": dec,
                       "total_s": total, "rtf": total / audio_s, "refits": refits}
                rows.append(row)
                print(f"round {r + 1} {name:28} {window:4}  WER {row['wer_pct']:5.2f}%  encoder {enc:6.2f}s  "
                      f"decoder {dec:6.2f}s  total {total:6.2f}s  RTF {row['rtf']:.3f}  refits {refits}", flush=True)
        results["rounds"].append(rows)
        write_json(args.out, results)  # flushed after every round
    summary = []
    for name in systems:
        summary.append({"system": name, "fit_over_full": {k: _ratios(results["rounds"], name, k)
                                                          for k in ("encoder_s", "total_s")}})
        s = summary[-1]["fit_over_full"]
        print(f"{name:28} fit/full: encoder x{s['encoder_s']['median']:.2f} "
              f"[{s['encoder_s']['min']:.2f}-{s['encoder_s']['max']:.2f}], "
              f"total x{s['total_s']['median']:.2f} [{s['total_s']['min']:.2f}-{s['total_s']['max']:.2f}]")
    results["summary"] = summary
    write_json(args.out, results)


def _ratios(rounds: list[list[dict]], name: str, key: str) -> dict:
    """fit / full of `key` for system `name`, round by round: median and spread."""
    per_round = []
    for rows in rounds:
        full, fit = (next(x for x in rows if x["system"] == name and x["window"] == w) for w in WINDOWS)
        per_round.append(fit[key] / full[key])
    return {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}


if __name__ == "__main__":
    main()
