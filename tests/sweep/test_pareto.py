"""The Pareto front of (size, WER): pure function, checked against a brute-force definition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeq.sweep.pareto import front


def test_front_of_the_readme_recipes():
    # whisper-base on speech-dev (README): onnx-int4 is smaller than every recipe at its WER; the
    # 2-bit recipes are smallest but transcribe nothing, so they are on the front only by size.
    pts = [("fp32", 294.3, 2.82), ("onnx-int8-dynamic", 85.6, 2.82), ("onnx-int4", 60.6, 2.82),
           ("quanto-int8-dynamic", 83.1, 2.26), ("hqq-int4-g64", 66.3, 4.52), ("hqq-int2-g128", 52.6, 462.15),
           ("hqq-int3-g128", 59.2, 7.91)]
    assert front(pts) == ["hqq-int2-g128", "hqq-int3-g128", "onnx-int4", "quanto-int8-dynamic"]


def test_ties_both_stay():
    assert front([("a", 1.0, 2.0), ("b", 1.0, 2.0), ("c", 2.0, 2.0)]) == ["a", "b"]


points = st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), min_size=1, max_size=12)


@given(points)
def test_front_is_exactly_the_undominated_points(raw):
    pts = [(f"r{i}", s, e) for i, (s, e) in enumerate(raw)]
    on = set(front(pts))
    for name, s, e in pts:
        beaten = any((s2 <= s and e2 <= e) and (s2 < s or e2 < e) for _, s2, e2 in pts)
        assert (name in on) == (not beaten)
    sizes = [dict((n, s) for n, s, _ in pts)[n] for n in front(pts)]
    assert sizes == sorted(sizes)
