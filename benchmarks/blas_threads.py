"""NumPy's BLAS threads against ONNX Runtime's: the pipeline with the mel filterbank's product on one
BLAS thread (edgeq.runtime.blas, what edgeq does) and on all of them (NumPy's default).

    python benchmarks/blas_threads.py --bundles B1 [B2 ...] [--rounds 3] [--window full] [--limit N] [--out blas_threads.json]

Each run is a fresh process that loads a bundle and transcribes the dataset with the study's greedy
decoding (2 threads, spinning decoder, as compare_systems runs edgeq); the two modes alternate,
the order rotated each round. "all" replaces edgeq.runtime.blas.one_thread with a no-op in that
process, which is what edgeq did before. Per run: the encoder's seconds per window inside the
pipeline (median), the decoder's tokens per second, the whole run's seconds and RTF, WER, and the
BLAS NumPy loaded (threadpoolctl). Written after every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import SPEECH_DEV, write_json

MODES = ("one", "all")

CHILD = """
import contextlib, json, statistics, sys, time
from dataclasses import replace
import edgeq
import edgeq.runtime.blas
from edgeq.data.datasets import open_dataset
from edgeq.data.wer import corpus_wer, word_errors
from edgeq.runtime.audio import load_audio
from edgeq.runtime.decoding import STUDY_OPTIONS

bundle, dataset, mode, window, limit = sys.argv[1:6]
if mode == "all":
    edgeq.runtime.blas.one_thread = contextlib.nullcontext
data = open_dataset(dataset, limit=int(limit) or None)
audios = [(u, load_audio(u.audio)) for u in data.utterances]
t = edgeq.load(bundle, threads=2, language="en", spinning="decoder")
options = replace(STUDY_OPTIONS, encoder_window=window)
t.transcribe(audios[0][1], options=options)  # warm-up, not timed
per_window, steps, decode_s, compute, audio_s, errors = [], 0, 0.0, 0.0, 0.0, []
for utt, audio in audios:
    start = time.perf_counter()
    r = t.transcribe(audio, options=options)
    compute += time.perf_counter() - start
    audio_s += len(audio) / 16000
    per_window.append(r.timings.encoder_s / (r.windows + r.timings.refits))
    steps += r.timings.decoder_steps
    decode_s += r.timings.decode_s
    errors.append(word_errors(utt.reference, r.text))
from threadpoolctl import threadpool_info
print(json.dumps({"encoder_s_per_window": statistics.median(per_window), "decoder_tokens_per_s": steps / decode_s,
                  "compute_s": compute, "rtf": compute / audio_s, "wer_pct": 100 * corpus_wer(errors),
                  "blas": [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                           for i in threadpool_info() if i.get("user_api") == "blas"]}))
"""


def main() -> None:
    from edgeq.bench.env import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="+", required=True)
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", choices=("full", "fit"), default="full", help="the encoder window (edgeq's encoder_window)")
    ap.add_argument("--limit", type=int, default=0, help="the first N utterances only (0: all)")
    ap.add_argument("--out", default="blas_threads.json")
    args = ap.parse_args()
    bundles = [str(Path(b)) for b in args.bundles]
    results = {"env": fingerprint(), "bundles": bundles, "dataset": args.dataset, "threads": 2,
               "window": args.window, "rounds": args.rounds, "limit": args.limit, "rows": []}
    for bundle in bundles:  # a first load writes the prepared graphs (and peaks higher): not measured
        subprocess.run([sys.executable, "-c", f"import edgeq; edgeq.load({bundle!r})"], check=True)
    runs = [(b, m) for b in bundles for m in MODES]
    for r in range(args.rounds):
        for bundle, mode in runs[r % len(runs):] + runs[:r % len(runs)]:
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            done = subprocess.run([sys.executable, "-c", CHILD, bundle, args.dataset, mode, args.window, str(args.limit)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{bundle} ({mode}): {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
            row = {"round": r + 1, "bundle": bundle, "blas_threads": mode, "started": started,
                   **json.loads(done.stdout.splitlines()[-1])}
            results["rows"].append(row)
            write_json(args.out, results)
            print(f"round {r + 1}  {Path(bundle).name:28s} BLAS {mode:3s}  encoder {row['encoder_s_per_window']:.3f} s/window  "
                  f"decoder {row['decoder_tokens_per_s']:5.0f} tok/s  run {row['compute_s']:.2f} s  "
                  f"RTF {row['rtf']:.4f}  WER {row['wer_pct']:.2f} %", flush=True)
    summary = {}
    for bundle in bundles:
        rows = {m: [x for x in results["rows"] if x["bundle"] == bundle and x["blas_threads"] == m] for m in MODES}
        summary[Path(bundle).name] = {
            m: {k: statistics.median(x[k] for x in rows[m]) for k in ("encoder_s_per_window", "decoder_tokens_per_s", "rtf")}
            for m in MODES}
    results["summary"] = summary
    write_json(args.out, results)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
