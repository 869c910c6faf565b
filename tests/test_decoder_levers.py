"""benchmarks/decoder_levers.py times two ways of computing the same thing per lever: a faster graph
that computed something else would read as a lever. Checked at small shapes."""

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import decoder_levers as levers
finally:
    sys.path.remove(str(REPO / "benchmarks"))


def _run(model: bytes, feed: dict) -> dict:
    sess = levers.session(model, threads=1)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feed)))


@pytest.mark.parametrize("signed", [True, False], ids=["vnni-codes", "portable-codes"])
def test_every_cross_attention_layout_computes_each_heads_sums(signed):
    heads, head_dim = 3, 16
    made = levers.cross_graphs(heads, head_dim, frames=40, layers=2, signed=signed, rng=np.random.default_rng(1))
    (per_head, *others) = made.values()
    expected = _run(*per_head)
    assert len(others) == (4 if signed else 3)  # VNNI codes: the keys transposed with a uint8 query too
    for other in others:
        got = levers.cross_per_head(_run(*other), heads, head_dim)
        assert expected.keys() == got.keys() and len(expected) == 4
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert any(np.abs(v).max() > 1000 for v in expected.values())  # sums of real size, not zeros


def test_both_weight_kernels_compute_the_same_layers():
    made = levers.weight_graphs(d=128, ffn=256, layers=1, rng=np.random.default_rng(2))
    (nbits, dq) = made.values()
    a, b = _run(*nbits), _run(*dq)
    assert a.keys() == b.keys() and len(a) == 8
    for name in a:
        # both quantize the activations to 8 bits, per block of 128 against per row: close, not equal
        error = np.linalg.norm(a[name] - b[name]) / np.linalg.norm(a[name])
        assert error < 0.02, (name, error)


def test_the_coarse_head_scores_its_top_tokens_with_the_8_bit_table():
    made = levers.head_graphs(d=128, vocab=500, top_k=8, rng=np.random.default_rng(3))
    (exact, coarse) = made.values()
    full, rescored = _run(*exact)["logits"][0], _run(*coarse)["logits"][0]
    assert np.argmax(rescored) == np.argmax(full)
    top = np.argsort(rescored)[-8:]
    # the 8-bit head quantizes its input to int8 per block; the rescoring multiplies it as float
    np.testing.assert_allclose(rescored[top], full[top], atol=0.02 * np.abs(full).max())
    others = np.setdiff1d(np.arange(500), top)
    assert np.abs(rescored[others] - full[others]).max() > np.abs(rescored[top] - full[top]).max(), \
        "the tokens outside the top keep their 4-bit logits"


def test_an_unknown_lever_is_one_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["decoder_levers.py", "--levers", "cross,nope", "--rounds", "0"])
    with pytest.raises(SystemExit) as exit_info:
        levers.main()
    assert str(exit_info.value) == "unknown lever(s) ['nope']; choose from cross, weights, head"
