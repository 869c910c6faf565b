"""How often a bundle's decode of a window fitted to the audio goes into a loop.

    python benchmarks/fitted_loops.py B1 [B2 ...] [--dataset DIR] [--cpu-mask avx2|vnni] [--out fitted_loops.json]

On a window fitted to the audio (the default, encoder_window "fit") Whisper sees little silence after
the last word, and a weaker decoder can repeat the sentence instead of ending it. edgeq catches that
(longform: in a loop, at the token limit, or repetitive) and encodes and decodes the window again
in full: the transcript stays right, the window costs twice. Speech-dev has 24 clips, too few to
count such a rare event, so each clip is also decoded in 6 variants that leave its words as they
are: 0.5 s of silence before it, 1 s after it, gain 0.4, white noise at 30 dB SNR, and played 7 %
slower and faster (linear interpolation). Greedy decoding as in the study (STUDY_OPTIONS), 2 threads.
Per bundle: decodes, WER over all of them, the refits and which clip/variant needed one. Written
after every bundle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import SPEECH_DEV, add_cpu_mask_option, run_masked, write_json

CHILD = """
import json, sys
from dataclasses import replace
import numpy as np
import edgeq
from edgeq.data.datasets import open_dataset
from edgeq.data.wer import corpus_wer, word_errors
from edgeq.runtime.audio import load_audio
from edgeq.runtime.decoding import STUDY_OPTIONS

def variants(a, rng):
    yield "as is", a
    yield "0.5 s silence before", np.concatenate([np.zeros(8000, np.float32), a])
    yield "1 s silence after", np.concatenate([a, np.zeros(16000, np.float32)])
    yield "gain 0.4", a * np.float32(0.4)
    power = float(np.mean(a.astype(np.float64) ** 2))
    yield "noise 30 dB", (a + rng.normal(0.0, np.sqrt(power / 1000), a.size)).astype(np.float32)
    for rate in (0.93, 1.07):
        at = np.arange(0, len(a) - 1, rate)
        yield f"speed {rate}", np.interp(at, np.arange(len(a)), a).astype(np.float32)

bundle, dataset = sys.argv[1:3]
t = edgeq.load(bundle, threads=2, language="en")
options = replace(STUDY_OPTIONS, encoder_window="fit")
rng = np.random.default_rng(0)
errors, refits, looped = [], 0, []
for utt in open_dataset(dataset).utterances:
    for name, audio in variants(load_audio(utt.audio), rng):
        r = t.transcribe(audio, options=options)
        errors.append(word_errors(utt.reference, r.text))
        refits += r.timings.refits
        if r.timings.refits:
            looped.append(f"{utt.audio.name}: {name}")
print(json.dumps({"decodes": len(errors), "wer_pct": round(100 * corpus_wer(errors), 2), "refits": refits,
                  "looped": looped}))
"""


def _decoder(bundle: Path) -> dict:
    """The bundle's recipe and, for an ONNX bundle, its decoder's MatMulNBits widths."""
    from edgeq.format.bundle import open_bundle

    found = open_bundle(bundle, verify_hashes=False)
    q = json.loads((bundle / "onnx.json").read_text()).get("quantization", {}) if (bundle / "onnx.json").is_file() else {}
    # Layers per MatMulNBits format where they differ; else the one format, as the same label.
    nbits = str(q.get("weights", "")).startswith("int") and "block_size" in q
    one = f"{q['weights']}-b{q['block_size']}" if nbits else None
    widths = q.get("decoder_layers_per_format") or ({one: "all"} if one else {})
    return {"recipe": found.recipe.name, "decoder": widths}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--out", default="fitted_loops.json")
    add_cpu_mask_option(ap, "decode")
    args = ap.parse_args()
    run_masked(args.cpu_mask)  # the children below inherit the preloaded mask
    from edgeq.bench.env import fingerprint

    out = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "dataset": args.dataset, "rows": []}
    for bundle in args.bundles:
        proc = subprocess.run([sys.executable, "-c", CHILD, bundle, args.dataset], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{bundle}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        row = {"bundle": Path(bundle).name, **_decoder(Path(bundle)), **json.loads(proc.stdout.strip().splitlines()[-1])}
        out["rows"].append(row)
        write_json(args.out, out)
        print(f"{bundle}: {row['refits']} of {row['decodes']} fitted windows decoded again in full, WER {row['wer_pct']} %")


if __name__ == "__main__":
    main()
