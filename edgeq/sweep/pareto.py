"""The Pareto front of (size, WER): recipes no other recipe beats on both at once."""

from __future__ import annotations


def front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the front of (name, size, error) points, smallest first.

    A point is dominated when another is no larger and no worse and differs in one of the two.
    Ties (two recipes of equal size and WER) both stay: neither beats the other.
    """
    keep = []
    for name, size, err in points:
        dominated = any(s <= size and e <= err and (s < size or e < err) for _, s, e in points)
        if not dominated:
            keep.append((size, err, name))
    return [name for _, _, name in sorted(keep)]


def front_for(rows: list[dict], label: str, max_wer: float | None = None) -> list[str]:
    """The front on one condition among recipes that produced a WER (at most `max_wer` when given)."""
    pts = [(r["name"], r["bundle_mb"], r["wer"][label]) for r in rows
           if r["bundle_mb"] is not None and r["wer"].get(label) is not None
           and (max_wer is None or r["wer"][label] <= max_wer)]
    return front(pts)
