"""One sweep cell benched as several shards (slices of the dataset) and merged back into one cell.

Each shard is an ordinary `edgeq bench` folder of its own, `BENCH/shards/START-STOP/`, resumed
utterance by utterance like any bench: a shard task that is retried (its worker died) continues
where its results file stops, so nothing is measured twice. Only when every shard is complete does
the driver merge them, in dataset order, into the files a local run writes in `BENCH/` (results
.jsonl, .summary.json, summary.json): the cache reads a merged cell like any other, and WER, word
counts and texts are the same as a local run's; timings are those of the shard that measured each
utterance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeq.bench.summary import load_records, summarize
from edgeq.errors import EdgeqError

SHARDS = "shards"


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) slices of `n` utterances, `size` each (the last may be shorter)."""
    if size <= 0:
        raise EdgeqError(f"--shard-size {size}: must be a positive number of utterances")
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def shard_dir(bench: Path, shard: tuple[int, int]) -> Path:
    return bench / SHARDS / f"{shard[0]:06d}-{shard[1]:06d}"


def merge_shards(bench: Path, system: str, shards: list[tuple[int, int]], ids: list[str]) -> dict:
    """Write the merged results of `system` into `bench` and return its summary.

    `ids` are the dataset's utterance ids in order: each must be measured exactly once, or the
    shards are not this dataset's (a dataset that changed under the sweep) and nothing is written.
    """
    records: list[dict] = []
    for shard in shards:
        path = shard_dir(bench, shard) / f"{system}.jsonl"
        kept = _last_per_id(load_records(path))
        if not summarize(kept, str(path))["complete"]:
            raise EdgeqError(f"{path}: shard not finished; run the sweep again to resume it")
        records += kept
    measured = [r["id"] for r in records if r.get("type") in ("utterance", "error")]
    if sorted(measured) != sorted(ids):
        missing, extra = sorted(set(ids) - set(measured)), sorted(set(measured) - set(ids))
        raise EdgeqError(f"{bench / SHARDS}: the shards do not hold this dataset's utterances once each "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}); delete that folder and run again")
    results = bench / f"{system}.jsonl"
    _write_atomic(results, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    summary = summarize(records, str(results))
    _write_atomic(bench / f"{system}.summary.json", json.dumps(summary, indent=1) + "\n")
    _write_atomic(bench / "summary.json", json.dumps([summary], indent=1) + "\n")
    return summary


def resumed(bench: Path, system: str, shards: list[tuple[int, int]]) -> int:
    """How many shards took more than one run (a worker died, or an earlier sweep was cut)."""
    n = 0
    for shard in shards:
        path = shard_dir(bench, shard) / f"{system}.jsonl"
        n += sum(r.get("type") == "run" for r in load_records(path)) > 1
    return n


def _last_per_id(records: list[dict]) -> list[dict]:
    """A resumed shard never repeats an id (the worker skips done ones); if one is there twice
    anyway, the last counts, as in `summarize`, and the merged file holds it once."""
    last = {r["id"]: i for i, r in enumerate(records) if r.get("type") in ("utterance", "error")}
    return [r for i, r in enumerate(records) if r.get("type") not in ("utterance", "error") or last[r["id"]] == i]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
