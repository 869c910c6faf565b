"""`edgeq sweep --executor ray`: the sweep's builds and (recipe, condition, shard) benches as Ray tasks.

What the cluster must share: every node sees the model, the datasets and the results folder (-o)
at the same paths (a shared filesystem such as NFS), because a task builds a bundle into -o and the
bench shards of other nodes load it from there, read the audio from the dataset path and write their
shard's results next to it; the driver then merges the shards (edgeq.sweep.shards). Every node runs
the same edgeq version as the driver (a task on another version stops the sweep rather than mixing
its numbers into this version's cache). Without --address a local Ray is started (or the one named
by RAY_ADDRESS / `ray start` on this machine is joined).

Each task takes `--threads` CPUs (1 when unset), so a node runs as many benches at once as it has
CPUs for: latency is measured with that many neighbours. A worker that dies mid-task is retried by
Ray (MAX_RETRIES); the retry resumes the shard's results file, so no utterance is lost or counted
twice. An EdgeqError inside a task (a dataset or bundle missing on that node) stops the sweep with
its one line, naming the node.
"""

from __future__ import annotations

import logging
import platform

from edgeq import __version__
from edgeq.errors import EdgeqError, MissingDependencyError
from edgeq.sweep.plan import Condition, SweepSettings
from edgeq.sweep.shards import merge_shards, resumed, shard_dir, shard_ranges
from edgeq.sweep.work import Cell, Progress, RecipeOutcome, RecipeWork, bench_condition, build_bundle
from edgeq.util import one_line

# 100 utterances (about 12 min of LibriSpeech test-clean) per task: loading whisper-small and its
# warm-up take seconds, so a task spends most of its time measuring, and test-clean + test-other
# (5,559 utterances) still make 56 shards per recipe to spread over the cluster.
DEFAULT_SHARD_SIZE = 100
# Ray's own default for tasks; said here because the resume-on-retry design relies on it.
MAX_RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--executor ray needs Ray: pip install 'edgeq[sweep-ray]'") from None
    return ray


def _where() -> str:
    return f"on Ray node {platform.node()}"


def _same_version(driver_version: str) -> None:
    if __version__ != driver_version:
        raise EdgeqError(f"{_where()}: edgeq {__version__} is installed, the sweep runs edgeq {driver_version}: "
                         "install the same edgeq on every node (two versions' results are never mixed)")


def build_task(driver_version: str, work: RecipeWork, settings: SweepSettings) -> str | None:
    """Runs on a worker: build one bundle; a failure line as in a local sweep."""
    _same_version(driver_version)
    failed = build_bundle(work.recipe, work.bundle, settings)
    return failed and f"{failed} ({_where()})"


def bench_task(driver_version: str, work: RecipeWork, c: Condition, folder, shard) -> dict:
    """Runs on a worker: bench one shard into its own folder; its summary, or {"failed": line}."""
    _same_version(driver_version)
    try:
        cell = bench_condition(work.recipe.name, work.bundle, c, shard_dir(folder, shard), shard=shard)
    except EdgeqError as err:
        err.args = (f"{_where()}: {one_line(err)}",)
        raise
    return cell.summary if cell.failed is None else {"failed": f"{cell.failed} ({_where()})"}


class RayExecutor:
    def __init__(self, address: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE):
        shard_ranges(1, shard_size)  # a bad --shard-size or a missing Ray fails before any work
        self.ray = _ray()
        self.address = address
        self.shard_size = shard_size
        self.notes: list[str] = []

    def run(self, work: list[RecipeWork], settings: SweepSettings, progress: Progress) -> list[RecipeOutcome]:
        if not work:
            return []  # all cached: no cluster to start
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            self._connect(ray)
        try:
            return _Driver(ray, work, settings, self, progress).run()
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray) -> None:
        if self.address and self.address != "auto":
            _reachable(self.address)
        try:
            # log_to_driver=False: the workers' own output (library warnings, bench progress) stays
            # in Ray's session logs instead of interleaving with the CLI's progress and one-line errors.
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR,
                     include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"--address {self.address}" if self.address else "a local Ray"
            raise EdgeqError(f"{where}: cannot start or join a Ray cluster ({one_line(err)})") from None


def _reachable(address: str) -> None:
    """Ray retries an address where nothing listens for good, printing a C++ warning to stderr every
    5 s (measured: still retrying after 5 minutes against 127.0.0.1:1); a plain TCP connect says it
    in one line."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise EdgeqError(f"--address {address}: expected HOST:PORT of the Ray head (or ray://HOST:PORT)")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise EdgeqError(f"--address {address}: no Ray cluster answers there ({err.strerror or one_line(err)}); "
                         "start one with `ray start --head` or leave --address out for a local Ray") from None


class _Driver:
    """Submits every build, then each recipe's bench shards once its bundle is built; merges cells."""

    def __init__(self, ray, work: list[RecipeWork], settings: SweepSettings, executor: RayExecutor,
                 progress: Progress):
        self.ray, self.work, self.settings, self.executor, self.progress = ray, work, settings, executor, progress
        opts = {"num_cpus": settings.threads or 1, "max_retries": MAX_RETRIES}
        self.build = ray.remote(**opts)(build_task)
        self.bench = ray.remote(**opts)(bench_task)
        self.outcomes = [RecipeOutcome() for _ in work]
        self.pending: dict = {}  # object ref -> what it computes
        self.shards: dict[tuple[int, str], dict] = {}  # (recipe index, label) -> shard -> summary
        self.ids = self._plan_shards()
        self.total = sum(w.build for w in work) + sum(len(self._ranges(c)) for w in work for c, _ in w.benches)
        self.done = 0

    def _plan_shards(self) -> dict[str, list[str]]:
        """Utterance ids per condition, read here: the shards are slices of this list."""
        from edgeq.data.datasets import open_dataset

        ids = {}
        for c in {c for w in self.work for c, _ in w.benches}:
            ids[c.key] = [u.id for u in open_dataset(c.dataset, limit=c.limit).utterances]
        return ids

    def _ranges(self, c: Condition) -> list[tuple[int, int]]:
        return shard_ranges(len(self.ids[c.key]), self.executor.shard_size)

    def run(self) -> list[RecipeOutcome]:
        stage = f"ray: {len(self.work)} recipes, {self.total} tasks"
        self.progress(stage, 0, self.total)
        for i, w in enumerate(self.work):
            if w.build:
                self.pending[self.build.remote(__version__, w, self.settings)] = ("build", i)
            else:
                self._submit_benches(i)
        try:
            while self.pending:
                (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
                task = self.pending.pop(ref)
                value = self._get(ref, task)
                self.done += 1
                self.progress(stage, self.done, self.total)
                if task[0] == "build":
                    self._built(task[1], value)
                else:
                    self._benched(*task[1:], value)
        finally:
            for ref in self.pending:  # a task failed for good, or Ctrl-C: nothing more to measure
                self.ray.cancel(ref, force=True)
        return self.outcomes

    def _get(self, ref, task):
        from ray.exceptions import NodeDiedError, OutOfMemoryError, RayTaskError, WorkerCrashedError

        try:
            return self.ray.get(ref)
        except RayTaskError as err:
            if isinstance(err.cause, EdgeqError):
                raise err.cause from None
            raise
        except (WorkerCrashedError, OutOfMemoryError, NodeDiedError) as err:
            raise EdgeqError(f"{self._describe(task)}: its Ray worker died {MAX_RETRIES + 1} times ({type(err).__name__}); "
                             "see the Ray logs of the node, then run the sweep again to resume the shards") from None

    def _describe(self, task) -> str:
        w = self.work[task[1]]
        if task[0] == "build":
            return f"build {w.recipe.name}"
        c, shard = task[2], task[4]
        return f"bench {w.recipe.name} on {c.label} utterances {shard[0]}-{shard[1]}"

    def _submit_benches(self, i: int) -> None:
        w = self.work[i]
        for c, folder in w.benches:
            self.shards[(i, c.label)] = {}
            for shard in self._ranges(c):
                ref = self.bench.remote(__version__, w, c, folder, shard)
                self.pending[ref] = ("bench", i, c, folder, shard)

    def _built(self, i: int, failed: str | None) -> None:
        if failed:
            self.outcomes[i].build_failed = failed
            # Its shards were counted in the total; they will not run.
            self.total -= sum(len(self._ranges(c)) for c, _ in self.work[i].benches)
            return
        self.outcomes[i].built = True
        self._submit_benches(i)

    def _benched(self, i: int, c: Condition, folder, shard, summary: dict) -> None:
        done = self.shards[(i, c.label)]
        done[shard] = summary
        ranges = self._ranges(c)
        if len(done) < len(ranges):
            return
        name = self.work[i].recipe.name
        failed = [s["failed"] for s in (done[r] for r in ranges) if "failed" in s]
        if failed:
            self.outcomes[i].cells[c.label] = Cell(name, c.label, failed=failed[0])
            return
        self.outcomes[i].cells[c.label] = Cell(name, c.label, merge_shards(folder, name, ranges, self.ids[c.key]))
        if n := resumed(folder, name, ranges):
            self.executor.notes.append(f"bench {name} on {c.label}: {n} of {len(ranges)} shards were resumed "
                                       "(a Ray worker died or an earlier sweep was cut); no utterance was measured twice")
