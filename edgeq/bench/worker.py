"""One system measured in its own process: `python -m edgeq.bench.worker JOB_JSON`.

It talks to the parent through stdout, one JSON object per line ({"progress": i, "total": n} or
{"fatal": message}); results go straight to the results file, one line per utterance, flushed
and fsynced as they are produced.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from edgeq.errors import EdgeqError
from edgeq.schema import to_dict
from edgeq.util import one_line

MB = 2**20


def _say(**msg) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


class ResultsFile:
    def __init__(self, path: Path):
        self.path = path
        _drop_cut_line(path)
        self._f = open(path, "a", encoding="utf-8")
        self._parent = os.getppid()

    def write(self, record: dict) -> None:
        if os.getppid() != self._parent:
            # Our runner died (SIGKILL, OOM, a Ray worker killed mid-task): it no longer holds the
            # folder's lock, so a retry may already be resuming this file. Stop before writing next to it.
            raise SystemExit(f"{self.path}: the process that started this bench died; stopping")
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _drop_cut_line(path: Path) -> None:
    """A run killed mid-write leaves a last line without its newline: cut it off before appending,
    or the next record would be glued to it and the whole file would stop parsing."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def _load_system(system: dict, job: dict):
    if system["kind"] == "bundle":
        from edgeq.runtime.transcriber import load

        t = load(system["ref"], device=job["device"], threads=job.get("threads"),
                 language=job.get("language"), verify=True, spinning=job.get("spinning", "off"))
        m = t.bundle.manifest
        info = {
            "kind": "bundle", "path": str(Path(system["ref"]).resolve()), "recipe": m.recipe.name,
            "backend": to_dict(m.backend), "runtime": m.runtime, "manifest_sha256": t.bundle.manifest_sha256,
            "source": m.source.model, "size_mb": m.size.bundle_bytes / 1e6,
            "weights_mb": m.size.weights_bytes / 1e6, "reduction_pct": m.size.reduction_pct,
        }
        return t, info
    from edgeq.torch_runtime import load_checkpoint

    t, size = load_checkpoint(system["ref"], device=job["device"], threads=job.get("threads"),
                              language=job.get("language"))
    return t, {"kind": "model", "id": system["ref"], "runtime": "torch", "recipe": "checkpoint-fp32",
               "size_mb": size / 1e6, "weights_mb": size / 1e6}


def _done_ids(path: Path, identity: dict) -> set[str]:
    from edgeq.bench.summary import load_records

    records = load_records(path)
    runs = [r for r in records if r.get("type") == "run"]
    if runs:
        old = runs[-1]
        from edgeq.runtime.decoding import STUDY_OPTIONS

        # Runs from before decode options were recorded used the study's decoding.
        old["settings"].setdefault("decode", STUDY_OPTIONS.to_dict())
        old["settings"].setdefault("spinning", "off")  # and before spinning was, with it off
        for key in ("dataset", "limit", "device", "threads", "spinning", "decode", "noise"):
            if old["settings"].get(key) != identity["settings"].get(key):
                raise EdgeqError(f"{path}: cannot resume, it was run with {key}={old['settings'].get(key)!r}")
        if old["system_info"].get("manifest_sha256") != identity["system_info"].get("manifest_sha256"):
            raise EdgeqError(f"{path}: cannot resume, it measured another bundle (manifest differs)")
    return {r["id"] for r in records if r.get("type") in ("utterance", "error")}


def run(job: dict) -> None:
    from edgeq.bench.env import fingerprint, gpu_info
    from edgeq.bench.memory import MemorySampler, os_peak_rss_bytes
    from edgeq.data.datasets import open_dataset
    from edgeq.data.wer import word_errors
    from edgeq.errors import AudioError
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.decoding import STUDY_OPTIONS, options_from_dict

    results = Path(job["results"])
    with MemorySampler(enabled=job.get("sampler", True)) as mem:
        rss_before = mem.rss()
        mem.window()
        t0 = time.perf_counter()
        transcriber, info = _load_system(job["system"], job)
        load_s = time.perf_counter() - t0
        load = {"seconds": load_s, "rss_before_mb": rss_before / MB, "rss_after_mb": mem.rss() / MB,
                "peak_rss_mb": mem.window() / MB,
                # ONNX bundles: whether this load made the device's prepared copy (a first load)
                "prepared_copy": getattr(getattr(transcriber, "engine", None), "prepared_copy", None)}
        dataset = open_dataset(job["dataset"], limit=job.get("limit"))
        options = options_from_dict(job["decode"]) if job.get("decode") else STUDY_OPTIONS
        settings = {k: job.get(k) for k in ("dataset", "limit", "device", "threads", "warmup", "language")}
        settings["spinning"] = job.get("spinning", "off")
        settings["decode"] = options.to_dict()
        settings["sampler"] = job.get("sampler", True)
        settings["noise"] = job.get("noise")
        mixer = _noise_mixer(job.get("noise"), dataset)
        settings["threads_used"] = _threads_used(info, job)  # what ran, also when --threads was left out
        header = {"type": "run", "system": job["system"]["name"], "system_info": info, "settings": settings,
                  "load": load, "env": {**fingerprint(), "gpu": gpu_info()},
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pid": os.getpid()}
        if job.get("shard") is not None:
            header["shard"] = job["shard"]  # outside settings: a merged cell's summary reads like a local run's
        done = _done_ids(results, header) if job.get("resume") and results.exists() else set()
        out = ResultsFile(results)
        out.write(header)
        shard = job.get("shard")
        utterances = dataset.utterances if shard is None else dataset.utterances[shard[0]:shard[1]]
        todo = [u for u in utterances if u.id not in done]
        _warm_up(transcriber, todo or list(utterances), job.get("warmup", 1), load_audio, options)
        mem.window()
        for i, utt in enumerate(todo):
            _say(progress=i, total=len(todo), id=utt.id)
            try:
                t_audio = time.perf_counter()
                audio = load_audio(utt.audio)
                audio_load_s = time.perf_counter() - t_audio
                if mixer is not None:  # not timed: the device would hear noisy audio, not mix it
                    audio = mixer.mix(audio, utt.id, utt.audio)
                result = transcriber.transcribe(audio, options=options)
            except AudioError as err:
                out.write({"type": "error", "id": utt.id, "audio": str(utt.audio), "error": str(err)})
                continue
            t = result.timings
            record = {
                "type": "utterance", "id": utt.id, "audio": str(utt.audio), "audio_s": result.audio_s,
                "reference": utt.reference, "hypothesis": result.text, "language": result.language,
                "windows": result.windows, "segments": len(result.segments), "truncated": result.truncated,
                "gaps": [asdict(g) for g in result.gaps],
                "audio_load_s": audio_load_s, "latency_s": t.total_s, "features_s": t.features_s,
                "encoder_s": t.encoder_s, "decode_s": t.decode_s, "per_token_s": t.per_token_s,
                "tokens": t.tokens, "decoder_steps": t.decoder_steps,
                "tokens_per_s": t.tokens / t.decode_s if t.decode_s else None,
                "rtf": t.total_s / result.audio_s if result.audio_s else None,
                "peak_rss_mb": mem.window() / MB,
            }
            if utt.reference is None:
                record["wer_error"] = "no reference"
            else:
                try:
                    record.update(word_errors(utt.reference, result.text).to_dict())
                except ValueError as err:
                    record["wer_error"] = str(err)
            out.write(record)
        _say(progress=len(todo), total=len(todo))
        end = {"type": "end", "remaining": 0, "peak_rss_sampled_mb": mem.peak / MB,
               "peak_rss_os_mb": (os_peak_rss_bytes() or 0) / MB, "cuda_peak_allocated_mb": _cuda_peak()}
        out.write(end)
        out.close()


def _noise_mixer(noise: dict | None, dataset):
    if noise is None:
        return None
    from edgeq.bench.noise import NoiseMixer

    return NoiseMixer(noise["snr_db"], noise["source"], others=[u.audio for u in dataset.utterances])


def _warm_up(transcriber, utterances, n: int, load_audio, options) -> None:
    """Run `n` transcriptions first (not recorded): lazy init, allocator and cache growth."""
    from edgeq.errors import AudioError

    for utt in utterances[: max(n, 0) * 3]:
        if n <= 0:
            return
        try:
            transcriber.transcribe(load_audio(utt.audio), options=options)
            n -= 1
        except AudioError:
            continue


def _threads_used(info: dict, job: dict) -> int | None:
    if info.get("runtime") == "onnxruntime":
        import psutil

        return job.get("threads") or psutil.cpu_count(logical=False)  # intra_op 0: physical cores
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else job.get("threads")


def _cuda_peak() -> float | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / MB


def main(argv: list[str]) -> int:
    job = json.loads(argv[1])
    try:
        run(job)
    except EdgeqError as err:
        _say(fatal=one_line(err))
        return 1
    return 0


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main(sys.argv))
