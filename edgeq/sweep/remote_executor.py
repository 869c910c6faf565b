"""`edgeq sweep --on user@host[:dir]`: bundles built here, benched on the device, the two overlapped.

The workstation builds the recipes one after the other; each bundle, once built, joins a queue
that one thread works through: push it over SSH (verified by sha256 there), bench every missing
condition with the device's own edgeq (edgeq.deploy.remote.remote_bench) and copy the result files
back into the sweep's cache. So the device measures bundle N while the workstation builds N+1,
and the slow half of a sweep on a Pi (the bench) never waits for the fast half (the build).

On the device the sweep's cache is mirrored under DIR/edgeq-sweep/ (home when no DIR is given):
each bundle sits in its cell's folder, named after its recipe, and each bench writes into its cell's
bench folder there, so a cut sweep resumes on the device utterance by utterance, as a local one
does. The cells carry the device in their cache key (`on`): a later local sweep never takes a
device's numbers for its own, nor the other way round.
"""

from __future__ import annotations

import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor

from edgeq import __version__
from edgeq.errors import EdgeqError
from edgeq.sweep.plan import SweepSettings
from edgeq.sweep.work import Cell, Progress, RecipeOutcome, RecipeWork, bench_settings, build_bundle
from edgeq.util import one_line

# Under the device folder: the mirror of the sweep's cache (edgeq-VERSION/MODEL-HASH/RECIPE-HASH/...).
REMOTE_ROOT = "edgeq-sweep"


class RemoteExecutor:
    def __init__(self, on: str, remote_edgeq: str = "edgeq"):
        from edgeq.deploy.ssh import parse_remote

        self.remote = parse_remote(on)  # a bad address fails before any work
        self.remote_edgeq = remote_edgeq
        self.notes: list[str] = []
        self._lost: str | None = None  # the connection failure that ends the device's part of the sweep

    def run(self, work: list[RecipeWork], settings: SweepSettings, progress: Progress) -> list[RecipeOutcome]:
        from edgeq.deploy.remote import check_device, noise_flags

        if not work:
            return []
        for c, _ in work[0].benches:  # a noise file lives here, not on the device: refused before any build
            noise_flags(bench_settings(c, settings.out))
        # Unreachable, no edgeq there, or another version: one line, before the first build.
        there = check_device(self.remote, self.remote_edgeq).split()[-1:]
        if there != [__version__]:
            raise EdgeqError(f"{self.remote} runs edgeq {' '.join(there) or '?'}, this sweep edgeq {__version__}: "
                             f"install edgeq {__version__} there (two versions' results are never mixed)")
        self.notes.append(f"benched on {self.remote} (edgeq {__version__}); bundles built on this machine")
        lock = threading.Lock()

        def report(stage: str, done: int, total: int) -> None:  # two threads share one progress display
            with lock:
                progress(stage, done, total)

        outcomes = [RecipeOutcome() for _ in work]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeq-device") as device:
            queued = []
            for w, outcome in zip(work, outcomes):
                if w.build:
                    outcome.build_failed = build_bundle(w.recipe, w.bundle, settings, report)
                    if outcome.build_failed:
                        continue
                    outcome.built = True
                queued.append(device.submit(self._bench_recipe, w, outcome, settings, report))
            for job in queued:
                job.result()
        if self._lost:
            self.notes.append(f"the device was lost ({self._lost}); run the same sweep again to bench what is missing")
        return outcomes

    def _bench_recipe(self, w: RecipeWork, outcome: RecipeOutcome, settings: SweepSettings, progress: Progress) -> None:
        from edgeq.deploy.remote import remote_bench
        from edgeq.deploy.ssh import ConnectionFailed

        root = posixpath.join(self.remote.dir or "", REMOTE_ROOT)
        cell = w.bundle.parent.relative_to(settings.out).as_posix()
        dest = posixpath.join(root, cell, w.recipe.name)  # named after the recipe, as a local sweep names it
        for c, folder in w.benches:
            if self._lost:
                outcome.cells[c.label] = Cell(w.recipe.name, c.label, failed=f"not benched: {self._lost}")
                continue
            stage = f"{w.recipe.name} on {c.label}"
            try:
                (summary,) = remote_bench(
                    [str(w.bundle)], self.remote, bench_settings(c, folder), self.remote_edgeq,
                    lambda step, done, total, stage=stage: progress(f"{stage}: {step}", done, total),
                    dests=[dest], results_dir=posixpath.join(root, folder.relative_to(settings.out).as_posix()))
            except ConnectionFailed as err:
                self._lost = one_line(err)
                outcome.cells[c.label] = Cell(w.recipe.name, c.label, failed=f"bench on {self.remote}: {self._lost}")
                continue
            except EdgeqError as err:  # this bundle or condition on this device (e.g. doctor refused it)
                outcome.cells[c.label] = Cell(w.recipe.name, c.label, failed=f"bench on {self.remote}: {one_line(err)}")
                continue
            failed = summary.get("failed")
            outcome.cells[c.label] = Cell(w.recipe.name, c.label, None if failed else summary, failed=failed)
