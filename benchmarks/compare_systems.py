"""edgeq bundles side by side with what users would pick instead, in one run, round after round.

    python benchmarks/compare_systems.py --bundles B1 B2[@KEY=VALUE,...] ... [--threads 2] [--dataset DIR]
                                          [--model DIR] [--skip transformers-fp32,...] [--rounds 3]
                                          [--ggml auto] [--whisper-cpp-native DIR]

Systems (each measured in its own fresh process, same audio, same thread count, greedy decoding,
no timestamps, English):
  transformers-fp32           WhisperForConditionalGeneration.generate, float32 (the baseline)
  transformers-dynamic-int8   the same after torch.ao.quantization.quantize_dynamic (Linear)
  faster-whisper-int8         CTranslate2 int8 conversion of the same checkpoint (pip install faster-whisper)
  whisper.cpp-q8_0, -q5_0     pywhispercpp 1.5.1 (whisper.cpp 1.8.5) on ggml files written by convert_ggml.py
  whisper.cpp-q8_0-fit        the same with audio_ctx fitted to each clip (+2 s), edgeq's encoder window
  ...-native                  the same with ggml's CPU backend built from whisper.cpp 1.8.5 with its
                              default GGML_NATIVE=ON (the wheel's is built for AVX2 only): --whisper-cpp-native
  edgeq:<bundle>              edgeq.load(bundle).transcribe for each bundle given (encoder window "fit",
                              edgeq's default; `PATH#full` for the padded 30 s window); with
                              --edgeq-spinning decoder (the x86 targets' setting) named `...+spin`
whisper.cpp is measured when pywhispercpp is installed and --ggml points to a q8_0 ggml model file
('auto': converted from --model, q5_0 beside it). --recipes builds edgeq bundles of --model first;
--small-shape swaps --model for whisper-small's shape with random weights (WER is meaningless
there; every system decodes the same 224-token cap, so time, load and RAM compare).
--cpu-mask avx2 (or vnni) runs every system with CPUID masked by benchmarks/cpuid_mask.c: each
library then picks the kernels it would pick on an AVX2-only (or AVX-512 VNNI, no AMX) CPU, on this
one's cores, caches and memory; edgeq's prepared graphs go to a cache of their own:

    python benchmarks/compare_systems.py --recipes onnx-int8-dynamic,onnx-int4 --ggml auto
    python benchmarks/compare_systems.py --small-shape --recipes onnx-int8-dynamic,onnx-int4 --ggml auto --limit 3

--long MINUTES joins the dataset's clips (joined.join_utterances, seeded order, repeated) into one
recording of at least that long and has every system transcribe it whole, through its own long-form
path: timestamps on (the seek loop), greedy at temperature 0 only, not conditioned on the previous
text (transformers' default; set for the others), no window dropped as silence. edgeq: its
transcribe, default checks included (a sparse segment decoded again: edgeq.runtime.longform);
faster-whisper: transcribe without VAD; whisper.cpp: whisper_full with n_max_text_ctx 0; transformers:
generate's sequential long-form (features untruncated, attention mask). Windows are full of speech
there, so no encoder window is fitted but the last.

--rounds N runs every system N times in alternation (the order rotated each round), so a slow
phase of a shared machine slows every system alike; the summary gives each system's median and
spread, and per round the ratio of each edgeq bundle to the fastest peer (RTF), to whisper.cpp
q8_0 (peak RSS, load time), with their median and spread.

Per system: WER (Whisper's English normalizer + jiwer), real-time factor, load time, peak RSS
(the kernel's VmHWM of the worker process, imports included; not ru_maxrss, which a
worker inherits from the parent across fork + exec), model size, tokens decoded; for edgeq and
whisper.cpp (from its own timings) also encoder seconds, decoder steps and decoder tokens per
second. Writes results/compare_systems.json (or --out) after every system.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from _common import (
    REPO,
    SPEECH_DEV,
    WHISPER_BASE,
    add_cpu_mask_option,
    compile_edgeq,
    cpuid_mask_env,
    whisper_small_random,
    write_json,
)


def _dir_mb(path: Path, suffixes=(".safetensors", ".onnx", ".onnx.data", ".bin")) -> float:
    path = Path(path)
    # Weights only: an edgeq bundle's tokenizer.decode.bin (0.6 MB) is the tokenizer, as tokenizer.json is.
    files = [path] if path.is_file() else [p for p in path.rglob("*")
                                           if p.name.endswith(suffixes) and p.name != "tokenizer.decode.bin"]
    return sum(p.stat().st_size for p in files) / 1e6


# --------------------------------------------------------------------------- one system, in-process


# Every system decodes at most Whisper's sample length (half the 448-token text context), edgeq's
# rule. Real speech never reaches it; random weights (the whisper-small shape) always do, so with
# the same cap every system runs the same number of decoder steps and their times compare.
MAX_NEW_TOKENS = 224
FIT_MARGIN_S = 2.0  # edgeq's ENCODER_FIT_MARGIN_S, given to whisper.cpp's audio_ctx in the -fit variant
PHASES = {"encoder_s": 0.0, "decode_s": 0.0, "decoder_steps": 0, "windows": 0}  # edgeq's and whisper.cpp's timings
EOT = 50257  # Whisper's end-of-text id; the special tokens (prompt, timestamps) come after it


def _generated(ids) -> int:
    """Tokens a system decoded, end-of-text left out (transformers 5 returns no prompt). Timestamp
    tokens, which random weights emit, count: each took a decoder step."""
    return sum(1 for i in ids if int(i) != EOT)


_CPP_TIMING = re.compile(r"whisper_print_timings:\s+(\w+) time =\s+([\d.]+) ms(?: /\s+(\d+) runs)?")


def whisper_cpp_phases(log: str) -> dict:
    """Per-phase numbers from whisper.cpp's `whisper_print_timings` (the only way pywhispercpp 1.5.1
    exposes them), in edgeq's terms. whisper.cpp times every decoder call: one token is `decode`,
    a batch of 2..15 tokens `batchd` (the prompt), 16 or more `prompt`; `sample` is choosing the token.
    Its `runs` of batchd and prompt count tokens, not calls, and it prints at least 1 run for an
    unused phase, so decoder steps are the one-token runs plus one prompt call per encoded window,
    as edgeq counts its steps (greedy, no fallback: one decode per window)."""
    t = {m[1]: (float(m[2]), int(m[3] or 0)) for m in _CPP_TIMING.finditer(log)}
    if "encode" not in t or "decode" not in t:
        raise RuntimeError(f"whisper.cpp printed no timings: {log[-300:]!r}")
    windows = t["encode"][1] if t["encode"][0] > 0 else 0
    steps = (t["decode"][1] if t["decode"][0] > 0 else 0) + windows
    decode_ms = sum(t[k][0] for k in ("decode", "batchd", "prompt", "sample") if k in t)
    return {"encoder_s": t["encode"][0] / 1e3, "decode_s": decode_ms / 1e3, "decoder_steps": steps, "windows": windows}


def _stderr_of(call) -> str:
    """What `call` writes to file descriptor 2 (whisper.cpp's log goes there through C's stderr)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            call()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return f.read().decode(errors="replace")


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


def _load(system: dict, threads: int, long: bool = False):
    """-> (run(audio) -> (text, tokens decoded or None), size MB)."""
    kind, ref = system["kind"], system["ref"]
    if kind == "edgeq":
        import edgeq
        from edgeq.runtime.decoding import STUDY_OPTIONS

        t = edgeq.load(ref, threads=threads, language="en", spinning=system.get("spinning", "off"))
        assert t.settings.max_new_tokens == MAX_NEW_TOKENS, t.settings.max_new_tokens
        options = replace(STUDY_OPTIONS, encoder_window=system.get("window", STUDY_OPTIONS.encoder_window))
        if long:  # the seek loop needs timestamps; greedy once, not conditioned, as the others
            options = replace(options, timestamps=True, condition_on_previous_text=False)

        def run_edgeq(audio):
            r = t.transcribe(audio, options=options)  # greedy once, no timestamps (but --long), as the others
            PHASES["encoder_s"] += r.timings.encoder_s
            PHASES["decode_s"] += r.timings.decode_s
            PHASES["decoder_steps"] += r.timings.decoder_steps
            PHASES["windows"] += r.windows + r.timings.refits
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
                                       temperature=0.0, without_timestamps=not long, vad_filter=False,
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
        # no_context only drops an earlier call's text: within one call whisper_full prompts each window
        # with the text before it, unless n_max_text_ctx is 0 (--long: not conditioned, as the others;
        # conditioned, a 601 s recording took 12-18 % longer with AVX2 kernels, at the same WER).
        m = Model(ref, n_threads=threads, language="en", no_timestamps=not long, no_context=True, print_progress=False,
                  print_realtime=False, greedy={"best_of": 1}, max_tokens=MAX_NEW_TOKENS, temperature_inc=0.0,
                  **({"n_max_text_ctx": 0} if long else {}))
        fit = system.get("window") == "fit"

        def run_cpp(audio):
            import _pywhispercpp as pw

            # audio_ctx: encoder positions (50 per second); 0 is whisper.cpp's default, the full 1500.
            ctx = min(1500, math.ceil((len(audio) / 16000 + FIT_MARGIN_S) * 50)) if fit else 0
            pw.whisper_reset_timings(m._ctx)
            text = " ".join(seg.text for seg in m.transcribe(audio, audio_ctx=ctx))
            for key, value in whisper_cpp_phases(_stderr_of(lambda: pw.whisper_print_timings(m._ctx))).items():
                PHASES[key] += value
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
        if long and len(audio) > 30 * 16000:
            ids = transformers_long_form(model, processor, audio, max_new_tokens=MAX_NEW_TOKENS,
                                         condition_on_prev_tokens=False)
            return processor.batch_decode(ids, skip_special_tokens=True)[0], _generated(ids[0])
        feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(feats, language="en", task="transcribe", max_new_tokens=MAX_NEW_TOKENS)
        return processor.batch_decode(ids, skip_special_tokens=True)[0], _generated(ids[0])

    return run_hf, size


def transformers_long_form(model, processor, audio, **generate):
    """transformers' sequential long-form generation of English `audio`, with timestamps: all the
    features, untruncated, and their mask; `generate` decides the decoding (also longform_wer.py's)."""
    import torch

    inputs = processor(audio, sampling_rate=16000, return_tensors="pt", truncation=False, padding="longest",
                       return_attention_mask=True)
    with torch.no_grad():
        return model.generate(inputs.input_features, attention_mask=inputs.attention_mask, language="en",
                              task="transcribe", return_timestamps=True, **generate)


def worker(system: dict, dataset: str, threads: int, limit: int | None, long_s: float | None = None) -> dict:
    import warnings

    from edgeq.bench.memory import os_peak_rss_bytes

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from edgeq.data.datasets import open_dataset
    from edgeq.data.wer import corpus_wer, word_errors
    from edgeq.runtime.audio import load_audio

    data = open_dataset(dataset, limit=limit)
    if long_s:
        from types import SimpleNamespace

        from edgeq.data.joined import join_utterances

        joined = join_utterances(data, long_s)
        audios = [(SimpleNamespace(reference=joined.reference), joined.samples)]
        warm = load_audio(data.utterances[0].audio)  # one clip: the recording itself would double the run
    else:
        audios = [(u, load_audio(u.audio)) for u in data.utterances]
        warm = audios[0][1]
    t0 = time.perf_counter()
    run, size = _load(system, threads, long=bool(long_s))
    load_s = time.perf_counter() - t0
    run(warm)  # warm-up, not timed
    PHASES.update(encoder_s=0.0, decode_s=0.0, decoder_steps=0, windows=0)
    errors, compute, audio_s, tokens = [], 0.0, 0.0, 0
    for utt, audio in audios:
        t = time.perf_counter()
        text, n = run(audio)
        compute += time.perf_counter() - t
        audio_s += len(audio) / 16000
        tokens = None if n is None or tokens is None else tokens + n
        errors.append(word_errors(utt.reference, text))
    row = {"system": system["name"], "wer_pct": 100 * corpus_wer(errors), "rtf": compute / audio_s,
           "compute_s": compute, "audio_s": audio_s, "tokens": tokens, "utterances": len(audios), "load_s": load_s,
           "peak_rss_mb": os_peak_rss_bytes() / 2**20,
           "size_mb": size, "torch_imported": "torch" in sys.modules}
    if PHASES["windows"]:
        row.update(PHASES, encoder_s_per_window=PHASES["encoder_s"] / PHASES["windows"],
                   decoder_tokens_per_s=PHASES["decoder_steps"] / PHASES["decode_s"])
    return row


# --------------------------------------------------------------------------- orchestration


def ensure_ct2(model: Path, cache: Path) -> Path:
    out = cache / f"ct2-int8-{model.name}"
    if not (out / "model.bin").is_file():
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(str(model), copy_files=["tokenizer.json"]).convert(str(out), quantization="int8", force=True)
    return out


def ensure_bundle(model: Path, recipe: str, cache: Path) -> Path:
    import edgeq
    from edgeq.format.bundle import is_bundle, open_bundle
    from edgeq.spec.recipe import load_recipe

    out = cache / f"{model.name}-{recipe}"
    # A cached bundle is reused only if it holds what the recipe asks for now, defaults included:
    # one built before a recipe changed (onnx-int4 took cross_kv = float16) would be measured as
    # if it were the current recipe. The bundle's recipe.toml was written resolved, so it is
    # compared as stored: resolving it again would fill an option added since (ffn_blocks) with
    # today's default, and a bundle built without it would pass for one built with it.
    # Nor one built by other code under the same recipe (int8 bundles gained encoder.vnni.onnx without a
    # recipe change): the hash of the edgeq sources that built it is kept beside it.
    source = cache / f"{out.name}.edgeq-source"
    stamp = edgeq_source_hash()
    if (not is_bundle(out) or open_bundle(out, verify_hashes=False).recipe != load_recipe(recipe).resolved()
            or not source.is_file() or source.read_text() != stamp):
        edgeq.build(recipe, model=str(model), out=out, language="en", force=True)
        source.write_text(stamp)
    return out


def edgeq_source_hash() -> str:
    """sha256 over the edgeq package's Python sources, recipes and targets, as they are now."""
    import hashlib

    import edgeq

    package = Path(edgeq.__file__).parent
    h = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *(REPO / "recipes").glob("*.toml"), *(REPO / "targets").glob("*.toml")]):
        h.update(f"{path.parent.name}/{path.name}\0".encode() + path.read_bytes())
    return h.hexdigest()


def ensure_ggml(model: Path, cache: Path) -> dict[str, Path]:
    from convert_ggml import convert

    out = {q: cache / f"ggml-{model.name}-{q}.bin" for q in ("q8_0", "q5_0")}
    if not all(p.is_file() for p in out.values()):
        convert(model, cache / f"ggml-{model.name}.bin", out["q8_0"], None, out["q5_0"])
    return out


PEER_KINDS = ("transformers-dynamic-int8", "faster-whisper", "whisper.cpp")
USABLE_WER_POINTS = 0.5  # issue #11: WER <= fp32 + 0.5


def systems_to_run(args) -> list[dict]:
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
        files = ensure_ggml(args.model, args.cache) if args.ggml == "auto" else {"q8_0": Path(args.ggml)}
        builds = [("", None)] + ([("-native", str(args.whisper_cpp_native))] if args.whisper_cpp_native else [])
        for suffix, pythonpath in builds:
            for quant, path in files.items():
                variants = [("", "full"), ("-fit", "fit")] if quant == "q8_0" else [("", "full")]
                for tail, window in variants:
                    systems.append({"name": f"whisper.cpp-{quant}{tail}{suffix}", "kind": "whisper.cpp",
                                    "ref": str(path), "window": window, "pythonpath": pythonpath})
    bundles = list(args.bundles)
    for recipe in filter(None, args.recipes.split(",")):
        bundles.append(str(ensure_bundle(args.model, recipe, args.cache)))
    for spec in bundles:
        # PATH[#full][@KEY=VALUE,...]: the padded 30 s encoder window; the same bundle under another
        # environment (e.g. EDGEQ_HEAP_TUNING=0).
        spec, _, env = spec.partition("@")
        path, _, window = spec.partition("#")
        for spinning in args.edgeq_spinning.split(","):
            systems.append({"name": f"edgeq:{Path(path).name}" + (f"#{window}" if window else "")
                            + ("+spin" if spinning == "decoder" else "") + (f"@{env}" if env else ""),
                            "kind": "edgeq", "ref": path, "window": window or "fit", "spinning": spinning,
                            "env": dict(kv.split("=", 1) for kv in env.split(",") if kv)})
    return [s for s in systems if s["name"] not in skip]


MASK_ENV: dict = {}  # LD_PRELOAD and EDGEQ_CPUID_MASK for every worker under --cpu-mask


def cpu_mask_env(mask: str, cache: Path) -> dict:
    """_common.cpuid_mask_env, once checked: torch in a masked process says which kernels it sees."""
    env = cpuid_mask_env(mask, cache)
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           env={**os.environ, **env}, capture_output=True, text=True)
    if probe.returncode:
        raise SystemExit(f"--cpu-mask {mask}: {probe.stderr.strip().splitlines()[-1]}")
    print(f"CPUID masked to {mask}: torch sees {probe.stdout.strip()}", flush=True)
    return env


def prepare_edgeq(system: dict) -> None:
    """Write edgeq's bytecode (_common.compile_edgeq) and load the bundle once, as a user's first run
    on a device does: that load writes ONNX Runtime's prepared graphs for this device
    (edgeq.runtime.prepared), which every later load reads. The rounds measure those, as
    whisper.cpp's rounds measure a model file already in the page cache."""
    env = _worker_env(system)
    compile_edgeq(env)
    subprocess.run([sys.executable, "-c", "import sys, edgeq; edgeq.load(sys.argv[1])", system["ref"]],
                   check=True, env=env)


def _worker_env(system: dict) -> dict:
    env = {**os.environ, **MASK_ENV, **system.get("env", {})}
    if system.get("pythonpath"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [system["pythonpath"], env.get("PYTHONPATH")]))
    return env


def run_worker(system: dict, args) -> dict:
    env = _worker_env(system)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(system), "--dataset", args.dataset,
                           "--threads", str(args.threads)] + (["--limit", str(args.limit)] if args.limit else [])
                          + (["--long", str(args.long)] if args.long else []),
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"system": system["name"], "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(rows: list[dict], systems: list[dict]) -> dict:
    """Per system: median and spread over rounds; per edgeq system and round, its ratio to the
    fastest peer's RTF and to whisper.cpp q8_0's peak RSS and load time (same round), and for a
    bundle on the padded window (`#full`) its encoder time per window and decoder tokens/s
    against whisper.cpp q8_0's best build's with the full audio_ctx."""
    kind = {s["name"]: s["kind"] for s in systems}
    window = {s["name"]: s.get("window", "full") for s in systems}
    ok = [r for r in rows if "error" not in r]
    rounds = sorted({r["round"] for r in ok})
    per_system = {}
    for name in kind:
        mine = [r for r in ok if r["system"] == name]
        if mine:
            per_system[name] = {k: _spread([r[k] for r in mine]) for k in ("rtf", "load_s", "peak_rss_mb")}
            per_system[name]["wer_pct"] = mine[0]["wer_pct"]
    ratios = {}
    for name in (n for n, k in kind.items() if k == "edgeq"):
        r_rtf, r_rss, r_load, r_enc, r_dec, fastest = [], [], [], [], [], []
        for i in rounds:
            this = {r["system"]: r for r in ok if r["round"] == i}
            peers = [r for n, r in this.items() if kind.get(n) in PEER_KINDS]
            baseline = this.get("transformers-fp32")
            if baseline:
                # A peer that no longer transcribes (whisper.cpp with a fitted audio_ctx loops:
                # WER 78 % on speech-dev) is fast for nothing: only peers within fp32 + 0.5 count.
                peers = [r for r in peers if r["wer_pct"] <= baseline["wer_pct"] + USABLE_WER_POINTS]
            if name not in this or not peers:
                continue
            best = min(peers, key=lambda r: r["rtf"])
            fastest.append(best["system"])
            r_rtf.append(this[name]["rtf"] / best["rtf"])
            cpp = this.get("whisper.cpp-q8_0")
            if cpp:
                r_rss.append(this[name]["peak_rss_mb"] / cpp["peak_rss_mb"])
                r_load.append(this[name]["load_s"] / cpp["load_s"])
            # Phase by phase, on the same windows: an edgeq bundle given the padded 30 s window
            # against whisper.cpp's q8_0 runs with the full audio_ctx (its best build in the round).
            cpps = [r for n, r in this.items() if kind.get(n) == "whisper.cpp" and window[n] == "full"
                    and n.startswith("whisper.cpp-q8_0") and "encoder_s_per_window" in r]
            if window[name] == "full" and cpps and "encoder_s_per_window" in this[name]:
                r_enc.append(this[name]["encoder_s_per_window"] / min(r["encoder_s_per_window"] for r in cpps))
                r_dec.append(this[name]["decoder_tokens_per_s"] / max(r["decoder_tokens_per_s"] for r in cpps))
        if r_rtf:
            ratios[name] = {"rtf_vs_fastest_peer": _spread(r_rtf), "fastest_peer": fastest,
                            **({"rss_vs_whisper_cpp_q8_0": _spread(r_rss), "load_vs_whisper_cpp_q8_0": _spread(r_load)}
                               if r_rss else {}),
                            **({"encoder_s_vs_whisper_cpp_q8_0": _spread(r_enc),
                                "decoder_tokens_per_s_vs_whisper_cpp_q8_0": _spread(r_dec)} if r_enc else {})}
    return {"systems": per_system, "edgeq_ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="*", default=[])
    ap.add_argument("--model", type=Path, default=WHISPER_BASE)
    ap.add_argument("--dataset", default=str(SPEECH_DEV))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--long", type=float, metavar="MINUTES",
                    help="one recording of the dataset's clips joined, at least this long, transcribed whole")
    ap.add_argument("--recipes", default="", help="comma-separated recipes: bundles built from --model into --cache")
    ap.add_argument("--small-shape", action="store_true",
                    help="--model becomes a whisper-small-shaped checkpoint with random weights (latency, RAM)")
    ap.add_argument("--ggml", help="whisper.cpp ggml model file (q8_0), measured through pywhispercpp; "
                                   "'auto': convert --model with convert_ggml.py into --cache (q8_0 and q5_0)")
    ap.add_argument("--whisper-cpp-native", type=Path,
                    help="a folder holding pywhispercpp with ggml's CPU backend built natively "
                         "(benchmarks/whisper_cpp_native.sh makes it): also measure whisper.cpp through it")
    ap.add_argument("--edgeq-spinning", default="off",
                    help="off, decoder or off,decoder (both): edgeq's decoder threads spin or sleep (edgeq.load)")
    add_cpu_mask_option(ap, "run every system")
    ap.add_argument("--skip", default="", help="comma-separated system names to leave out")
    ap.add_argument("--out", help="results file [compare_systems.json, or compare_systems_whisper-small-random.json]")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edgeq-compare"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--resummarize", action="store_true", help="recompute the summary of --out from its rows")
    args = ap.parse_args()
    from edgeq.spec.protocols import SPINNING

    if not set(args.edgeq_spinning.split(",")) <= set(SPINNING):
        ap.error(f"--edgeq-spinning: off, decoder or off,decoder, not {args.edgeq_spinning!r}")
    if args.resummarize:
        from _common import results_path

        data = json.loads(results_path(args.out).read_text())
        data["summary"] = summarize(data["rows"], data["systems"])
        write_json(args.out, data)
        return
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.dataset, args.threads, args.limit,
                                60 * args.long if args.long else None)))
        return
    if args.long and args.small_shape:
        ap.error("--long needs real weights: random ones never end a segment, so the seek loop has nothing to follow")
    if args.small_shape:
        args.model = whisper_small_random(args.cache / "whisper-small-random")
    args.out = args.out or ("compare_systems_whisper-small-random.json" if args.small_shape else "compare_systems.json")
    systems = systems_to_run(args)
    from edgeq.bench.env import fingerprint
    from edgeq.runtime import prepared

    if args.cpu_mask:
        MASK_ENV.update(cpu_mask_env(args.cpu_mask, args.cache))
    results = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "threads": args.threads,
               "dataset": args.dataset, "model": str(args.model), "long_minutes": args.long,
               "rounds": args.rounds, "systems": systems, "rows": []}
    # Every bundle keeps its prepared graphs through the rounds (each one made once, below): with
    # more bundles than edgeq keeps copies of, every load made its copy again, cold (4 whisper-base
    # bundles: the default one loaded in 0.44 s and peaked at 300 MB, against 0.13-0.14 s and 229-234
    # MB with its copy kept). Twice: a bundle with a VNNI encoder graph has a copy per graph where
    # EDGEQ_VNNI switches between them.
    bundles = {s["ref"] for s in systems if s["kind"] == "edgeq"}
    os.environ["EDGEQ_ORT_CACHE_COPIES"] = str(max(len(bundles) * 2, prepared.MAX_COPIES))
    for system in systems:
        if system["kind"] == "edgeq":
            prepare_edgeq(system)
    for i in range(args.rounds):
        shift = i % len(systems)  # rotate: no system always runs first (cold caches) or last
        for system in systems[shift:] + systems[:shift]:
            row = {**run_worker(system, args), "round": i + 1}
            results["rows"].append(row)
            results["summary"] = summarize(results["rows"], systems)
            write_json(args.out, results)
            if "error" in row:
                print(f"{i + 1} {row['system']:34} ERROR {row['error']}", flush=True)
                continue
            size = f"{row['size_mb']:6.1f}" if row["size_mb"] else "     -"
            print(f"{i + 1} {row['system']:34} WER {row['wer_pct']:5.2f}%  RTF {row['rtf']:.3f}  load {row['load_s']:5.2f}s  "
                  f"RSS {row['peak_rss_mb']:6.0f} MB  size {size} MB  torch={row['torch_imported']}", flush=True)
    for name, r in results["summary"]["edgeq_ratios"].items():
        line = f"{name}: RTF x{r['rtf_vs_fastest_peer']['median']:.2f} of the fastest peer " \
               f"[{r['rtf_vs_fastest_peer']['min']:.2f}-{r['rtf_vs_fastest_peer']['max']:.2f}]"
        if "rss_vs_whisper_cpp_q8_0" in r:
            rss, load = r["rss_vs_whisper_cpp_q8_0"]["median"], r["load_vs_whisper_cpp_q8_0"]["median"]
            line += f", RSS x{rss:.2f} and load x{load:.2f} of whisper.cpp q8_0"
        print(line)


if __name__ == "__main__":
    main()
