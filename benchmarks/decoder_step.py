"""One ONNX bundle's decoder step against another's, in one process, round after round.

    python benchmarks/decoder_step.py BUNDLE [BUNDLE ...] [--steps 220] [--rounds 3] [--window full]
        [--threads 2] [--spinning off|decoder] [--cpu-mask avx2|vnni] [--out decoder_step.json]

Each round encodes one window of real speech (speech-dev's first clip; --window full pads it to
30 s, as long audio is decoded, fit encodes the clip alone) with every bundle in turn, then
feeds the prompt and --steps fixed tokens, one step at a time, timing each ONNX Runtime call (the
engine's step, nothing of the decoding loop around it). Fixed tokens rather than the model's own
choice so that random-weight checkpoints (whisper-small's shape) and real ones run the same number
of steps with the same cache lengths. Reports per bundle and round the median step time over all
steps and over the last 50 (the longest cache), and the logits' largest difference from the first
bundle's: bundles of one checkpoint that differ only in how they run should agree to rounding.
Writes benchmarks/results/decoder_step.json (--out) after every round.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import SPEECH_DEV, add_cpu_mask_option, run_masked, write_json


def first_clip(dataset: Path) -> Path:
    clips = sorted(p for p in dataset.rglob("*") if p.suffix in (".flac", ".wav"))
    if not clips:
        raise SystemExit(f"no .flac/.wav under {dataset}")
    return clips[0]


def run(transcriber, features: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    engine, settings = transcriber.engine, transcriber.settings
    state = engine.start(engine.encode(features))
    logits, state = engine.step(state, settings.prompt("en"))
    times, seen = [], [logits]
    for i in range(steps):
        start = time.perf_counter()
        logits, state = engine.step(state, [1000 + i % 1000])  # ordinary text tokens
        times.append(time.perf_counter() - start)
        seen.append(logits)
    return np.array(times), np.stack(seen)


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


if __name__ == "__main__":
    main()
