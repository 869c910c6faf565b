"""Long audio on whisper-base: fixed 30 s windows (edgeq before long-form) vs Whisper's seek loop.

    python benchmarks/longform_speech_dev.py [--minutes 20] [--methods windows,longform,...] [--threads 2]
                                             [--bundle BUNDLE]

Joins the speech-dev utterances (seeded order, repeated to --minutes) into one recording with its
joined reference, transcribes it with each method on the float whisper-base checkpoint (or
--bundle, e.g. an onnx-int8-dynamic build of it), and writes
benchmarks/results/longform_<system>_<minutes>min.json: WER, words deleted/inserted in runs of 5
or more (what window edges cause), time, and clip-by-clip WER on the same utterances.
"""

from __future__ import annotations

import argparse
import time

from _common import SPEECH_DEV, WHISPER_BASE, require_shared, write_json

METHODS = ("clips", "clips-timestamps", "windows", "longform", "whisper", "longform-nocond", "longform-nofallback",
           "longform-beam5", "longform-vad")


def main() -> None:
    from dataclasses import replace

    from edgeq.data.datasets import open_dataset
    from edgeq.data.joined import join_utterances
    from edgeq.data.wer import error_runs, word_errors
    from edgeq.runtime.audio import split_long_audio
    from edgeq.runtime.decoding import STUDY_OPTIONS, DecodeOptions, WindowDecoder
    from edgeq.runtime.features import log_mel_spectrogram

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--bundle", help="measure this bundle instead of the float checkpoint")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds of room noise between utterances (VAD)")
    ap.add_argument("--pause-noise", type=float, default=0.003, help="deviation of that noise")
    ap.add_argument("--name", default="", help="suffix of the results file")
    ap.add_argument("--seed", type=int, default=0, help="order in which the utterances are joined")
    args = ap.parse_args()
    require_shared()
    if args.bundle:
        import edgeq

        transcriber = edgeq.load(args.bundle, threads=args.threads, language="en")
        system = transcriber.bundle.manifest.recipe.name
    else:
        from edgeq.torch_runtime import load_checkpoint

        transcriber, _ = load_checkpoint(str(WHISPER_BASE), threads=args.threads, language="en")
        system = "whisper-base-fp32"
    dataset = open_dataset(args.dataset)
    joined = join_utterances(dataset, args.minutes * 60, pause_s=args.pause, pause_noise=args.pause_noise,
                             seed=args.seed)
    options = {
        "longform": DecodeOptions(),
        "whisper": DecodeOptions(recheck_sparse_segments=False),  # openai-whisper's algorithm alone
        "longform-nocond": DecodeOptions(condition_on_previous_text=False),
        "longform-nofallback": replace(STUDY_OPTIONS, timestamps=True),
        "longform-beam5": DecodeOptions(beam_size=5),
        "longform-vad": DecodeOptions(vad=True),
    }
    from edgeq.bench.env import fingerprint

    out = {"env": fingerprint(), "model": "whisper-base", "system": system, "threads": args.threads, "dataset": args.dataset,
           "seed": args.seed, "audio_s": joined.seconds, "utterances": len(joined.parts), "pause_s": args.pause,
           "pause_noise": args.pause_noise if args.pause else None, "methods": {}}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        extra = {}
        if method in ("clips", "clips-timestamps"):
            # one utterance at a time: the study's decoding, or long-form's (timestamps, fallback),
            # which reads short clips differently and is what a long recording can at best match
            clip_options = STUDY_OPTIONS if method == "clips" else DecodeOptions()
            texts = {u.id: transcriber.transcribe(u.audio, options=clip_options).text for u in dataset.utterances}
            text = " ".join(texts[u.id] for u in joined.parts)
        elif method == "windows":  # edgeq before long-form: quietest-100-ms cuts, greedy without timestamps
            decoder = WindowDecoder(transcriber.settings, STUDY_OPTIONS)
            pieces = [decoder.decode(transcriber.engine, log_mel_spectrogram(w)) for w in split_long_audio(joined.samples)]
            text = " ".join(transcriber.tokenizer.decode(p.tokens) for p in pieces)
            extra = {"windows": len(pieces), "truncated": sum(p.truncated for p in pieces)}
        else:
            r = transcriber.transcribe(joined.samples, options=options[method])
            text = r.text
            extra = {"windows": r.windows, "segments": len(r.segments), "gaps": [g.__dict__ for g in r.gaps],
                     "decoder_steps": r.timings.decoder_steps, "encoder_s": r.timings.encoder_s,
                     "decode_s": r.timings.decode_s, "vad_skipped_s": r.vad_skipped_s, "rechecks": r.rechecks,
                     "unprompted": r.timings.unprompted}
        seconds = time.perf_counter() - t0
        errors = word_errors(joined.reference, text)
        runs = error_runs(joined.reference, text)
        row = {"wer_pct": 100 * errors.wer, **errors.to_dict(), "seconds": seconds,
               "rtf": seconds / joined.seconds,
               "deleted_in_runs_of_5+": sum(n for n in runs["deleted"] if n >= 5),
               "longest_deleted_run": max(runs["deleted"], default=0),
               "inserted_in_runs_of_5+": sum(n for n in runs["inserted"] if n >= 5),
               "longest_inserted_run": max(runs["inserted"], default=0), **extra}
        out["methods"][method] = row
        print(method, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "gaps"}, flush=True)
    path = write_json(f"longform_{system}_{args.minutes:g}min{args.name}.json", out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
