"""ONNX bundles on the padded 30 s window, each in a fresh process: encoder time, page faults, peak RSS, WER.

    python benchmarks/padded_window.py --bundles B1 B2 [...] [--rounds 3] [--limit N] [--out padded_window.json]

The padded window is what long audio pays for every 30 s (`encoder_window="full"`; a short clip
padded to 30 s stands in for it). Each bundle transcribes the dataset with the study's greedy
decoding in a process of its own, so that its peak RSS (the kernel's high-water mark) and its heap
are its own, the bundles in alternation (the order rotated each round) for --rounds rounds. Per
run: WER, the encoder's seconds per window inside the pipeline (median) and back to back (3
windows after the run), minor page faults per window (median), the process's peak RSS. A
bundle's first load on a device writes its prepared graphs and peaks higher: load each bundle
once before (the script does, untimed). Written after every run.

Made for options.vnni_attention (docs/performance.md, "Where the time goes"): the same recipe with and
without it, e.g. --bundles base-int8 base-int8-vnni-attention.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import SPEECH_DEV, write_json

CHILD = """
import json, resource, statistics, sys, time
from dataclasses import replace
import edgeq
from edgeq.data.datasets import open_dataset
from edgeq.data.wer import corpus_wer, word_errors
from edgeq.runtime.audio import load_audio
from edgeq.runtime.decoding import STUDY_OPTIONS

bundle, dataset, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = edgeq.load(bundle, threads=2, language="en")
engine = t.engine
seconds, faults, last = [], [], []
encode = engine.encode
def timed(features):
    last[:] = [features]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    out = encode(features)
    seconds.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out
engine.encode = timed
errors, texts = [], []
for utt in open_dataset(dataset, limit=limit or None).utterances:
    r = t.transcribe(load_audio(utt.audio), options=replace(STUDY_OPTIONS, encoder_window="full"))
    texts.append(r.text)
    errors.append(word_errors(utt.reference, r.text))
back = []
for _ in range(3):
    start = time.perf_counter(); encode(last[0]); back.append(time.perf_counter() - start)
print(json.dumps({"wer_pct": 100 * corpus_wer(errors), "texts": texts, "windows": len(seconds),
                  "encoder_s_per_window": statistics.median(seconds), "back_to_back_s": statistics.median(back),
                  "minor_faults_per_window": statistics.median(faults),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    from edgeq.bench.env import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="+", required=True)
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", default="padded_window.json")
    args = ap.parse_args()
    bundles = [str(Path(b)) for b in args.bundles]
    results = {"env": fingerprint(), "bundles": bundles, "dataset": args.dataset, "threads": 2, "rows": []}
    for bundle in bundles:  # a first load writes the prepared graphs (and peaks higher): not measured
        subprocess.run([sys.executable, "-c", f"import edgeq; edgeq.load({bundle!r})"], check=True)
    for r in range(args.rounds):
        order = bundles[r % len(bundles):] + bundles[:r % len(bundles)]
        for bundle in order:
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            done = subprocess.run([sys.executable, "-c", CHILD, bundle, args.dataset, str(args.limit)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{bundle}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
            row = {"round": r + 1, "bundle": bundle, "started": started, **json.loads(done.stdout.splitlines()[-1])}
            results["rows"].append(row)
            write_json(args.out, results)
            print(f"round {r + 1}  {Path(bundle).name:32s} WER {row['wer_pct']:5.2f} %  "
                  f"encoder {row['encoder_s_per_window']:.3f} s/window (back to back {row['back_to_back_s']:.3f})  "
                  f"faults {row['minor_faults_per_window']:7.0f}  peak {row['peak_rss_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
