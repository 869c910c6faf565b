"""`edgeq sweep`: the study's grid (scheme x method x granularity x bits) built and benched in one run.

Workstation side (it builds bundles). Every (recipe, dataset) cell calls `edgeq.builder.pipeline.build`
and `edgeq.bench.runner.run_bench`; results are cached in the results folder by recipe hash, model
hash, dataset condition and edgeq version, so a re-run does only what is missing and a killed sweep
resumes. The work runs here, one task after the other, or as Ray tasks with each dataset cut into
shards (edgeq.sweep.executors, ray_executor, shards). Views: a results table (CSV, Markdown), plots
with the Pareto front, a report, and `recommend` (the best recipe for a target under a budget).
"""

from edgeq.sweep.plan import SweepSettings, select_recipes
from edgeq.sweep.run import SweepResult, run_sweep

__all__ = ["SweepSettings", "SweepResult", "run_sweep", "select_recipes"]
