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

Per system: WER (Whisper's English normalizer + jiwer), real-time factor, load time, peak RSS
(the kernel's VmHWM of the worker process, imports included; not ru_maxrss, which a
worker inherits from the parent across fork + exec), model size. Writes results/compare_systems.json.
"""

from __future__ import annotations

import argparse
import json
import os

import subprocess
import sys
import time
from pathlib import Path

from _common import SPEECH_DEV, WHISPER_BASE, write_json


def _dir_mb(path: Path, suffixes=(".safetensors", ".onnx", ".onnx.data", ".bin")) -> float:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.name.endswith(suffixes)]
    return sum(p.stat().st_size for p in files) / 1e6


# --------------------------------------------------------------------------- one system, in-process


def _load(system: dict, threads: int):
    kind, ref = system["kind"], system["ref"]
    if kind == "edgeq":
        import edgeq

        t = edgeq.load(ref, threads=threads, language="en")
        return (lambda audio: t.transcribe(audio).text), _dir_mb(ref)
    if kind == "faster-whisper":
        from faster_whisper import WhisperModel

        m = WhisperModel(ref, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

        def run(audio):
            segments, _ = m.transcribe(audio, language="en", task="transcribe", beam_size=1, best_of=1,
                                       temperature=0.0, without_timestamps=True, vad_filter=False,
                                       condition_on_previous_text=False)
            return " ".join(s.text.strip() for s in segments)

        return run, _dir_mb(ref)
    if kind == "whisper.cpp":
        from pywhispercpp.model import Model

        m = Model(ref, n_threads=threads, language="en", no_timestamps=True, print_progress=False,
                  print_realtime=False, greedy={"best_of": 1})
        return (lambda audio: " ".join(s.text for s in m.transcribe(audio))), _dir_mb(ref)
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

    def run(audio):
        feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(feats, language="en", task="transcribe")
        return processor.batch_decode(ids, skip_special_tokens=True)[0]

    return run, size


def worker(system: dict, dataset: str, threads: int, limit: int | None) -> dict:
    from edgeq.bench.memory import os_peak_rss_bytes

    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from edgeq.audio import load_audio
    from edgeq.datasets import open_dataset
    from edgeq.wer import corpus_wer, word_errors

    data = open_dataset(dataset, limit=limit)
    audios = [(u, load_audio(u.audio)) for u in data.utterances]
    t0 = time.perf_counter()
    run, size = _load(system, threads)
    load_s = time.perf_counter() - t0
    run(audios[0][1])  # warm-up, not timed
    errors, compute, audio_s = [], 0.0, 0.0
    for utt, audio in audios:
        t = time.perf_counter()
        text = run(audio)
        compute += time.perf_counter() - t
        audio_s += len(audio) / 16000
        errors.append(word_errors(utt.reference, text))
    return {"system": system["name"], "wer_pct": 100 * corpus_wer(errors), "rtf": compute / audio_s,
            "compute_s": compute, "audio_s": audio_s, "utterances": len(audios), "load_s": load_s,
            "peak_rss_mb": os_peak_rss_bytes() / 2**20,
            "size_mb": size, "torch_imported": "torch" in sys.modules}


# --------------------------------------------------------------------------- orchestration


def ensure_ct2(model: Path, cache: Path) -> Path:
    out = cache / f"ct2-int8-{model.name}"
    if not (out / "model.bin").is_file():
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(str(model), copy_files=["tokenizer.json"]).convert(str(out), quantization="int8", force=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="*", default=[])
    ap.add_argument("--model", type=Path, default=WHISPER_BASE)
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--ggml", help="whisper.cpp ggml model file (q8_0), measured through pywhispercpp")
    ap.add_argument("--skip", default="", help="comma-separated system names to leave out")
    ap.add_argument("--out", default="compare_systems.json")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edgeq-compare"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.dataset, args.threads, args.limit)))
        return
    systems = [
        {"name": "transformers-fp32", "kind": "transformers-fp32", "ref": str(args.model)},
        {"name": "transformers-dynamic-int8", "kind": "transformers-dynamic-int8", "ref": str(args.model)},
    ]
    skip = set(filter(None, args.skip.split(",")))
    try:
        import faster_whisper  # noqa: F401

        if "faster-whisper-int8" not in skip:  # the CT2 conversion is not free: only for a system that runs
            systems.append({"name": "faster-whisper-int8", "kind": "faster-whisper",
                            "ref": str(ensure_ct2(args.model, args.cache))})
    except ImportError:
        print("faster-whisper not installed: skipped (pip install faster-whisper)")
    if args.ggml:
        systems.append({"name": "whisper.cpp", "kind": "whisper.cpp", "ref": args.ggml})
    for spec in args.bundles:
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
