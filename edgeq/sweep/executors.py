"""Who runs a sweep's work: this process, one recipe after the other (local), a Ray cluster (ray),
or this process building while a device benches over SSH (`--on`, edgeq.sweep.remote_executor).

An executor takes the missing work of every recipe (a bundle to build, conditions to bench) and
returns one outcome per recipe; `run_sweep` plans the work from the cache and assembles the table,
so both executors fill the same cache folders and a sweep may switch executor between runs.
"""

from __future__ import annotations

from typing import Protocol

from edgeq.errors import EdgeqError
from edgeq.sweep.plan import SweepSettings
from edgeq.sweep.work import Progress, RecipeOutcome, RecipeWork, bench_condition, build_bundle

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    notes: list[str]  # one line each, for the user

    def run(self, work: list[RecipeWork], settings: SweepSettings, progress: Progress) -> list[RecipeOutcome]: ...


class LocalExecutor:
    """Build, then bench each condition in a fresh worker process, one at a time."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def run(self, work: list[RecipeWork], settings: SweepSettings, progress: Progress) -> list[RecipeOutcome]:
        outcomes = []
        for w in work:
            outcome = RecipeOutcome()
            outcomes.append(outcome)
            if w.build:
                outcome.build_failed = build_bundle(w.recipe, w.bundle, settings, progress)
                if outcome.build_failed:
                    continue
                outcome.built = True
            for c, folder in w.benches:
                outcome.cells[c.label] = bench_condition(w.recipe.name, w.bundle, c, folder, progress)
        return outcomes


def make_executor(name: str = "local", address: str | None = None, shard_size: int | None = None,
                  on: str | None = None, remote_edgeq: str = "edgeq") -> Executor:
    if on is not None and name != "local":
        raise EdgeqError("--on benches on one device over SSH; --executor ray spreads builds and benches over "
                         "a cluster: choose one")
    if name == "local":
        if address is not None or shard_size is not None:
            raise EdgeqError("--address and --shard-size are for --executor ray")
        if on is not None:  # builds stay in this process, benches go to the device
            from edgeq.sweep.remote_executor import RemoteExecutor

            return RemoteExecutor(on, remote_edgeq)
        return LocalExecutor()
    if name == "ray":
        from edgeq.sweep.ray_executor import DEFAULT_SHARD_SIZE, RayExecutor

        return RayExecutor(address, DEFAULT_SHARD_SIZE if shard_size is None else shard_size)
    raise EdgeqError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")
