"""Build recipes and bench them on a CUDA device, one after the other, as a user would with the CLI.

Run on a machine with an NVIDIA GPU (the workplace lends one for minutes at a time, so the run is
bounded by --budget-s and every result is written as it comes):

    python benchmarks/cuda_check.py --model ../shared/models/whisper-base \
        --dataset ../shared/data/speech-dev --out cuda-check

Builds run first, on the CPU, several at once (a build is CPU work: load, quantize, write); then
the benches, one at a time, with nothing else running: a GPU bench of a model this small is bound
by the CPU that launches its kernels. (The first run, 2026-12-04 on an H200, benched beside four
builds; its timings, float16 at a third of float32's speed, are not read as speed.) Each step is the
`edgeq` command line in a subprocess: its exit code, wall time (and on failure its last output
line, the one-line error) are recorded in steps.jsonl beside each bench's own results folder, and
summary.json collects every bench's summary (with the host's CPU, GPU and library versions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeq.bench.records import check_summary

# Order is priority: what the README recommends for a Jetson first, then the study's grid.
# quanto-int4 and quanto-int2 come last: on CUDA optimum-quanto compiles its CUDA kernels the first
# time packed 4/2-bit weights are used (README, Known limits), which outlasted a 50 s bench there.
DEFAULT_RECIPES = ["fp16", "bnb-nf4", "bnb-int8", "bnb-fp4", "bnb-nf4-dq", "hqq-int4-g64", "quanto-int8-dynamic",
                   "quanto-int8-weights", "hqq-int8-g64", "hqq-int3-g64", "quanto-float8", "hqq-int2-g64", "fp32",
                   "pytorch-int8-dynamic", "onnx-fp16", "quanto-int4", "quanto-int2"]
EDGEQ = [sys.executable, "-c", "import sys; from edgeq.cli import main; sys.argv[0] = 'edgeq'; main()"]


def run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 1), env=env).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    row = {"rc": rc, "wall_s": round(time.perf_counter() - t0, 1)}
    if rc != 0:  # the one-line error a user would see (a success's last line is the table's footer)
        row["last"] = lines[-1][-300:] if lines else ""
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=int)
    p.add_argument("--build-jobs", type=int, default=4)
    p.add_argument("--budget-s", type=float, default=330, help="stop starting new steps after this many seconds")
    a = p.parse_args()
    start = time.perf_counter()
    left = lambda: a.budget_s - (time.perf_counter() - start)  # noqa: E731
    a.out.mkdir(parents=True, exist_ok=True)
    steps = (a.out / "steps.jsonl").open("a")

    def record(row: dict) -> None:
        steps.write(json.dumps(row) + "\n")
        steps.flush()
        print(json.dumps(row), flush=True)

    limit = ["--limit", str(a.limit)] if a.limit else []
    bench_common = ["-d", a.dataset, "--device", a.device, "--warmup", "1", "--force", *limit]

    # Builds share the CPU: each gets its share of the cores, not all of them (the benches, one at
    # a time, keep the default).
    build_env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // a.build_jobs))}

    def build(recipe: str) -> tuple[str, dict]:
        if left() < 20:
            return recipe, {"rc": "skipped (budget)"}
        cmd = [*EDGEQ, "build", "-r", recipe, "-m", a.model, "-o", str(a.out / "bundles" / recipe), "--force"]
        return recipe, run(cmd, a.out / f"build-{recipe}.log", left(), build_env)

    summaries = {}

    def measured(folder: Path) -> dict:
        for f in folder.glob("*.summary.json"):
            s = summaries[folder.name] = check_summary(json.loads(f.read_text()), str(f))
            if "failed" in s:
                return {"failed": s["failed"]}
            return {"wer_pct": s["wer"]["wer_pct"], "rtf": s["rtf"], "tokens_per_s": s["tokens_per_s"],
                    "size_mb": s["size_mb"], "load_s": s["load"]["seconds"],
                    "cuda_peak_mb": s["memory"]["cuda_peak_allocated_mb"],
                    "peak_rss_mb": s["memory"]["peak_rss_os_mb"], "utterances": s["utterances"], "errors": s["errors"]}
        return {}

    recipes = [r for r in a.recipes.split(",") if r]
    built = []
    with ThreadPoolExecutor(a.build_jobs) as pool:
        for recipe, b in pool.map(build, recipes):
            record({"step": "build", "what": recipe, **b})
            if b["rc"] == 0:
                built.append(recipe)
    # The float checkpoint first: the baseline every bundle's WER is read against.
    r = run([*EDGEQ, "bench", "-m", a.model, *bench_common, "-o", str(a.out / "bench-checkpoint")],
            a.out / "bench-checkpoint.log", left())
    record({"step": "bench", "what": "checkpoint", **r, **measured(a.out / "bench-checkpoint")})
    for recipe in built:
        if left() < 10:
            record({"step": "bench", "what": recipe, "rc": "skipped (budget)"})
            continue
        r = run([*EDGEQ, "bench", str(a.out / "bundles" / recipe), *bench_common, "-o", str(a.out / f"bench-{recipe}")],
                a.out / f"bench-{recipe}.log", left())
        record({"step": "bench", "what": recipe, **r, **measured(a.out / f"bench-{recipe}")})
    steps.close()
    (a.out / "summary.json").write_text(json.dumps(summaries, indent=1))
    shutil.rmtree(a.out / "bundles", ignore_errors=True)  # weights: too large to bring back, rebuilt in seconds


if __name__ == "__main__":
    main()
