"""`--recipe auto` at several size budgets against the fixed recipes' Pareto front, whisper-base on
speech-dev, in one run.

    python benchmarks/auto_vs_front.py [--budgets 45,50,56,65] [--front fp32,onnx-int8-dynamic,onnx-int4,hqq-int4-g64]

The sensitivity scan runs once on --calibration (default: 4 of speech-dev's `other/` TTS clips, none
of them a test utterance) and is kept in benchmarks/results/auto_scan_whisper-base.json (reused
when model, calibration, samples and choices match; --rescan to redo it). Each budget is then
built from that scan, the fixed recipes are built, and every bundle is measured with `edgeq bench`
on speech-dev's LibriSpeech utterances. Writes benchmarks/results/auto_vs_front.json (with the
CPU fingerprint) and prints the table; a bundle is "on/beyond the front" when no fixed recipe is
both no larger and strictly more accurate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RESULTS, SPEECH_DEV, WHISPER_BASE, require_shared, write_json

SCAN_FILE = RESULTS / "auto_scan_whisper-base.json"


def _scan(args):
    from edgeq.builder.mixed import LINEAR_CHOICES, TABLE_CHOICES, Scan, scan_model
    from edgeq.builder.plan import linear_names
    from edgeq.builder.source import load_float_model, resolve_source

    key = {"model": WHISPER_BASE.name, "calibration": str(args.calibration), "samples": args.samples,
           "linear_choices": [list(c) for c in LINEAR_CHOICES], "table_choices": [list(c) for c in TABLE_CHOICES]}
    if SCAN_FILE.is_file() and not args.rescan:
        saved = json.loads(SCAN_FILE.read_text())
        if saved["key"] == key:
            source = resolve_source(str(WHISPER_BASE))
            model = load_float_model(source).eval()
            print(f"scan: reusing {SCAN_FILE} ({saved['seconds']:.0f} s when measured)")
            return (source, model, linear_names(model), Scan.from_dict(saved["scan"])), saved["seconds"]
    start = time.perf_counter()
    scanned = scan_model(str(WHISPER_BASE), str(args.calibration), "en", args.samples,
                         progress=lambda stage, i, n: print(f"\r{stage}: {i}/{n}", end="", flush=True))
    seconds = time.perf_counter() - start
    print(f"\nscan: {seconds:.0f} s")
    write_json(SCAN_FILE.name, {"key": key, "seconds": seconds, "scan": scanned[3].to_dict()})
    return scanned, seconds


def _allocation(path: Path) -> dict:
    """The table's format, and how many Linear layers got each MatMulNBits format (from onnx.json)."""
    from edgeq.format.bundle import read_manifest
    from edgeq.format.layout import LAYOUT_FILE

    recipe = read_manifest(path).recipe
    quantization = json.loads((path / LAYOUT_FILE).read_text())["quantization"]
    return {"table": f"{recipe.modules.embeddings}/{recipe.table_group_size}",
            "linears": quantization.get("layers_per_format", {f"int{recipe.weights.bits}-b{recipe.weights.group_size}": -1})}


def _on_front(row: dict, fixed: list[dict]) -> bool:
    return not any(f["size_mb"] <= row["size_mb"] and f["wer_pct"] < row["wer_pct"] for f in fixed)


def main() -> None:
    import edgeq
    from edgeq.bench import BenchSettings, run_bench
    from edgeq.bench.env import fingerprint
    from edgeq.bench.report import rows
    from edgeq.bench.runner import make_systems
    from edgeq.builder.mixed import build_auto
    from edgeq.format.bundle import is_bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot-only", action="store_true", help="redraw results/auto_vs_front.png from the JSON")
    ap.add_argument("--budgets", default="45,50,56,65", help="--max-size values in MB")
    ap.add_argument("--front", default="fp32,onnx-int8-dynamic,onnx-int4,hqq-int4-g64",
                    help="fixed recipes to measure alongside")
    ap.add_argument("--calibration", type=Path, default=SPEECH_DEV / "other")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--dataset", default=str(SPEECH_DEV / "LibriSpeech"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeq-auto"))
    ap.add_argument("--rescan", action="store_true")
    args = ap.parse_args()
    if args.plot_only:
        print(f"wrote {plot(json.loads((RESULTS / 'auto_vs_front.json').read_text()))}")
        return
    require_shared()
    budgets = [float(b) for b in args.budgets.split(",")]
    fixed_names = [n for n in args.front.split(",") if n]
    scanned, scan_seconds = _scan(args)
    bundles, build_s = {}, {}
    for name in fixed_names:
        out = args.work / "bundles" / name
        start = time.perf_counter()
        if not is_bundle(out):
            edgeq.build(name, model=str(WHISPER_BASE), out=out, language="en", force=True)
        build_s[name] = time.perf_counter() - start
        bundles[name] = out
    for mb in budgets:
        name = f"auto-{mb:g}MB"
        start = time.perf_counter()
        bundle, _ = build_auto(str(WHISPER_BASE), mb, str(args.calibration), out=args.work / "bundles" / name,
                               language="en", force=True, scanned=scanned)
        build_s[name] = time.perf_counter() - start
        bundles[name] = bundle.path
    settings = BenchSettings(dataset=args.dataset, out=args.work / "bench", threads=args.threads, force=True)
    summaries = run_bench(make_systems([str(p) for p in bundles.values()], []), settings,
                          progress=lambda name, i, n: print(f"\r{name}: {i}/{n}", end="", flush=True))
    print()
    table = rows(summaries)
    by_name = {r["system"]: r for r in table}
    fixed = [by_name[n] for n in fixed_names if "failed" not in by_name.get(n, {"failed": 1})]
    for name, path in bundles.items():
        row = by_name.get(name, {})
        row["build_s"] = round(build_s[name], 1)
        if name.startswith("auto-") and "failed" not in row:
            row["allocation"] = _allocation(Path(path))
            row["on_or_beyond_front"] = _on_front(row, fixed)
    fp32 = by_name.get("fp32", {}).get("wer_pct")
    result = {"model": "whisper-base", "dataset": args.dataset, "calibration": str(args.calibration),
              "samples": args.samples, "scan_s": round(scan_seconds, 1), "fp32_wer_pct": fp32,
              "rows": table, "summaries": summaries, "env": fingerprint()}
    path = write_json("auto_vs_front.json", result)
    plot(result)
    for r in sorted(table, key=lambda r: r.get("size_mb") or 0):
        if "failed" in r:
            print(f"{r['system']:22} FAILED {r['failed']}")
            continue
        front = {True: "on/beyond front", False: "behind front"}.get(r.get("on_or_beyond_front"), "fixed")
        delta = f"{r['wer_pct'] - fp32:+5.2f}" if fp32 is not None else ""
        alloc = r.get("allocation", {})
        print(f"{r['system']:22} {r['size_mb']:7.1f} MB  WER {r['wer_pct']:5.2f}% ({delta})  RTF {r['rtf']:.3f}  "
              f"{front}  {alloc.get('table', '')} {alloc.get('linears', '')}")
    print(f"wrote {path}")


def plot(result: dict) -> Path:
    """WER against bundle size: the fixed recipes (the front) and the auto bundles, in one picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "failed" not in r]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for auto, style in ((False, dict(marker="o", color="tab:blue", label="fixed recipes")),
                        (True, dict(marker="*", s=140, color="tab:red", label="--recipe auto --max-size MB"))):
        pts = [r for r in rows if r["system"].startswith("auto-") == auto]
        ax.scatter([r["size_mb"] for r in pts], [r["wer_pct"] for r in pts], **style)
        for r in pts:
            ax.annotate(r["system"], (r["size_mb"], r["wer_pct"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(result["fp32_wer_pct"], color="grey", linestyle=":", label="fp32 WER")
    ax.set_xscale("log")
    ax.set_xlabel("bundle size, MB (log)")
    ax.set_ylabel("WER %, speech-dev LibriSpeech part")
    ax.set_title("whisper-base: mixed precision against the fixed recipes (one run)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = RESULTS / "auto_vs_front.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    main()
