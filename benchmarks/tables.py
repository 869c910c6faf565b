"""Render the JSON in benchmarks/results/ as the markdown tables of the README.

    python benchmarks/tables.py > /tmp/tables.md
    python benchmarks/tables.py --readme      # rewrite the tables between the README's markers

Reads only what the other scripts wrote; every number in the README comes from here.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys

from _common import REPO, RESULTS


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
    return (f"{cpu.get('model', '?')} ({cpu.get('logical_cores', '?')} logical cores; "
            f"key flags: {', '.join(flags) if flags else 'none'}), {env.get('os', '')} {env.get('arch', '')}; "
            f"{versions}")


def sizes() -> None:
    data = _load("sizes.json")
    if not data:
        return
    by = {}
    for r in data["rows"]:
        by.setdefault(r["recipe"], {})[r["model"]] = r
    print("| recipe | whisper-base MB | smaller than fp32 | whisper-small MB | smaller than fp32 |")
    print("|---|---|---|---|---|")
    for name in sorted(by):
        cells = []
        for model in ("base", "small"):
            r = by[name].get(model)
            if r is None or "error" in r:
                cells += ["—", "—" if r is None else "error"]
            else:
                cells += [f"{r['weights_mb']:.1f}", f"{r['reduction_pct'] if abs(r['reduction_pct']) >= 0.05 else 0.0:.1f} %"]
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    print(f"\nweights only (config, tokenizer ≈ 3 MB more); machine: {machine(data['env'])}\n")


def _table(headers: list[str], rows: list[list[str]]) -> None:
    """A markdown table; a short row (a failed system) is padded with empty cells."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(row + [""] * (len(headers) - len(row))) + " |")


def recipes() -> None:
    data = _load("recipes_whisper-base.json")
    if not data:
        return
    _table(["bundle", "size MB", "WER %", "S/D/I", "p50 s", "RTF", "ms/token", "load s", "peak RSS MB"], [
        [r["system"], f"failed: {r['failed']}"] if "failed" in r else
        [r["system"], _f(r["size_mb"], ".1f"), f"{r['wer_pct']:.2f}", r["sdi"], f"{r['p50_s']:.2f}", f"{r['rtf']:.3f}",
         _f(r["ms_per_token"], ".1f"), f"{r['load_s']:.2f}", _f(r["peak_rss_mb"], ".0f")]
        for r in data["rows"]
    ])
    s = next((x for x in data["summaries"] if "failed" not in x), None)
    if s:
        print(f"\n{s['utterances']} utterances, {s['settings'].get('threads')} threads; machine: {machine(s['env'])}\n")


def compare(name: str, wer: bool = True) -> None:
    """A compare_systems.py result; without the WER column for random weights (meaningless there)."""
    data = _load(name)
    if not data:
        return
    head = ["system"] + (["WER %"] if wer else []) + ["RTF", "tokens", "load s", "peak RSS MB", "size MB", "imports torch"]
    _table(head, [
        [r["system"], f"error: {r['error']}"] if "error" in r else
        [r["system"]] + ([f"{r['wer_pct']:.2f}"] if wer else []) +
        [f"{r['rtf']:.3f}", _f(r.get("tokens"), "d"), f"{r['load_s']:.2f}", f"{r['peak_rss_mb']:.0f}",
         _f(r["size_mb"], ".1f"), "yes" if r["torch_imported"] else "no"]
        for r in data["rows"]
    ])
    ok = [r for r in data["rows"] if "error" not in r]
    if ok:
        print(f"\n{ok[0]['utterances']} utterances, {ok[0]['audio_s']:.1f} s of audio, {data['threads']} threads, "
              f"one process per system; machine: {machine(data['env'])}\n")


def overhead() -> None:
    data = _load("harness_overhead.json")
    if data:
        print("harness overhead: " + json.dumps({k: v for k, v in data.items() if k != "env"}) + "\n")


def render() -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        for part in (sizes, recipes):
            part()
        compare("compare_systems_whisper-small-random.json", wer=False)
        compare("compare_systems.json")
        overhead()
    return buf.getvalue()


# README marker -> (first line of the table, first word of the line that ends it)
MARKERS = {
    "SIZES_TABLE": ("| recipe | whisper-base MB", "weights only"),
    "RECIPES_TABLE": ("| bundle | size MB | WER", "8 utterances"),
    "SMALL_TABLE": ("| system | RTF", "3 utterances"),
    "COMPARE_TABLE": ("| system | WER", "24 utterances"),
}


def update_readme(text: str) -> None:
    lines = text.splitlines()
    readme = REPO / "README.md"
    doc = readme.read_text()
    for key, (start, end) in MARKERS.items():
        i = next((k for k, line in enumerate(lines) if line.startswith(start)), None)
        if i is None:
            continue
        j = next(k for k in range(i, len(lines)) if lines[k].startswith(end))
        block = "\n".join(lines[i:j + 1])
        replacement = f"<!-- {key} -->\n{block}\n<!-- /{key} -->"
        doc = re.sub(rf"<!-- {key} -->.*?<!-- /{key} -->", lambda m, r=replacement: r, doc, flags=re.S)
    readme.write_text(doc)


if __name__ == "__main__":
    text = render()
    if "--readme" in sys.argv:
        update_readme(text)
    else:
        print(text, end="")
