"""benchmarks/bundle_divergence.py: the float bundle's own greedy path, the same tokens fed to the
other bundle, and the per-step KL divergence and flips between them."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import bundle_divergence
finally:
    sys.path.remove(str(REPO / "benchmarks"))

VOCAB, EOT = 6, 5


class _Engine:
    """Logits that favour token (last token + 1), EOT after token 3; `bias` adds to one token."""

    def __init__(self, bias=None):
        self.bias, self.fed = bias, []

    def encode(self, features):
        return None

    def start(self, state):
        return []

    def step(self, state, tokens):
        self.fed.append(list(tokens))
        state = state + list(tokens)
        logits = np.zeros(VOCAB, np.float32)
        last = state[-1]
        logits[EOT if last == 3 else (last + 1) % VOCAB] = 4.0
        if self.bias:
            logits[self.bias[0]] += self.bias[1]
        return logits[None], state


def _transcriber(engine):
    return SimpleNamespace(engine=engine, settings=SimpleNamespace(prompt=lambda lang, timestamps: [0], eot=EOT))


def test_the_reference_decodes_greedily_and_the_other_is_fed_its_tokens():
    tokens, ref = bundle_divergence.logits_along(_transcriber(_Engine()), None, None)
    assert tokens == [1, 2, 3] and ref.shape == (4, VOCAB)
    other = _Engine(bias=(2, 5.0))  # prefers token 2 everywhere: greedy alone would loop on it
    _, got = bundle_divergence.logits_along(_transcriber(other), None, tokens)
    assert other.fed == [[0], [1], [2], [3]]  # the prompt, then the reference's tokens, not its own
    kl, flips = bundle_divergence.divergence(ref, got)
    assert flips.tolist() == [True, False, True, True]  # step 2 wanted token 2 anyway
    assert (kl > 0).all()
    same_kl, same_flips = bundle_divergence.divergence(ref, ref)
    assert np.allclose(same_kl, 0) and not same_flips.any()
