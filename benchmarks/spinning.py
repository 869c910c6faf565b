"""ONNX Runtime's spinning intra-op threads on an idle and on a shared CPU.

    python benchmarks/spinning.py --bundle ONNX_BUNDLE [--rounds 3] [--threads 2] [--limit 8]

ONNX Runtime's worker threads spin waiting for work between operators (allow_spinning, on by
default). On a device where another process holds a core, a spinning thread competes with it.
Each (spinning on/off) x (CPU idle / one core kept busy by another process) case transcribes the
dataset's clips in a fresh process; the cases alternate, round after round. Writes
benchmarks/results/spinning.json: RTF per case and round, medians.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import time

from _common import SPEECH_DEV, write_json


def _burn(stop) -> None:
    while not stop.is_set():
        sum(range(10000))


def worker(bundle: str, spinning: bool, threads: int, dataset: str, limit: int) -> dict:
    import edgeq.runtime.onnx_engine as engine_module

    plain = engine_module._options

    def options(ort, n, arena):
        o = plain(ort, n, arena)
        o.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        return o

    engine_module._options = options  # this experiment's only change to the engine
    import edgeq
    from edgeq.data.datasets import open_dataset
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.decoding import STUDY_OPTIONS

    t = edgeq.load(bundle, threads=threads, language="en")
    clips = [load_audio(u.audio) for u in open_dataset(dataset, limit=limit).utterances]
    t.transcribe(clips[0], options=STUDY_OPTIONS)
    start = time.perf_counter()
    for audio in clips:
        t.transcribe(audio, options=STUDY_OPTIONS)
    return {"rtf": (time.perf_counter() - start) / (sum(len(a) for a in clips) / 16000)}


def main() -> None:
    from edgeq.bench.env import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--out", default="spinning.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.bundle, args.worker == "on", args.threads, args.dataset, args.limit)))
        return
    results = {"env": fingerprint(), "bundle": args.bundle, "threads": args.threads, "rows": []}
    for r in range(args.rounds):
        for busy in (False, True):
            stop = mp.Event()
            burner = mp.Process(target=_burn, args=(stop,)) if busy else None
            if burner:
                burner.start()
            try:
                for spin in ("on", "off"):
                    proc = subprocess.run([sys.executable, __file__, "--worker", spin, "--bundle", args.bundle,
                                           "--dataset", args.dataset, "--threads", str(args.threads),
                                           "--limit", str(args.limit)], capture_output=True, text=True, check=True)
                    row = {"round": r + 1, "busy_core": busy, "spinning": spin, **json.loads(proc.stdout.splitlines()[-1])}
                    results["rows"].append(row)
                    write_json(args.out, results)
                    print(row, flush=True)
            finally:
                if burner:
                    stop.set()
                    burner.join()
    results["median_rtf"] = {
        f"{'busy' if busy else 'idle'} core, spinning {spin}": statistics.median(
            x["rtf"] for x in results["rows"] if x["busy_core"] == busy and x["spinning"] == spin)
        for busy in (False, True) for spin in ("on", "off")}
    write_json(args.out, results)
    print(json.dumps(results["median_rtf"], indent=1))


if __name__ == "__main__":
    main()
