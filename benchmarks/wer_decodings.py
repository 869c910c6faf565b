"""WER of bundles under the decodings a user meets, not only the study's, on speech-dev's two sets.

    python benchmarks/wer_decodings.py BUNDLE [BUNDLE ...] [--out wer_decodings.json]

Three decodings per bundle: `edgeq transcribe`'s defaults (timestamps, temperature fallback,
the encoder window fitted to the clip), the same on the padded 30 s window, and the study's (greedy,
no timestamps: what compare_systems and the real tier use). Short clips on a fitted window are
where Whisper repeats a phrase past the end of the audio, and timestamps are where a quantized
decoder can differ from fp32 without the study's decoding showing it. Writes the WER per set and
decoding, and each clip whose word error rate is over 30 % with its transcript, after every bundle.
"""

from __future__ import annotations

import argparse

from _common import SPEECH_DEV, write_json

from edgeq.bench.env import fingerprint


def main() -> None:
    import edgeq
    from edgeq.data.datasets import open_dataset
    from edgeq.data.wer import corpus_wer, word_errors
    from edgeq.runtime.decoding import STUDY_OPTIONS, DecodeOptions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="wer_decodings.json")
    args = ap.parse_args()
    sets = {"LibriSpeech": open_dataset(str(SPEECH_DEV / "LibriSpeech")).utterances,
            "other": open_dataset(str(SPEECH_DEV / "other" / "manifest.tsv")).utterances}
    decodings = {"transcribe-fit": DecodeOptions(), "transcribe-full": DecodeOptions(encoder_window="full"),
                 "study": STUDY_OPTIONS}
    results = {"env": fingerprint(), "threads": args.threads, "bundles": {}}
    for bundle in args.bundles:
        t = edgeq.load(bundle, threads=args.threads, language="en")
        rows = results["bundles"][bundle] = {}
        for name, options in decodings.items():
            errors, row = [], {}
            for set_name, utterances in sets.items():
                per_set = []
                for u in utterances:
                    text = t.transcribe(u.audio, options=options).text
                    e = word_errors(u.reference, text)
                    per_set.append(e)
                    if corpus_wer([e]) > 0.3:
                        row.setdefault("bad", []).append({"id": u.id, "text": text})
                row[f"{set_name}_wer_pct"] = 100 * corpus_wer(per_set)
                errors += per_set
            row["wer_pct"] = 100 * corpus_wer(errors)
            rows[name] = row
            print(f"{bundle}  {name:16s} WER {row['wer_pct']:.2f} %  "
                  + "  ".join(f"{s} {row[f'{s}_wer_pct']:.2f}" for s in sets)
                  + "".join(f"\n    {b['id']}: {b['text']}" for b in row.get("bad", [])), flush=True)
        write_json(args.out, results)


if __name__ == "__main__":
    main()
