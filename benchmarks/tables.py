"""Render the documentation's tables: the recipe catalogue from recipes/*.toml, the results from the
JSON in benchmarks/results/.

    python benchmarks/tables.py            # print every table
    python benchmarks/tables.py --readme   # rewrite README.md and docs/*.md between their <!-- NAME --> markers

Each renderer returns the text of one table (or None when its results file is absent); TABLES maps
a marker to its renderer, and each marker stands in exactly one of DOCS. Every table in them comes
from here, and tests/test_readme.py fails when a document differs from what these renderers return.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from statistics import median

from _common import HERE, REPO, RESULTS
from compare_systems import USABLE_WER_POINTS  # #11's WER bar, the one its peers are held to

if sys.version_info >= (3, 11):
    import tomllib
else:  # a dependency below 3.11 (pyproject.toml), as for edgeq.spec.recipe
    import tomli as tomllib


def _load(name: str):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _f(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def machine(env: dict) -> str:
    cpu = env.get("cpu", {})
    libs = env.get("libraries", {})
    versions = ", ".join(f"{k} {libs[k]}" for k in ("torch", "onnxruntime", "transformers") if k in libs)
    flags = cpu.get("key_flags") or []
    mask = env.get("cpuid_mask")
    masked = (f"; CPUID masked to {MASKED[mask]} by benchmarks/cpuid_mask.c: the libraries ran the kernels of such a "
              f"CPU on this one" if mask else "")
    return (f"{cpu.get('model', '?')} ({cpu.get('logical_cores', '?')} logical cores; "
            f"key flags: {', '.join(flags) if flags else 'none'}{masked}), {env.get('os', '')} {env.get('arch', '')}; "
            f"{versions}")


MASKED = {"avx2": "AVX2 + FMA (no AVX-512, VNNI or AMX)", "vnni": "AVX-512 with VNNI and BF16 (no AMX)"}


def recipe_catalogue() -> str:
    """The shipped recipes, from recipes/*.toml through the same schema `edgeq recipes` uses."""
    from edgeq.spec.catalogue import BACKENDS
    from edgeq.spec.recipe import list_recipes

    return _table(["recipe", "library", "scheme", "weights", "granularity", "embeddings", "description"], [
        [f"`{r.name}`", BACKENDS[r.backend].library, r.scheme, r.weights.format, r.granularity_label,
         r.embeddings_label, r.description]
        for r in list_recipes()
    ])


def sizes() -> str | None:
    data = _load("sizes.json")
    if not data:
        return None
    by = {}
    for r in data["rows"]:
        by.setdefault(r["recipe"], {})[r["model"]] = r
    rows = []
    for name in sorted(by):
        cells = []
        for model in ("base", "small"):
            r = by[name].get(model)
            if r is None or "error" in r:
                cells += ["—", "—" if r is None else "error"]
            else:
                cells += [f"{r['weights_mb']:.1f}", f"{r['reduction_pct'] if abs(r['reduction_pct']) >= 0.05 else 0.0:.1f} %"]
        rows.append([f"`{name}`", *cells])
    table = _table(["recipe", "whisper-base MB", "smaller than fp32", "whisper-small MB", "smaller than fp32"], rows)
    return table + f"\nweights only (config, tokenizer ≈ 3 MB more); machine: {machine(data['env'])}\n"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table; a short row (a failed system) is padded with empty cells."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row + [""] * (len(headers) - len(row))) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def recipes() -> str | None:
    """The sweep's own table (edgeq.sweep.table), from the results file sweep_whisper-base.sh copies."""
    from edgeq.sweep.table import to_markdown

    data = _load("sweep_whisper-base/results.json")
    if not data:
        return None
    first = next(c["summary"] for c in data["cells"] if c.get("summary"))
    conditions = "; ".join(
        c["label"] + (f" = {c['noise_source']} noise at {c['snr_db']:g} dB SNR" if c.get("snr_db") is not None else "")
        for c in data["conditions"])
    return (to_markdown(data) + f"\n{first['utterances']} utterances ({first['audio_s']:.0f} s) per condition ({conditions}); "
            f"{first['settings'].get('threads')} threads; latency, RTF and RSS on the clean set; "
            f"machine: {machine(first['env'])}\n")


def compare(name: str, wer: bool = True) -> str | None:
    """A compare_systems.py result: per system the median over its rounds, with the RTF's spread;
    without the WER column for random weights (meaningless there). Then, for each edgeq bundle, its
    ratios to the fastest peer and to whisper.cpp q8_0, round by round."""
    data = _load(name)
    if not data:
        return None
    rows = data["rows"]
    rounds = data.get("rounds", 1)
    names = list(dict.fromkeys(r["system"] for r in rows))
    head = ["system"] + (["WER %"] if wer else []) + ["RTF (median, min–max)", "tokens", "load s", "peak RSS MB",
                                                     "size MB", "encoder s/window", "decoder tokens/s"]
    body = []
    for n in names:
        mine = [r for r in rows if r["system"] == n and "error" not in r]
        if not mine:
            body.append([n, f"error: {next(r['error'] for r in rows if r['system'] == n)}"])
            continue
        med = {k: median([r[k] for r in mine]) for k in ("rtf", "load_s", "peak_rss_mb")}
        rtfs = [r["rtf"] for r in mine]
        first = mine[0]
        body.append([n] + ([f"{first['wer_pct']:.2f}"] if wer else []) + [
            f"{med['rtf']:.3f} ({min(rtfs):.3f}–{max(rtfs):.3f})", _f(first.get("tokens"), "d"), f"{med['load_s']:.2f}",
            f"{med['peak_rss_mb']:.0f}", _f(first["size_mb"], ".1f"),
            _f(median([r["encoder_s_per_window"] for r in mine]) if "encoder_s_per_window" in first else None, ".3f"),
            _f(median([r["decoder_tokens_per_s"] for r in mine]) if "decoder_tokens_per_s" in first else None, ".0f")])
    table = _table(head, body)
    ok = [r for r in rows if "error" not in r]
    if ok and data.get("long_minutes"):  # compare_systems.py --long: one recording, each system's long-form path
        table += (f"\none recording of the dataset's clips joined ({ok[0]['audio_s']:.1f} s), transcribed whole, "
                  f"{data['threads']} threads, {rounds} rounds in alternation, one fresh process per system and round; "
                  f"machine: {machine(data['env'])}\n")
    elif ok:
        table += (f"\n{ok[0]['utterances']} utterances, {ok[0]['audio_s']:.1f} s of audio, {data['threads']} threads, "
                  f"{rounds} rounds in alternation, one fresh process per system and round; "
                  f"machine: {machine(data['env'])}\n")
    ratios = (data.get("summary") or {}).get("edgeq_ratios") or {}
    if ratios:
        def cell(r, key):
            v = r.get(key)
            return "—" if not v else f"{v['median']:.2f} × ({v['min']:.2f}–{v['max']:.2f})"

        phases = any("encoder_s_vs_whisper_cpp_q8_0" in r for r in ratios.values())
        table += "\n" + _table(["edgeq bundle", "RTF / fastest peer's", "peak RSS / whisper.cpp q8_0's",
                                "load time / whisper.cpp q8_0's"]
                               + (["encoder s per 30 s window / whisper.cpp's", "decoder tokens/s / whisper.cpp's"]
                                  if phases else []) + ["fastest peer"], [
            [n, cell(r, "rtf_vs_fastest_peer"), cell(r, "rss_vs_whisper_cpp_q8_0"), cell(r, "load_vs_whisper_cpp_q8_0")]
            + ([cell(r, "encoder_s_vs_whisper_cpp_q8_0"), cell(r, "decoder_tokens_per_s_vs_whisper_cpp_q8_0")]
               if phases else []) + [", ".join(sorted(set(r["fastest_peer"])))]
            for n, r in ratios.items()])
    return table


# #11 at a glance: which run and which systems in it, per kind of kernels (data, not code)
GOAL_ROWS = HERE / "goal.toml"
# #11's bars: RTF at most 0.7x the fastest peer's, peak RSS and load time at most whisper.cpp q8_0's
GOAL_LIMITS = (("rtf_vs_fastest_peer", 0.7, "RTF"), ("rss_vs_whisper_cpp_q8_0", 1.0, "peak"),
               ("load_vs_whisper_cpp_q8_0", 1.0, "load"))


def _ratio(r: dict, digits: int = 2) -> str:
    return f"{r['median']:.{digits}f} × ({r['min']:.{digits}f}–{r['max']:.{digits}f})"


def goal() -> str | None:
    """One row per recipe picked in goal.toml: its ratios (median over rounds, and range) and which of #11's
    bars the median misses (strictly: 0.704 misses 0.7, so the RTF ratio shows three decimals)."""
    picked = tomllib.loads(GOAL_ROWS.read_text())["row"]
    body = []
    for pick in picked:
        kernels, shape, window, name = pick["kernels"], pick["model"], pick["window"], pick["run"]
        data = _load(name)
        for recipe, system in pick["recipes"].items() if data else ():
            ratios = data["summary"]["edgeq_ratios"].get(system)
            if ratios is None:
                raise SystemExit(f"{name}: no {system} (benchmarks/goal.toml)")
            wer = next((r.get("wer_pct") for r in data["rows"] if r["system"] == system and "error" not in r), None)
            missed = [label for key, limit, label in GOAL_LIMITS if ratios[key]["median"] > limit]  # strictly
            # WER at most fp32 + 0.5, where the run measured fp32 (transformers-fp32) beside it
            fp32 = next((r["wer_pct"] for r in data["rows"] if r["system"] == "transformers-fp32" and "error" not in r),
                        None)
            if wer is not None and fp32 is not None and shape == "whisper-base" and wer > fp32 + USABLE_WER_POINTS:
                missed.append("WER")
            wer_cell = _f(wer if shape == "whisper-base" else None, ".2f")
            if pick.get("wer_run"):  # longform_wer.py: WER pooled over several recordings, judged on that instead
                wer_cell, met = _pooled_wer(pick["wer_run"], recipe)
                missed = [m for m in missed if m != "WER"] + ([] if met else ["WER"])
            body.append([kernels, shape, window, f"`{recipe}`", wer_cell]
                        + [_ratio(ratios[k], digits=3 if k == "rtf_vs_fastest_peer" else 2) for k, _, _ in GOAL_LIMITS]
                        + [", ".join(sorted(set(ratios["fastest_peer"]))),
                           "met" if not missed else "**not met**: " + ", ".join(missed)])
    if not body:
        return None
    runs = ", ".join(f"`{n}`" for n in dict.fromkeys(
        name for pick in picked for name in (pick["run"], pick.get("wer_run")) if name))
    return _table(["kernels", "model", "window", "recipe", "WER %", "RTF / fastest peer's",
                   "peak RSS / whisper.cpp q8_0's", "load / whisper.cpp q8_0's", "fastest peer", "#11"], body) \
        + f"\nRuns (benchmarks/results/): {runs}.\n"


# longform_wer.py's decoding that compare_systems --long runs for every system (greedy, T=0 once)
LONG_DECODING = "greedy"


def _pooled_wer(name: str, recipe: str) -> tuple[str, bool]:
    """A goal row's WER cell and verdict from a longform_wer.py run: `recipe`'s WER pooled over the
    run's recordings, and whether it is within fp32 + USABLE_WER_POINTS of the float weights' pooled
    over the same (longform_wer.summarize decides)."""
    data = _load(name)
    s = (data or {}).get("summary", {}).get(recipe, {}).get(LONG_DECODING)
    if s is None or "points_vs_fp32" not in s:
        raise SystemExit(f"{name}: no {LONG_DECODING} decoding of {recipe} beside fp32 (benchmarks/goal.toml)")
    return f"{s['pooled_wer_pct']:.2f} ({s['points_vs_fp32']:+.2f}, {s['recordings']} recordings)", s["met"]


def _kernels(env: dict) -> str:
    mask = env.get("cpuid_mask")
    if mask:
        return {"avx2": "AVX2 (masked)", "vnni": "AVX-512 VNNI (masked)"}[mask]
    flags = env.get("cpu", {}).get("key_flags") or []
    return "AMX (own)" if "amx_int8" in flags else "AVX-512 VNNI (own)" if "avx512_vnni" in flags else \
        "AVX2 (own)" if "avx2" in flags else env.get("arch", "?")


def _one_machine(runs: list[dict]) -> str:
    """The machine of runs made on one host, some of them with CPUID masked (the kernels column)."""
    env = {k: v for k, v in runs[0]["env"].items() if k != "cpuid_mask"}
    masked = any(d["env"].get("cpuid_mask") for d in runs)
    return f"machine: {machine(env)}" + ("; rows marked masked ran with CPUID masked by benchmarks/cpuid_mask.c "
                                         "(the libraries ran the kernels of such a CPU on this one)" if masked else "")


def _is_peer(system: str) -> bool:
    """longform_wer.py's systems that are not edgeq bundles (--transformers)."""
    return system.startswith("transformers")


def longform_wer(names: tuple[str, ...], peer_runs: tuple[str, ...] = ()) -> str | None:
    """longform_wer.py: per kind of kernels, bundle and decoding, WER pooled over several long
    recordings against the float weights', with the per-recording spread and the longest run of
    inserted words (a decoding loop). `peer_runs`: earlier runs whose peers' rows (transformers'
    own loop, which no edgeq change moves) are shown after the others'."""
    runs = [d for d in map(_load, names) if d]
    if not runs:
        return None
    peers = [d for d in map(_load, peer_runs) if d]
    rows = []
    for d, only_peers in [(d, False) for d in runs] + [(d, True) for d in peers]:
        for system, by_decoding in d["summary"].items():
            if only_peers and not _is_peer(system):
                continue
            for decoding, s in by_decoding.items():
                per = s.get("points_vs_fp32_per_recording")
                rows.append([_kernels(d["env"]), f"`{system}`", decoding, f"{s['pooled_wer_pct']:.2f}",
                             _f(s.get("points_vs_fp32"), "+.2f"),
                             "—" if not per or system == d["reference"] else
                             f"{per['median']:+.2f} ({per['min']:+.2f} to {per['max']:+.2f})",
                             f"{s['wer_pct_range'][0]:.2f}–{s['wer_pct_range'][1]:.2f}",
                             f"{s['longest_inserted_run']} / {s['longest_deleted_run']}",
                             "" if system == d["reference"] else "(peer)" if _is_peer(system)
                             else "met" if s.get("met") else "**not met**"])
    first = runs[0]
    recs = first["recordings"]
    words = next(iter(first["summary"][first["reference"]].values()))["words"]
    return (_table(["kernels", "bundle", "decoding", "pooled WER %", "vs fp32, points",
                    "per recording vs fp32, median (range)", "WER % per recording", "longest run of words inserted / deleted",
                    f"fp32 + {USABLE_WER_POINTS:g}"], rows)
            + f"\n{first['model']}, {len(recs)} recordings of speech-dev's clips joined "
              f"({min(r['audio_s'] for r in recs):.0f}–{max(r['audio_s'] for r in recs):.0f} s, "
              f"{words} words), "
              f"each transcribed whole; {first['threads']} threads; fp32 = the `{first['reference']}` bundle; "
              f"{_one_machine(runs + peers)}"
              + (f"; peers' rows from {', '.join(f'`{n}`' for n in peer_runs)}" if peers else "") + "\n")


def divergence(names: tuple[str, ...]) -> str | None:
    """bundle_divergence.py: per kind of kernels and bundle, the next-token KL divergence from the
    float weights and the argmax flips, teacher-forced along the float bundle's greedy path."""
    runs = [d for d in map(_load, names) if d]
    if not runs:
        return None
    rows = [[_kernels(d["env"]), f"`{name}`", f"`{b['recipe']}`", f"{b['size_mb']:.1f}", f"{b['mean_kl']:.4f}",
             f"{b['p99_kl']:.3f}", f"{b['flips']} ({b['flip_pct']:.2f} %)", f"{b['clips_with_flips']} of {d['clips']}"]
            for d in runs for name, b in d["bundles"].items()]
    first = runs[0]
    return (_table(["kernels", "bundle", "recipe", "size MB", "mean KL", "99th percentile KL", "flips",
                    "clips with a flip"], rows)
            + f"\n{first['clips']} clips of speech-dev, {first['steps']} decoder steps along the float bundle's greedy "
              f"path (padded windows, English, no timestamps); {_one_machine(runs)}\n")


def auto_front() -> str | None:
    """benchmarks/auto_vs_front.py: the auto bundles beside the fixed recipes, from one run."""
    data = _load("auto_vs_front.json")
    if not data:
        return None
    fp32 = data["fp32_wer_pct"]
    table = _table(["bundle", "size MB", "WER %", "vs fp32", "S/D/I", "RTF"], [
        [r["system"], f"failed: {r['failed']}"] if "failed" in r else
        [r["system"], f"{r['size_mb']:.1f}", f"{r['wer_pct']:.2f}", f"{r['wer_pct'] - fp32:+.2f}", r["sdi"], f"{r['rtf']:.3f}"]
        for r in data["rows"]])
    s = next((x for x in data["summaries"] if "failed" not in x), None)
    words = s["wer"]["ref_words"] if s and "ref_words" in s.get("wer", {}) else None
    scan = f", scan on {data['samples']} calibration clips ({data['scan_s']:.0f} s)"
    return table + (f"\n{data['rows'][0].get('utts', '?')} utterances" + (f", {words} words" if words else "")
                    + f"{scan}; machine: {machine(data['env'])}\n")


def cpu_limits(name: str = "cpu_limits.json") -> str | None:
    """benchmarks/cpu_limits.py: what the CPU can do against what edgeq takes, per phase."""
    d = _load(name)
    if not d:
        return None
    b = d.get("bundle") or {}
    enc = b.get("encoder_s_per_window")
    gemm = "; ".join(f"{k}: float32 {v['float32']:.0f}, int8 {v['int8']:.0f} GOPS" for k, v in d["gemm_gops"].items())
    rows = [["encoder, one 30 s window", f"{d['encoder_gop_per_window']:.1f} GOP at the best int8 rate: "
             f"{d['encoder_floor_s_at_int8']:.2f} s", _f(enc, ".2f") + " s",
             _f(enc and enc / d["encoder_floor_s_at_int8"], ".1f") + " ×"]]
    parts, attention = d.get("encoder_gop_parts"), d.get("attention_gflops")
    if parts and attention:  # runs since 2026-12-07: the floor with the kernels an int8 bundle runs
        rows.append(["encoder, one 30 s window, ONNX Runtime's kernels",
                     f"{parts['linear'] + parts['cross_kv']:.1f} GOP int8, {parts['attention']:.1f} GOP float32 "
                     f"attention at {max(attention.values()):.0f} GFLOPS, {parts['convs']:.1f} GOP convs: "
                     f"{d['encoder_floor_s_with_kernels']:.2f} s", _f(enc, ".2f") + " s",
                     _f(enc and enc / d["encoder_floor_s_with_kernels"], ".2f") + " ×"])
    rows.append(["decoder, one token", f"{d['decoder_int8_mb_per_token']:.1f} MB of int8 weights at "
                 f"{d['read_bandwidth_gbs']:.0f} GB/s: {d['decoder_floor_ms_per_token']:.1f} ms",
                 _f(b.get("decoder_ms_per_token"), ".1f") + " ms",
                 _f(b.get("decoder_ms_per_token") and b["decoder_ms_per_token"] / d["decoder_floor_ms_per_token"], ".1f")
                 + " ×"])
    att = ("; float32 attention products of all heads (QKᵀ, AV): "
           + ", ".join(f"{v:.0f}" for v in attention.values()) + " GFLOPS") if attention else ""
    return (_table(["phase", "floor on this CPU", "edgeq onnx-int8-dynamic", "above the floor"], rows)
            + f"\nGEMM at the encoder's shapes through ONNX Runtime, {d['threads']} threads — {gemm}{att}; memory "
              f"read one thread; decoder steps sleeping; machine: {machine(d['env'])}\n")


def decoder_ops(name: str, top: int = 8) -> str | None:
    """benchmarks/decoder_step.py --profile: per bundle, the step's time from the rounds and where a
    profiled step's time goes by operator type (the decoder graph's costliest, and the head's)."""
    d = _load(name)
    if not d or "operators" not in d:
        return None
    rows = []
    for bundle, split in d["operators"].items():
        steps = [r["ms_per_step"] for r in d["rows"] if r["bundle"] == bundle]
        dec = split["decoder"]
        ops = ", ".join(f"{op} {v['ms_per_step']:.2f} ({v['nodes_per_step']:.0f})"
                        for op, v in list(dec["by_operator"].items())[:top])
        rows.append([f"`{Path(bundle).name}`", f"{median(steps):.2f} ({min(steps):.2f}–{max(steps):.2f})",
                     f"{split['profiled_ms_per_step']:.2f}", f"{dec['kernel_ms_per_step']:.2f}",
                     _f(split.get("head", {}).get("kernel_ms_per_step"), ".2f"), ops])
    return (_table(["bundle", "ms per step (median over rounds, min–max)", "profiled ms per step",
                    "decoder operators ms", "head ms", "costliest operator types, ms per step (nodes)"], rows)
            + f"\n{d['steps']} steps after the prompt, window {d['window']}, {d['threads']} threads, decoder threads "
              f"{'spinning' if d['spinning'] == 'decoder' else 'sleeping'}; {len(steps)} rounds; machine: "
              f"{machine(d['env'])}\n")


def encoder_ops(name: str, top: int = 6) -> str | None:
    """benchmarks/encoder_ops.py: a bundle's encoder per window, its wall time and its costliest operators."""
    d = _load(name)
    if not d:
        return None
    rows = []
    for system, s in d["summary"].items():
        wall = s["wall_ms"]
        ops = ", ".join(f"{op} {ms:.1f}" for op, ms in list(s["ops_ms"].items())[:top])
        reductions = sum(ms for op, ms in s["ops_ms"].items() if op in ("ReduceMax", "ReduceMin"))
        rows.append([system, f"{wall['median']:.0f} ({wall['min']:.0f}–{wall['max']:.0f})", f"{reductions:.1f}", ops])
    rounds = 1 + max(r["round"] for r in d["rows"])
    return (_table(["bundle / encoder graph", "ms per window (median, min–max)", "ReduceMax + ReduceMin ms",
                    "costliest operators, ms (one profiled window, median over rounds)"], rows)
            + f"\n{d['frames']} frames ({d['seconds']:g} s window), {d['threads']} threads, {rounds} rounds in "
              f"alternation; machine: {machine(d['env'])}\n")


# The kinds of kernels a session's runs were made with, and the suffix of their result files.
KERNELS = (("AMX (own)", "amx"), ("AVX-512 VNNI (masked)", "cpuid_vnni"), ("AVX2 (masked)", "cpuid_avx2"))


def decoder_levers() -> str | None:
    """benchmarks/decoder_levers.py on each kind of kernels: ms per step of each lever's variants."""
    runs = [(label, d) for label, kernels in KERNELS if (d := _load(f"decoder_levers_{kernels}.json"))]
    if not runs:
        return None
    rows = []
    for lever, variants in runs[0][1]["summary"].items():
        for variant in variants:
            cells = []
            for _, d in runs:
                s = d["summary"].get(lever, {}).get(variant)
                cells.append(f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})" if s else "—")
            rows.append([lever, variant, *cells])
    first = runs[0][1]
    rounds = 1 + max(r["round"] for r in first["rows"])
    queries = ", ".join(f"{label}: {d['cross_query']}" for label, d in runs)
    return (_table(["lever", "variant", *(f"{label}, ms per step (median, min–max)" for label, _ in runs)], rows)
            + f"\nwhisper-small's shape, {first['threads']} threads, {rounds} rounds of {first['calls']} calls in "
              f"alternation; the cross-attention query's codes ({queries}); top {first['top_k']}; machine: "
              f"{machine(first['env'])}\n")


def decoder_int8(name: str) -> str | None:
    """The decoder's 8-bit Linear layers as MatMulNBits blocks against DynamicQuantizeMatMul with 7-bit
    per-channel weights: whole decoder steps (decoder_step.py, per kind of kernels) and WER on
    speech-dev (edgeq bench). `name` "dynamic_probe": benchmarks/probe_dynamic_decoder.py's probes
    against their bundles; "channels": bundles built with options.decoder_int8 = "channels"."""
    second, short = {"dynamic_probe": ("probe", "probe"),
                     "channels": ("options.decoder_int8 = channels", "options.decoder_int8")}[name]
    rows, first = [], None
    for model, suffix in (("whisper-base", ""), ("whisper-small's shape", "_whisper-small-random")):
        for label, kernels in KERNELS:
            d = _load(f"decoder_step_{name}_{kernels}{suffix}.json")
            if not d:
                continue
            first = first or d
            bundles = list(dict.fromkeys(r["bundle"] for r in d["rows"]))
            steps = {b: [r["ms_per_step"] for r in d["rows"] if r["bundle"] == b] for b in bundles}
            base, other = (median(steps[b]) for b in bundles)
            # WER on real speech: whisper-base only (the small shape's weights are random)
            bench = (_load(f"wer_{name}_{kernels}.json") or []) if not suffix else []
            wer = {system["system"]: system["wer"]["wer_pct"] for system in bench}
            cells = [f"{median(v):.2f} ({min(v):.2f}–{max(v):.2f})" for v in steps.values()]
            wers = " / ".join(_f(wer.get(Path(b).name), ".2f") for b in bundles) if wer else "—"
            rows.append([model, label, *cells, f"{other / base:.2f} ×", wers])
    if not rows:
        return None
    window = {"full": "padded", "fit": "fitted"}[first["window"]]
    rounds = 1 + max(r["round"] for r in first["rows"])
    return (_table(["model", "kernels", "ms per step, 8-bit MatMulNBits blocks",
                    f"ms per step, DynamicQuantizeMatMul 7-bit ({second})", "ratio of medians",
                    f"WER % on speech-dev (blocks / {short})"], rows)
            + f"\ndecoder_step.py: {window} window, {first['spinning']} spinning, {first['steps']} steps, {rounds} "
              f"rounds in alternation, medians of the rounds' median steps; WER: edgeq bench, fitted windows; "
              f"machine: {machine(first['env'])}\n")


def spinning() -> str | None:
    """benchmarks/spinning.py: ONNX Runtime's threads spinning or sleeping, idle and shared CPU."""
    d = _load("spinning.json")
    if not d or "summary" not in d:
        return None
    rows = []
    for case, v in d["summary"].items():
        r = v.get("rtf_vs_off")
        rows.append([case, f"{v['rtf']:.4f}", "—" if not r else f"{r['median']:.2f} × ({r['min']:.2f}–{r['max']:.2f})",
                     f"{v['encoder_s_per_window']:.3f}", f"{v['decoder_tokens_per_s']:.0f}"])
    return (_table(["CPU, spinning", "RTF (median)", "RTF / off's (median, min–max)", "encoder s/window",
                    "decoder tokens/s"], rows)
            + f"\n{Path(d['bundle']).name}, {d['limit']} clips of speech-dev, {d['threads']} threads, "
              f"{max(r['round'] for r in d['rows'])} rounds; machine: {machine(d['env'])}\n")


def blas_threads(names: tuple[str, ...]) -> str | None:
    """benchmarks/blas_threads.py: the pipeline with the mel product on one BLAS thread and on all,
    per bundle the median over rounds and the one-thread run's ratio to the all-threads one."""
    runs = [d for d in map(_load, names) if d and "summary" in d]
    if not runs:
        return None
    rows = []
    for d in runs:
        what = f"{d['window']} window" + (f", {d['limit']} clips" if d.get("limit") else "") + f", {d['rounds']} rounds"
        for bundle, v in d["summary"].items():
            one, every = v["one"], v["all"]
            rows.append([f"{bundle} ({what})",
                         f"{every['encoder_s_per_window']:.3f} → **{one['encoder_s_per_window']:.3f}**",
                         f"{every['decoder_tokens_per_s']:.0f} → {one['decoder_tokens_per_s']:.0f}",
                         f"{every['rtf']:.4f} → {one['rtf']:.4f} ({one['rtf'] / every['rtf']:.2f} ×)"])
    first = runs[0]
    blas = first["rows"][0]["blas"]
    lib = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in blas) or "no BLAS found"
    return (_table(["bundle (window)", "encoder s/window, all BLAS threads → one", "decoder tokens/s",
                    "RTF (one / all)"], rows)
            + f"\nMedians over the rounds, the two modes in alternation, one fresh process per run, "
              f"{first['threads']} threads, spinning decoder; NumPy's BLAS: {lib}; machine: {machine(first['env'])}\n")


def fitted_loops() -> str | None:
    """benchmarks/fitted_loops.py: per bundle, the fitted windows whose decode looped and was redone."""
    d = _load("fitted_loops.json")
    if not d:
        return None
    rows = []
    for r in d["rows"]:
        widths = ", ".join(f"{k} × {v}" for k, v in r["decoder"].items()) or "—"
        rows.append([f"`{r['bundle']}` ({r['recipe']})", widths, f"**{r['refits']}** of {r['decodes']}",
                     f"{r['wer_pct']:.2f}"])
    return (_table(["bundle (recipe)", "decoder MatMulNBits (layers)", "fitted windows decoded again in full",
                    "WER %"], rows)
            + f"\nspeech-dev's 24 clips, each as is and in 6 variants (silence before or after, gain, noise, "
              f"speed), greedy, 2 threads; machine: {machine(d['env'])}\n")


LONGFORM_JOINS = ("longform_onnx-int8-dynamic_20min.json", "longform_onnx-int8-dynamic_20min-seed1.json",
                  "longform_onnx-int8-dynamic_20min-seed2.json", "longform_onnx-int8-dynamic_20min-seed3.json")


def longform() -> str | None:
    """longform_speech_dev.py on 20 min joins in several seeded orders: WER per decoding, words lost
    in runs, and edgeq's distance to clip by clip (the issue's 0.5 points)."""
    joins = [d for d in map(_load, LONGFORM_JOINS) if d]
    if not joins:
        return None

    def wer(d, method):
        m = d["methods"].get(method)
        return _f(m and m["wer_pct"], ".2f")

    rows = []
    for d in joins:
        m = d["methods"]
        ours = m["longform"]
        rows.append([f"{d['seed']} ({d['utterances']} utt., {ours['ref_words']} words)", wer(d, "clips"),
                     wer(d, "clips-timestamps"), wer(d, "windows"), wer(d, "whisper"), f"**{ours['wer_pct']:.2f}**",
                     f"{ours['wer_pct'] - m['clips']['wer_pct']:+.2f} / "
                     f"{ours['wer_pct'] - m['clips-timestamps']['wer_pct']:+.2f}",
                     f"{ours['deleted_in_runs_of_5+']} ({ours['longest_deleted_run']})",
                     f"{ours['seconds']:.0f} / {m['whisper']['seconds']:.0f}"])
    table = _table(["join (seed)", "clip by clip, study decoding", "clip by clip, long-form decoding",
                    "fixed 30 s windows", "openai-whisper's seek loop", "edgeq long-form",
                    "edgeq − clips (study / long-form decoding), points", "edgeq words lost in runs ≥ 5 (longest)",
                    "seconds, edgeq / whisper loop"], rows)
    first = joins[0]
    return (table + f"\nWER %; {first['system']} bundle of whisper-base, {first['threads']} threads, "
            f"{first['audio_s'] / 60:.0f} min per join; machine: {machine(first['env'])}\n")


def load_pairs(name: str, pairs: list[tuple[str, str, str]]) -> str | None:
    """prepared_sessions.py --modes later with bundles in alternation: each (label, before, after)
    pair of bundles, the same weights in two bundle layouts, loaded on a device that has its
    prepared copy (the usual load)."""
    d = _load(name)
    if not d:
        return None
    b = d["bundles"]
    rows = []
    for label, before, after in pairs:
        x, y = b[before], b[after]
        lo = [r * 1000 for r in x["load_s_range"]["later"]]
        hi = [r * 1000 for r in y["load_s_range"]["later"]]
        mx, my = x["median"]["later"], y["median"]["later"]
        rows.append([label, f"{mx['load_s'] * 1000:.1f} ({lo[0]:.1f}–{lo[1]:.1f})",
                     f"**{my['load_s'] * 1000:.1f}** ({hi[0]:.1f}–{hi[1]:.1f})",
                     f"{my['load_s'] / mx['load_s']:.2f} ×",
                     f"{mx['peak_rss_after_load_mb']:.0f} / {my['peak_rss_after_load_mb']:.0f}",
                     f"{mx['peak_rss_mb']:.0f} / {my['peak_rss_mb']:.0f}",
                     "yes" if x["same_text"] and y["same_text"] else "NO"])
    return (_table(["bundle", "edgeq.load ms, projection inside the decoder (median, min–max)",
                    "ms, projection in decoder_head.onnx", "ratio", "peak RSS after load MB, before / after",
                    "after one clip MB", "same transcript every load"], rows)
            + f"\n{d['rounds']} rounds, bundles in alternation, a fresh process per load, prepared copy in place; "
              f"{d['threads']} threads; machine: {machine(d['env'])}\n")


def overhead() -> str | None:
    data = _load("harness_overhead.json")
    return "harness overhead: " + json.dumps({k: v for k, v in data.items() if k != "env"}) + "\n" if data else None


# README marker -> renderer
TABLES = {
    "RECIPE_CATALOGUE": recipe_catalogue,
    "SIZES_TABLE": sizes,
    "RECIPES_TABLE": recipes,
    "SMALL_TABLE": lambda: compare("compare_systems_whisper-small-random.json", wer=False),
    "COMPARE_TABLE": lambda: compare("compare_systems.json"),
    "COMPARE_VNNI_TABLE": lambda: compare("compare_systems_vnni_full.json"),
    "COMPARE_SCAN_TABLE": lambda: compare("compare_systems_vnni_scan.json"),
    "COMPARE_SCAN_SMALL_TABLE": lambda: compare("compare_systems_vnni_scan_whisper-small-random.json", wer=False),
    "COMPARE_COPIES_TABLE": lambda: compare("compare_systems_vnni_copies.json"),
    "COMPARE_ARENA_TABLE": lambda: compare("compare_systems_encoder_arena.json"),
    "COMPARE_ARENA_SMALL_TABLE": lambda: compare("compare_systems_encoder_arena_whisper-small-random.json", wer=False),
    "COMPARE_VNNI_DECODER_TABLE": lambda: compare("compare_systems_vnni_decoder_repeat.json"),
    "COMPARE_VNNI_DECODER_SMALL_TABLE": lambda: compare("compare_systems_vnni_decoder_whisper-small-random.json",
                                                        wer=False),
    "COMPARE_INT4_DECODER_TABLE": lambda: compare("compare_systems_int4_decoder.json"),
    "COMPARE_INT4_DECODER_SMALL_TABLE": lambda: compare("compare_systems_int4_decoder_whisper-small-random.json",
                                                        wer=False),
    "COMPARE_AMX_TABLE": lambda: compare("compare_systems_amx.json"),
    "COMPARE_AMX_SMALL_TABLE": lambda: compare("compare_systems_amx_whisper-small-random.json", wer=False),
    "COMPARE_AMX_BLAS_TABLE": lambda: compare("compare_systems_amx_blas.json"),
    "COMPARE_AMX_BLAS_SMALL_TABLE": lambda: compare("compare_systems_amx_blas_whisper-small-random.json", wer=False),
    "ENCODER_OPS_AMX_TABLE": lambda: encoder_ops("encoder_ops_cross_reductions.json"),
    "CPU_LIMITS_AMX": lambda: cpu_limits("cpu_limits_amx_attention.json"),
    "COMPARE_LONG_AVX2_TABLE": lambda: compare("compare_systems_cpuid_avx2_long.json"),
    "COMPARE_LONG_AMX_TABLE": lambda: compare("compare_systems_amx_long.json"),
    "COMPARE_LONG_VNNI_TABLE": lambda: compare("compare_systems_cpuid_vnni_long.json"),
    "CPU_LIMITS_AVX2": lambda: cpu_limits("cpu_limits_cpuid_avx2.json"),
    "CPU_LIMITS_VNNI": lambda: cpu_limits("cpu_limits_cpuid_vnni.json"),
    "BLAS_THREADS_AMX": lambda: blas_threads(("blas_threads.json", "blas_threads_fit.json",
                                              "blas_threads_whisper-small-random.json", "blas_threads_quanto.json")),
    "FITTED_LOOPS_TABLE": fitted_loops,
    "COMPARE_AMX_FFN8_TABLE": lambda: compare("compare_systems_amx_ffn8.json"),
    "COMPARE_AMX_FFN8_SMALL_TABLE": lambda: compare("compare_systems_amx_ffn8_whisper-small-random.json", wer=False),
    "LOAD_HEAD_TABLE": lambda: load_pairs("load_head_split_amx.json", [
        ("whisper-base onnx-int8-dynamic", "base-int8", "base-int8-head"),
        ("whisper-base onnx-int8-dynamic-int4-decoder", "base-int4-decoder-ffn8", "base-int4-decoder-ffn8-head"),
        ("whisper-small's shape onnx-int8-dynamic", "small-int8", "small-int8-head"),
        ("whisper-small's shape onnx-int8-dynamic-int4-decoder", "small-int4-decoder-ffn8",
         "small-int4-decoder-ffn8-head")]),
    "COMPARE_AMX_HEAD_TABLE": lambda: compare("compare_systems_amx_head.json"),
    "COMPARE_AMX_HEAD_SMALL_TABLE": lambda: compare("compare_systems_amx_head_whisper-small-random.json", wer=False),
    "COMPARE_AMX_AVX2_GRAPH_TABLE": lambda: compare("compare_systems_amx_avx2_graph.json"),
    "COMPARE_AMX_AVX2_GRAPH_SMALL_TABLE": lambda: compare("compare_systems_amx_avx2_graph_whisper-small-random.json",
                                                          wer=False),
    "COMPARE_CPUID_VNNI_TABLE": lambda: compare("compare_systems_cpuid_vnni.json"),
    "COMPARE_CPUID_VNNI_SMALL_TABLE": lambda: compare("compare_systems_cpuid_vnni_whisper-small-random.json", wer=False),
    "COMPARE_CPUID_AVX2_TABLE": lambda: compare("compare_systems_cpuid_avx2_graph.json"),
    "COMPARE_CPUID_AVX2_SMALL_TABLE": lambda: compare("compare_systems_cpuid_avx2_graph_whisper-small-random.json",
                                                      wer=False),
    "DECODER_LEVERS_TABLE": decoder_levers,
    "DYNAMIC_PROBE_TABLE": lambda: decoder_int8("dynamic_probe"),
    "DECODER_CHANNELS_TABLE": lambda: decoder_int8("channels"),
    # options.decoder_int8 = "channels" against "blocks", per kind of kernels and model
    **{f"COMPARE_CHANNELS_{label}{tag}_TABLE":
       (lambda name=f"compare_systems_{kernels}_channels{run}.json", wer=tag != "_SMALL": compare(name, wer=wer))
       for label, kernels in (("AMX", "amx"), ("VNNI", "cpuid_vnni"), ("AVX2", "cpuid_avx2"))
       for tag, run in (("", ""), ("_FIT", "_fit"), ("_SMALL", "_whisper-small-random"))},
    # the AMD EPYC (Zen 4) of 2026-12-07: its own AVX-512 VNNI kernels, and AVX2's with CPUID masked
    **{f"COMPARE_EPYC_{label}{tag}_TABLE":
       (lambda name=f"compare_systems_epyc_{kernels}{run}.json", wer=tag == "": compare(name, wer=wer))
       for label, kernels in (("VNNI", "vnni"), ("AVX2", "cpuid_avx2"))
       for tag, run in (("", ""), ("_SMALL", "_whisper-small-random"))},
    "CPU_LIMITS_EPYC": lambda: cpu_limits("cpu_limits_epyc_vnni.json"),
    "CPU_LIMITS_EPYC_SMALL": lambda: cpu_limits("cpu_limits_epyc_vnni_whisper-small-random.json"),
    "DECODER_OPS_EPYC_SMALL": lambda: decoder_ops("decoder_step_epyc_vnni_small.json"),
    "COMPARE_EPYC_VNNI_LONG_TABLE": lambda: compare("compare_systems_epyc_vnni_long.json"),
    "COMPARE_EPYC_VNNI_FIT_SMALL_TABLE": lambda: compare("compare_systems_epyc_vnni_fit_whisper-small-random.json",
                                                         wer=False),
    "GOAL_TABLE": goal,
    "AUTO_TABLE": auto_front,
    "CPU_LIMITS": cpu_limits,
    "LONGFORM_TABLE": longform,
    "DIVERGENCE_TABLE": lambda: divergence(("bundle_divergence.json", "bundle_divergence_cpuid_vnni.json",
                                            "bundle_divergence_cpuid_avx2.json")),
    "INT4_BLOCKS_DIVERGENCE_TABLE": lambda: divergence(("bundle_divergence_int4_blocks.json",
                                                        "bundle_divergence_int4_blocks_cpuid_vnni.json",
                                                        "bundle_divergence_int4_blocks_cpuid_avx2.json")),
    # transformers' rows: the run of 2026-12-07 before the 4-bit decoder's blocks of 64 (its edgeq rows
    # are the bundles of then; only the peer is shown from it)
    "LONGFORM_WER_TABLE": lambda: longform_wer(("longform_wer_cpuid_avx2.json", "longform_wer_cpuid_vnni.json",
                                                "longform_wer_amx.json"), peer_runs=("longform_wer_amx_b128.json",)),
    "LONGFORM_WER_EPYC_TABLE": lambda: longform_wer(("longform_wer_epyc_vnni.json",)),
    "SPINNING_TABLE": spinning,
}


# The documents whose tables are rendered: the README's summary, and the measurement log and design
# notes it links to.
DOCS = ("README.md", "docs/performance.md", "docs/design.md")


def marker_holders(docs: dict[str, str], key: str) -> list[str]:
    """The names of the documents among `docs` (name -> text) that hold the marker <!-- key -->."""
    return [name for name, doc in docs.items() if f"<!-- {key} -->" in doc]


def docs_with_tables(docs: dict[str, str]) -> dict[str, str]:
    """`docs` (name -> text) with the text between each <!-- NAME --> and <!-- /NAME --> replaced by
    its renderer's; each marker must stand in exactly one document, once."""
    docs = dict(docs)
    for key, render in TABLES.items():
        holders = marker_holders(docs, key)
        if len(holders) != 1:
            raise SystemExit(f"<!-- {key} -->: expected in one of {', '.join(docs)}, found in {holders or 'none'}")
        text = render()
        if text is None:
            continue
        block = f"<!-- {key} -->\n{text.rstrip()}\n<!-- /{key} -->"
        name = holders[0]
        docs[name], n = re.subn(rf"<!-- {key} -->.*?<!-- /{key} -->", lambda m, b=block: b, docs[name], flags=re.S)
        if n != 1:
            raise SystemExit(f"{name}: expected one <!-- {key} --> block, found {n}")
    return docs


def read_docs() -> dict[str, str]:
    return {name: (REPO / name).read_text(encoding="utf-8") for name in DOCS}


if __name__ == "__main__":
    if "--readme" in sys.argv:
        for name, text in docs_with_tables(read_docs()).items():
            (REPO / name).write_text(text, encoding="utf-8")
    else:
        for render in TABLES.values():
            text = render()
            if text:
                print(text)
        print(overhead() or "", end="")
