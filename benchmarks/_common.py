"""Shared helpers for the benchmark scripts (each script writes JSON into benchmarks/results/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("EDGEQ_SHARED", REPO.parent / "shared"))
WHISPER_BASE = SHARED / "models" / "whisper-base"
SPEECH_DEV = SHARED / "data" / "speech-dev"
RESULTS = HERE / "results"

# whisper-small's published shape (openai/whisper-small config.json); the weights cannot be
# fetched here, so size and speed are measured on random weights of exactly this shape.
WHISPER_SMALL_SHAPE = {
    "d_model": 768, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 12,
    "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
}


def whisper_small_random(folder: Path, seed: int = 0) -> Path:
    """A whisper-small-shaped checkpoint with random weights and whisper-base's tokenizer."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    base = json.loads((WHISPER_BASE / "config.json").read_text())
    base.update(WHISPER_SMALL_SHAPE)
    base["dtype"] = "float32"
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**base))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        if (WHISPER_BASE / name).is_file():
            shutil.copyfile(WHISPER_BASE / name, folder / name)
    (folder / "PROVENANCE.md").write_text("Random weights in whisper-small's shape, built by edgeq benchmarks.\n")
    return folder


def cpuid_mask_env(mask: str, folder: Path) -> dict:
    """The variables that run a process with CPUID masked to `mask` ("avx2" or "vnni"): cpuid_mask.c,
    built into `folder` (again when the source is newer), preloaded; edgeq's cache in `folder` too,
    since the prepared graphs' key reads /proc/cpuinfo, which the mask does not change."""
    source = HERE / "cpuid_mask.c"
    library = folder / "cpuid_mask.so"
    if not library.is_file() or library.stat().st_mtime < source.stat().st_mtime:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"], check=True)
    return {"LD_PRELOAD": str(library), "EDGEQ_CPUID_MASK": mask, "EDGEQ_CACHE": str(folder / f"edgeq-cache-cpuid-{mask}")}


def add_cpu_mask_option(ap, does: str = "run") -> None:
    """The --cpu-mask option of the benchmarks that can run another CPU's kernels (cpuid_mask.c)."""
    ap.add_argument("--cpu-mask", choices=("avx2", "vnni"),
                    help=f"{does} with CPUID masked to this CPU's extensions (cpuid_mask.c; needs gcc and a CPU "
                         "with CPUID faulting)")


def run_masked(mask: str | None) -> None:
    """For an in-process benchmark's --cpu-mask: return at once without a mask, or when this process
    already runs under it; otherwise run this script again with CPUID masked (cpuid_mask_env), which
    must be preloaded when the process starts, and never return."""
    if not mask or os.environ.get("EDGEQ_CPUID_MASK") == mask:
        return
    env = {**os.environ, **cpuid_mask_env(mask, Path(tempfile.gettempdir()) / "edgeq-cpuid-mask")}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def median_run_ms(session, feeds: dict, runs: int, warmup: int = 20) -> float:
    """An ONNX Runtime session's median time of one run, in ms, over `runs` after `warmup`."""
    import statistics
    import time

    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def optimized_op_counts(model: Path, threads: int | None = None) -> dict[str, int]:
    """The nodes of the ONNX graph at `model` as ONNX Runtime's CPU provider runs them (after its
    optimizations and fusions), by op type, the commonest first."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3  # not the warning that the saved graph is for this CPU: it is only counted
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def results_path(name: str) -> Path:
    """A bare file name lives in benchmarks/results; a path (with a folder) is taken as given."""
    return RESULTS / name if Path(name).name == name else Path(name)


def write_json(name: str, data) -> Path:
    path = results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def require_shared() -> None:
    if not (WHISPER_BASE / "model.safetensors").is_file():
        raise SystemExit(f"needs {WHISPER_BASE} (set EDGEQ_SHARED)")


def compile_edgeq(env: dict | None = None) -> None:
    """Write edgeq's bytecode where workers import it from, as `pip install` does: an editable install
    under PYTHONDONTWRITEBYTECODE (set on these machines) otherwise compiles edgeq's device-side
    modules in every worker, ~50 ms of a 0.3 s load that peers installed from wheels never pay."""
    code = "import compileall, os, edgeq; compileall.compile_dir(os.path.dirname(edgeq.__file__), quiet=1)"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
