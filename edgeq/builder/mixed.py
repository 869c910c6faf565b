"""Mixed precision: per-module bit-widths chosen from a sensitivity scan on calibration audio.

`edgeq build --recipe auto --max-size MB` means "fit in N MB, lose the least":
  1. scan: each Linear alone is quantized (round-to-nearest, groups of GROUP) at each candidate
     bit-width and the KL divergence of the model's next-token distribution from the float model's
     is measured, teacher-forced on the float model's own transcripts of the calibration audio;
  2. allocate: from every module at 8 bits, lower one module one step at a time, always the step
     that costs the least KL per byte saved, until the estimated bundle fits;
  3. build: the result is an ordinary HQQ recipe with one override per module (replayable with
     `edgeq build --recipe recipe.toml`); if the real bundle overshoots, the budget shrinks by
     the overshoot and it is built again.
Summing per-module KL assumes the errors add up, the usual first-order assumption of
sensitivity-based mixed precision (HAWQ, and HQQ's own mixed configs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeq.errors import EdgeqError, RecipeError
from edgeq.spec.recipe import Recipe, load_recipe, recipe_from_dict

log = logging.getLogger(__name__)

BASE_RECIPE = "hqq-int4-g64"
CANDIDATE_BITS = (8, 4, 3, 2)
GROUP = 64
# HQQ keeps a scale and a zero point per group in the compute dtype (float32 in these recipes).
META_BYTES_PER_GROUP = 2 * 4
MAX_BUILDS = 3


@dataclass(frozen=True)
class Scan:
    kl: dict[str, dict[int, float]]  # module -> bits -> KL divergence from the float model
    shapes: dict[str, tuple[int, int]]  # module -> (out_features, in_features)


def fake_quantize(weight: torch.Tensor, bits: int, group: int = GROUP) -> torch.Tensor:
    """Asymmetric min-max round-to-nearest per group of `group` inputs (HQQ's starting point)."""
    out, inp = weight.shape
    w = weight.reshape(out, inp // group, group)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = (hi - lo).clamp_min(1e-8) / (2**bits - 1)
    q = torch.round((w - lo) / scale).clamp(0, 2**bits - 1)
    return (q * scale + lo).reshape(out, inp)


def module_bytes(shape: tuple[int, int], bits: int, group: int = GROUP) -> int:
    out, inp = shape
    return out * inp * bits // 8 + out * (inp // group) * META_BYTES_PER_GROUP


@torch.no_grad()
def _log_probs(model, features: torch.Tensor, tokens: torch.Tensor, encoded: torch.Tensor | None = None):
    enc = model.model.encoder(features).last_hidden_state if encoded is None else encoded
    hidden = model.model.decoder(input_ids=tokens, encoder_hidden_states=enc).last_hidden_state
    return torch.log_softmax(model.proj_out(hidden).float(), -1)


def scan(model, features: list, transcripts: list[list[int]], names: list[str], progress=None) -> Scan:
    """KL(float || one module quantized) for every module in `names` and every candidate below 8 bits."""
    feats = [torch.from_numpy(f)[None] for f in features]
    toks = [torch.tensor([t]) for t in transcripts]
    with torch.no_grad():
        encoded = [model.model.encoder(f).last_hidden_state for f in feats]
    reference = [_log_probs(model, f, t, e) for f, t, e in zip(feats, toks, encoded)]
    kl: dict[str, dict[int, float]] = {}
    shapes = {}
    for i, name in enumerate(names):
        if progress:
            progress("sensitivity scan", i, len(names))
        linear = model.get_submodule(name)
        shapes[name] = tuple(linear.weight.shape)
        original = linear.weight.data.clone()
        kl[name] = {8: 0.0}
        for bits in CANDIDATE_BITS[1:]:
            linear.weight.data = fake_quantize(original, bits)
            total = 0.0
            for f, t, e, ref in zip(feats, toks, encoded, reference):
                # A decoder module leaves the encoder's output alone: reuse it (6x fewer FLOPs).
                lp = _log_probs(model, f, t, e if name.startswith("model.decoder.") else None)
                total += float((ref.exp() * (ref - lp)).sum(-1).mean())
            kl[name][bits] = total / len(feats)
        linear.weight.data = original
    return Scan(kl, shapes)


def allocate(result: Scan, budget_bytes: int) -> dict[str, int]:
    """Bits per module whose summed size fits `budget_bytes`, at the least summed KL (greedy)."""
    bits = {n: CANDIDATE_BITS[0] for n in result.kl}
    used = sum(module_bytes(result.shapes[n], b) for n, b in bits.items())
    while used > budget_bytes:
        best = None
        for n, b in bits.items():
            i = CANDIDATE_BITS.index(b)
            if i + 1 == len(CANDIDATE_BITS):
                continue
            lower = CANDIDATE_BITS[i + 1]
            saved = module_bytes(result.shapes[n], b) - module_bytes(result.shapes[n], lower)
            cost = (result.kl[n][lower] - result.kl[n][b]) / saved
            if best is None or cost < best[0]:
                best = (cost, n, lower, saved)
        if best is None:
            raise EdgeqError(f"even every Linear at {CANDIDATE_BITS[-1]} bits needs {used / 1e6:.1f} MB of "
                             f"weights, over the {budget_bytes / 1e6:.1f} MB left for them: raise --max-size")
        _, n, lower, saved = best
        bits[n] = lower
        used -= saved
    return bits


def auto_recipe(bits: dict[str, int], max_size_mb: float, base: Recipe | None = None) -> Recipe:
    """An ordinary recipe: the base's weights for the commonest width, one override per other module."""
    base = base or load_recipe(BASE_RECIPE)
    counts = {b: list(bits.values()).count(b) for b in set(bits.values())}
    common = max(counts, key=lambda b: (counts[b], b))
    data = base.to_dict()
    data["name"] = f"auto-{max_size_mb:g}MB"
    data["description"] = ("mixed precision from a sensitivity scan: " +
                           ", ".join(f"{counts[b]} Linear at {b} bits" for b in sorted(counts, reverse=True)))
    data["weights"] = {**data["weights"], "format": f"int{common}", "granularity": "group", "group_size": GROUP}
    data["modules"]["overrides"] = {n: {"format": f"int{b}", "granularity": "group", "group_size": GROUP}
                                    for n, b in sorted(bits.items()) if b != common}
    return recipe_from_dict(data, "auto recipe")


def _fixed_bytes(model, names: list[str], source_path: Path, recipe: Recipe) -> int:
    """Everything in the bundle that is not a planned Linear: float tensors, the embedding, files."""
    planned = {f"{n}.weight" for n in names} | {f"{n}.bias" for n in names}
    total, seen = 0, set()
    for pname, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.data_ptr() in seen or pname in planned:
            continue
        seen.add(p.data_ptr())
        if pname.endswith("embed_tokens.weight") and recipe.modules.embeddings == "int8":
            total += p.numel() + p.shape[0] * 4  # int8 rows and a float32 scale per row
        else:
            total += p.numel() * p.element_size()
    total += sum(p.stat().st_size for p in source_path.iterdir() if p.suffix in (".json", ".txt"))
    return total


def build_auto(model: str, max_size_mb: float, calibration: str, out=None, language: str | None = None,
               samples: int = 4, force: bool = False, progress=None):
    """Scan, allocate and build the smallest-loss HQQ mixed-precision bundle of at most `max_size_mb`."""
    from edgeq.builder.calibration import prepare_calibration
    from edgeq.builder.pipeline import _decode_settings, build
    from edgeq.builder.plan import linear_names
    from edgeq.builder.source import load_float_model, resolve_source
    from edgeq.runtime.decoding import STUDY_OPTIONS, WindowDecoder
    from edgeq.torch_runtime import TorchEngine

    if not calibration:
        raise RecipeError("--recipe auto scans layer sensitivity on real audio: pass --calibration DATASET")
    source = resolve_source(model)
    float_model = load_float_model(source).eval()
    names = [n for n in linear_names(float_model) if float_model.get_submodule(n).in_features % GROUP == 0]
    base = load_recipe(BASE_RECIPE)
    fixed = _fixed_bytes(float_model, names, source.path, base)
    smallest = fixed + sum(module_bytes(tuple(float_model.get_submodule(n).weight.shape), CANDIDATE_BITS[-1])
                           for n in names)
    if smallest > max_size_mb * 1e6:  # fail before the scan, which takes minutes on whisper-base
        raise EdgeqError(f"--max-size {max_size_mb:g}: {model} needs at least {smallest / 1e6:.1f} MB with every "
                         f"Linear at {CANDIDATE_BITS[-1]} bits ({fixed / 1e6:.1f} MB of it embeddings, float "
                         "tensors and tokenizer); raise --max-size")
    settings = _decode_settings(source, language)
    calib = prepare_calibration(calibration, samples, settings, int(source.config.get("num_mel_bins", 80)), progress)
    engine, decoder = TorchEngine(float_model), WindowDecoder(settings, STUDY_OPTIONS)
    transcripts = []
    for f in calib.features:
        r = decoder.decode(engine, f)
        transcripts.append([*settings.prompt(r.language), *r.tokens, settings.eot])
    result = scan(float_model, calib.features, transcripts, names, progress)
    target = int(max_size_mb * 1e6)
    budget = target - fixed
    for attempt in range(MAX_BUILDS):
        bits = allocate(result, budget)
        recipe = auto_recipe(bits, max_size_mb, base)
        bundle = build(recipe, model=model, out=out, language=language, force=force or attempt > 0,
                       progress=progress)
        size = bundle.manifest.size.bundle_bytes
        log.info("auto: %s is %.2f MB (budget %.2f MB)", bundle.path, size / 1e6, max_size_mb)
        if size <= target:
            return bundle, result
        budget -= int((size - target) * 1.05)
    raise EdgeqError(f"--max-size {max_size_mb:g}: the auto bundle stayed at {size / 1e6:.1f} MB after "
                     f"{MAX_BUILDS} builds; raise --max-size")
