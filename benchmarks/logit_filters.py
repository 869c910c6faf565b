"""What the decoding loop does to each step's logits, in microseconds, beside the decoder step.

    python benchmarks/logit_filters.py [--model DIR] [--calls 320] [--rounds 3] [--out logit_filters.json]

Per step, greedy decoding filters the logits (WindowDecoder.filter_logits: suppressed tokens, and
with timestamps openai-whisper's ApplyTimestampRules) and scores the chosen token (a log-softmax of
the whole vocabulary). Timed on random logits of the model's vocabulary (the time does not depend
on the values), with the decode settings of --model (a checkpoint or a bundle folder: both hold
config.json and generation_config.json; default whisper-base), for the bench's options (no timestamps) and the default
ones (timestamps, as long audio is decoded), inside a segment (text and timestamps both allowed).
"timestamp rule, log-prob form" is the last timestamp rule as openai-whisper writes it (a log-softmax
of the whole vocabulary, then the comparison), which filter_logits no longer computes: the
normalizer cancels. Writes benchmarks/results/logit_filters.json (--out) after every round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from _common import WHISPER_BASE, write_json


def rule_in_log_probs(logits: np.ndarray, ts: int) -> bool:
    """ApplyTimestampRules' last test as openai-whisper computes it."""
    from edgeq.runtime.decoding import _logsumexp, log_softmax

    logprobs = log_softmax(logits)
    return _logsumexp(logprobs[ts:]) > np.max(logprobs[:ts])


def main() -> None:
    from edgeq.bench.env import fingerprint
    from edgeq.runtime.decoding import STUDY_OPTIONS, DecodeOptions, WindowDecoder, log_softmax

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(WHISPER_BASE), help="a checkpoint or bundle folder whose configs to read")
    ap.add_argument("--calls", type=int, default=320)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="logit_filters.json")
    args = ap.parse_args()

    settings = _settings(args.model)
    ts = settings.timestamp_begin
    rng = np.random.default_rng(0)
    samples = [(rng.standard_normal(settings.vocab_size) * 3).astype(np.float32) for _ in range(64)]
    cases = {"filter, no timestamps": (WindowDecoder(settings, STUDY_OPTIONS), [5, 7, 9]),
             "filter, timestamps": (WindowDecoder(settings, DecodeOptions()), [ts, 5, 7])}
    results = {"env": fingerprint(), "vocab": settings.vocab_size, "calls": args.calls, "rows": []}
    for r in range(args.rounds):
        timed = {}
        for name, (decoder, sampled) in cases.items():
            timed[name] = _us(lambda x, d=decoder, s=sampled: d.filter_logits(x, s), samples, args.calls)
        timed["score: log-softmax, argmax"] = _us(lambda x: float(log_softmax(x)[int(np.argmax(x))]), samples,
                                                 args.calls)
        timed["timestamp rule, log-prob form"] = _us(lambda x: rule_in_log_probs(x, ts), samples, args.calls)
        for name, us in timed.items():
            results["rows"].append({"round": r, "case": name, "us": us})
            print(f"round {r}  {name:32s} {us:7.1f} us", flush=True)
        results["summary"] = {name: statistics.median(row["us"] for row in results["rows"] if row["case"] == name)
                              for name in timed}
        write_json(args.out, results)


def _settings(model: str):
    from edgeq.runtime.decoding import DecodeSettings

    folder = Path(model)
    return DecodeSettings.from_configs(json.loads((folder / "generation_config.json").read_text()),
                                       json.loads((folder / "config.json").read_text()), "en", where=str(folder))


def _us(fn, samples: list[np.ndarray], calls: int) -> float:
    fn(samples[0])
    start = time.perf_counter()
    for i in range(calls):
        fn(samples[i % len(samples)])
    return 1e6 * (time.perf_counter() - start) / calls


if __name__ == "__main__":
    main()
