"""One ONNX bundle's decoder step against another's, in one process, round after round.

    python benchmarks/decoder_step.py BUNDLE [BUNDLE ...] [--steps 220] [--rounds 3] [--window full]
        [--threads 2] [--spinning off|decoder] [--cpu-mask avx2|vnni] [--profile] [--bindings]
        [--out decoder_step.json]

Each round encodes one window of real speech (speech-dev's first clip; --window full pads it to
30 s, as long audio is decoded, fit encodes the clip alone) with every bundle in turn, then
feeds the prompt and --steps fixed tokens, one step at a time, timing each ONNX Runtime call (the
engine's step, nothing of the decoding loop around it). Fixed tokens rather than the model's own
choice so that random-weight checkpoints (whisper-small's shape) and real ones run the same number
of steps with the same cache lengths. Reports per bundle and round the median step time over all
steps and over the last 50 (the longest cache), and the logits' largest difference from the first
bundle's: bundles of one checkpoint that differ only in how they run should agree to rounding.
Writes benchmarks/results/decoder_step.json (--out) after every round.

--profile: after the rounds, each bundle is loaded once more with ONNX Runtime's profiler on
(EDGEQ_ORT_PROFILE) and decodes the same steps; its decoder session's operator times are summed by
operator type, per step (the "operators" section). The profiler slows the step, so read shares
from it, and the step's time from the rounds.

--bindings: then, per bundle and round, one decode whose steps alternate between the engine's two
ways of binding a step's inputs and outputs: "held" (one binding per decode, made at its first step,
OnnxEngine._step_held) and "fresh" (a new binding every step, everything bound again), the first
step of a round taking turns. Alternating step by step, a slow phase of a shared machine slows both
alike (the "bindings" section: each way's median step per round, and whether their logits agreed).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import SPEECH_DEV, add_cpu_mask_option, run_masked, write_json


def first_clip(dataset: Path) -> Path:
    clips = sorted(p for p in dataset.rglob("*") if p.suffix in (".flac", ".wav"))
    if not clips:
        raise SystemExit(f"no .flac/.wav under {dataset}")
    return clips[0]


def run(transcriber, features: np.ndarray, steps: int, fresh=None) -> tuple[np.ndarray, np.ndarray]:
    """`fresh(i)`: whether step i (-1: the prompt) goes through a fresh binding, the state's held
    one taken away for that step (--bindings); None: every step as the engine makes it."""
    engine, settings = transcriber.engine, transcriber.settings
    state = engine.start(engine.encode(features))
    held = state[4]

    def way(state, i):
        return state if fresh is None else state[:4] + (None if fresh(i) else held,)

    logits, state = engine.step(way(state, -1), settings.prompt("en"))
    times, seen = [], [logits]
    for i in range(steps):
        state = way(state, i)
        start = time.perf_counter()
        logits, state = engine.step(state, [1000 + i % 1000])  # ordinary text tokens
        times.append(time.perf_counter() - start)
        seen.append(logits)
    return np.array(times), np.stack(seen)


def binding_split(transcriber, features: np.ndarray, steps: int, first: int) -> dict:
    """One decode of `steps` fixed tokens whose steps alternate between the held binding and a fresh
    one, `first` (0: fresh, 1: held) first. Returns each way's median step in ms, and whether the
    logits equal those of a decode with every step fresh."""
    if transcriber.engine._held() is None:
        raise SystemExit("this bundle's decoder has no held binding (a GPU, or no head graph of fixed shapes)")
    fresh = [(i + first) % 2 == 0 for i in range(steps)]
    times, logits = run(transcriber, features, steps, fresh=lambda i: i < 0 or fresh[i])
    _, all_fresh = run(transcriber, features, steps, fresh=lambda i: True)
    return {"held_ms_per_step": 1e3 * float(np.median(times[~np.array(fresh)])),
            "fresh_ms_per_step": 1e3 * float(np.median(times[np.array(fresh)])),
            "logits_identical": bool(np.array_equal(logits, all_fresh))}


def operator_split(bundle: str, features: np.ndarray, steps: int, threads: int, spinning: str) -> dict:
    """ONNX Runtime's profile of one decode of `steps` steps through `bundle`: per operator type, ms per
    step and nodes per step, of the decoder graph and of the head graph (the projection onto the
    token table, a session of its own where the bundle has it), with the profiled step's median."""
    import edgeq

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGEQ_ORT_PROFILE"] = f"{tmp}/ort"
        try:
            t = edgeq.load(bundle, threads=threads, language="en", spinning=spinning)
        finally:
            del os.environ["EDGEQ_ORT_PROFILE"]
        times, _ = run(t, features, steps)
        engine = t.engine
        graphs = {"decoder": engine._decoder, "head": engine._head}
        events = {name: json.loads(Path(s.end_profiling()).read_text()) for name, s in graphs.items() if s is not None}
        engine._encoder.end_profiling()  # its file too is written now, inside tmp
    split = {"profiled_ms_per_step": 1e3 * float(np.median(times))}
    for name, evs in events.items():
        runs = sum(e.get("cat") == "Session" and e["name"] == "model_run" for e in evs)
        ms, nodes = collections.Counter(), collections.Counter()
        for e in evs:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                ms[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
                nodes[e["args"]["op_name"]] += 1 / runs
        split[name] = {"runs": runs, "kernel_ms_per_step": sum(ms.values()),
                       "by_operator": {op: {"ms_per_step": v, "nodes_per_step": round(nodes[op], 2)}
                                       for op, v in ms.most_common()}}
    return split


def main() -> None:
    import edgeq
    from edgeq.bench.env import fingerprint
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--steps", type=int, default=220)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", choices=["full", "fit"], default="full")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spinning", choices=["off", "decoder"], default="off",
                    help="the decoder's idle threads spin between operators (the x86 targets' setting) or sleep")
    ap.add_argument("--dataset", type=Path, default=SPEECH_DEV)
    add_cpu_mask_option(ap)
    ap.add_argument("--profile", action="store_true",
                    help="then one profiled decode per bundle: where a step's time goes, by operator type")
    ap.add_argument("--bindings", action="store_true",
                    help="then each round, steps alternating between a binding held for the decode and a fresh one")
    ap.add_argument("--out", default="decoder_step.json")
    args = ap.parse_args()
    run_masked(args.cpu_mask)

    clip = first_clip(args.dataset)
    audio = load_audio(clip)
    features = log_mel_spectrogram(audio)  # padded to 30 s
    if args.window == "fit":
        frames = min(features.shape[1], 2 * ((len(audio) // 160 + 200) // 2))  # the clip + 2 s, even
        features = features[:, :frames]
    loaded = {b: edgeq.load(b, threads=args.threads, language="en", spinning=args.spinning) for b in args.bundles}
    results = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "clip": str(clip), "window": args.window,
               "steps": args.steps, "threads": args.threads, "spinning": args.spinning, "rows": []}
    for r in range(args.rounds):
        reference = None
        for bundle, t in loaded.items():
            times, logits = run(t, features, args.steps)
            reference = logits if reference is None else reference
            diff = float(np.abs(logits - reference).max() / np.abs(reference).max())
            row = {"round": r, "bundle": bundle, "ms_per_step": 1e3 * float(np.median(times)),
                   "ms_per_step_last50": 1e3 * float(np.median(times[-50:])), "logits_rel_diff": diff}
            results["rows"].append(row)
            print(f"round {r}  {Path(bundle).name:40s} {row['ms_per_step']:6.2f} ms/step "
                  f"(last 50: {row['ms_per_step_last50']:6.2f})  logits vs first {diff:.1e}", flush=True)
        write_json(args.out, results)
    if args.bindings:
        results["bindings"] = []
        for r in range(args.rounds):
            for bundle, t in loaded.items():
                row = {"round": r, "bundle": bundle, **binding_split(t, features, args.steps, first=r % 2)}
                results["bindings"].append(row)
                print(f"round {r}  {Path(bundle).name:40s} held {row['held_ms_per_step']:6.2f}  fresh "
                      f"{row['fresh_ms_per_step']:6.2f} ms/step  logits identical: {row['logits_identical']}", flush=True)
            write_json(args.out, results)
    if args.profile:
        results["operators"] = {}
        for bundle in args.bundles:
            split = results["operators"][bundle] = operator_split(bundle, features, args.steps, args.threads,
                                                                  args.spinning)
            dec = split["decoder"]
            top = ", ".join(f"{op} {v['ms_per_step']:.2f}" for op, v in list(dec["by_operator"].items())[:5])
            head = f", head {split['head']['kernel_ms_per_step']:.2f} ms" if "head" in split else ""
            print(f"profiled {Path(bundle).name:40s} {split['profiled_ms_per_step']:6.2f} ms/step; decoder operators "
                  f"{dec['kernel_ms_per_step']:.2f} ms ({top}){head}", flush=True)
        write_json(args.out, results)


if __name__ == "__main__":
    main()
