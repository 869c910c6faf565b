"""Real tier: every torch-runtime recipe on real whisper-base weights and real speech.

* 8-bit recipes keep WER within 1 point (absolute) of the fp32 bundle on the LibriSpeech part
  of speech-dev;
* every recipe produces a real transcript (not empty, not a loop) and stays within a loose bound;
* bundles shrink by what their bits promise.
"""

from __future__ import annotations

import pytest
from helpers import SPEECH_DEV, WHISPER_BASE, each
from helpers import outcome as _get

from edgeq.spec.recipe import FORMAT_BITS, list_recipes

pytestmark = [pytest.mark.real, pytest.mark.slow]

RECIPES = [r for r in list_recipes() if r.runtime == "torch"]
# 8-bit recipes (and fp32) run on all 8 LibriSpeech utterances of speech-dev (62 s, 177 words)
# and keep WER within 1 point of fp32. The others run on the 2 shortest (CI time: HQQ and
# bitsandbytes 4-bit dequantize every weight on every decoder step on a CPU) and must give a real
# transcript: not empty, no loop, WER <= 50 %. Their WER on the full set is measured in
# benchmarks/sweep_whisper-base.sh (README recipes table). Static recipes calibrate as shipped
# (16 utterances of speech-dev/other). With its decoder static too, pytorch-int8-static read 3.39 %
# on an AVX2 host and 4.52 % on an AVX-512 VNNI one (6.78 % on AVX2 from 4 calibration clips): one
# activation scale for every decoder position left the transcript at the mercy of a kernel's
# rounding. The shipped recipe keeps the decoder dynamic (recipes/pytorch-int8-static.toml): 2.26 %.
BUDGET_8BIT = 1.0
# Static activation ranges cost more (the study's finding): quanto-w8a8-static, decoder static,
# +0.56 (README recipes table); pytorch-int8-static with its decoder static measured +1.13 to
# +2.26 by host (above). Calibration keeps padded windows: on fitted ones pytorch-int8-static
# (decoder static) read 4.52 against 3.39 %.
BUDGET_8BIT_STATIC = 1.5
REAL_TRANSCRIPT_WER = 50.0
FULL_BITS = (8, 32)
SUBSET = 2


@pytest.fixture(scope="module")
def dataset():
    from edgeq.data.datasets import open_dataset

    return open_dataset(SPEECH_DEV / "LibriSpeech")


def _utterances(recipe, dataset):
    if recipe.weights.bits in FULL_BITS:
        return list(dataset.utterances)
    return sorted(dataset.utterances, key=lambda u: u.audio.stat().st_size)[:SUBSET]


def evaluate(bundle_path, utterances) -> dict:
    import edgeq
    from edgeq.data.wer import word_errors
    from edgeq.runtime.decoding import STUDY_OPTIONS

    t = edgeq.load(bundle_path, language="en")
    errs, texts, truncated = {}, [], 0
    for utt in utterances:
        r = t.transcribe(utt.audio, options=STUDY_OPTIONS)  # the study's greedy decoding
        texts.append(r.text)
        truncated += r.truncated
        errs[utt.id] = word_errors(utt.reference, r.text)
    return {"errors": errs, "texts": texts, "truncated": truncated}


def wer_over(result, ids) -> float:
    from edgeq.data.wer import corpus_wer

    return 100 * corpus_wer([result["errors"][i] for i in ids])


@pytest.fixture(scope="module")
def results(dataset, tmp_path_factory):
    import edgeq

    root = tmp_path_factory.mktemp("real-bundles")
    by_name = {r.name: r for r in RECIPES}

    def one(name):
        recipe, calib = by_name[name], None
        if recipe.scheme == "static":
            calib = str(SPEECH_DEV / "other")
        bundle = edgeq.build(recipe, model=str(WHISPER_BASE), out=root / name, calibration=calib, language="en")
        return {"bundle": bundle, **evaluate(bundle.path, _utterances(recipe, dataset))}

    return each(list(by_name), one)


def test_fp32_reference_is_accurate(results):
    r = _get(results, "fp32")
    assert wer_over(r, list(r["errors"])) <= 8.0


# Measured on whisper-base (3 shortest utterances, fp32 3.3 %): HQQ int2 groups of 64 -> 364 %
# and loops, 32 -> 73 %, 16 -> 10 % (but 68 MB, larger than HQQ int4 g64's 62 MB); quanto int2
# g64 -> 97 %. 2-bit weights at the study's group sizes do not transcribe; strict, so a change
# that makes them work shows up here.
TWO_BIT = pytest.mark.xfail(strict=True, reason="2-bit weights at groups of 64/128 do not transcribe whisper-base")


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=TWO_BIT) if r.weights.bits == 2 else r for r in RECIPES],
                         ids=lambda r: r.name)
def test_recipe_transcribes_real_speech(recipe, results):
    r = _get(results, recipe.name)
    ids = list(r["errors"])
    wer, ref = wer_over(r, ids), wer_over(_get(results, "fp32"), ids)
    assert all(t.strip() for t in r["texts"]), "empty transcript"
    assert r["truncated"] == 0, "a transcript ran to the token limit (looping)"
    if recipe.weights.bits in FULL_BITS:
        budget = BUDGET_8BIT_STATIC if recipe.scheme == "static" else BUDGET_8BIT
        assert wer <= ref + budget, f"{recipe.name}: WER {wer:.2f} vs fp32 {ref:.2f} on {len(ids)} utterances"
    else:
        assert wer <= REAL_TRANSCRIPT_WER, f"{recipe.name}: WER {wer:.2f} (fp32 {ref:.2f}) on {len(ids)} utterances"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_bundle_shrinks_as_promised(recipe, results):
    size = _get(results, recipe.name)["bundle"].manifest.to_dict()["size"]
    ratio = size["weights_bytes"] / size["reference_fp32_weights_bytes"]
    bits = FORMAT_BITS[recipe.weights.format]
    # Quantized Linear layers are ~83% of whisper-base's weights; the rest (convs, norms,
    # positions) stays float, the tied embedding is int8 when the recipe says so.
    promised = {32: 1.01, 16: 0.51, 8: 0.36, 4: 0.26, 3: 0.24, 2: 0.21, 1: 0.2}[bits]
    assert ratio <= promised, f"{recipe.name}: {ratio:.3f} of fp32, promised <= {promised}"
