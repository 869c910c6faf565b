"""Where an ONNX bundle's encoder spends a window, operator by operator, as ONNX Runtime runs it.

    python benchmarks/encoder_ops.py --bundles B1 B2 ... [--graphs encoder.vnni.onnx,encoder.onnx]
                                     [--seconds 30] [--rounds 3] [--repeat 5] [--threads 2] [--out FILE]
                                     [--cpu-mask avx2|vnni]

Each bundle's encoder graph is made into a session with the options edgeq's runtime gives its
encoder (onnx_engine._options: --threads intra-op threads, no spinning, the bundle's
encoder_prepack, the arena; ONNX Runtime's default optimization level, CPU execution provider; not
edgeq's prepared-graph cache, so every bundle is optimized by the same ONNX Runtime here and now), fed the
log-mel features of --seconds of silence padded as edgeq pads them (30 s: the full window; less:
a fitted window of that many seconds). Round after round, the (bundle, graph) pairs run in
alternation, so a slow phase of a shared machine slows them alike: per pair and round the best of
--repeat windows' wall time, then one profiled window (the second of its session: the first pays
for page faults and the arena) whose node times are summed per operator type. Writes
benchmarks/results/encoder_ops.json (or --out) after every round: per pair the median and spread
of the wall time, and per operator its median milliseconds per window.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_cpu_mask_option, run_masked, write_json


def _features(bundle: Path, seconds: float) -> np.ndarray:
    from edgeq.runtime.features import log_mel_spectrogram

    mels = json.loads((bundle / "config.json").read_text()).get("num_mel_bins", 80)
    frames = int(round(seconds * 100)) // 2 * 2  # the encoder halves the mel frames: an even count
    return log_mel_spectrogram(np.zeros(16000 * 30, dtype=np.float32), n_mels=mels)[None, :, :frames]


def _encoder_prepack(bundle: Path) -> bool:
    """The bundle's encoder_prepack (its layout file), read once per bundle: opening a bundle hashes it."""
    from edgeq.format.bundle import open_bundle
    from edgeq.format.layout import read_layout

    return read_layout(open_bundle(bundle)).encoder_prepack


def _session(bundle: Path, graph: str, prepack: bool, threads: int, profile: str | None = None):
    import onnxruntime as ort

    from edgeq.runtime.onnx_engine import _options

    options = _options(ort, threads, spin=False, prepack=prepack, arena=True)
    if profile:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return ort.InferenceSession(str(bundle / graph), options, providers=["CPUExecutionProvider"])


def measure(bundle: Path, graph: str, prepack: bool, features: np.ndarray, threads: int, repeat: int,
            tmp: str) -> dict:
    """Best wall time of `repeat` windows, and one profiled window's milliseconds per operator type."""
    feed = {"input_features": features}
    session = _session(bundle, graph, prepack, threads)
    session.run(None, feed)  # warm-up: page faults, the arena's first blocks
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    del session
    profiled = _session(bundle, graph, prepack, threads, profile=f"{tmp}/profile")
    profiled.run(None, feed)  # warm-up, as above: its first window pays for page faults and the arena
    profiled.run(None, feed)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    last = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-1]
    ops: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") \
                and last["ts"] <= event["ts"] <= last["ts"] + last["dur"]:
            ops[event["args"]["op_name"]] += event["dur"] / 1000
    return {"wall_ms": 1000 * min(times), "ops_ms": dict(ops)}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for key in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == key]
        walls = [r["wall_ms"] for r in mine]
        ops = {op for r in mine for op in r["ops_ms"]}
        per_op = {op: statistics.median(r["ops_ms"].get(op, 0.0) for r in mine) for op in ops}
        out[key] = {"wall_ms": {"median": statistics.median(walls), "min": min(walls), "max": max(walls)},
                    "ops_ms": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}
    return out


def main() -> None:
    from edgeq.bench.env import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="+", type=Path, required=True)
    ap.add_argument("--graphs", default="encoder.vnni.onnx,encoder.onnx",
                    help="comma-separated encoder graphs of each bundle to measure (those present)")
    ap.add_argument("--seconds", type=float, default=30.0, help="window length: 30 = the padded window")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="encoder_ops.json")
    add_cpu_mask_option(ap)
    args = ap.parse_args()
    run_masked(args.cpu_mask)
    pairs = [(b, g) for b in args.bundles for g in args.graphs.split(",") if (b / g).is_file()]
    if not pairs:
        ap.error(f"none of {args.graphs} in {[str(b) for b in args.bundles]}")
    prepack = {b: _encoder_prepack(b) for b in args.bundles}
    data = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "threads": args.threads, "seconds": args.seconds,
            "frames": int(round(args.seconds * 100)) // 2, "bundles": [str(b) for b in args.bundles], "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = pairs[round_ % len(pairs):] + pairs[:round_ % len(pairs)]  # rotated each round
            for bundle, graph in order:
                row = {"system": f"{bundle.name}/{graph}", "round": round_,
                       **measure(bundle, graph, prepack[bundle], _features(bundle, args.seconds), args.threads,
                                  args.repeat, tmp)}
                data["rows"].append(row)
                top = sorted(row["ops_ms"].items(), key=lambda kv: -kv[1])[:4]
                print(f"round {round_ + 1} {row['system']:60s} {row['wall_ms']:7.1f} ms  "
                      + "  ".join(f"{op} {ms:.1f}" for op, ms in top), flush=True)
            data["summary"] = summarize(data["rows"])
            write_json(args.out, data)


if __name__ == "__main__":
    main()
