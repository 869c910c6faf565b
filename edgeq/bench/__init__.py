"""`edgeq bench`: WER, memory and latency of bundles (or float checkpoints) on a dataset.

Each system runs in its own process (`edgeq.bench.worker`) so its peak memory is its own; every
utterance's result is appended to a JSON-lines file and flushed as it is produced, so a killed run
loses nothing it measured and `--resume` continues where it stopped.
"""

from edgeq.bench.runner import BenchSettings, System, run_bench
from edgeq.bench.summary import load_records, summarize

__all__ = ["BenchSettings", "System", "run_bench", "load_records", "summarize"]
