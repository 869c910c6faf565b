"""ONNX bundles on an emulated AVX2 CPU: do they transcribe as on this one? (correctness, not speed)

    python benchmarks/emulated_avx2.py --bundles B1 [B2 ...] [--limit 8] [--out emulated_avx2.json]

Each bundle transcribes speech-dev's LibriSpeech clips (the study's greedy decoding) here, and in
this Python under `qemu-x86_64-static -cpu Haswell`, where ONNX Runtime's CPU dispatch sees an
AVX2 CPU and runs its AVX2 kernels, while /proc/cpuinfo still shows this host's flags. A bundle
with `encoder.vnni.onnx` is also run there with that graph forced ("vnni forced": what a runtime
trusting the flags alone would run), which shows what the u8 x s8 saturation of AVX2's
`vpmaddubsw` costs. Per run: WER, the transcripts, which encoder graph the runtime chose, and
whether ONNX Runtime's u8 x s8 product was exact (runtime.int8_kernels). Emulated runs take ~50x
longer; their times mean nothing. Results are written after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import SPEECH_DEV, write_json

# Runs in a fresh process: natively, or under the emulator.
CHILD = """
import json, sys
import edgeq
from edgeq.data.datasets import open_dataset
from edgeq.data.wer import corpus_wer, word_errors
from edgeq.format.bundle import open_bundle
from edgeq.format.layout import read_layout
from edgeq.runtime import int8_kernels, onnx_engine
from edgeq.runtime.decoding import STUDY_OPTIONS

bundle, dataset, limit, force = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
exact = int8_kernels.signed_weights_exact()
if force:  # what a runtime deciding by the flags alone would run on this (emulated) CPU
    int8_kernels.signed_weights_exact = lambda: True
opened = open_bundle(bundle)
graph = onnx_engine._encoder_graph(read_layout(opened), "cpu")
t = edgeq.load(bundle, threads=2, language="en")
errs, texts = [], []
for utt in open_dataset(dataset, limit=limit).utterances:
    r = t.transcribe(utt.audio, options=STUDY_OPTIONS)
    texts.append(r.text)
    errs.append(word_errors(utt.reference, r.text))
print(json.dumps({"recipe": opened.manifest.name, "wer_pct": 100 * corpus_wer(errs), "texts": texts, "encoder_graph": graph,
                  "u8s8_exact": exact, "host_flags_vnni": int8_kernels.cpu_has_vnni()}))
"""


def run(bundle: str, dataset: str, limit: int, emulated: bool, force: bool, qemu: str) -> dict:
    prefix = [qemu, "-cpu", "Haswell"] if emulated else []
    # A cache of prepared graphs of its own per run: each run prepares its own graphs, as a first
    # load on a device does (the emulated CPU's are not this host's).
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgeq-emulated-avx2-cache-{os.getpid()}"
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([*prefix, sys.executable, "-c", CHILD, bundle, dataset, str(limit), "1" if force else "0"],
                          capture_output=True, text=True, env={**os.environ, "EDGEQ_CACHE": str(cache)})
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode:
        raise SystemExit(f"{bundle} ({'emulated' if emulated else 'host'}): {proc.stderr.strip().splitlines()[-1]}")
    return {**json.loads(proc.stdout.splitlines()[-1]), "wall_s": time.perf_counter() - start}


def main() -> None:
    from edgeq.bench.env import fingerprint
    from edgeq.format.bundle import open_bundle
    from edgeq.format.layout import read_layout

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="+", required=True)
    ap.add_argument("--dataset", default=str(SPEECH_DEV / "LibriSpeech"))
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--out", default="emulated_avx2.json")
    args = ap.parse_args()
    qemu = shutil.which("qemu-x86_64-static")
    if not qemu:
        raise SystemExit("needs qemu-x86_64-static (apt-get install qemu-user-static)")
    results = {"env": fingerprint(), "emulator": f"{qemu} -cpu Haswell", "dataset": args.dataset,
               "clips": args.limit, "rows": []}
    for bundle in args.bundles:
        vnni = read_layout(open_bundle(bundle)).encoder_vnni
        runs = [("host", False, False), ("emulated AVX2", True, False)]
        if vnni:
            runs.append(("emulated AVX2, vnni forced", True, True))
        for where, emulated, force in runs:
            row = {"bundle": Path(bundle).name, "where": where, **run(bundle, args.dataset, args.limit, emulated, force, qemu)}
            results["rows"].append(row)
            write_json(args.out, results)  # flushed as they come
            print(f"{row['bundle']:32s} {where:28s} WER {row['wer_pct']:6.2f} %  {row['encoder_graph']:18s} "
                  f"u8s8 exact {row['u8s8_exact']}  ({row['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
