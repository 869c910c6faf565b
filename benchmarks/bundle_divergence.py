"""How far a quantized bundle's next-token distributions are from the float weights', token by token.

    python benchmarks/bundle_divergence.py --bundles B [B ...] [--reference FLOAT_BUNDLE]
                                           [--datasets SPEC,...] [--prompt one-call|token-by-token]
                                           [--cpu-mask avx2|vnni] [--out FILE]

Why: a WER difference of a few tenths of a point is a handful of words on speech-dev, and which
words flip is close to chance (benchmarks/longform_wer.py). This measures the damage itself, with
far less noise: the float bundle (--reference, default the onnx-fp32 bundle of whisper-base)
decodes each clip greedily; every bundle is then fed the same tokens (teacher forcing) and at each
step the KL divergence of its distribution from the float one's, and whether its most likely token
differs ("flips"), are counted. A bundle with half the KL of another damages the decoding half as
much, whichever few words it happens to change.

To find where a recipe loses accuracy, build it with one part left float and compare, e.g.
    edgeq build -r onnx-int8-dynamic -m ../shared/models/whisper-base -o /tmp/x-fc2 \\
        --set 'modules.exclude=["model.encoder.layers.*.fc2"]'
The clips are padded to 30 s windows, prompted in English without timestamps; up to 224 tokens.
The prompt is fed in one call, as edgeq's decoder feeds it (--prompt token-by-token: a token a
call). Results are written after each bundle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import SPEECH_DEV, WHISPER_BASE, add_cpu_mask_option, require_shared, run_masked, write_json

MAX_TOKENS = 224


def features(datasets: list[str]) -> list[tuple[str, np.ndarray]]:
    from edgeq.data.datasets import open_dataset
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import N_SAMPLES, log_mel_spectrogram

    return [(u.id, log_mel_spectrogram(load_audio(u.audio)[:N_SAMPLES])) for spec in datasets
            for u in open_dataset(spec).utterances]


def logits_along(transcriber, feats: np.ndarray, path: list[int] | None,
                 prompt: str = "one-call") -> tuple[list[int], np.ndarray]:
    """The logits at each step of `path` (the prompt's last position first), or of this bundle's own
    greedy decoding when `path` is None: (tokens, [steps, vocabulary]). `prompt`: "one-call" feeds
    the prompt in one call, as edgeq's decoder does; "token-by-token" a token a call."""
    engine, settings = transcriber.engine, transcriber.settings
    state = engine.start(engine.encode(feats))
    tokens = settings.prompt("en", timestamps=False)
    for call in ([[t] for t in tokens] if prompt == "token-by-token" else [tokens]):
        logits, state = engine.step(state, call)
    rows = [logits.reshape(-1, logits.shape[-1])[-1]]
    tokens = []
    for i in range(MAX_TOKENS if path is None else len(path)):
        token = int(np.argmax(rows[-1])) if path is None else path[i]
        if path is None and token == settings.eot:
            break
        tokens.append(token)
        logits, state = engine.step(state, [token])
        rows.append(logits.reshape(-1, logits.shape[-1])[-1])
    return tokens, np.stack(rows)


def divergence(reference: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step: KL(reference || other) of the softmaxed logits, and whether the argmax differs."""
    p, q = _log_softmax_rows(reference), _log_softmax_rows(other)
    kl = (np.exp(p) * (p - q)).sum(-1)
    return kl, reference.argmax(-1) != other.argmax(-1)


def _log_softmax_rows(x: np.ndarray) -> np.ndarray:
    # each step on its own (decoding.log_softmax normalizes one vector: over a matrix it would
    # normalize all steps together)
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="+", required=True)
    ap.add_argument("--reference", help="float bundle [the onnx-fp32 bundle of whisper-base, built into --cache]")
    ap.add_argument("--datasets", default=str(SPEECH_DEV), help="comma-separated dataset specs [speech-dev: its 24 clips]")
    ap.add_argument("--prompt", choices=("one-call", "token-by-token"), default="one-call",
                    help="feed the prompt in one call, as edgeq's decoder does, or a token a call (which "
                         "moves a DynamicQuantizeMatMul decoder's numbers: docs/performance.md)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edgeq-compare"))
    ap.add_argument("--out", help="results file [bundle_divergence.json, or bundle_divergence_cpuid_<mask>.json]")
    add_cpu_mask_option(ap)
    args = ap.parse_args()
    require_shared()
    run_masked(args.cpu_mask)

    from compare_systems import ensure_bundle
    from longform_wer import check_bundles

    import edgeq
    from edgeq.bench.env import fingerprint
    from edgeq.errors import EdgeqError

    reference = Path(args.reference) if args.reference else ensure_bundle(WHISPER_BASE, "onnx-fp32", args.cache)
    check_bundles([reference, *args.bundles])
    clips = features(args.datasets.split(","))
    t = edgeq.load(reference, threads=args.threads, language="en")
    ref = [logits_along(t, f, None) for _, f in clips]
    del t
    out_name = args.out or (f"bundle_divergence_cpuid_{args.cpu_mask}.json" if args.cpu_mask
                            else "bundle_divergence.json")
    data = {"env": {**fingerprint(), "cpuid_mask": args.cpu_mask}, "reference": str(reference),
            "datasets": args.datasets.split(","), "clips": len(clips), "steps": sum(len(r[1]) for r in ref),
            "prompt": args.prompt,
            "bundles": {}}
    for path in args.bundles:
        try:
            t = edgeq.load(path, threads=args.threads, language="en")
        except EdgeqError as e:  # e.g. a file changed since its manifest: what was measured is written
            raise SystemExit(f"error: {e}") from None
        kls, flips = [], []
        for (tokens, expected), (_, f) in zip(ref, clips):
            got = logits_along(t, f, tokens, args.prompt)[1]
            if got.shape != expected.shape:
                raise SystemExit(f"error: {path} has {got.shape[-1]} tokens, the reference {expected.shape[-1]}: "
                                 "compare bundles of the same model (--reference)")
            kl, flip = divergence(expected, got)
            kls.append(kl)
            flips.append(flip)
        kl, flip = np.concatenate(kls), np.concatenate(flips)
        recipe = t.bundle.manifest.recipe
        data["bundles"][Path(path).name] = {
            "path": str(path), "recipe": recipe.name,
            "size_mb": round(sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file()) / 1e6, 1),
            "mean_kl": float(kl.mean()), "p99_kl": float(np.quantile(kl, 0.99)), "flips": int(flip.sum()),
            "flip_pct": 100 * float(flip.mean()), "clips_with_flips": int(sum(bool(f.any()) for f in flips))}
        write_json(out_name, data)
        b = data["bundles"][Path(path).name]
        print(f"{Path(path).name:40s} mean KL {b['mean_kl']:.5f}  flips {b['flips']} of {len(flip)} "
              f"({b['flip_pct']:.2f} %)", flush=True)
        del t
    print(f"wrote {out_name}")


if __name__ == "__main__":
    main()
