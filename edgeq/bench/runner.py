"""Running several systems one after the other, each in a fresh worker process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeq.bench.report import load_summaries
from edgeq.bench.summary import load_records, summarize
from edgeq.errors import EdgeqError
from edgeq.runtime.decoding import STUDY_OPTIONS, DecodeOptions
from edgeq.util import LockHeld, exclusive_lock, os_reason


@dataclass(frozen=True)
class System:
    kind: str  # "bundle" or "model"
    ref: str  # bundle folder, or checkpoint id/folder
    name: str


@dataclass(frozen=True)
class BenchSettings:
    dataset: str
    out: Path
    limit: int | None = None
    device: str = "cpu"
    threads: int | None = None
    spinning: str = "off"  # ONNX Runtime's decoder threads (edgeq.spec.protocols.Spinning)
    warmup: int = 1
    resume: bool = False
    force: bool = False
    language: str | None = None
    sampler: bool = True
    decode: DecodeOptions = STUDY_OPTIONS  # greedy, no timestamps, no fallback: the study's numbers
    noise_snr_db: float | None = None  # mix noise into each utterance at this SNR (edgeq.bench.noise)
    noise_source: str = "white"
    # Only dataset.utterances[start:stop]: one shard of a distributed sweep (edgeq.sweep.shards).
    shard: tuple[int, int] | None = None


def make_systems(bundles: list[str], models: list[str]) -> list[System]:
    systems, names = [], set()
    for kind, refs in (("bundle", bundles), ("model", models)):
        for ref in refs:
            base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(ref.rstrip("/")).name) or kind
            name, n = base, 2
            while name in names:
                name, n = f"{base}-{n}", n + 1
            names.add(name)
            systems.append(System(kind, ref, name))
    if not systems:
        raise EdgeqError("nothing to measure: pass bundle folders and/or --model ID_OR_DIR")
    return systems


def _preflight(systems: list[System], settings: BenchSettings, progress=None) -> None:
    """Fail in one line before any process starts or any folder is made: bad dataset, bad bundle."""
    from edgeq.data.datasets import open_dataset
    from edgeq.format.bundle import open_bundle

    open_dataset(settings.dataset, limit=settings.limit, progress=progress)  # downloads librispeech:* once
    if settings.noise_snr_db is not None:
        from edgeq.bench.noise import check_noise_source

        check_noise_source(settings.noise_source)
    for s in systems:
        if s.kind == "bundle":
            open_bundle(s.ref, verify_hashes=False)  # the worker checks hashes when it loads


def _check_results(systems: list[System], settings: BenchSettings) -> None:
    """Results of an earlier run in the way (checked while holding the folder's lock)."""
    for s in systems:
        results = settings.out / f"{s.name}.jsonl"
        if results.exists() and not (settings.resume or settings.force):
            raise EdgeqError(f"{results} exists: pass --resume to continue that run or --force to start over")


LOCK = ".edgeq-bench.lock"


def run_bench(systems: list[System], settings: BenchSettings,
              progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Measure each system; one run at a time owns `settings.out` (an OS lock, dropped when the
    process dies, so a killed run never blocks the next one)."""
    _preflight(systems, settings, progress)
    try:
        settings.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdgeqError(f"{settings.out}: cannot create the results folder ({os_reason(err)}); choose another -o") from None
    try:
        with exclusive_lock(settings.out / LOCK):
            return _run_locked(systems, settings, progress)
    except LockHeld:
        raise EdgeqError(
            f"{settings.out}: another edgeq bench is writing there (it holds {LOCK}); "
            "wait for it or pass another -o"
        ) from None
    except OSError as err:
        raise EdgeqError(f"{settings.out}: cannot write results ({os_reason(err)}: {err.filename or settings.out})") from None


def _run_locked(systems: list[System], settings: BenchSettings, progress) -> list[dict]:
    _check_results(systems, settings)
    summaries = []
    for system in systems:
        results = settings.out / f"{system.name}.jsonl"
        if settings.force and not settings.resume and results.exists():
            results.unlink()
        job = {
            "system": {"kind": system.kind, "ref": system.ref, "name": system.name},
            "results": str(results), "dataset": settings.dataset, "limit": settings.limit,
            "device": settings.device, "threads": settings.threads,
            "spinning": settings.spinning, "warmup": settings.warmup,
            "resume": settings.resume, "language": settings.language, "sampler": settings.sampler,
            "decode": settings.decode.to_dict(),
            "noise": None if settings.noise_snr_db is None
            else {"snr_db": settings.noise_snr_db, "source": settings.noise_source},
            "shard": None if settings.shard is None else list(settings.shard),
        }
        fatal = _run_worker(job, system.name, progress)
        if fatal:
            summaries.append({"system": system.name, "failed": fatal})
            continue
        summary = summarize(load_records(results), str(results))
        summary_path = settings.out / f"{system.name}.summary.json"
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
        summaries.append(summary)
    _update_summary(settings.out / "summary.json", [s for s in summaries if "failed" not in s])
    return summaries


def _update_summary(path: Path, measured: list[dict]) -> None:
    """summary.json holds the last measurement of each system: this run's measured ones replace
    theirs, the others stay. A system that failed here (a refused --resume, a broken bundle)
    measured nothing, so it never overwrites what an earlier run measured."""
    if not measured:
        return
    try:
        earlier = load_summaries([path]) if path.is_file() else []
    except EdgeqError:
        earlier = []  # unreadable: this run's results replace it
    names = {s["system"] for s in measured}
    kept = [s for s in earlier if s["system"] not in names and "failed" not in s]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(kept + measured, indent=1) + "\n")
    os.replace(tmp, path)


def _run_worker(job: dict, name: str, progress) -> str | None:
    # The worker's stderr goes to a file, not a pipe: nothing reads a pipe while the run goes on,
    # and a library that logs on every call (bitsandbytes warns per Linear8bitLt forward on a
    # CPU) filled the 64 KB pipe buffer and blocked the worker forever.
    log_path = Path(job["results"]).with_suffix(".stderr.log")
    with open(log_path, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeq.bench.worker", json.dumps(job)],
            stdout=subprocess.PIPE, stderr=err, text=True,
        )
        fatal = None
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "fatal" in msg:
                    fatal = msg["fatal"]
                elif progress and "progress" in msg:
                    progress(name, msg["progress"], msg["total"])
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
    if rc != 0 and not fatal:
        tail = [line for line in _tail(log_path).splitlines() if line.strip()]
        fatal = f"worker exited with code {rc}: {tail[-1] if tail else 'no output'} (log: {log_path})"
    return fatal


def _tail(path: Path, size: int = 8192) -> str:
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - size))
        return f.read().decode("utf-8", "replace")

