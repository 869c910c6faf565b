"""ONNX Runtime's spinning intra-op threads on an idle and on a shared CPU.

    python benchmarks/spinning.py --bundle ONNX_BUNDLE [--rounds 3] [--threads 2] [--limit 8]

Between operators, ONNX Runtime's idle worker threads either spin waiting for work or sleep.
edgeq's `spinning` setting (edgeq.load, `--spinning`, a target's `spinning`) chooses for the
decoder: "off" (sleep) or "decoder" (spin; the pool stops spinning when each step ends). This
measures both, and "all" (the encoder's threads spinning too, which edgeq does not offer: this
is the measurement that says why), each with the CPU idle and with another process keeping one
core busy (a Pi or a laptop running other work). Every case transcribes the dataset's clips in a
fresh process; the cases alternate, round after round, so a slow phase of the machine cannot
pick the winner. Writes benchmarks/results/spinning.json (or --out) after every case: RTF,
encoder seconds per window and decoder tokens/s per case and round, their medians, and each
mode's per-round ratio to "off".
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

MODES = ("off", "decoder", "all")


def _burn(stop) -> None:
    while not stop.is_set():
        sum(range(10000))


def worker(bundle: str, mode: str, threads: int, dataset: str, limit: int) -> dict:
    import edgeq
    from edgeq.data.datasets import open_dataset
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.decoding import STUDY_OPTIONS

    if mode == "all":
        import edgeq.runtime.onnx_engine as engine_module

        plain = engine_module._options
        engine_module._options = lambda ort, n, spin: plain(ort, n, True)  # this experiment's only change
    t = edgeq.load(bundle, threads=threads, language="en", spinning="off" if mode == "off" else "decoder")
    clips = [load_audio(u.audio) for u in open_dataset(dataset, limit=limit).utterances]
    t.transcribe(clips[0], options=STUDY_OPTIONS)
    encoder_s = decode_s = 0.0
    steps = windows = 0
    start = time.perf_counter()
    for audio in clips:
        r = t.transcribe(audio, options=STUDY_OPTIONS)
        encoder_s, decode_s = encoder_s + r.timings.encoder_s, decode_s + r.timings.decode_s
        steps, windows = steps + r.timings.decoder_steps, windows + r.windows + r.timings.refits
    seconds = time.perf_counter() - start
    return {"rtf": seconds / (sum(len(a) for a in clips) / 16000), "encoder_s_per_window": encoder_s / windows,
            "decoder_tokens_per_s": steps / decode_s}


def _median(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 4)


def summarize(rows: list[dict]) -> dict:
    """Per case: medians; per mode other than off: RTF over off's in the same round and case."""
    out = {}
    for busy in (False, True):
        case = "busy core" if busy else "idle"
        for mode in MODES:
            mine = [r for r in rows if r["busy_core"] == busy and r["mode"] == mode]
            if not mine:
                continue
            entry = {k: _median(mine, k) for k in ("rtf", "encoder_s_per_window", "decoder_tokens_per_s")}
            if mode != "off":
                off = {r["round"]: r["rtf"] for r in rows if r["busy_core"] == busy and r["mode"] == "off"}
                ratios = [r["rtf"] / off[r["round"]] for r in mine if r["round"] in off]
                if ratios:
                    entry["rtf_vs_off"] = {"median": round(statistics.median(ratios), 3),
                                           "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
            out[f"{case}, spinning {mode}"] = entry
    return out


def main() -> None:
    from edgeq.bench.env import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--out", default="spinning.json")
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.bundle, args.worker, args.threads, args.dataset, args.limit)))
        return
    results = {"env": fingerprint(), "bundle": args.bundle, "threads": args.threads, "limit": args.limit,
               "dataset": args.dataset, "rows": []}
    for r in range(args.rounds):
        for busy in (False, True):
            stop = mp.Event()
            burner = mp.Process(target=_burn, args=(stop,)) if busy else None
            if burner:
                burner.start()
            try:
                for mode in MODES:
                    proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--bundle", args.bundle,
                                           "--dataset", args.dataset, "--threads", str(args.threads),
                                           "--limit", str(args.limit)], capture_output=True, text=True)
                    if proc.returncode:
                        sys.exit(f"spinning: the {mode} worker failed: {proc.stderr.strip().splitlines()[-1:]}")
                    row = {"round": r + 1, "busy_core": busy, "mode": mode, **json.loads(proc.stdout.splitlines()[-1])}
                    results["rows"].append(row)
                    results["summary"] = summarize(results["rows"])
                    write_json(args.out, results)
                    print(row, flush=True)
            finally:
                if burner:
                    stop.set()
                    burner.join()
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
