"""The bench harness's own cost: the same bundle timed with the RSS sampler thread on and off.

    python benchmarks/harness_overhead.py BUNDLE [--dataset DIR] [--rounds 3] [--threads 2]

Alternates on/off runs (each a fresh process through `edgeq bench`) so drift hits both, and
reports the relative difference of total compute time. Writes results/harness_overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _common import SPEECH_DEV, write_json


def main() -> None:
    from edgeq.bench import BenchSettings, run_bench
    from edgeq.bench.runner import make_systems

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--dataset", default=str(SPEECH_DEV / "LibriSpeech"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    totals = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for sampler in (True, False):
                s = BenchSettings(dataset=args.dataset, out=Path(tmp) / f"{i}-{sampler}", threads=args.threads,
                                  sampler=sampler, force=True)
                summary = run_bench(make_systems([args.bundle], []), s)[0]
                totals[sampler].append(summary["rtf"] * summary["audio_s"])
                print(f"round {i} sampler={'on ' if sampler else 'off'} compute {totals[sampler][-1]:.3f} s")
    on, off = statistics.median(totals[True]), statistics.median(totals[False])
    result = {"bundle": args.bundle, "dataset": args.dataset, "threads": args.threads, "rounds": args.rounds,
              "compute_s_sampler_on": totals[True], "compute_s_sampler_off": totals[False],
              "median_on_s": on, "median_off_s": off, "overhead_pct": 100 * (on - off) / off}
    from edgeq.bench.env import fingerprint

    result["env"] = fingerprint()
    write_json("harness_overhead.json", result)
    print(f"sampler overhead: {result['overhead_pct']:+.2f}% (median of {args.rounds})")


if __name__ == "__main__":
    main()
