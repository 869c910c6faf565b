"""What keeping ONNX Runtime's prepared graphs on the device (edgeq.runtime.prepared) does to a load.

    python benchmarks/prepared_sessions.py BUNDLE [BUNDLE ...] [--rounds 5] [--threads 2] [--modes ...] [--out FILE]

Bundles in alternation, round after round; for each, each in a fresh process: the first load on
a device (empty cache: optimizes, prepacks and writes the copy of the optimized graphs), a later
load (reads the copy, stamped as unchanged by an untimed load in between), and a load with
EDGEQ_ORT_CACHE=0 (optimizes and prepacks in memory, as before). Each worker times `edgeq.load`
and the creation of the sessions inside it (summed over the threads that make them), and reads
the kernel's high-water mark of resident memory after the load and after transcribing one
speech-dev clip. Also: the copy's size on disk.
Writes benchmarks/results/prepared_sessions.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SPEECH_DEV, compile_edgeq, write_json

MODES = ("first", "later", "off")


def worker(bundle: str, threads: int) -> dict:
    t0 = time.perf_counter()
    import edgeq
    from edgeq.bench.memory import os_peak_rss_bytes
    from edgeq.runtime import onnx_engine

    sessions = []
    make = onnx_engine._session

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return make(*args, **kwargs)
        finally:
            sessions.append(time.perf_counter() - t)

    onnx_engine._session = timed
    t1 = time.perf_counter()
    transcriber = edgeq.load(bundle, threads=threads, language="en")
    loaded = time.perf_counter()
    load_rss = os_peak_rss_bytes()
    from edgeq.data.datasets import open_dataset
    from edgeq.runtime.decoding import STUDY_OPTIONS

    clip = open_dataset(str(SPEECH_DEV)).utterances[0]
    t2 = time.perf_counter()
    text = transcriber.transcribe(clip.audio, options=STUDY_OPTIONS).text  # greedy: random weights never stop
    return {"import_s": t1 - t0, "load_s": loaded - t1, "sessions_s": sum(sessions),
            "peak_rss_after_load_mb": load_rss / 2**20, "peak_rss_mb": os_peak_rss_bytes() / 2**20,
            "transcribe_s": time.perf_counter() - t2, "text": text}


def _copy_stamps(cache: Path) -> list[Path]:
    """The stat stamps (edgeq.format.verified) of prepared copies, not of bundles."""
    return [p for p in (cache / "verified").glob("*.json") if "onnxruntime" in json.loads(p.read_text())["bundle"]]


def run(bundle: str, mode: str, cache: Path, threads: int) -> dict:
    env = {**os.environ, "EDGEQ_CACHE": str(cache), "EDGEQ_ORT_CACHE": "0" if mode == "off" else "1"}
    if mode == "first":
        shutil.rmtree(cache / "onnxruntime", ignore_errors=True)
        for stamp in _copy_stamps(cache):
            stamp.unlink()
    elif mode == "later" and not _copy_stamps(cache):
        # A device's later loads come seconds or days after its first: the copy is then older than
        # verified.RACY_S and gets its stat stamp at the next load, after which loads hash nothing.
        # (With --modes later alone, the first of these untimed loads makes the copy.)
        load = [sys.executable, "-c", "import sys, edgeq; edgeq.load(sys.argv[1])", bundle]
        if not any((cache / "onnxruntime").glob("*/hashes.json")):
            subprocess.run(load, env=env, check=True)
        time.sleep(2.5)
        subprocess.run(load, env=env, check=True)
    proc = subprocess.run([sys.executable, __file__, "--worker", bundle, "--threads", str(threads)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="prepared_sessions.json")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                    help="which loads to time (later: the usual load on a device)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.bundles[0], args.threads)))
        return
    from edgeq.bench.env import fingerprint

    modes = tuple(m for m in MODES if m in args.modes)
    out = {"env": fingerprint(), "threads": args.threads, "rounds": args.rounds, "modes": modes, "bundles": {}}
    names: list[str] = []
    for i, bundle in enumerate(args.bundles):
        name = Path(bundle).name
        names.append(name if name not in names else f"{name}#{i}")
    rows: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="edgeq-prepared-") as tmp:
        compile_edgeq()  # bytecode written once, as a wheel install has it
        # Bundles in alternation within each round, each with a cache of its own (a first load
        # empties its cache), so that a slow phase of the machine does not fall on one bundle only.
        for i in range(args.rounds):
            for k, (bundle, name) in enumerate(zip(args.bundles, names)):
                cache = Path(tmp) / str(k)
                order = modes if i % 2 == 0 else tuple(m for m in ("first", "off", "later") if m in modes)
                for mode in order:
                    rows[name].append({"mode": mode, "round": i + 1, **run(bundle, mode, cache, args.threads)})
                    r = rows[name][-1]
                    print(f"{name} {i + 1} {mode:5} load {r['load_s']:.3f} s (sessions {r['sessions_s']:.3f}) "
                          f"RSS {r['peak_rss_after_load_mb']:.0f} / {r['peak_rss_mb']:.0f} MB", flush=True)
        for k, (bundle, name) in enumerate(zip(args.bundles, names)):
            cache = Path(tmp) / str(k)
            copy = next((cache / "onnxruntime").iterdir(), None) if (cache / "onnxruntime").exists() else None
            summary = {mode: {key: statistics.median(r[key] for r in rows[name] if r["mode"] == mode)
                              for key in ("load_s", "sessions_s", "peak_rss_after_load_mb", "peak_rss_mb")}
                       for mode in modes}
            loads = {mode: [r["load_s"] for r in rows[name] if r["mode"] == mode] for mode in modes}
            spread = {mode: [min(values), max(values)] for mode, values in loads.items()}
            same = len({r["text"] for r in rows[name]}) == 1
            out["bundles"][name] = {"path": bundle,
                                    "bundle_onnx_mb": sum(p.stat().st_size for p in Path(bundle).glob("*.onnx*")) / 1e6,
                                    "copy_mb": sum(p.stat().st_size for p in copy.iterdir()) / 1e6 if copy else None,
                                    "same_text": same, "median": summary, "load_s_range": spread, "rows": rows[name]}
            write_json(args.out, out)
            print(name, json.dumps(summary, indent=1), "same text" if same else "TEXT DIFFERS")


if __name__ == "__main__":
    main()
