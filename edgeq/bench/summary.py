"""From per-utterance JSON lines to one summary per system (and tables of several)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from edgeq.bench.records import check_record
from edgeq.errors import EdgeqError
from edgeq.util import read_text

LATENCY_FIELDS = ("latency_s", "encoder_s", "per_token_s", "rtf", "tokens_per_s")


def load_records(path: str | Path) -> list[dict]:
    """Read a results file; a line cut by a crash (the last one) is ignored, not fatal."""
    path = Path(path)
    records = []
    lines = read_text(path, EdgeqError, "results file").splitlines()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            if n == len(lines) - 1:
                break  # written while the process died
            raise EdgeqError(f"{path}:{n + 1}: not a JSON line") from None
        records.append(check_record(record, f"{path}:{n + 1}"))
    return records


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return math.nan
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "min": None, "max": None}
    return {
        "mean": sum(values) / len(values),
        "p50": _percentile(values, 0.5),
        "p90": _percentile(values, 0.9),
        "min": min(values),
        "max": max(values),
    }


def summarize(records: list[dict], where: str = "results") -> dict:
    """One system's summary from its (checked: load_records) records."""
    runs = [r for r in records if r.get("type") == "run"]
    if not runs:
        raise EdgeqError(f"{where}: holds no run header (not a results file, or the run never started)")
    utts = {}
    for r in records:
        if r.get("type") == "utterance":
            utts[r["id"]] = r  # a resumed run may repeat an id: the last one counts
    errors = [r for r in records if r.get("type") == "error"]
    ends = [r for r in records if r.get("type") == "end"]
    scored = [u for u in utts.values() if u.get("ref_words")]
    ref_words = sum(u["ref_words"] for u in scored)
    subs = sum(u["substitutions"] for u in scored)
    dels = sum(u["deletions"] for u in scored)
    ins = sum(u["insertions"] for u in scored)
    audio = sum(u["audio_s"] for u in utts.values())
    compute = sum(u["latency_s"] for u in utts.values())
    last = runs[-1]
    end = ends[-1] if ends else {}
    peaks = [u["peak_rss_mb"] for u in utts.values() if u.get("peak_rss_mb") is not None]
    return {
        "system": last["system"],
        "utterances": len(utts),
        "errors": len(errors),
        "complete": bool(ends) and ends[-1].get("remaining", 0) == 0,
        "audio_s": audio,
        "wer": {
            "wer_pct": 100.0 * (subs + dels + ins) / ref_words if ref_words else None,
            "substitutions": subs, "deletions": dels, "insertions": ins, "ref_words": ref_words,
            "scored_utterances": len(scored),
        },
        "latency": {f: _stats([u[f] for u in utts.values() if u.get(f) is not None]) for f in LATENCY_FIELDS},
        "rtf": compute / audio if audio else None,
        "tokens_per_s": (sum(u["tokens"] for u in utts.values()) / sum(u["decode_s"] for u in utts.values()))
        if utts and sum(u["decode_s"] for u in utts.values()) else None,
        "load": last["load"],
        "memory": {
            "rss_before_load_mb": last["load"]["rss_before_mb"],
            "rss_after_load_mb": last["load"]["rss_after_mb"],
            "peak_rss_load_mb": last["load"]["peak_rss_mb"],
            "peak_rss_inference_mb": max(peaks) if peaks else None,
            "peak_rss_sampled_mb": end.get("peak_rss_sampled_mb"),
            "peak_rss_os_mb": end.get("peak_rss_os_mb"),
            "cuda_peak_allocated_mb": end.get("cuda_peak_allocated_mb"),
        },
        "size_mb": last["system_info"].get("size_mb"),
        "settings": last["settings"],
        "system_info": last["system_info"],
        "env": last["env"],
        "runs": len(runs),
    }
