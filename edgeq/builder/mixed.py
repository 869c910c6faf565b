"""Mixed precision: per-module weight formats chosen from a sensitivity scan on calibration audio.

`edgeq build --recipe auto --max-size MB` means "fit in N MB, lose the least":
  1. scan: each Linear alone, and the tied embedding / LM-head table, is fake-quantized the way
     ONNX Runtime's MatMulNBits stores it (round-to-nearest in blocks along the input, zero points
     below 8 bits) at each candidate (bits, block), and the KL divergence of the next-token
     distribution from the float model's is measured, teacher-forced on the float model's own
     transcripts of the calibration audio;
  2. allocate: from every module at its largest choice, move one module at a time to a smaller
     choice, always the move that costs the least KL per byte saved, until the estimated bundle
     fits (summing per-module KL assumes the errors add up, the first-order assumption of
     sensitivity-based mixed precision: HAWQ, HQQ's mixed configs);
  3. build: an ordinary onnx weight-only recipe with one override per module (replayable with
     `edgeq build --recipe recipe.toml`); the size model counts tensors and recipe.toml, the graphs'
     own structure is measured by the first build and, if that overshot, budgeted in a second.

Why ONNX and not HQQ (the first version): whisper-base as an HQQ bundle carries 38.5 MB that no
Linear choice can touch (the tied table as int8 rows 26.8 MB, float32 convolutions / positional
tables 8 MB, tokenizer 3.9 MB) and HQQ's float32 scale + zero per group of 64 costs 1 bit per
weight on top of the codes. At --max-size 60 that left 21.5 MB for 44 M Linear weights, below
all-int4 (27.5 MB), so the allocation had to put about half of them at 2-3 bits: WER 19.2 % on
speech-dev against 4.52 % for hqq-int4-g64 (66 MB). ONNX stores the table at 4 bits (14.1 MB at
blocks of 128), its int4 blocks cost 0.07-0.25 bit of metadata per weight, and float16 storage
halves the float tensors left; so the same bytes buy 4 bits nearly everywhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from math import ceil
from pathlib import Path

import numpy as np
import torch

from edgeq.errors import EdgeqError, RecipeError
from edgeq.runtime.writers import write_atomic
from edgeq.spec.recipe import FORMAT_BITS, Recipe, load_recipe, recipe_from_dict
from edgeq.util import cache_dir

log = logging.getLogger(__name__)

BASE_RECIPE = "onnx-int4"
# (format, block) choices, largest first. 8-bit is symmetric (no zero points), as onnx.py stores
# it; its KL is not scanned (0.0): on whisper-base int8 MatMulNBits gave fp32's transcripts.
# int4/64 is left out of the Linears' choices: the encoder's part of the scan is most of its time.
# Last resorts (LAST_RESORT), taken only when int8/int4-128 cannot fit: blocks of 256, then 2 bits.
# whisper-base / speech-dev (177 words, fp32 WER 2.82 %): 45 MB is below all-int4/128 (46.4 MB);
# 17-26 Linears at int2 chosen from the top read WER 7.91-8.47 %, every module at int4/256 with
# 6 Linears at int2 3.39 %. Above that, bundles with or without int4/256 read within 2 words.
LINEAR_CHOICES = (("int8", 128), ("int4", 32), ("int4", 128), ("int4", 256), ("int2", 32))
# The tied table is symmetric 4/8-bit blocks (onnx_quant.quantize_tied_table); its block is the
# recipe's modules.embeddings_group_size.
TABLE_CHOICES = (("int8", 128), ("int4", 32), ("int4", 64), ("int4", 128), ("int4", 256))


def last_resort(choice: "Choice") -> bool:
    return FORMAT_BITS[choice[0]] < 4 or choice[1] > 128
TABLE = "proj_out"  # the tied embedding / LM head in the scan and allocation
FLOAT_BYTES = 4
MAX_BUILDS = 3
# A module's tensors under onnx's 1 KB external-data threshold are stored inline in the graph, those
# above it carry a location/offset/length entry (~50 bytes); which side a tensor falls on, and the
# offsets' digits, change with its format, so the graph's own bytes move by up to that per module.
STRUCTURE_SLACK_PER_MODULE = 64

Choice = tuple[str, int]


@dataclass(frozen=True)
class Scan:
    kl: dict[str, dict[Choice, float]]  # module -> (format, block) -> KL divergence from the float model
    shapes: dict[str, tuple[int, int]]  # module -> (out_features, in_features); TABLE: (vocab, d_model)

    def to_dict(self) -> dict:
        return {"kl": {n: {f"{f}/{b}": v for (f, b), v in c.items()} for n, c in self.kl.items()},
                "shapes": {n: list(s) for n, s in self.shapes.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "Scan":
        def choice(key: str) -> Choice:
            f, b = key.split("/")
            return f, int(b)

        return cls({n: {choice(k): v for k, v in c.items()} for n, c in data["kl"].items()},
                   {n: tuple(s) for n, s in data["shapes"].items()})


def fake_quantize(weight: torch.Tensor, bits: int, block: int, symmetric: bool = False) -> torch.Tensor:
    """Round-to-nearest in blocks of `block` inputs, as MatMulNBits stores [out, in] weights.

    Asymmetric: min-max range per block and a zero point (onnxruntime's quantize_matmul_Nbits;
    on a random 64x256 matrix this matches ORT's own output to its int8-activation noise).
    Symmetric: the signed extreme maps to -2^(bits-1) (the tied table, 8-bit MatMulNBits).
    """
    out, inp = weight.shape
    # MatMulNBits pads the last block with zeros, which change no block's range.
    padded = torch.nn.functional.pad(weight.float(), (0, -inp % block))
    w = padded.reshape(out, -1, block)
    levels = 2**bits - 1
    if symmetric:
        hi, lo = w.amax(-1, keepdim=True), w.amin(-1, keepdim=True)
        extreme = torch.where(hi.abs() > lo.abs(), hi, lo)
        half = 2 ** (bits - 1)
        scale = extreme / -half
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round(w / scale).clamp(-half, half - 1)
        return (q * scale).reshape(out, -1)[:, :inp]
    lo, hi = w.amin(-1, keepdim=True).clamp(max=0), w.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo).clamp_min(1e-8) / levels
    zero = torch.round(-lo / scale).clamp(0, levels)
    q = (torch.round(w / scale) + zero).clamp(0, levels)
    return ((q - zero) * scale).reshape(out, -1)[:, :inp]


def module_bytes(shape: tuple[int, int], choice: Choice) -> int:
    """Bytes MatMulNBits stores for an [out, in] Linear: packed codes, float32 scales, and packed
    zero points below 8 bits (onnx.py quantizes 8-bit symmetrically)."""
    out, inp = shape
    bits, block = FORMAT_BITS[choice[0]], choice[1]
    blocks = ceil(inp / block)
    zero_points = out * ceil(blocks * bits / 8) if bits != 8 else 0
    return out * blocks * block * bits // 8 + out * blocks * FLOAT_BYTES + zero_points


def table_bytes(shape: tuple[int, int], choice: Choice) -> int:
    """Bytes of the tied table: codes and one float32 scale per block, shared by both users."""
    vocab, dim = shape
    return vocab * dim * FORMAT_BITS[choice[0]] // 8 + vocab * (dim // choice[1]) * FLOAT_BYTES


def size_of(name: str, shape: tuple[int, int], choice: Choice) -> int:
    return table_bytes(shape, choice) if name == TABLE else module_bytes(shape, choice)


def choices_of(name: str) -> tuple[Choice, ...]:
    return TABLE_CHOICES if name == TABLE else LINEAR_CHOICES


@torch.no_grad()
def _log_probs(model, tokens: torch.Tensor, encoded: torch.Tensor):
    hidden = model.model.decoder(input_ids=tokens, encoder_hidden_states=encoded).last_hidden_state
    return torch.log_softmax(model.proj_out(hidden).float(), -1)


class _EncoderSuffix:
    """The encoder's output recomputed from the input of one layer on: a module of encoder layer L
    changes nothing before it, so the scan caches each layer's input (half the scan's encoder FLOPs
    on whisper-base). Checked once against the full forward; if a transformers version changes
    the layer's call, the scan falls back to the full encoder."""

    def __init__(self, model, feats: torch.Tensor):
        self.model, self.feats = model, feats
        encoder = model.model.encoder
        self.inputs: list[torch.Tensor] = []
        hooks = [layer.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0]))
                 for layer in encoder.layers]
        try:
            self.full = encoder(feats).last_hidden_state
        finally:
            for h in hooks:
                h.remove()
        self.ok = len(self.inputs) == len(encoder.layers) and torch.allclose(self.run(0), self.full, atol=1e-5)

    def run(self, start: int) -> torch.Tensor:
        encoder = self.model.model.encoder
        if start < 0 or not getattr(self, "ok", True):
            return encoder(self.feats).last_hidden_state
        h = self.inputs[start]
        for layer in encoder.layers[start:]:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        return encoder.layer_norm(h)


def _encoder_layer(name: str) -> int:
    """model.encoder.layers.3.fc1 -> 3; -1 for anything else in the encoder."""
    parts = name.split(".")
    return int(parts[3]) if len(parts) > 3 and parts[2] == "layers" and parts[3].isdigit() else -1


@torch.no_grad()
def scan(model, features: list, transcripts: list[list[int]], names: list[str], progress=None) -> Scan:
    """KL(float || one module fake-quantized) for each module in `names` (and TABLE) and each choice."""
    feats = torch.stack([torch.from_numpy(f) for f in features])
    toks = [torch.tensor([t]) for t in transcripts]
    suffix = _EncoderSuffix(model, feats)
    encoded = suffix.full

    def kl_now(enc) -> float:
        total = 0.0
        for i, (t, ref) in enumerate(zip(toks, reference)):
            lp = _log_probs(model, t, enc[i:i + 1])
            total += float((ref.exp() * (ref - lp)).sum(-1).mean())
        return total / len(toks)

    reference = [_log_probs(model, t, encoded[i:i + 1]) for i, t in enumerate(toks)]
    kl: dict[str, dict[Choice, float]] = {}
    shapes = {}
    every = [*names, TABLE]
    for i, name in enumerate(every):
        if progress:
            progress("sensitivity scan", i, len(every))
        # proj_out's weight is the token embedding's (tied): changing it changes both users.
        weight = model.get_submodule(name).weight
        shapes[name] = tuple(weight.shape)
        original = weight.data.clone()
        kl[name] = {}
        for choice in choices_of(name):
            bits, block = FORMAT_BITS[choice[0]], choice[1]
            if shapes[name][1] % block:  # recipes need blocks that divide the inputs (builder.plan)
                continue
            if bits == 8:
                kl[name][choice] = 0.0
                continue
            weight.data = fake_quantize(original, bits, block, symmetric=name == TABLE)
            # A decoder module leaves the encoder's output alone: reuse it.
            in_encoder = name.startswith("model.encoder.")
            kl[name][choice] = kl_now(suffix.run(_encoder_layer(name)) if in_encoder else encoded)
        weight.data = original
    return Scan(kl, shapes)


def allocate(result: Scan, budget_bytes: int) -> dict[str, Choice]:
    """allocate_with() without the last-resort formats when that fits, else with them.

    Summed KL undercounts what 2-bit layers do to decoding: at --max-size 45 on whisper-base,
    17 Linears at int2 picked from the top (summed KL 0.05) read WER 7.91 %; so the fallback
    starts from every module at its smallest 4-bit choice and buys only the bytes still missing
    with 2 bits (6 Linears: WER 3.39 %).
    """
    try:
        return allocate_with(result, budget_bytes, allowed=lambda c: not last_resort(c))
    except EdgeqError:
        smallest = {n: min((c for c in choices_of(n) if c in result.kl[n] and FORMAT_BITS[c[0]] >= 4),
                           key=lambda c: size_of(n, result.shapes[n], c)) for n in result.kl}
        return allocate_with(result, budget_bytes, start=smallest)


def allocate_with(result: Scan, budget_bytes: int, allowed=lambda c: True,
                  start: dict[str, Choice] | None = None) -> dict[str, Choice]:
    """A choice per module whose summed size fits `budget_bytes`, at the least summed KL (greedy:
    each step takes the move to a smaller choice with the least KL added per byte saved; then the
    bytes left are spent back, most KL removed per byte first), among the choices `allowed`."""

    def choices(n: str) -> tuple[Choice, ...]:
        return tuple(c for c in choices_of(n) if allowed(c) and c in result.kl[n])

    chosen = dict(start) if start else {n: choices(n)[0] for n in result.kl}
    size = {n: size_of(n, result.shapes[n], c) for n, c in chosen.items()}
    used = sum(size.values())
    while used > budget_bytes:
        best = None
        for n, current in chosen.items():
            for choice in choices(n):
                saved = size[n] - size_of(n, result.shapes[n], choice)
                if saved <= 0:
                    continue
                # KL measured on a few utterances is noisy: a smaller choice never counts as better.
                cost = max(result.kl[n][choice] - result.kl[n][current], 0.0) / saved
                if best is None or cost < best[0]:
                    best = (cost, n, choice, saved)
        if best is None:
            raise EdgeqError(f"even every module at its smallest format needs {used / 1e6:.1f} MB, over the "
                             f"{budget_bytes / 1e6:.1f} MB left for them: raise --max-size")
        _, n, choice, saved = best
        chosen[n] = choice
        size[n] -= saved
        used -= saved
    # The last step down can free far more than needed (the table int8 -> int4 frees 12 MB on
    # whisper-base): spend what is left on the moves up that remove the most KL per byte.
    while True:
        best = None
        for n, current in chosen.items():
            for choice in choices(n):
                extra = size_of(n, result.shapes[n], choice) - size[n]
                gain = result.kl[n][current] - result.kl[n][choice]
                if extra <= 0 or gain <= 0 or used + extra > budget_bytes:
                    continue
                if best is None or gain / extra > best[0]:
                    best = (gain / extra, n, choice, extra)
        if best is None:
            return chosen
        _, n, choice, extra = best
        chosen[n] = choice
        size[n] += extra
        used += extra


def auto_recipe(chosen: dict[str, Choice], max_size_mb: float, base: Recipe | None = None) -> Recipe:
    """An ordinary onnx recipe: the table's choice sets modules.embeddings and its block, the
    commonest Linear choice the default weights, and one override per other Linear."""
    base = base or load_recipe(BASE_RECIPE)
    linears = {n: c for n, c in chosen.items() if n != TABLE}
    counts: dict[Choice, int] = {}
    for c in linears.values():
        counts[c] = counts.get(c, 0) + 1
    common = max(counts, key=lambda c: (counts[c], FORMAT_BITS[c[0]], -c[1]))
    table = chosen.get(TABLE, (f"int{FORMAT_BITS[base.modules.embeddings]}", base.table_group_size))
    data = base.to_dict()
    data["name"] = f"auto-{max_size_mb:g}MB"
    data["description"] = (
        f"mixed precision from a sensitivity scan: table {table[0]}/{table[1]}, " +
        ", ".join(f"{counts[c]} Linear {c[0]}/{c[1]}" for c in sorted(counts, key=lambda c: (-FORMAT_BITS[c[0]], c[1]))))
    data["weights"] = {**data["weights"], "format": common[0], "granularity": "group", "group_size": common[1]}
    data["modules"] = {**data["modules"], "embeddings": table[0], "embeddings_group_size": table[1]}
    data["modules"]["overrides"] = {n: {"format": c[0], "granularity": "group", "group_size": c[1]}
                                    for n, c in sorted(linears.items()) if c != common}
    data["options"] = {**data["options"], "float16_storage": True}
    return recipe_from_dict(data, "auto recipe")


def fixed_bytes(model, names: list[str], source_path: Path) -> int:
    """Everything in an auto bundle that the allocation does not choose: the float tensors left
    (float16 when large, as options.float16_storage stores them), Linear biases, the files."""
    from edgeq.backends.onnx import FLOAT16_STORAGE_MIN

    planned = {f"{n}.weight" for n in names}
    # The table is tied: named_parameters() lists it once, as model.decoder.embed_tokens.weight.
    total, seen = 0, {model.get_submodule(TABLE).weight.data_ptr()}
    for pname, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.data_ptr() in seen or pname in planned:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * (2 if p.numel() >= FLOAT16_STORAGE_MIN else 4)
    total += sum(p.stat().st_size for p in source_path.iterdir() if p.suffix in (".json", ".txt"))
    return total


def scan_model(model: str, calibration: str, language: str | None = None, samples: int = 4, progress=None):
    """The float model, its Linear names, and the sensitivity scan on `samples` utterances of
    `calibration` (minutes on whisper-base: reuse it across budgets with build_auto(scanned=...))."""
    from edgeq.builder.plan import linear_names
    from edgeq.builder.source import load_float_model, resolve_source

    source = resolve_source(model)
    float_model = load_float_model(source).eval()
    return _scan_source(source, float_model, linear_names(float_model), calibration, language, samples, progress)


def _scan_source(source, float_model, names, calibration, language, samples, progress):
    from edgeq.builder.calibration import prepare_calibration
    from edgeq.builder.pipeline import _decode_settings
    from edgeq.runtime.decoding import STUDY_OPTIONS, WindowDecoder
    from edgeq.torch_runtime import TorchEngine

    if not calibration:
        raise RecipeError("--recipe auto scans layer sensitivity on real audio: pass --calibration DATASET")
    settings = _decode_settings(source, language)
    calib = prepare_calibration(calibration, samples, settings, int(source.config.get("num_mel_bins", 80)), progress)
    cached = _scan_cache(source, calib.features, language)
    if cached.is_file():
        log.info("auto: sensitivity scan read from %s", cached)
        return source, float_model, names, Scan.from_dict(json.loads(cached.read_text()))
    engine, decoder = TorchEngine(float_model), WindowDecoder(settings, STUDY_OPTIONS)
    transcripts = []
    for f in calib.features:
        r = decoder.decode(engine, f)
        transcripts.append([*settings.prompt(r.language), *r.tokens, settings.eot])
    result = scan(float_model, calib.features, transcripts, names, progress)
    write_atomic(cached, json.dumps(result.to_dict()))
    return source, float_model, names, result


def _scan_cache(source, features, language: str | None) -> Path:
    """Where the scan of these weights on these calibration features is kept: it takes ~20 minutes
    on whisper-base (2 cores) and does not depend on the budget, so trying another --max-size
    reuses it. Keyed by everything the KL values depend on."""
    import hashlib

    from edgeq import __version__

    h = hashlib.sha256(source.weights_sha256().encode())
    for f in features:
        h.update(np.ascontiguousarray(f, dtype=np.float32).tobytes())
    h.update(repr((language, LINEAR_CHOICES, TABLE_CHOICES, __version__)).encode())
    return cache_dir() / "scans" / f"{h.hexdigest()[:32]}.json"


def smallest_bytes(result: Scan) -> int:
    return sum(min(size_of(n, result.shapes[n], c) for c in choices_of(n)) for n in result.kl)


def recipe_bytes(recipe: Recipe) -> int:
    """The recipe's bytes in the bundle's size: recipe.toml (manifest.json, which holds a copy, is
    outside bundle_bytes). One override costs ~60 bytes there; on a small model that decides the fit."""
    from edgeq.spec.recipe import recipe_to_toml

    return len(recipe_to_toml(recipe.resolved()).encode())  # as build() writes it


def _fit_recipe(result: Scan, target: int, fixed: int, max_size_mb: float, base: Recipe):
    """The allocation whose tensors + recipe text fit `target` bytes beside `fixed`: the recipe's
    text grows with the overrides the allocation makes, so the tensor budget shrinks by the
    overshoot until both fit (allocation only, no build)."""
    budget = target - fixed
    while True:
        chosen = allocate(result, budget)
        recipe = auto_recipe(chosen, max_size_mb, base)
        estimate = fixed + sum(size_of(n, result.shapes[n], c) for n, c in chosen.items()) + recipe_bytes(recipe)
        if estimate <= target:
            return chosen, recipe, estimate
        budget -= estimate - target


def build_auto(model: str, max_size_mb: float, calibration: str, out=None, language: str | None = None,
               samples: int = 4, force: bool = False, progress=None, scanned=None):
    """Scan, allocate and build the least-KL mixed-precision ONNX bundle of at most `max_size_mb`.

    `scanned`: scan_model()'s result, to build several budgets from one scan. Returns (bundle, scan).
    """
    from edgeq.builder.pipeline import build
    from edgeq.builder.plan import linear_names
    from edgeq.builder.source import load_float_model, resolve_source

    target = int(max_size_mb * 1e6)
    if scanned is None:
        if not calibration:
            raise RecipeError("--recipe auto scans layer sensitivity on real audio: pass --calibration DATASET")
        # Fail before the scan (minutes on whisper-base) when even the smallest formats cannot fit.
        source = resolve_source(model)
        float_model = load_float_model(source).eval()
        names = linear_names(float_model)
        shapes = {n: tuple(float_model.get_submodule(n).weight.shape) for n in [*names, TABLE]}
        fixed = fixed_bytes(float_model, names, source.path)
        smallest = fixed + smallest_bytes(Scan({n: {} for n in shapes}, shapes))
        if smallest > target:
            raise EdgeqError(f"--max-size {max_size_mb:g}: {model} needs at least {smallest / 1e6:.1f} MB with every "
                             f"module at its smallest format ({fixed / 1e6:.1f} MB of it float tensors and tokenizer); "
                             "raise --max-size")
        scanned = _scan_source(source, float_model, names, calibration, language, samples, progress)
    source, float_model, names, result = scanned
    fixed = fixed_bytes(float_model, names, source.path)
    base = load_recipe(BASE_RECIPE)
    # What neither the size model nor the recipe text accounts for (the graphs' structure, config
    # files): unknown before the first build, then measured; it moves a little between allocations,
    # hence the slack.
    structure = 0
    for attempt in range(MAX_BUILDS):
        chosen, recipe, estimate = _fit_recipe(result, target - structure, fixed, max_size_mb, base)
        bundle = build(recipe, model=model, out=out, language=language, force=force or attempt > 0,
                       progress=progress)
        size = bundle.manifest.size.bundle_bytes
        log.info("auto: %s is %.2f MB (budget %.2f MB)", bundle.path, size / 1e6, max_size_mb)
        if size <= target:
            return bundle, result
        structure = size - estimate + STRUCTURE_SLACK_PER_MODULE * len(chosen)
    raise EdgeqError(f"--max-size {max_size_mb:g}: the auto bundle stayed at {size / 1e6:.1f} MB after "
                     f"{MAX_BUILDS} builds; raise --max-size")
