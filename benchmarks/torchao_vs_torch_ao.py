"""Is torchao (PyTorch's maintained quantization library) a drop-in successor for the deprecated
torch.ao quantized tensors that the `pytorch-int8-dynamic` recipe uses? Same model, same Linears,
same decoder, same utterances, measured in alternation.

    python benchmarks/torchao_vs_torch_ao.py [--limit 8] [--rounds 3] [--threads 2]

Variants (whisper-base, tied embedding left float in all of them so that only the Linears differ):
    fp32                 the float model
    torch.ao dynamic     edgeq's pytorch-int8-dynamic Linears (nnqd.Linear, per-channel int8, x86 engine)
    torchao w8a8-dynamic torchao.quantization.Int8DynamicActivationInt8WeightConfig
    torchao w8 weights   torchao.quantization.Int8WeightOnlyConfig

Each round transcribes every utterance with every variant, one variant after the other per
utterance, so a slow phase of a shared machine hits all of them alike. Writes
benchmarks/results/torchao_vs_torch_ao.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from _common import SPEECH_DEV, WHISPER_BASE, require_shared, write_json


def variants(float_model):
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    from edgeq.builder.plan import LM_HEAD
    from edgeq.builder.torch_writer import quantize
    from edgeq.spec.recipe import apply_overrides, load_recipe

    def linears_only(module, name):  # the same layers edgeq's plan quantizes: every Linear but the tied head
        return isinstance(module, torch.nn.Linear) and name != LM_HEAD

    out = {"fp32": float_model}
    recipe = apply_overrides(load_recipe("pytorch-int8-dynamic"), ["modules.embeddings=float"])
    out["torch.ao dynamic"] = quantize(copy.deepcopy(float_model), recipe)
    for name, config in (("torchao w8a8-dynamic", Int8DynamicActivationInt8WeightConfig()),
                         ("torchao w8 weights", Int8WeightOnlyConfig())):
        model = copy.deepcopy(float_model)
        quantize_(model, config, filter_fn=linears_only)
        out[name] = model.eval()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    require_shared()

    import json

    import torch
    import torchao

    from edgeq.bench.env import fingerprint
    from edgeq.builder.source import load_float_model, resolve_source
    from edgeq.data.datasets import open_dataset
    from edgeq.data.wer import corpus_wer, word_errors
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.decoding import DecodeSettings
    from edgeq.runtime.tokenizer import WhisperTokenizer
    from edgeq.runtime.transcriber import Transcriber
    from edgeq.torch_runtime import TorchEngine

    torch.set_num_threads(args.threads)
    source = resolve_source(str(WHISPER_BASE))
    settings = DecodeSettings.from_configs(json.loads((source.path / "generation_config.json").read_text()),
                                           source.config, "en")
    tokenizer = WhisperTokenizer(source.path / "tokenizer.json")
    models = variants(load_float_model(source))
    transcribers = {n: Transcriber(TorchEngine(m), tokenizer, settings) for n, m in models.items()}
    utterances = open_dataset(SPEECH_DEV / "LibriSpeech", limit=args.limit).utterances
    audio = {u.id: load_audio(u.audio) for u in utterances}
    for t in transcribers.values():  # warm-up: lazy init, packing, allocator growth
        t.transcribe(audio[utterances[0].id])
    seconds = {n: [] for n in transcribers}
    texts = {n: {} for n in transcribers}
    for _ in range(args.rounds):
        for u in utterances:
            for name, t in transcribers.items():
                start = time.perf_counter()
                texts[name][u.id] = t.transcribe(audio[u.id]).text
                seconds[name].append(time.perf_counter() - start)
    audio_s = sum(len(a) for a in audio.values()) / 16000
    rows = []
    for name in transcribers:
        per_round = [sum(seconds[name][r * len(utterances):(r + 1) * len(utterances)]) for r in range(args.rounds)]
        wer = corpus_wer([word_errors(u.reference, texts[name][u.id]) for u in utterances])
        rows.append({"variant": name, "wer_pct": 100 * wer, "rtf_median": statistics.median(per_round) / audio_s,
                     "rtf_rounds": [s / audio_s for s in per_round]})
    base = next(r for r in rows if r["variant"] == "torch.ao dynamic")
    for r in rows:
        r["rtf_vs_torch_ao"] = r["rtf_median"] / base["rtf_median"]
        print(f"{r['variant']:22} WER {r['wer_pct']:5.2f} %  RTF {r['rtf_median']:.3f} "
              f"({r['rtf_vs_torch_ao']:.2f}x torch.ao)  rounds {', '.join(f'{x:.3f}' for x in r['rtf_rounds'])}")
    path = write_json("torchao_vs_torch_ao.json", {
        "utterances": len(utterances), "audio_s": audio_s, "rounds": args.rounds, "threads": args.threads,
        "torchao": torchao.__version__, "rows": rows, "env": fingerprint()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
