"""`edgeq recommend`: the best recipe of a sweep for a target under a budget, and why.

"Best" is the smallest bundle that meets every budget: on an edge device storage, download and
RAM are the scarce things, and the budgets already say how much accuracy and time may be spent.
Ties go to lower ΔWER, then lower latency. The answer names the constraint that ruled out the
next smaller recipe (what bound) and the runner-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeq.errors import EdgeqError
from edgeq.spec.targets import Target
from edgeq.sweep.table import labels, rows

# The default accuracy budget: one WER point, about two words of the 177 in speech-dev's
# LibriSpeech part (one word is 0.56 points), so a single-word wobble does not rule a recipe out.
DEFAULT_MAX_WER_INCREASE = 1.0
# The measured peak RSS must fit in this share of the target's RAM: the OS and the application
# around the model need the rest (a 2 GB Raspberry Pi 4 has about 1.6 GB free after boot, and
# the audio capture and the app are not free either).
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class Budget:
    max_wer_increase: float = DEFAULT_MAX_WER_INCREASE
    max_size_mb: float | None = None
    max_latency_s: float | None = None


@dataclass
class Recommendation:
    target: str
    pick: dict  # the results-table row of the chosen recipe
    runner_up: dict | None
    bound: str | None  # what ruled out the next smaller recipe (None: the smallest measured fits)
    excluded: dict[str, str] = field(default_factory=dict)  # recipe -> why it was ruled out
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        p = self.pick
        worst = max((v for v in p["dwer"].values() if v is not None), default=0.0)
        out = [f"{self.target}: {p['name']} ({p['library']}, {p['scheme']}, {p['bits_label']} bits): "
               f"{p['bundle_mb']:.1f} MB, ΔWER {worst:+.2f} points, p50 {_s(p['p50_s'])}, "
               f"peak RSS {_mb(p['peak_rss_mb'])}"]
        out.append(f"why: smallest bundle within budget; {self.bound}" if self.bound
                   else "why: the smallest bundle measured, and it meets every budget")
        if self.runner_up:
            r = self.runner_up
            worst_r = max((v for v in r["dwer"].values() if v is not None), default=0.0)
            out.append(f"runner-up: {r['name']} ({r['bundle_mb']:.1f} MB, ΔWER {worst_r:+.2f}, p50 {_s(r['p50_s'])})")
        else:
            out.append("runner-up: none (no other recipe meets the budget)")
        return out + self.notes


def _s(v) -> str:
    return "-" if v is None else f"{v:.2f} s"


def _mb(v) -> str:
    return "-" if v is None else f"{v:.0f} MB"


def _why_not(row: dict, target: Target, budget: Budget, conds: list[str]) -> str | None:
    """The first budget `row` breaks, in words, or None when it fits."""
    if row["failed"]:
        return f"failed ({row['failed']})"
    if row["bundle_mb"] is None or any(row["wer"].get(c) is None for c in conds):
        return "has no WER on every dataset"
    if target.device not in (row.get("devices") or [target.device]):
        return f"does not run on {target.device}"
    for c in conds:
        d = row["dwer"][c]
        if d is None or d > budget.max_wer_increase:
            return f"ΔWER {d:+.2f} on {c} > --max-wer-increase {budget.max_wer_increase:g}"
    if budget.max_size_mb is not None and row["bundle_mb"] > budget.max_size_mb:
        return f"{row['bundle_mb']:.1f} MB > --max-size {budget.max_size_mb:g}"
    ram = target.memory_mb * MEMORY_SHARE
    if row["peak_rss_mb"] is not None and row["peak_rss_mb"] > ram:
        share = f"{MEMORY_SHARE:.0%} of {target.name}'s {target.memory_mb} MB"
        return f"peak RSS {row['peak_rss_mb']:.0f} MB > {ram:.0f} MB ({share})"
    if budget.max_latency_s is not None and (row["p50_s"] is None or row["p50_s"] > budget.max_latency_s):
        return f"p50 {_s(row['p50_s'])} > --max-latency {budget.max_latency_s:g} s"
    return None


def recommend(data: dict, target: Target, budget: Budget = Budget()) -> Recommendation:
    conds = labels(data)
    table = rows(data)
    excluded = {r["name"]: why for r in table if (why := _why_not(r, target, budget, conds)) is not None}
    fits = sorted((r for r in table if r["name"] not in excluded),
                  key=lambda r: (r["bundle_mb"], max(r["dwer"].values()), r["p50_s"] or 0.0, r["name"]))
    if not fits:
        closest = min((r for r in table if r["bundle_mb"] is not None), key=lambda r: r["bundle_mb"], default=None)
        hint = f"; the smallest, {closest['name']}, {excluded[closest['name']]}" if closest else ""
        raise EdgeqError(f"no recipe in these results fits {target.name} under the budget{hint}: "
                         "loosen --max-wer-increase/--max-size/--max-latency or sweep more recipes")
    pick = fits[0]
    smaller = sorted((r for r in table if r["name"] in excluded and r["bundle_mb"] is not None
                      and r["bundle_mb"] < pick["bundle_mb"]), key=lambda r: -r["bundle_mb"])
    bound = f"the next smaller, {smaller[0]['name']}, {excluded[smaller[0]['name']]}" if smaller else None
    notes = []
    if target.recommended and pick["name"] not in target.recommended:
        notes.append(f"note: {target.name} lists {', '.join(target.recommended)} as its recipes ({target.why})")
    first = next((c["summary"] for c in data["cells"] if c.get("summary")), None)
    measured_on = {c.get("device") for c in data["conditions"]}
    if measured_on != {target.device}:
        notes.append(f"note: the sweep ran on {', '.join(sorted(map(str, measured_on)))}; {target.name} runs on "
                     f"{target.device}, so sizes and WER carry over but latency and RSS do not")
    elif first:
        notes.append(f"note: latency and RSS were measured on {first['env']['cpu']['model']}, not on {target.name}; "
                     f"bench the bundle there with `edgeq bench --target {target.name}`")
    return Recommendation(target.name, pick, fits[1] if len(fits) > 1 else None, bound, excluded, notes)
