"""edgeq bundles side by side with what users would pick instead, in one run.

    python benchmarks/compare_systems.py --bundles B1 B2[@KEY=VALUE,...] ... [--threads 2] [--dataset DIR]
                                          [--model DIR] [--skip transformers-fp32,...]

Systems (each measured in its own fresh process, same audio, same thread count, greedy decoding,
no timestamps, English):
  transformers-fp32           WhisperForConditionalGeneration.generate, float32
  transformers-dynamic-int8   the same after torch.ao.quantization.quantize_dynamic (Linear)
  faster-whisper-int8         CTranslate2 int8 conversion of the same checkpoint (pip install faster-whisper)
  edgeq:<bundle>              edgeq.load(bundle).transcribe for each bundle given
whisper.cpp is measured when pywhispercpp is installed and --ggml points to a ggml model file.
--recipes builds edgeq bundles of --model first; --small-shape swaps --model for whisper-small's
shape with random weights (WER is meaningless there; every system decodes the same 224-token cap,
so time, load and RAM compare):

    python benchmarks/compare_systems.py --recipes onnx-int8-dynamic,onnx-int4 --ggml auto
    python benchmarks/compare_systems.py --small-shape --recipes onnx-int8-dynamic,onnx-int4 --ggml auto --limit 3

Per system: WER (Whisper's English normalizer + jiwer), real-time factor, load time, peak RSS
(the kernel's VmHWM of the worker process, imports included; not ru_maxrss, which a
worker inherits from the parent across fork + exec), model size, tokens decoded. Writes
results/compare_systems.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import SPEECH_DEV, WHISPER_BASE, whisper_small_random, write_json


def _dir_mb(path: Path, suffixes=(".safetensors", ".onnx", ".onnx.data", ".bin")) -> float:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.name.endswith(suffixes)]
    return sum(p.stat().st_size for p in files) / 1e6


# --------------------------------------------------------------------------- one system, in-process


# Every system decodes at most Whisper's sample length (half the 448-token text context), edgeq's
# rule. Real speech never reaches it; random weights (the whisper-small shape) always do, so with
# the same cap every system runs the same number of decoder steps and their times compare.
MAX_NEW_TOKENS = 224
EOT = 50257  # Whisper's end-of-text id; the special tokens (prompt, timestamps) come after it


def _generated(ids) -> int:
    """Tokens a system decoded, end-of-text left out (transformers 5 returns no prompt). Timestamp
    tokens, which random weights emit, count: each took a decoder step."""
    return sum(1 for i in ids if int(i) != EOT)


class _CountingGenerate:
    """CTranslate2's Whisper model with generate() counting the tokens it returns: faster-whisper
    drops segments without text (all random-weight output is timestamp tokens), so its segments
    cannot tell how many steps were decoded."""

    def __init__(self, model):
        self._model, self.tokens = model, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, *args, **kwargs):
        results = self._model.generate(*args, **kwargs)
        self.tokens += sum(_generated(r.sequences_ids[0]) for r in results)
        return results


def _load(system: dict, threads: int):
    """-> (run(audio) -> (text, tokens decoded or None), size MB)."""
    kind, ref = system["kind"], system["ref"]
    if kind == "edgeq":
        import edgeq
        from edgeq.runtime.decoding import STUDY_OPTIONS

        t = edgeq.load(ref, threads=threads, language="en")
        assert t.settings.max_new_tokens == MAX_NEW_TOKENS, t.settings.max_new_tokens

        def run_edgeq(audio):
            r = t.transcribe(audio, options=STUDY_OPTIONS)  # greedy once, no timestamps, as the others
            return r.text, len(r.tokens)

        return run_edgeq, _dir_mb(ref)
    if kind == "faster-whisper":
        from faster_whisper import WhisperModel

        m = WhisperModel(ref, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)
        m.model = counter = _CountingGenerate(m.model)
        # faster-whisper sets CTranslate2's max_length to prompt + max_new_tokens, but CTranslate2
        # counts it after the prompt: 224 asked decoded 228 tokens (measured on random weights).
        # The prompt is <|startoftranscript|><|en|><|transcribe|><|notimestamps|> (2 tokens for .en models).
        max_new = MAX_NEW_TOKENS - (4 if m.model.is_multilingual else 2)

        def run_fw(audio):
            segments, _ = m.transcribe(audio, language="en", task="transcribe", beam_size=1, best_of=1,
                                       temperature=0.0, without_timestamps=True, vad_filter=False,
                                       condition_on_previous_text=False, max_new_tokens=max_new,
                                       # no segment dropped as silence or re-decoded: edgeq does neither
                                       no_speech_threshold=None, log_prob_threshold=None,
                                       compression_ratio_threshold=None)
            counter.tokens = 0  # segments is lazy: CTranslate2 decodes while they are joined below
            text = " ".join(s.text.strip() for s in segments)
            return text, counter.tokens

        return run_fw, _dir_mb(ref)
    if kind == "whisper.cpp":
        from pywhispercpp.model import Model

        # temperature_inc 0: no fallback re-decoding at higher temperatures (greedy once, as the others).
        m = Model(ref, n_threads=threads, language="en", no_timestamps=True, print_progress=False,
                  print_realtime=False, greedy={"best_of": 1}, max_tokens=MAX_NEW_TOKENS, temperature_inc=0.0)

        def run_cpp(audio):
            import _pywhispercpp as pw

            text = " ".join(seg.text for seg in m.transcribe(audio))
            ids = [pw.whisper_full_get_token_id(m._ctx, i, j) for i in range(pw.whisper_full_n_segments(m._ctx))
                   for j in range(pw.whisper_full_n_tokens(m._ctx, i))]
            return text, _generated(ids)

        return run_cpp, _dir_mb(ref)
    # transformers
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    torch.set_num_threads(threads)
    model = WhisperForConditionalGeneration.from_pretrained(ref, dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(ref)
    size = _dir_mb(ref) * (2 if json.loads((Path(ref) / "config.json").read_text()).get("dtype") == "float16" else 1)
    if kind == "transformers-dynamic-int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        size = None  # an in-memory conversion: torch.ao has no file format of its own

    def run_hf(audio):
        feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(feats, language="en", task="transcribe", max_new_tokens=MAX_NEW_TOKENS)
        return processor.batch_decode(ids, skip_special_tokens=True)[0], _generated(ids[0])

    return run_hf, size


def worker(system: dict, dataset: str, threads: int, limit: int | None) -> dict:
    import warnings

    from edgeq.bench.memory import os_peak_rss_bytes

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from edgeq.data.datasets import open_dataset
    from edgeq.data.wer import corpus_wer, word_errors
    from edgeq.runtime.audio import load_audio

    data = open_dataset(dataset, limit=limit)
    audios = [(u, load_audio(u.audio)) for u in data.utterances]
    t0 = time.perf_counter()
    run, size = _load(system, threads)
    load_s = time.perf_counter() - t0
    run(audios[0][1])  # warm-up, not timed
    errors, compute, audio_s, tokens = [], 0.0, 0.0, 0
    for utt, audio in audios:
        t = time.perf_counter()
        text, n = run(audio)
        compute += time.perf_counter() - t
        audio_s += len(audio) / 16000
        tokens = None if n is None or tokens is None else tokens + n
        errors.append(word_errors(utt.reference, text))
    return {"system": system["name"], "wer_pct": 100 * corpus_wer(errors), "rtf": compute / audio_s,
            "compute_s": compute, "audio_s": audio_s, "tokens": tokens, "utterances": len(audios), "load_s": load_s,
            "peak_rss_mb": os_peak_rss_bytes() / 2**20,
            "size_mb": size, "torch_imported": "torch" in sys.modules}


# --------------------------------------------------------------------------- orchestration


def ensure_ct2(model: Path, cache: Path) -> Path:
    out = cache / f"ct2-int8-{model.name}"
    if not (out / "model.bin").is_file():
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(str(model), copy_files=["tokenizer.json"]).convert(str(out), quantization="int8", force=True)
    return out


def ensure_bundle(model: Path, recipe: str, cache: Path) -> Path:
    import edgeq
    from edgeq.format.bundle import is_bundle

    out = cache / f"{model.name}-{recipe}"
    if not is_bundle(out):
        edgeq.build(recipe, model=str(model), out=out, language="en", force=True)
    return out


def ensure_ggml(model: Path, cache: Path) -> Path:
    from convert_ggml import convert

    q8 = cache / f"ggml-{model.name}-q8_0.bin"
    if not q8.is_file():
        convert(model, cache / f"ggml-{model.name}.bin", q8, None)
    return q8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="*", default=[])
    ap.add_argument("--model", type=Path, default=WHISPER_BASE)
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--recipes", default="", help="comma-separated recipes: bundles built from --model into --cache")
    ap.add_argument("--small-shape", action="store_true",
                    help="--model becomes a whisper-small-shaped checkpoint with random weights (latency, RAM)")
    ap.add_argument("--ggml", help="whisper.cpp ggml model file (q8_0), measured through pywhispercpp; "
                                   "'auto': convert --model with convert_ggml.py into --cache")
    ap.add_argument("--skip", default="", help="comma-separated system names to leave out")
    ap.add_argument("--out", help="results file [compare_systems.json, or compare_systems_whisper-small-random.json]")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edgeq-compare"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.dataset, args.threads, args.limit)))
        return
    if args.small_shape:
        args.model = whisper_small_random(args.cache / "whisper-small-random")
    args.out = args.out or ("compare_systems_whisper-small-random.json" if args.small_shape else "compare_systems.json")
    bundles = list(args.bundles)
    for recipe in filter(None, args.recipes.split(",")):
        bundles.append(str(ensure_bundle(args.model, recipe, args.cache)))
    if args.ggml == "auto":
        args.ggml = str(ensure_ggml(args.model, args.cache))
    systems = [
        {"name": "transformers-fp32", "kind": "transformers-fp32", "ref": str(args.model)},
        {"name": "transformers-dynamic-int8", "kind": "transformers-dynamic-int8", "ref": str(args.model)},
    ]
    skip = set(filter(None, args.skip.split(",")))
    if args.small_shape:
        # Random weights emit timestamp tokens, and transformers' generate decodes each one as the
        # start of a new segment: 1120 decoder steps for a 224-token cap (measured). Its time would
        # not compare; the fp32 baseline of the shape is the edgeq fp32 bundle (--recipes fp32,...).
        print("small shape: transformers systems left out (they decode random weights 5x longer); use --recipes fp32")
        skip |= {"transformers-fp32", "transformers-dynamic-int8"}
    try:
        import faster_whisper  # noqa: F401

        if "faster-whisper-int8" not in skip:  # the CT2 conversion is not free: only for a system that runs
            systems.append({"name": "faster-whisper-int8", "kind": "faster-whisper",
                            "ref": str(ensure_ct2(args.model, args.cache))})
    except ImportError:
        print("faster-whisper not installed: skipped (pip install faster-whisper)")
    if args.ggml:
        systems.append({"name": "whisper.cpp", "kind": "whisper.cpp", "ref": args.ggml})
    for spec in bundles:
        # PATH@KEY=VALUE,...: the same bundle under another environment (e.g. EDGEQ_HEAP_TUNING=0).
        path, _, env = spec.partition("@")
        systems.append({"name": f"edgeq:{Path(path).name}" + (f"@{env}" if env else ""), "kind": "edgeq", "ref": path,
                        "env": dict(kv.split("=", 1) for kv in env.split(",") if kv)})
    from edgeq.bench.env import fingerprint

    results = {"env": fingerprint(), "threads": args.threads, "dataset": args.dataset, "model": str(args.model),
               "rows": []}
    for system in systems:
        if system["name"] in skip:
            continue
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(system), "--dataset", args.dataset,
                               "--threads", str(args.threads)] + (["--limit", str(args.limit)] if args.limit else []),
                              capture_output=True, text=True, env={**os.environ, **system.get("env", {})})
        if proc.returncode != 0:
            row = {"system": system["name"], "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        results["rows"].append(row)
        write_json(args.out, results)
        if "error" in row:
            print(f"{row['system']:34} ERROR {row['error']}")
        else:
            size = f"{row['size_mb']:6.1f}" if row["size_mb"] else "     -"
            print(f"{row['system']:34} WER {row['wer_pct']:5.2f}%  RTF {row['rtf']:.3f}  load {row['load_s']:5.2f}s  "
                  f"RSS {row['peak_rss_mb']:6.0f} MB  size {size} MB  torch={row['torch_imported']}")


if __name__ == "__main__":
    main()
