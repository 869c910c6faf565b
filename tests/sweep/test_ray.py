"""`edgeq sweep --executor ray` on a local Ray cluster started here (2 CPUs): the merged table and
per-utterance records equal a local run's, a Ray worker killed mid-task is retried and resumes its
shard (no utterance lost or counted twice), and a dataset missing on a worker stops the sweep with
one line naming the node."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import ray
from helpers import assert_one_line_error, edgeq, tone_dataset

from edgeq.errors import DatasetError, EdgeqError

RECIPE = "pytorch-int8-dynamic"
N_UTTS = 7
TIMING = ("p50_s", "rtf", "peak_rss_mb")  # measured, so they differ between any two runs
# Per-utterance fields that are measurements (and where they were taken) rather than results.
MEASURED = {"audio_load_s", "latency_s", "features_s", "encoder_s", "decode_s", "per_token_s", "tokens_per_s",
            "rtf", "peak_rss_mb"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return tone_dataset(tmp_path_factory.mktemp("ray-ds"), N_UTTS)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray for this module (about 4 s to start); the CLI joins it with --address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _args(tiny_model, dataset, out, *extra, recipes=RECIPE):
    return ("sweep", "--recipes", recipes, "-m", tiny_model, "-d", f"clean={dataset}", "--threads", "1",
            "--language", "en", "-o", out, *extra)


@pytest.fixture(scope="module")
def local(tiny_model, dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    proc = edgeq(*_args(tiny_model, dataset, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _table(out: Path) -> list[dict]:
    from edgeq.sweep.table import load_results, rows

    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(load_results(out))]


def _utterances(out: Path, recipe: str) -> list[dict]:
    (results,) = out.rglob(f"{recipe}-*/bench/*/{recipe}.jsonl")
    records = [json.loads(line) for line in results.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in records if r["type"] == "utterance"]


@pytest.fixture(scope="module")
def ray_run(cluster, tiny_model, dataset, tmp_path_factory):
    """One sweep on the cluster (2 recipes x 2 shards of 4 and 3 utterances), during which the Ray
    worker of one shard is SIGKILLed once that shard has measured an utterance (like the OOM killer)."""
    out = tmp_path_factory.mktemp("ray") / "out"
    args = _args(tiny_model, dataset, out, "--executor", "ray", "--address", cluster, "--shard-size", "4")
    proc = subprocess.Popen([sys.executable, "-m", "edgeq.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, killed = time.monotonic() + 240, None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        for results in out.rglob("shards/*/*.jsonl"):
            records = [json.loads(line) for line in results.read_text().splitlines() if line.endswith("}")]
            if any(r["type"] == "utterance" for r in records) and not any(r["type"] == "end" for r in records):
                try:  # the bench process's parent is the Ray worker running the task
                    ray_worker = psutil.Process(records[0]["pid"]).ppid()
                except psutil.NoSuchProcess:
                    continue  # that shard just finished
                os.kill(ray_worker, signal.SIGKILL)
                killed = results
                break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=240)
    assert killed is not None, "no shard was caught mid-task"
    assert proc.returncode == 0, stderr[-2000:]
    return out, stdout, stderr, killed


def test_a_ray_run_gives_the_local_table(ray_run, local, tiny_model):
    out, stdout, _, _ = ray_run
    assert _table(out) == _table(local)
    assert stdout.lstrip().startswith(f"edgeq sweep: {tiny_model}")
    for recipe in ("fp32", RECIPE):
        shards = sorted(p.name for p in out.rglob(f"{recipe}-*/bench/*/shards/*"))
        assert shards == ["000000-000004", "000004-000007"]
        utts = _utterances(out, recipe)
        assert [u["id"] for u in utts] == [f"u{i}" for i in range(N_UTTS)]  # none lost, none twice
        assert utts == _utterances(local, recipe)  # texts, references, word errors: the same records
        (summary,) = json.loads(next(out.rglob(f"{recipe}-*/bench/*/summary.json")).read_text())
        assert summary["complete"] and summary["utterances"] == N_UTTS


def test_the_killed_worker_was_retried_and_resumed_its_shard(ray_run):
    out, stdout, stderr, killed = ray_run
    records = [json.loads(line) for line in killed.read_text().splitlines()]
    runs = [r for r in records if r["type"] == "run"]
    assert len(runs) == 2  # the retry resumed the shard's results file
    ids = [r["id"] for r in records if r["type"] == "utterance"]
    start, stop = map(int, killed.parent.name.split("-"))
    assert len(ids) == len(set(ids)) == stop - start  # the orphaned bench process stopped instead of writing on
    orphan = runs[0]["pid"]
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
    # Ray's own report of the death stays out of the CLI; edgeq says it in one note.
    name, label = killed.stem, "clean"
    assert stderr.strip().splitlines() == [
        f"note: bench {name} on {label}: 1 of 2 shards were resumed (a Ray worker died or an earlier sweep was cut); "
        "no utterance was measured twice",
        f"built 2 bundles, benched 2 cells, 0 from the cache; results in {out}/ (results.csv, results.md, report.md, plots/)"]
    assert "raylet" not in stdout


def test_merged_cells_are_the_cache_of_a_local_run(ray_run, tiny_model, dataset):
    out = ray_run[0]
    again = edgeq(*_args(tiny_model, dataset, out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "built 0 bundles, benched 0 cells, 2 from the cache" in again.stderr


def test_shards_that_are_not_the_dataset_once_each_are_refused(ray_run):
    from edgeq.sweep.shards import merge_shards

    out = ray_run[0]
    (results,) = out.rglob(f"{RECIPE}-*/bench/*/{RECIPE}.jsonl")
    merged = results.read_text()
    shards = [(0, 4), (4, 7)]
    with pytest.raises(EdgeqError, match=r"the shards do not hold this dataset's utterances once each \(missing \['u7'\]"):
        merge_shards(results.parent, RECIPE, shards, [f"u{i}" for i in range(N_UTTS + 1)])
    assert results.read_text() == merged
    # An id twice in a shard (not written by edgeq, which skips done ids) is merged once: the last counts.
    shard = results.parent / "shards" / "000004-000007" / f"{RECIPE}.jsonl"
    utterance = next(line for line in shard.read_text().splitlines() if '"type": "utterance"' in line)
    shard.write_text(shard.read_text() + utterance + "\n")
    merge_shards(results.parent, RECIPE, shards, [f"u{i}" for i in range(N_UTTS)])
    assert sorted(results.read_text().splitlines()) == sorted(merged.splitlines())


def test_a_dataset_missing_on_a_worker_is_one_line(cluster, local, tiny_model, dataset, tmp_path):
    """The driver reads the dataset to plan the shards; then it vanishes, as on a node without the share."""
    import shutil

    from edgeq.sweep import SweepSettings, run_sweep
    from edgeq.sweep.ray_executor import RayExecutor

    copy = tmp_path / "ds"
    shutil.copytree(dataset.parent, copy)
    shutil.copytree(local, tmp_path / "out")  # its fp32 bundle: no build, the bench shards start at once
    settings = SweepSettings(recipes="fp32", model=str(tiny_model), datasets=(str(copy / "manifest.tsv"),),
                             out=tmp_path / "out", threads=1, language="en")

    def hide_dataset(stage, done, total):
        if stage.startswith("ray:") and copy.exists():
            shutil.rmtree(copy)

    with pytest.raises(DatasetError) as err:
        run_sweep(settings, hide_dataset, RayExecutor(shard_size=4))
    message = str(err.value)
    assert message.splitlines() == [message]
    assert message.startswith(f"on Ray node {os.uname().nodename}: dataset not found: {copy / 'manifest.tsv'}")


def test_bad_executor_options_fail_in_one_line(tiny_model, dataset, tmp_path):
    base = ("sweep", "--recipes", "fp32", "-m", tiny_model, "-d", dataset, "-o", tmp_path / "out")
    assert_one_line_error(edgeq(*base, "--address", "127.0.0.1:6379"), r"--address and --shard-size are for --executor ray")
    assert_one_line_error(edgeq(*base, "--executor", "ray", "--shard-size", "0"), r"--shard-size 0: must be a positive")
    # Nothing listens on port 1: Ray itself would retry for minutes.
    assert_one_line_error(edgeq(*base, "--executor", "ray", "--address", "127.0.0.1:1"),
                          r"--address 127.0.0.1:1: no Ray cluster answers there \(Connection refused\)")
    assert_one_line_error(edgeq(*base, "--executor", "ray", "--address", "headnode"), r"--address headnode: expected HOST:PORT")
    assert not (tmp_path / "out").exists()


def test_a_node_with_another_edgeq_version_refuses_its_tasks(tmp_path):
    """Its results would land in this version's cache folder: the task stops before any work."""
    from edgeq import __version__
    from edgeq.sweep.ray_executor import bench_task, build_task

    pattern = rf"^on Ray node .*: edgeq {__version__} is installed, the sweep runs edgeq 0\.0\.1: install the same edgeq"
    with pytest.raises(EdgeqError, match=pattern):
        bench_task("0.0.1", None, None, tmp_path, (0, 1))
    with pytest.raises(EdgeqError, match=pattern):
        build_task("0.0.1", None, None)
    assert list(tmp_path.iterdir()) == []
