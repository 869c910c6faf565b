"""ONNX recipes on the tiny random Whisper: build -> check the graphs -> run with ONNX Runtime in a
fresh process that never imports torch -> the same greedy tokens as PyTorch."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("torch")

from helpers import PROBE, REPO, each  # noqa: E402
from helpers import outcome as _get  # noqa: E402

from edgeq.backends.onnx_avx2 import AVX2_ONNX, LEVELS  # noqa: E402
from edgeq.backends.onnx_head import HEAD_ONNX  # noqa: E402
from edgeq.backends.onnx_vnni import DECODER_VNNI_ONNX, VNNI_ONNX  # noqa: E402
from edgeq.errors import BundleError, RecipeError  # noqa: E402
from edgeq.format.bundle import MANIFEST  # noqa: E402
from edgeq.format.layout import DECODER_ONNX, ENCODER_ONNX  # noqa: E402
from edgeq.runtime.int8_kernels import vnni_kernels  # noqa: E402
from edgeq.schema import replace  # noqa: E402
from edgeq.spec.recipe import list_recipes  # noqa: E402
from edgeq.util import sha256_file  # noqa: E402

ONNX_RECIPES = [r.name for r in list_recipes() if r.runtime == "onnxruntime"]
# First-step logits of the fp32 ONNX bundle vs the fp32 PyTorch bundle; measured 1.1e-6.
LOGITS_ATOL = 1e-4


def run_python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bundles(tiny_model, calibration_dir, tmp_path_factory):
    """recipe -> bundle (or the exception its build raised), plus the torch fp32 reference."""
    import edgeq

    root = tmp_path_factory.mktemp("onnx-bundles")

    def one(name):
        calib = str(calibration_dir) if name.endswith("static") else None
        return edgeq.build(name, model=str(tiny_model), out=root / name, calibration=calib, language="en")

    return each([*ONNX_RECIPES, "fp32"], one)


@pytest.fixture(scope="module")
def probed(bundles, audio_dir):
    """Every ONNX bundle loaded and run by tests/probe.py in one fresh process."""
    paths = [str(b.path) for n, b in bundles.items() if n != "fp32" and not isinstance(b, Exception)]
    proc = subprocess.run([sys.executable, str(PROBE), str(audio_dir / "a_16k.wav"), *paths],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def torch_reference(bundles, audio_dir):
    from probe import probe

    import edgeq

    return probe(edgeq.load(_get(bundles, "fp32").path, language="en"), str(audio_dir / "a_16k.wav"))


def _graphs(bundle):
    """The encoder and the whole decoder: decoder.onnx with the head's nodes after its own, to
    look at (the head is a graph of its own: backends.onnx_head)."""
    import onnx

    decoder = onnx.load(str(bundle.path / DECODER_ONNX))
    decoder.graph.node.extend(onnx.load(str(bundle.path / HEAD_ONNX), load_external_data=False).graph.node)
    return onnx.load(str(bundle.path / ENCODER_ONNX)), decoder


# --------------------------------------------------------------------------- every recipe


@pytest.mark.parametrize("name", ONNX_RECIPES)
def test_recipe_builds_an_onnx_bundle(name, bundles):
    bundle = _get(bundles, name)
    m = bundle.manifest.to_dict()
    assert m["runtime"] == "onnxruntime" and m["requires"]["extra"] == "runtime"
    assert {ENCODER_ONNX, DECODER_ONNX, "onnx.json", "tokenizer.json", "generation_config.json",
            "config.json", "recipe.toml"} <= set(m["files"])
    # weights beside the graphs, memory-mapped by ONNX Runtime (see onnx_quant.save_model)
    graphs = [ENCODER_ONNX, DECODER_ONNX, ENCODER_ONNX + ".data", DECODER_ONNX + ".data"]
    assert set(graphs) <= set(m["files"])
    graphs += [g for g in (VNNI_ONNX, DECODER_VNNI_ONNX, AVX2_ONNX) if g in m["files"]]  # int8 encoders (onnx_vnni, onnx_avx2)
    graphs += [HEAD_ONNX]  # every ONNX decoder ends in the projection (backends.onnx_head)
    assert m["size"]["weights_bytes"] == sum(m["files"][name]["size"] for name in graphs)
    layout = json.loads((bundle.path / "onnx.json").read_text())
    assert layout["export_check"]["decoder_step"] <= layout["export_check"]["tolerance"]


@pytest.mark.parametrize("name", ONNX_RECIPES)
def test_graphs_pass_the_onnx_checker(name, bundles):
    import onnx

    bundle = _get(bundles, name)
    for file in (ENCODER_ONNX, DECODER_ONNX, HEAD_ONNX,
                 *(g for g in (VNNI_ONNX, DECODER_VNNI_ONNX) if g in bundle.manifest.files)):
        onnx.checker.check_model(str(bundle.path / file), full_check=True)
        # no constant that no node reads (ONNX Runtime drops each at every load, with a warning)
        graph = onnx.load(str(bundle.path / file), load_external_data=False).graph
        read = _inputs_read(graph)
        assert [t.name for t in graph.initializer if t.name not in read] == [], file


@pytest.mark.parametrize("name", ONNX_RECIPES)
def test_the_projection_is_a_graph_of_its_own(name, bundles):
    """decoder_head.onnx holds the projection onto the token table (and, float16, the Cast of the
    logits), reading its weights from decoder.onnx.data: the table is stored once."""
    import onnx

    bundle = _get(bundles, name)
    layout = json.loads((bundle.path / "onnx.json").read_text())
    assert layout["decoder_head"] == HEAD_ONNX and layout["decoder_outputs"][0] == "hidden"
    head = onnx.load(str(bundle.path / HEAD_ONNX), load_external_data=False).graph
    ops = [n.op_type for n in head.node]
    assert ops[0] in ("Gemm", "MatMul", "MatMulNBits") and ops[1:] in ([], ["Cast"]), ops
    assert [i.name for i in head.input] == ["hidden"] and [o.name for o in head.output] == ["logits"]
    assert not (bundle.path / f"{HEAD_ONNX}.data").exists()
    places = {e.value for t in head.initializer for e in t.external_data if e.key == "location"}
    assert places == {f"{DECODER_ONNX}.data"}
    for graph in (DECODER_ONNX, DECODER_VNNI_ONNX):
        if graph in bundle.manifest.files:
            body = onnx.load(str(bundle.path / graph), load_external_data=False).graph
            assert body.output[0].name == "hidden" and "logits" not in {o for n in body.node for o in n.output}
            # ... and the table is read there only by the embedding lookup, not projected a second time
            table = {t.name for t in head.initializer}
            assert ops[0] not in {n.op_type for n in body.node if table & set(n.input)}


def _inputs_read(graph) -> set[str]:
    """The names `graph`'s nodes read, in their subgraphs too (a Scan's body reads outer constants)."""
    from onnx import AttributeProto

    read = set()
    for node in graph.node:
        read.update(node.input)
        for a in node.attribute:
            subgraphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
            for sub in subgraphs:
                read |= _inputs_read(sub)
    return read


# First-step logits vs the torch fp32 bundle, relative L2 error, by recipe (measured on the tiny
# model: fp32 7e-7, fp16 8e-4, int8 dynamic 0.026 / static 0.023, int4 0.22). On a random model
# near-ties make quantized greedy paths part after a few tokens; only float recipes must match.
LOGITS_REL = {"onnx-fp32": 1e-5, "onnx-fp16": 5e-3, "onnx-int8-dynamic": 0.1, "onnx-int8-static": 0.1,
              "onnx-int4": 0.5, "onnx-int8-dynamic-int4-decoder": 0.5}


@pytest.mark.parametrize("name", ONNX_RECIPES)
def test_bundle_transcribes_without_torch(name, bundles, probed, torch_reference):
    assert probed["torch_imported"] is False
    p = probed["probes"][str(_get(bundles, name).path)]
    logits, ref = np.array(p["logits"]), np.array(torch_reference["logits"])
    # The 4-bit decoder in blocks of 64 leaves no text on these random weights (its greedy path
    # parts from fp32's at once): its logits below are the check here, real speech is
    # tests/real/test_onnx_real.py's. Every other recipe must transcribe something.
    assert name == "onnx-int8-dynamic-int4-decoder" or len(p["tokens"]) > 0
    assert np.isfinite(logits).all()
    assert np.linalg.norm(logits - ref) / np.linalg.norm(ref) <= LOGITS_REL[name]
    if name in ("onnx-fp32", "onnx-fp16"):
        assert p["tokens"] == torch_reference["tokens"]
    elif name not in ("onnx-int4", "onnx-int8-dynamic-int4-decoder"):
        assert p["tokens"][0] == torch_reference["tokens"][0]


def test_fp32_matches_pytorch(bundles, probed, torch_reference):
    p = probed["probes"][str(_get(bundles, "onnx-fp32").path)]
    assert p["tokens"] == torch_reference["tokens"]
    np.testing.assert_allclose(np.array(p["logits"]), np.array(torch_reference["logits"]), rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("frames", [3000, 1200, 238])
def test_a_short_encoder_window_gives_the_torch_logits(bundles, audio_dir, frames):
    """encoder_window "fit": the ONNX graphs take any even window length and agree with the torch
    engine, which runs transformers' modules with the positional table cut to the same length."""
    import edgeq
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram

    features = log_mel_spectrogram(load_audio(audio_dir / "a_16k.wav"))[:, :frames]
    logits = []
    for name in ("onnx-fp32", "fp32"):
        t = edgeq.load(_get(bundles, name).path, language="en")
        assert t.engine.variable_window
        first, _ = t.engine.step(t.engine.start(t.engine.encode(features)), t.settings.prompt("en"))
        logits.append(first)
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=LOGITS_ATOL)


def test_a_bundle_of_layout_version_1_loads_and_encodes_full_windows(bundles, audio_dir, tmp_path):
    """Bundles built before the encoder took short windows (fixed 30 s graphs, layout 1) still run."""
    import edgeq
    from edgeq.runtime.decoding import DecodeOptions

    folder = _copy(_get(bundles, "onnx-fp32"), tmp_path)
    layout = json.loads((folder / "onnx.json").read_text())
    layout["layout_version"] = 1
    del layout["variable_frames"]
    (folder / "onnx.json").write_text(json.dumps(layout))
    _rehash(folder, "onnx.json")
    t = edgeq.load(folder, language="en")
    assert not t.engine.variable_window
    new = edgeq.load(_get(bundles, "onnx-fp32").path, language="en")
    full = DecodeOptions(encoder_window="full")
    # fit is asked for (the default) but the old graphs take 30 s only: the same tokens as in full
    assert t.transcribe(audio_dir / "a_16k.wav").tokens == new.transcribe(audio_dir / "a_16k.wav", options=full).tokens


@pytest.mark.parametrize("name", ["onnx-fp16", "onnx-int8-dynamic"])
def test_a_bundle_whose_decoder_makes_the_logits_itself_still_loads(name, bundles, audio_dir, tmp_path):
    """Bundles built before decoder_head.onnx (the projection inside decoder.onnx, no decoder_head in
    onnx.json) load as they are, with the same logits and tokens: the head is merged back here."""
    import onnx

    import edgeq

    folder = _copy(_get(bundles, name), tmp_path)
    head = onnx.load(str(folder / HEAD_ONNX), load_external_data=False).graph
    (folder / HEAD_ONNX).unlink()
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["files"][HEAD_ONNX]  # (the next _rehash sums the sizes again)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    layout = json.loads((folder / "onnx.json").read_text())
    for graph in filter(None, (layout["decoder"], layout.get("decoder_vnni"))):
        model = onnx.load(str(folder / graph), load_external_data=False)
        known = {t.name for t in model.graph.initializer}
        model.graph.initializer.extend(t for t in head.initializer if t.name not in known)
        model.graph.node.extend(head.node)
        model.graph.output.remove(model.graph.output[0])
        model.graph.output.insert(0, head.output[0])
        onnx.save(model, str(folder / graph))
        _rehash(folder, graph)
    del layout["decoder_head"]
    layout["decoder_outputs"][0] = "logits"
    (folder / "onnx.json").write_text(json.dumps(layout))
    _rehash(folder, "onnx.json")
    assert edgeq.load(folder).engine._head is None
    logits, tokens = _first_logits_and_tokens([SimpleNamespace(path=folder), _get(bundles, name)], audio_dir)
    np.testing.assert_array_equal(logits[0], logits[1])
    assert tokens[0] == tokens[1]


def test_a_decode_binds_once_and_steps_as_a_fresh_binding_would(bundles, audio_dir):
    # OnnxEngine._step_held reuses one binding per decode, writing only the token ids and the cache
    # length into arrays it bound once. The same steps through a fresh binding each (the state's
    # held binding taken away) must give the same logits: after a prompt of several tokens, after a
    # fork (its own binding, over its own buffers), and on another thread (its own head buffer).
    import threading

    import edgeq
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram

    t = edgeq.load(_get(bundles, "onnx-int8-dynamic").path, language="en")
    engine, prompt = t.engine, t.settings.prompt("en")
    features = log_mel_spectrogram(load_audio(audio_dir / "a_16k.wav"))
    encoded = engine.encode(features)

    def decode(held: bool) -> list[np.ndarray]:
        def step(state, tokens):
            return engine.step(state if held else state[:4] + (None,), tokens)

        state = engine.start(encoded)
        assert state[4] is not None  # a CPU bundle with a head graph: the held path is the one taken
        seen = []
        for tokens in (prompt, [100], [101], prompt[:2], [102]):  # a second prompt-length call rebinds the ids
            logits, state = step(state, tokens)
            seen.append(logits)
        branch = engine.fork(state)
        assert branch[4] is not state[4]
        for token in (103, 104):
            logits, branch = step(branch, [token])
            seen.append(logits)
        box = []
        thread = threading.Thread(target=lambda: box.append(step(state, [105])))
        thread.start()
        thread.join()
        seen.append(box[0][0])
        logits, _ = step(box[0][1], [106])  # back on this thread, after the other's head buffer
        return seen + [logits]

    for a, b in zip(decode(True), decode(False), strict=True):
        np.testing.assert_array_equal(a, b)


def test_decodes_in_two_threads_sharing_one_engine_keep_their_own_logits(bundles, audio_dir):
    """The head's buffers, bound once, are per thread (onnx_engine._head_buffers): two decodes of
    different audio, stepping at once on one loaded bundle, get the logits each gets alone."""
    import threading

    import edgeq
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram

    t = edgeq.load(_get(bundles, "onnx-int8-dynamic").path, language="en")
    engine, prompt = t.engine, t.settings.prompt("en")
    clips = [log_mel_spectrogram(load_audio(audio_dir / name)) for name in ("a_16k.wav", "c_8k.ogg")]

    def decode(features, out, start=None):
        state = engine.start(engine.encode(features))
        if start is not None:
            start.wait()
        tokens = list(prompt)
        for token in range(40):
            logits, state = engine.step(state, tokens)
            out.append(logits)
            tokens = [100 + token]

    alone = [[], []]
    for features, out in zip(clips, alone):
        decode(features, out)
    assert not np.array_equal(alone[0][-1], alone[1][-1])
    together, start = [[], []], threading.Barrier(2)
    threads = [threading.Thread(target=decode, args=(f, out, start)) for f, out in zip(clips, together)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for a, b in zip(alone, together):
        assert len(b) == 40 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_quantized_graphs_use_the_recipes_operators(bundles):
    ops = {}
    for name in ONNX_RECIPES:
        enc, dec = _graphs(_get(bundles, name))
        ops[name] = ({n.op_type for n in enc.graph.node}, {n.op_type for n in dec.graph.node})
    assert "DynamicQuantizeMatMul" in ops["onnx-int8-dynamic"][0] or "MatMulInteger" in ops["onnx-int8-dynamic"][0]
    assert "QuantizeLinear" in ops["onnx-int8-static"][0] and "DequantizeLinear" in ops["onnx-int8-static"][0]
    assert "MatMulInteger" in ops["onnx-int8-static"][0]  # fc2, options.dynamic
    # Calibrated on full windows, a static encoder runs on full windows; every other one is fitted.
    assert [name for name in ops if not json.loads((_get(bundles, name).path / "onnx.json").read_text())[
        "variable_frames"]] == ["onnx-int8-static"]
    assert "MatMulNBits" in ops["onnx-int4"][0]
    for name in ("onnx-int8-dynamic", "onnx-int8-static", "onnx-int4", "onnx-int8-dynamic-int4-decoder"):
        assert {"MatMulNBits", "GatherBlockQuantized"} <= ops[name][1], name
    assert ops["onnx-int8-dynamic-int4-decoder"][0] == ops["onnx-int8-dynamic"][0]
    enc, _ = _graphs(_get(bundles, "onnx-fp16"))
    assert any(t.data_type == 10 for t in enc.graph.initializer)  # FLOAT16 weights


def test_the_layers_line_is_the_build_s_own_record(bundles):
    # `edgeq info` / `edgeq build`'s "layers" line: onnx.json's quantization, what the build did
    summary = {name: _get(bundles, name).layers_summary() for name in ONNX_RECIPES}
    assert summary["onnx-fp32"] == "not quantized (float32)"
    assert summary["onnx-int8-dynamic"] == ("encoder quantize_dynamic uint8 per-channel; decoder DynamicQuantizeMatMul "
                                            "int8 per-channel, 7-bit codes; table int8 blocks of 128")
    assert re.search(r"; decoder MatMulNBits 4-bit \(int4-b64 x\d+, int8-b128 x2\); table int8 blocks of 128$",
                     summary["onnx-int8-dynamic-int4-decoder"]), summary["onnx-int8-dynamic-int4-decoder"]
    assert summary["onnx-int4"].startswith("encoder and decoder MatMulNBits int4 (blocks of 32); table int4 blocks of")


def test_an_int8_scheme_s_weights_format_is_its_decoder_s_and_its_encoder_stays_int8(bundles):
    # onnx-int8-dynamic-int4-decoder: the same int8 encoder as onnx-int8-dynamic, the decoder's
    # Linear layers as 4-bit MatMulNBits blocks of 64 with zero points, the tied table and the last
    # layer's feed-forward 8-bit blocks of 128.
    from onnx import helper

    def nbits(graph):
        return sorted((helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits")),
                       helper.get_attribute_value(next(a for a in n.attribute if a.name == "block_size")),
                       len(n.input) > 3 and bool(n.input[3]))
                      for n in graph.graph.node if n.op_type == "MatMulNBits")

    mixed, int8 = _get(bundles, "onnx-int8-dynamic-int4-decoder"), _get(bundles, "onnx-int8-dynamic")
    (enc4, dec4), (enc8, dec8) = _graphs(mixed), _graphs(int8)
    assert nbits(enc4) == nbits(enc8) == []
    table, last_ffn = 1, 2  # the tied table's MatMulNBits (logits); the last layer's fc1 and fc2 (modules.overrides)
    # onnx-int8-dynamic: its Linear layers are per-channel int8 (options.decoder_int8 = "channels",
    # test_a_channels_decoder_holds_7_bit_codes_per_output_channel), the table MatMulNBits
    assert nbits(dec8) == [(8, 128, False)] * table
    linears = len(nbits(dec4)) - table
    assert len(_weight_matmul_integers(dec8)) == linears
    assert nbits(dec4).count((8, 128, False)) == table + last_ffn
    assert nbits(dec4).count((4, 64, True)) == linears - last_ffn > 0
    quantization = json.loads((mixed.path / "onnx.json").read_text())["quantization"]
    assert quantization["decoder"] == "MatMulNBits 4-bit"
    assert quantization["decoder_layers_per_format"] == {"int8-b128": last_ffn, "int4-b64": linears - last_ffn}
    assert mixed.manifest.size.weights_bytes < int8.manifest.size.weights_bytes


def _weight_matmul_integers(graph):
    """The MatMulIntegers whose B is a stored weight (not the cross-attention's activations)."""
    inits = {t.name for t in graph.graph.initializer}
    return [n for n in graph.graph.node if n.op_type == "MatMulInteger" and n.input[1] in inits]


def test_a_channels_decoder_holds_7_bit_codes_per_output_channel(bundles, tiny_model):
    # options.decoder_int8 = "channels": int8 weights [K, N] within +-64 (AVX2's uint8 x int8
    # product of two pairs then stays within int16: 2 * 255 * 64 < 32768), a zero zero point and
    # a scale per output channel, and each dequantized weight within half a step of the float one.
    import onnx
    from onnx import numpy_helper
    from transformers import WhisperForConditionalGeneration

    from edgeq.backends.onnx_export import exported_linear_weights

    bundle = _get(bundles, "onnx-int8-dynamic")
    graph = onnx.load(str(bundle.path / DECODER_ONNX))
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    model = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    floats = [w.T for name, w in exported_linear_weights(model).items()  # cross keys/values: in the encoder
              if name.startswith("model.decoder.") and not name.endswith(("encoder_attn.k_proj", "encoder_attn.v_proj"))]
    nodes = _weight_matmul_integers(graph)
    assert len(nodes) == len(floats) > 0
    for node in nodes:
        codes, zero = inits[node.input[1]], inits[node.input[3]]
        scale = inits[node.input[1].removesuffix("_quantized") + "_scale"]  # onnxruntime.quantization's name
        assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 64
        assert zero.shape == scale.shape == (codes.shape[1],) and not zero.any()
        weight = codes * scale
        nearest = min((np.abs(weight - w).max() / scale.max(), i) for i, w in enumerate(floats) if w.shape == weight.shape)
        assert nearest[0] <= 0.5 + 1e-3, node.name
        floats.pop(nearest[1])  # each Linear layer once
    json_info = json.loads((bundle.path / "onnx.json").read_text())["quantization"]
    assert json_info["decoder"] == "DynamicQuantizeMatMul int8 per-channel, 7-bit codes"


def test_a_channels_decoder_needs_an_int8_scheme():
    from edgeq.backends.onnx import _check_recipe
    from edgeq.spec.recipe import apply_overrides, load_recipe

    with pytest.raises(RecipeError, match="decoder_int8 = 'channels' .* only the int8 schemes do"):
        _check_recipe(apply_overrides(load_recipe("onnx-int4"), ["options.decoder_int8=channels"]))
    _check_recipe(apply_overrides(load_recipe("onnx-int8-static"), ["options.decoder_int8=channels"]))


def test_decoder_layers_of_an_int8_scheme_take_their_own_width_and_encoder_layers_cannot(bundles, tiny_model, tmp_path,
                                                                                           caplog):
    # onnx-int8-dynamic-int4-decoder keeps "model.decoder.layers.-1.fc*" 8-bit: the last layer's
    # fc1 and fc2, as MatMulNBits (K, N) = (d_model, ffn) and (ffn, d_model), the rest 4-bit.
    import edgeq
    from edgeq.backends.onnx import _check_recipe
    from edgeq.schema import replace
    from edgeq.spec.recipe import apply_overrides, load_recipe

    config = json.loads((Path(tiny_model) / "config.json").read_text())
    d, ffn = config["d_model"], config["decoder_ffn_dim"]
    _, dec = _graphs(_get(bundles, "onnx-int8-dynamic-int4-decoder"))

    def attr(node, name):
        return next(a.i for a in node.attribute if a.name == name)

    eight = sorted((attr(n, "K"), attr(n, "N")) for n in dec.graph.node
                   if n.op_type == "MatMulNBits" and attr(n, "bits") == 8 and attr(n, "N") != config["vocab_size"])
    assert eight == sorted([(d, ffn), (ffn, d)])
    # Every decoder layer 4-bit but the first layer's self-attention queries, 8-bit: one more 8-bit node.
    # A pattern past the last layer matches nothing: said once, not once per look at the plan.
    recipe = apply_overrides(load_recipe("onnx-int8-dynamic"), [
                             "weights.format=int4", "weights.granularity=group", "weights.group_size=32",
                             'modules.overrides."model.decoder.layers.0.self_attn.q_proj"={format="int8"}',
                             'modules.overrides."model.decoder.layers.-99.fc1"={format="int8"}'])
    with caplog.at_level(logging.WARNING, logger="edgeq"):
        one = edgeq.build(recipe, model=str(tiny_model), out=tmp_path / "one", language="en")
    # onnx-int8-dynamic's 8-bit decoder layers are per-channel DynamicQuantizeMatMul (decoder_int8)
    assert json.loads((one.path / "onnx.json").read_text())["quantization"]["decoder_layers_per_format"]["int8-channels"] == 1
    assert caplog.text.count("'model.decoder.layers.-99.fc1' matches no Linear layer") == 1
    encoder_layer = 'modules.overrides."model.encoder.layers.0.fc1"={format="int4"}'
    with pytest.raises(RecipeError, match=r"decoder's MatMulNBits only; name decoder layers .*model\.encoder\.layers\.0\.fc1"):
        _check_recipe(apply_overrides(load_recipe("onnx-int8-dynamic"), [encoder_layer]))
    # onnx-int8-dynamic is per channel: a 4-bit layer, or 4-bit weights, need blocks named
    four = 'modules.overrides."model.decoder.layers.0.fc1"={format="int4"}'
    with pytest.raises(RecipeError, match=r'overrides."model.decoder.layers.0.fc1" is written as MatMulNBits blocks'):
        _check_recipe(apply_overrides(load_recipe("onnx-int8-dynamic"), [four]))
    _check_recipe(apply_overrides(load_recipe("onnx-int8-dynamic"), [four[:-1] + ',granularity="group",group_size=32}']))
    # groups that no layer would use: the label would call per-channel layers "group 64"
    with pytest.raises(RecipeError, match="weights.granularity = 'group' but with options.decoder_int8 = 'channels' "
                                          "the 8-bit Linear layers are per channel"):
        _check_recipe(apply_overrides(load_recipe("onnx-int8-dynamic"), ["weights.granularity=group",
                                                                         "weights.group_size=64"]))
    # ... but an override that becomes MatMulNBits without a size of its own is written in them
    _check_recipe(apply_overrides(load_recipe("onnx-int8-dynamic"), ["weights.granularity=group", "weights.group_size=32",
                                                                     four]))
    with pytest.raises(RecipeError, match="set weights.granularity = 'group'.*or options.decoder_int8 = 'channels'"):
        _check_recipe(apply_overrides(load_recipe("onnx-int8-dynamic"), ["options.decoder_int8=blocks"]))
    with pytest.raises(RecipeError, match="set weights.granularity = 'group'"):
        _check_recipe(apply_overrides(load_recipe("onnx-int8-dynamic"), ["weights.format=int4"]))
    with pytest.raises(RecipeError, match="tied table is stored in MatMulNBits blocks: set modules.embeddings_group_size"):
        int8 = load_recipe("onnx-int8-dynamic")
        _check_recipe(replace(int8, modules=replace(int8.modules, embeddings_group_size=None)))
    with pytest.raises(RecipeError, match="per-layer weight formats need MatMulNBits"):
        _check_recipe(apply_overrides(load_recipe("onnx-fp32"), ['modules.overrides."model.decoder.*"={format="int8"}']))


@pytest.mark.parametrize("recipe", ["onnx-fp32", "onnx-int8-dynamic"])
def test_fused_attention_is_one_multihead_node_per_layer(recipe, bundles, tiny_model, tmp_path):
    # The default, options.attention = "fused" (onnx_fusion): no layer's scores or softmax left; the
    # build checks the fused float graph against PyTorch (check_float_export), so a wrong fusion
    # fails here. options.attention = "blocks" keeps the exported chain, in query blocks.
    import edgeq
    from edgeq.spec.recipe import apply_overrides, load_recipe

    layers = json.loads((Path(tiny_model) / "config.json").read_text())["encoder_layers"]
    ops = [n.op_type for n in _graphs(_get(bundles, recipe))[0].graph.node]
    assert ops.count("MultiHeadAttention") == layers and "Softmax" not in ops
    blocks = apply_overrides(load_recipe(recipe), ["options.attention=blocks"])
    bundle = edgeq.build(blocks, model=str(tiny_model), out=tmp_path / "b", language="en")
    ops = [n.op_type for n in _graphs(bundle)[0].graph.node]
    assert "MultiHeadAttention" not in ops and ops.count("Softmax") == 6 * layers
    # Each bundle's recipe says which it holds, a default included (Recipe.resolved): replayed by an
    # edgeq whose default differs, recipe.toml still builds the same graph.
    assert _get(bundles, recipe).recipe.options["attention"] == "fused"
    assert load_recipe(str(bundle.path / "recipe.toml")).options["attention"] == "blocks"
    assert "attention" not in load_recipe(recipe).options  # the shipped file leaves it to the default


def test_the_query_scaling_is_in_the_projection_weights_and_every_linear_layer_is_still_found(bundles, tiny_model):
    # onnx_export._ScaledQuery: no Mul by head_dim ** -0.5 after any query projection, in either
    # graph; the quantizer still finds every Linear layer by its (scaled) weight.
    from onnx import numpy_helper

    config = json.loads((Path(tiny_model) / "config.json").read_text())
    scaling = np.float32((config["d_model"] // config["decoder_attention_heads"]) ** -0.5)
    for graph in _graphs(_get(bundles, "onnx-fp32")):
        scalars = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer if not t.dims}
        scalars.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.graph.node
                        if n.op_type == "Constant" and n.attribute[0].name == "value" and not n.attribute[0].t.dims})
        assert not [n.name for n in graph.graph.node if n.op_type == "Mul"
                    and any(i in scalars and np.isclose(scalars[i], scaling) for i in n.input)]
    for name in ("onnx-int8-dynamic", "onnx-int8-static", "onnx-int4", "onnx-int8-dynamic-int4-decoder"):
        assert json.loads((_get(bundles, name).path / "onnx.json").read_text())["quantization"]["float_layers"] == 0


def test_an_attention_chain_the_fusion_cannot_follow_is_an_error(bundles):
    import onnx
    from onnx import helper

    from edgeq.backends.onnx_fusion import FusionError, fuse_encoder_attention

    # A softmax read twice: the fusion must refuse the chain rather than drop a reader.
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 4])
    nodes = [helper.make_node("MatMul", ["x", "x"], ["s"]), helper.make_node("Softmax", ["s"], ["p"]),
             helper.make_node("MatMul", ["p", "x"], ["a"]), helper.make_node("Add", ["a", "p"], ["y"])]
    graph = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    with pytest.raises(FusionError, match="expected one MatMul after 'p'"):
        fuse_encoder_attention(graph, heads=1, layers=1)
    with pytest.raises(FusionError, match="found 0 self-attention chains in the encoder, expected 2"):
        fuse_encoder_attention(helper.make_model(helper.make_graph([], "g", [x], [x])), heads=1, layers=2)


def _first_logits_and_tokens(bundles, audio_dir):
    """Per bundle: the first decoder step's logits on a_16k.wav, and its greedy transcript's tokens."""
    import edgeq
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram

    features = log_mel_spectrogram(load_audio(audio_dir / "a_16k.wav"))
    logits, tokens = [], []
    for bundle in bundles:
        t = edgeq.load(bundle.path, language="en")
        first, _ = t.engine.step(t.engine.start(t.engine.encode(features)), t.settings.prompt("en"))
        logits.append(first)
        tokens.append(t.transcribe(audio_dir / "a_16k.wav").tokens)
    return logits, tokens


def test_float16_cross_attention_keys_values_give_the_float32_logits(bundles, tiny_model, audio_dir, tmp_path):
    # options.cross_kv = "float16" (what onnx-int4 shipped before its 8-bit codes): the encoder
    # outputs float16 keys/values and each decoder layer reads them in one MultiHeadAttention node.
    # On float weights the first-step logits are float32's to 1e-5 (measured 9e-6); with int8
    # activations (MatMulNBits accuracy level 4) the rounding moves them by 1.4 % on this random
    # model, as any input change would.
    import onnx

    import edgeq
    from edgeq.spec.recipe import apply_overrides, load_recipe

    config = json.loads((Path(tiny_model) / "config.json").read_text())
    half = edgeq.build(apply_overrides(load_recipe("onnx-fp32"), ["options.cross_kv=float16"]),
                       model=str(tiny_model), out=tmp_path / "half", language="en")
    half4 = edgeq.build(apply_overrides(load_recipe("onnx-int4"), ["options.cross_kv=float16"]),
                        model=str(tiny_model), out=tmp_path / "half4", language="en")
    for bundle in (half, half4):
        enc, dec = _graphs(bundle)
        assert {o.type.tensor_type.elem_type for o in enc.graph.output} == {onnx.TensorProto.FLOAT16}
        cross = [i for i in dec.graph.input if i.name.startswith("cross_")]
        assert {i.type.tensor_type.elem_type for i in cross} == {onnx.TensorProto.FLOAT16}
        ops = [n.op_type for n in dec.graph.node]
        # the cross-attention softmaxes are gone; each self-attention is one GroupQueryAttention
        assert ops.count("MultiHeadAttention") == ops.count("GroupQueryAttention") == config["decoder_layers"]
        assert "Softmax" not in ops
        assert json.loads((bundle.path / "onnx.json").read_text())["quantization"]["cross_kv"] == "float16"
    assert _get(bundles, "onnx-fp32").recipe.options["cross_kv"] == "float32"
    assert "cross_kv" not in json.loads((_get(bundles, "onnx-fp32").path / "onnx.json").read_text())["quantization"]

    logits, tokens = _first_logits_and_tokens([half, _get(bundles, "onnx-fp32")], audio_dir)
    assert np.linalg.norm(logits[0] - logits[1]) / np.linalg.norm(logits[1]) < 1e-4
    assert tokens[0] == tokens[1]


def test_int8_cross_attention_keys_values_are_codes_multiplied_as_they_are(bundles, tiny_model, audio_dir, tmp_path):
    # options.cross_kv = "int8": the encoder outputs uint8 codes and their float32
    # scales after them; each decoder layer multiplies the codes with two MatMulIntegers. On float
    # weights the first-step logits stay within 1 % of float32's (measured 0.09 %) and greedy
    # decoding gives the same tokens.
    import onnx

    import edgeq
    from edgeq.format.layout import OnnxLayout, cross_scale_names
    from edgeq.spec.recipe import apply_overrides, load_recipe

    config = json.loads((Path(tiny_model) / "config.json").read_text())
    codes = edgeq.build(apply_overrides(load_recipe("onnx-fp32"), ["options.cross_kv=int8"]),
                        model=str(tiny_model), out=tmp_path / "codes", language="en")
    layout = OnnxLayout.from_dict(json.loads((codes.path / "onnx.json").read_text()))
    cross = [f"cross_{kv}_{i}" for i in range(config["decoder_layers"]) for kv in ("k", "v")]
    assert layout.cross_int8 and layout.quantization["cross_kv"] == "int8"
    # onnx-int8-dynamic and onnx-int4 ship them so
    for recipe in ("onnx-int8-dynamic", "onnx-int4"):
        shipped = OnnxLayout.from_dict(json.loads((_get(bundles, recipe).path / "onnx.json").read_text()))
        assert shipped.cross_int8 and shipped.encoder_outputs == layout.encoder_outputs
    assert layout.encoder_outputs == [*cross, *cross_scale_names(cross)]
    enc, dec = _graphs(codes)
    types = {o.name: o.type.tensor_type.elem_type for o in enc.graph.output}
    assert {types[n] for n in cross} == {onnx.TensorProto.UINT8}
    assert {types[n] for n in cross_scale_names(cross)} == {onnx.TensorProto.FLOAT}
    shape = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in dec.graph.input}
    # keys as computed, [1, H, F, Dh]: the first operand of their product (onnx_cross_int8)
    assert shape["cross_k_0"][3] == shape["cross_v_0"][3] == config["d_model"] // config["decoder_attention_heads"]
    ops = [n.op_type for n in dec.graph.node]
    assert ops.count("MatMulInteger") == 2 * config["decoder_layers"]

    logits, tokens = _first_logits_and_tokens([codes, _get(bundles, "onnx-fp32")], audio_dir)
    assert np.linalg.norm(logits[0] - logits[1]) / np.linalg.norm(logits[1]) < 1e-2
    assert tokens[0] == tokens[1]


def test_int8_cross_keys_values_are_the_documented_codes_without_float_copies(bundles, tiny_model, audio_dir, tmp_path):
    # The encoder's codes, against onnx_cross_int8's formula applied in numpy to the float32 encoder's
    # keys/values: keys divided by their channels' largest magnitude, then per frame to +-127 around
    # 128; values per channel. Rounded half to even (QuantizeLinear by 1, which replaced Round, Add and
    # Cast), and no Abs or Round in the graph: each wrote a float32 copy of a window's keys or values.
    import onnxruntime as ort

    import edgeq
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram
    from edgeq.spec.recipe import apply_overrides, load_recipe

    codes = edgeq.build(apply_overrides(load_recipe("onnx-fp32"), ["options.cross_kv=int8"]),
                        model=str(tiny_model), out=tmp_path / "codes", language="en")
    enc, _ = _graphs(codes)
    assert not {"Abs", "Round"} & {n.op_type for n in enc.graph.node}
    features = log_mel_spectrogram(load_audio(audio_dir / "a_16k.wav"))[None]

    def outputs(bundle):
        session = ort.InferenceSession(str(bundle.path / ENCODER_ONNX), providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input_features": features})))

    got, floats = outputs(codes), outputs(_get(bundles, "onnx-fp32"))
    tiny = np.float32(1e-30)
    for name in (n for n in floats if n.startswith("cross_")):
        x = floats[name]
        if "_k_" in name:
            normal = x / np.maximum(np.abs(x).max(axis=2, keepdims=True), tiny)
            scaled = normal / (np.maximum(np.abs(normal).max(axis=3, keepdims=True), tiny) / np.float32(127))
        else:
            scaled = x / (np.maximum(np.abs(x).max(axis=2, keepdims=True), tiny) / np.float32(127))
        expected = np.rint(scaled) + 128
        # the same float32 encoder up to its last bits: a code may differ by one where x / scale
        # falls within rounding of a half
        assert np.abs(got[name].astype(np.int32) - expected).max() <= 1, name
        assert np.mean(got[name] == expected) > 0.999, name

    # As ONNX Runtime runs them after its optimizer (ORT_ENABLE_ALL, as edgeq loads): every reduction
    # over frames reads a [H, F, Dh] view, never a 4-D tensor. On [1, H, F, Dh] the optimizer moves the
    # head transpose past the reductions and they reduce the first axis of [F, H x Dh], ONNX Runtime's
    # slow column-by-column kernel (onnx_cross_int8._abs_max_over_frames).
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "profile")
    session = ort.InferenceSession(str(codes.path / ENCODER_ONNX), options, providers=["CPUExecutionProvider"])
    session.run(None, {"input_features": features})
    events = json.loads(Path(session.end_profiling()).read_text())
    frames = features.shape[-1] // 2
    reduced = [(e["args"]["input_type_shape"][0]["float"], e["args"]["output_type_shape"][0]["float"]) for e in events
               if e.get("cat") == "Node" and e["args"].get("op_name") in ("ReduceMax", "ReduceMin")]
    over_frames = [shape for shape, out in reduced if frames in shape and frames not in out]
    assert over_frames and all(len(shape) == 3 and shape[1] == frames for shape in over_frames), over_frames


def test_encoder_feed_forward_runs_in_frame_blocks_with_the_same_numbers(bundles, tiny_model, audio_dir, tmp_path):
    # options.ffn_blocks (default 4): each encoder layer's feed-forward block is Split over frames,
    # run block by block, and Concatenated. Every operator in it works frame by frame, so on float
    # weights the logits are one block's to rounding and greedy decoding gives the same tokens.
    import edgeq
    from edgeq.spec.recipe import apply_overrides, load_recipe

    config = json.loads((Path(tiny_model) / "config.json").read_text())
    one = edgeq.build(apply_overrides(load_recipe("onnx-fp32"), ["options.ffn_blocks=1"]),
                      model=str(tiny_model), out=tmp_path / "one", language="en")
    blocked = _get(bundles, "onnx-fp32")
    assert blocked.recipe.options["ffn_blocks"] == 4
    for bundle, splits in ((one, 0), (blocked, config["encoder_layers"]), (_get(bundles, "onnx-int8-dynamic"),
                                                                          config["encoder_layers"])):
        enc, _ = _graphs(bundle)
        ops = [n.op_type for n in enc.graph.node]
        assert ops.count("Split") == ops.count("Concat") == splits, bundle.recipe.name
        quantization = json.loads((bundle.path / "onnx.json").read_text())["quantization"]
        assert quantization.get("ffn_blocks", 1) == (4 if splits else 1)
    logits, tokens = _first_logits_and_tokens([blocked, one], audio_dir)
    assert np.linalg.norm(logits[0] - logits[1]) / np.linalg.norm(logits[1]) < 1e-5
    assert tokens[0] == tokens[1]


def test_a_feed_forward_block_that_cannot_be_delimited_is_an_error():
    # A tensor of the block read outside it (here fc1's output, by another node) would be
    # computed per block only: the rewrite refuses rather than guess.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.backends.onnx_ffn_blocks import FfnBlockError, blocked_ffn

    d = 4
    w = numpy_helper.from_array(np.eye(d, dtype=np.float32), "w")
    g, b = (numpy_helper.from_array(np.full(d, v, np.float32), f"layers.0.final_layer_norm.{n}")
            for v, n in ((1.0, "weight"), (0.0, "bias")))
    nodes = [helper.make_node("LayerNormalization", ["x", g.name, b.name], ["ln"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["ln", "w"], ["fc1"], name="fc1"),
             helper.make_node("Relu", ["fc1"], ["act"], name="act"),
             helper.make_node("MatMul", ["act", "w"], ["fc2"], name="fc2"),
             helper.make_node("Add", ["x", "fc2"], ["y"], name="residual")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, d])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, d]) for n in ("y", "fc1")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, [w, g, b]))
    model.graph.node.append(helper.make_node("Identity", ["fc1"], ["fc1_out"], name="reader"))
    with pytest.raises(FfnBlockError, match="'fc1' is read outside it"):
        blocked_ffn(model, 2)
    ok = helper.make_model(helper.make_graph(nodes, "g", [x], outs[:1], [w, g, b]),
                           opset_imports=[helper.make_opsetid("", 18)])
    assert blocked_ffn(ok, 2) == 1
    onnx.checker.check_model(ok, full_check=True)
    assert [n.op_type for n in ok.graph.node].count("MatMul") == 4


def test_shared_self_cache_is_written_in_place_and_decodes_as_concat(bundles, tiny_model, audio_dir, tmp_path):
    # options.self_cache = "shared" (the default): each decoder layer's self-attention is one
    # GroupQueryAttention whose past and present are the same buffer; "concat" keeps the exported
    # Concat. Same weights, so the same logits at every step to float32 rounding, and a fork (beam
    # search, best_of) copies the filled rows: stepping one branch leaves the other as it was.
    import edgeq
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram
    from edgeq.spec.recipe import apply_overrides, load_recipe

    shared = _get(bundles, "onnx-fp32")
    concat = edgeq.build(apply_overrides(load_recipe("onnx-fp32"), ["options.self_cache=concat"]),
                         model=str(tiny_model), out=tmp_path / "concat", language="en")
    layers = json.loads((Path(tiny_model) / "config.json").read_text())["decoder_layers"]
    ops = [n.op_type for n in _graphs(shared)[1].graph.node]
    assert ops.count("GroupQueryAttention") == layers and "Concat" not in ops
    assert "GroupQueryAttention" not in [n.op_type for n in _graphs(concat)[1].graph.node]
    kinds = [json.loads((b.path / "onnx.json").read_text()) for b in (shared, concat)]
    assert [k["self_cache"] for k in kinds] == ["shared", "concat"]
    assert kinds[0]["decoder_inputs"][-1] == "past_length" and "past_length" not in kinds[1]["decoder_inputs"]

    features = log_mel_spectrogram(load_audio(audio_dir / "a_16k.wav"))
    runs = []
    for bundle in (shared, concat):
        t = edgeq.load(bundle.path, language="en")
        logits, state = t.engine.step(t.engine.start(t.engine.encode(features)), t.settings.prompt("en"))
        seen = [logits]
        for token in range(100, 130):  # 30 steps of fixed tokens: the cache grows to 34 rows
            logits, state = t.engine.step(state, [token])
            seen.append(logits)
        branch = t.engine.fork(state)
        one, state = t.engine.step(state, [7])
        two, _ = t.engine.step(branch, [8])  # the fork does not see token 7 ...
        three, _ = t.engine.step(state, [9])  # ... nor does the first branch see token 8
        again, _ = t.engine.step(t.engine.fork(branch), [8])
        runs.append((np.stack(seen), one, two, three, again))
    for a, b in zip(*runs):
        assert np.abs(a - b).max() / np.abs(b).max() < 1e-5
    assert np.abs(runs[0][1] - runs[0][2]).max() > 1e-3  # different tokens, different logits
    np.testing.assert_allclose(runs[0][2], runs[0][4], rtol=0, atol=1e-5)


def test_a_shared_self_cache_is_not_overrun():
    # The buffers hold max_target_positions rows; a step past them is refused before ONNX Runtime
    # would write outside them (the decoding loop never asks: it stops at the same limit).
    from edgeq.runtime.onnx_engine import OnnxEngine

    engine = OnnxEngine.__new__(OnnxEngine)
    engine._buffer_shape = (1, 2, 8, 4)
    with pytest.raises(ValueError, match="holds 8 positions; 9 asked"):
        engine.step(({}, (), 7, None, None), [1, 2])


def test_int8_cross_attention_needs_float32_graphs():
    from edgeq.backends.onnx import _check_recipe
    from edgeq.spec.recipe import apply_overrides, load_recipe

    with pytest.raises(RecipeError, match="cross_kv = 'int8' needs float32 graphs"):
        _check_recipe(apply_overrides(load_recipe("onnx-fp16"), ["options.cross_kv=int8"]))


@pytest.mark.parametrize("recipe, overrides", [
    ("onnx-int8-dynamic", ["options.accuracy_level=1"]),  # the table (its decoder is DynamicQuantizeMatMul)
    ("onnx-int8-dynamic", ["modules.embeddings=float", "options.decoder_int8=blocks", "weights.granularity=group",
                           "weights.group_size=128", "options.accuracy_level=1"]),  # the decoder in 8-bit blocks
    ("onnx-int8-dynamic-int4-decoder", ["options.accuracy_level=0"]),  # its 8-bit last feed-forward and table
    ("onnx-int4", ['modules.overrides."model.decoder.layers.0.fc1"={format="int8"}',  # one 8-bit layer
                   "options.accuracy_level=1"]),
])
def test_8bit_matmul_nbits_needs_int8_activations(recipe, overrides):
    from edgeq.backends.onnx import _check_recipe
    from edgeq.spec.recipe import apply_overrides, load_recipe

    _check_recipe(apply_overrides(load_recipe(recipe), overrides[:-1]))  # all but the accuracy level: allowed
    with pytest.raises(RecipeError, match=r"accuracy_level = [01] with 8-bit MatMulNBits weights: .* use "
                                          r"options.accuracy_level = 4, or 4-bit weights$"):
        _check_recipe(apply_overrides(load_recipe(recipe), overrides))


def test_no_8bit_matmul_nbits_no_accuracy_level_refusal():
    from edgeq.backends.onnx import _check_recipe
    from edgeq.spec.recipe import apply_overrides, load_recipe

    # onnx-int8-dynamic with a float table writes no MatMulNBits at all: its decoder's 8-bit layers,
    # an 8-bit override among them, are DynamicQuantizeMatMul (options.decoder_int8 = "channels"),
    # which takes no accuracy level, so nothing is there to refuse.
    _check_recipe(apply_overrides(load_recipe("onnx-int8-dynamic"), [
        "modules.embeddings=float", "options.accuracy_level=1"]))
    _check_recipe(apply_overrides(load_recipe("onnx-int8-dynamic"), [
        "modules.embeddings=float", 'modules.overrides."model.decoder.layers.0.fc1"={format="int8"}',
        "options.accuracy_level=0"]))


def test_a_float_table_on_onnx_int8_dynamic_builds_from_the_command_line(tiny_model, audio_dir, torch_reference,
                                                                         tmp_path):
    # --set modules.embeddings=float drops the recipe's table block size (embeddings_group_size = 128)
    # instead of refusing it, and with no 8-bit MatMulNBits left an accuracy level other than 4 is no
    # reason to refuse either. The bundle has no MatMulNBits at all and transcribes like the others.
    from helpers import assert_one_line_error
    from helpers import edgeq as cli
    from probe import probe

    import edgeq
    from edgeq.format.bundle import open_bundle

    out = tmp_path / "float-table"
    proc = cli("build", "-r", "onnx-int8-dynamic", "-m", tiny_model, "-o", out, "--language", "en",
               "--set", "modules.embeddings=float", "--set", "options.accuracy_level=1")
    assert proc.returncode == 0, proc.stderr
    bundle = open_bundle(out)
    assert bundle.layers_summary().endswith("decoder DynamicQuantizeMatMul int8 per-channel, 7-bit codes; table float")
    enc, dec = _graphs(bundle)
    assert not {"MatMulNBits", "GatherBlockQuantized"} & {n.op_type for n in [*enc.graph.node, *dec.graph.node]}
    p = probe(edgeq.load(out, language="en"), str(audio_dir / "a_16k.wav"))
    logits, ref = np.array(p["logits"]), np.array(torch_reference["logits"])
    assert np.linalg.norm(logits - ref) / np.linalg.norm(ref) <= LOGITS_REL["onnx-int8-dynamic"]
    assert p["tokens"][0] == torch_reference["tokens"][0]
    # a block size set in the same --set list for a float table is still refused, in one line
    proc = cli("build", "-r", "onnx-int8-dynamic", "-m", tiny_model, "-o", tmp_path / "no",
               "--set", "modules.embeddings=float", "--set", "modules.embeddings_group_size=64")
    assert_one_line_error(proc, r"embeddings_group_size needs modules.embeddings 'int8' or 'int4'$")
    assert not (tmp_path / "no").exists()


def test_4bit_matmul_nbits_may_compute_in_float():
    from edgeq.backends.onnx import _check_recipe
    from edgeq.spec.recipe import apply_overrides, load_recipe

    # 4-bit blocks have a float kernel: 1.1-3.6x slower than with int8 activations, not 25x
    # (benchmarks/results/matmul_nbits_accuracy_*.json)
    _check_recipe(apply_overrides(load_recipe("onnx-int4"), ["options.accuracy_level=1"]))


def test_a_decoder_without_cross_attention_chains_is_an_error():
    import onnx
    from onnx import helper

    from edgeq.backends.onnx_cross_int8 import int8_cross_attention
    from edgeq.backends.onnx_fusion import FusionError, half_cross_attention

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 4])
    k = helper.make_tensor_value_info("cross_k_0", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    v = helper.make_tensor_value_info("cross_v_0", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    encoder = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["cross_k_0"]),
                                                   helper.make_node("Identity", ["x"], ["cross_v_0"])],
                                                  "e", [x], [k, v]))
    decoder = helper.make_model(helper.make_graph([helper.make_node("Add", ["cross_k_0", "cross_v_0"], ["y"])],
                                                  "d", [k, v], [helper.make_tensor_value_info(
                                                      "y", onnx.TensorProto.FLOAT, [1, 1, 4, 4])]))
    with pytest.raises(FusionError, match="found 0 cross-attention chains in the decoder, expected 1"):
        half_cross_attention(encoder, decoder, ["cross_k_0", "cross_v_0"], heads=1)
    with pytest.raises(FusionError, match="does not output"):
        half_cross_attention(encoder, decoder, ["cross_k_0", "cross_v_0", "cross_k_1"], heads=1)
    with pytest.raises(FusionError, match="found 0 cross-attention chains in the decoder, expected 1"):
        int8_cross_attention(encoder, decoder, ["cross_k_0", "cross_v_0"])
    with pytest.raises(FusionError, match="the encoder outputs"):
        int8_cross_attention(encoder, decoder, ["cross_k_0", "cross_v_0", "cross_k_1"])


@pytest.mark.parametrize("name", ["onnx-fp32", "onnx-int8-dynamic", "onnx-int4"])
def test_onnx_runtime_fuses_every_gelu(name, bundles, tmp_path):
    # Unfused, each GELU is five elementwise ops with four [frames, 4*d_model] temporaries (the
    # encoder's largest activations); edgeq exports it in the form ONNX Runtime's GeluFusion matches.
    import onnx
    import onnxruntime as ort

    for graph in (ENCODER_ONNX, DECODER_ONNX):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / f"{name}-{graph}")
        ort.InferenceSession(str(_get(bundles, name).path / graph), options, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]
        assert "Erf" not in ops, (name, graph)
        assert {"Gelu", "BiasGelu", "FastGelu"} & set(ops), (name, graph)


# --------------------------------------------------------------------------- the tied table


def _table_initializers(graph, vocab: int):
    return [t for t in graph.graph.initializer if t.dims and t.dims[0] == vocab and len(t.dims) >= 2]


def _users(graph, name: str) -> list[str]:
    return sorted(n.op_type for n in graph.graph.node if name in n.input)


def _d_model(bundle) -> int:
    return json.loads((bundle.path / "config.json").read_text())["d_model"]


def test_tied_table_stored_once_float(bundles):
    from tiny import VOCAB_SIZE

    bundle = _get(bundles, "onnx-fp32")
    enc, dec = _graphs(bundle)
    assert not _table_initializers(enc, VOCAB_SIZE)
    (table,) = _table_initializers(dec, VOCAB_SIZE)
    assert list(table.dims) == [VOCAB_SIZE, _d_model(bundle)]
    assert _users(dec, table.name) == ["Gather", "Gemm"]


@pytest.mark.parametrize("name,bits", [("onnx-int8-dynamic", 8), ("onnx-int4", 4), ("onnx-int8-dynamic-int4-decoder", 8)])
def test_tied_table_stored_once_quantized(name, bits, bundles):
    from tiny import VOCAB_SIZE

    bundle = _get(bundles, name)
    _, dec = _graphs(bundle)
    tables = [t for t in _table_initializers(dec, VOCAB_SIZE) if len(t.dims) == 3 and t.data_type == 2]  # uint8
    assert len(tables) == 1, [t.name for t in tables]
    (table,) = tables
    assert table.dims[1] * table.dims[2] * 8 // bits == _d_model(bundle)  # [vocab, blocks, packed block]
    assert _users(dec, table.name) == ["GatherBlockQuantized", "MatMulNBits"]
    assert not [t for t in dec.graph.initializer if list(t.dims) == [VOCAB_SIZE, _d_model(bundle)]]  # no float copy


@pytest.mark.parametrize("name", ["onnx-int8-dynamic", "onnx-int4"])
def test_the_token_table_s_pages_go_back_before_each_window(name, bundles, audio_dir):
    # A decoder step reads a row of the memory-mapped table, and the kernel maps the folio around
    # it; those pages are released when the next window is encoded, and read back the same.
    import edgeq
    from edgeq.runtime import heap
    from edgeq.runtime.features import log_mel_spectrogram

    if not heap.active():
        pytest.skip("releasing mapped pages is glibc/Linux-only")
    engine = edgeq.load(_get(bundles, name).path, threads=1).engine
    (table,) = engine._table  # exactly one of the mappings this load made: the table's
    features = log_mel_spectrogram(edgeq.runtime.audio.load_audio(audio_dir / "a_16k.wav"))
    prompt = [257, 258, 261, 265]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    logits, _ = engine.step(engine.start(engine.encode(features)), prompt)
    assert _resident(table) > 0
    state = engine.start(engine.encode(features))
    assert _resident(table) == 0
    again, _ = engine.step(state, prompt)
    assert _resident(table) > 0
    np.testing.assert_array_equal(logits, again)


def _resident(mapping: tuple[int, int]) -> int:
    """Pages of an address range that are in this process's RSS (/proc/self/pagemap)."""
    import os

    from edgeq.runtime.heap import PAGEMAP_PRESENT

    (start, end), page = mapping, os.sysconf("SC_PAGE_SIZE")
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        flags = np.frombuffer(os.pread(fd, 8 * ((end - start) // page), 8 * (start // page)), np.uint64)
    finally:
        os.close(fd)
    return int((flags & np.uint64(PAGEMAP_PRESENT)).astype(bool).sum())


# --------------------------------------------------------------------------- runtime without torch


BLOCK_TORCH = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "transformers", "onnx", "onnxscript"):
            raise ImportError(f"blocked: {name}")

sys.meta_path.insert(0, Block())
import edgeq
from edgeq.runtime.decoding import DecodeOptions

t = edgeq.load(sys.argv[1], threads=1)
spawned = "subprocess" in sys.modules  # platform.processor() ran `uname -p`: 9 ms of a 0.13 s load
# Random weights fail every fallback threshold: at temperature 0 only, or each window decodes 26 times.
r = t.transcribe(sys.argv[2], options=DecodeOptions(temperatures=(0.0,)))
print(json.dumps({"tokens": r.tokens, "windows": r.windows, "subprocess_at_load": spawned,
                  "loaded": sorted(m for m in ("torch", "transformers", "onnx") if m in sys.modules)}))
"""


def test_runtime_works_with_torch_and_transformers_unimportable(bundles, tmp_path):
    import soundfile as sf
    from helpers import tone

    long_audio = tmp_path / "long.wav"
    sf.write(long_audio, tone(65.0), 16000)  # at least three 30 s windows
    proc = run_python(BLOCK_TORCH, _get(bundles, "onnx-int8-dynamic").path, long_audio)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["loaded"] == [] and out["windows"] >= 3 and out["tokens"]
    if sys.platform.startswith("linux"):  # /proc/cpuinfo says what the load needs of the CPU
        assert not out["subprocess_at_load"], "edgeq.load imported subprocess (platform.processor runs uname)"


def test_missing_onnxruntime_names_the_extra(bundles, audio_dir):
    code = """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "onnxruntime":
                raise ImportError(name)
    sys.meta_path.insert(0, Block())
    import edgeq
    from edgeq.errors import MissingDependencyError
    try:
        edgeq.load(sys.argv[1])
    except MissingDependencyError as err:
        print(err)
    """
    proc = run_python(code, _get(bundles, "onnx-fp32").path)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'edgeq[runtime]'" in proc.stdout


# --------------------------------------------------------------------------- bad input


def _copy(bundle, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle.path, dst)
    return dst


def _rehash(folder: Path, name: str) -> None:
    """Make the manifest agree with a changed file (a bundle that is consistent but broken)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": sha256_file(folder / name), "size": (folder / name).stat().st_size}
    manifest["size"]["bundle_bytes"] = sum(f["size"] for f in manifest["files"].values())
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_graphs_onnx_json_names_must_be_listed(bundles, tmp_path):
    from helpers import assert_one_line_error, edgeq

    from edgeq.format.bundle import open_bundle

    folder = _copy(_get(bundles, "onnx-int8-dynamic"), tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    removed = manifest["files"].pop(DECODER_ONNX)
    manifest["size"]["bundle_bytes"] -= removed["size"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"decoder.onnx is not listed in the manifest, so it was not verified"):
        open_bundle(folder)
    assert_one_line_error(edgeq("info", folder), r"decoder.onnx is not listed in the manifest")
    # onnx.json naming a graph outside the bundle is refused by its name, before any graph loads.
    folder = _copy(_get(bundles, "onnx-int8-dynamic"), tmp_path / "2")
    layout = json.loads((folder / "onnx.json").read_text())
    layout["decoder"] = "../decoder.onnx"
    (folder / "onnx.json").write_text(json.dumps(layout))
    _rehash(folder, "onnx.json")
    with pytest.raises(BundleError, match=r"onnx.json: decoder: Expected `str` matching regex"):
        open_bundle(folder)


def test_corrupted_onnx_is_refused_by_hash(bundles, tmp_path):
    import edgeq

    folder = _copy(_get(bundles, "onnx-int8-dynamic"), tmp_path)
    data = bytearray((folder / DECODER_ONNX).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / DECODER_ONNX).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"decoder.onnx does not match its sha256"):
        edgeq.load(folder)


def test_onnx_file_that_does_not_load_is_one_line(bundles, tmp_path):
    import edgeq

    folder = _copy(_get(bundles, "onnx-fp32"), tmp_path)
    (folder / ENCODER_ONNX).write_bytes(b"not a protobuf at all")
    _rehash(folder, ENCODER_ONNX)
    with pytest.raises(BundleError, match=r"ONNX Runtime cannot load encoder.onnx") as err:
        edgeq.load(folder)
    assert "\n" not in str(err.value)


def _swap_graphs(layout: dict) -> None:
    layout["encoder"], layout["decoder"] = layout["decoder"], layout["encoder"]


def _one_layer_more(layout: dict) -> None:
    """A layout consistent in itself, but not with the graphs."""
    from edgeq.format.layout import OnnxLayout

    dims = {k: layout[k] for k in ("n_mels", "n_audio_ctx", "heads", "head_dim", "vocab_size", "max_target_positions")}
    other = OnnxLayout.for_dims(n_layers=layout["n_layers"] + 1, **dims).to_dict()
    layout.clear()
    layout.update(other)


@pytest.mark.parametrize("edit, message", [
    (lambda layout: layout["decoder_outputs"].__setitem__(1, "present_key_0"),
     r"onnx.json: decoder_outputs do not follow layout version 2"),
    (lambda layout: layout.update(layout_version=3), r"onnx.json has layout version 3; this edgeq reads versions 1, 2"),
    (lambda layout: layout.update(layout_version=1), r"variable_frames needs layout version 2"),
    (lambda layout: layout.update(heads="8"), r"onnx.json: heads: Expected `int`, got `str`"),
    (_swap_graphs, r"decoder.onnx does not match onnx.json"),  # names follow the contract, graphs don't
    (_one_layer_more, r"encoder.onnx does not match onnx.json"),
], ids=["names", "version", "v1-variable", "type", "graphs", "layers"])
def test_onnx_json_is_checked_against_the_layout_contract(bundles, tmp_path, edit, message):
    import edgeq

    folder = _copy(_get(bundles, "onnx-fp32"), tmp_path)
    layout = json.loads((folder / "onnx.json").read_text())
    edit(layout)
    (folder / "onnx.json").write_text(json.dumps(layout))
    _rehash(folder, "onnx.json")
    with pytest.raises(BundleError, match=message):
        edgeq.load(folder)


def test_cuda_without_onnxruntime_gpu_is_one_line(bundles, audio_dir):
    import onnxruntime
    from helpers import assert_one_line_error, edgeq

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    proc = edgeq("transcribe", "--device", "cuda", _get(bundles, "onnx-fp32").path, audio_dir / "a_16k.wav")
    assert_one_line_error(proc, r"pip install onnxruntime-gpu")


# --------------------------------------------------------------------------- threads


# --------------------------------------------------------------------------- the encoder for VNNI CPUs


def _folded(graph: Path, tmp_path):
    """(session, graph) for `graph` as ONNX Runtime's constant folding leaves it, before any fusion."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folding, not fusing
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "folded.onnx.data")
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return session, onnx.load(str(tmp_path / "folded.onnx"))


def test_an_int8_encoder_has_a_vnni_graph_whose_folded_weights_are_its_uint8_ones_minus_128(bundles, tmp_path):
    """Host-independent: what ONNX Runtime makes of encoder.vnni.onnx when it folds its casts is the
    encoder's uint8 weights and zero points, each less 128, as int8, and nothing else changed."""
    import onnx
    from onnx import numpy_helper

    with_vnni = {n for n in ONNX_RECIPES if json.loads((_get(bundles, n).path / "onnx.json").read_text()).get("encoder_vnni")}
    assert with_vnni == {"onnx-int8-dynamic", "onnx-int8-dynamic-int4-decoder", "onnx-int8-static"}  # static: its dynamic fc2
    path = _get(bundles, "onnx-int8-dynamic").path
    assert VNNI_ONNX in _get(bundles, "onnx-int8-dynamic").manifest.files
    assert not (path / f"{VNNI_ONNX}.data").exists()  # it reads encoder.onnx.data: the bundle grows by the graph
    assert (path / VNNI_ONNX).stat().st_size < 2 * (path / ENCODER_ONNX).stat().st_size
    encoder = onnx.load(str(path / ENCODER_ONNX))
    inits = {t.name: numpy_helper.to_array(t) for t in encoder.graph.initializer}
    readers = [n for n in encoder.graph.node if n.op_type == "MatMulInteger" and inits.get(n.input[1]) is not None]
    expected = sorted((inits[name].astype(np.int16) - 128).astype(np.int8).tobytes()
                      for name in {i for n in readers for i in (n.input[1], n.input[3]) if i})
    assert expected
    session, folded = _folded(path / VNNI_ONNX, tmp_path)
    assert [i.name for i in session.get_inputs()] == ["input_features"]
    signed = sorted(numpy_helper.to_array(t).tobytes() for t in folded.graph.initializer
                    if t.data_type == onnx.TensorProto.INT8 and not t.name.startswith("cross_int8_"))  # value codes' zero
    assert signed == expected
    assert not [n for n in folded.graph.node if any(i.endswith(("_i16", "_m128")) for i in n.input)]  # all folded


def test_an_int8_encoder_has_an_avx2_graph_whose_folded_weights_are_7_bit_codes_of_its_uint8_ones(bundles, tmp_path):
    """Host-independent: what ONNX Runtime makes of encoder.avx2.onnx when it folds it is, for
    every uint8 weight w with zero point z, round((w - z) * 63 / m) per output column (m: the
    column's largest |w - z|), as int8 and without zero point, and nothing else is left to fold."""
    import onnx
    from onnx import numpy_helper

    with_avx2 = {n for n in ONNX_RECIPES if json.loads((_get(bundles, n).path / "onnx.json").read_text()).get("encoder_avx2")}
    assert with_avx2 == {"onnx-int8-dynamic", "onnx-int8-dynamic-int4-decoder", "onnx-int8-static"}  # as the VNNI graph
    bundle = _get(bundles, "onnx-int8-dynamic")
    path = bundle.path
    assert AVX2_ONNX in bundle.manifest.files and not (path / f"{AVX2_ONNX}.data").exists()  # reads encoder.onnx.data
    encoder = onnx.load(str(path / ENCODER_ONNX))
    inits = {t.name: numpy_helper.to_array(t) for t in encoder.graph.initializer}
    expected = []
    for w, z in {(n.input[1], n.input[3]) for n in encoder.graph.node
                 if n.op_type == "MatMulInteger" and inits.get(n.input[1]) is not None}:
        centered = inits[w].astype(np.float32) - inits[z].astype(np.float32)
        m = np.maximum(np.abs(centered).max(axis=0), np.float32(1))
        expected.append(np.round(centered * (np.float32(LEVELS) / m)).astype(np.int8).tobytes())
    assert expected
    _, folded = _folded(path / AVX2_ONNX, tmp_path)
    codes = sorted(numpy_helper.to_array(t).tobytes() for t in folded.graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and not t.name.startswith("cross_int8_"))
    assert codes == sorted(expected)
    assert not [n for n in folded.graph.node if any("_7bit" in o for o in n.output)]  # all folded
    assert all(len(n.input) == 3 for n in folded.graph.node if n.op_type == "MatMulInteger")  # no weight zero point


def test_where_the_int8_product_saturates_a_load_runs_the_avx2_graph_with_the_portable_decoder(bundles, audio_dir,
                                                                                            sessions, monkeypatch):
    import edgeq
    from edgeq.runtime import int8_kernels

    monkeypatch.setattr(int8_kernels, "x86", lambda: True)
    monkeypatch.setattr(int8_kernels, "vnni_kernels", lambda: False)  # AVX2, or AVX-512 without VNNI
    path = _get(bundles, "onnx-int8-dynamic").path
    # (the tiny model's transcripts are random tokens: the real tier checks WER with this graph)
    assert edgeq.load(path).transcribe(audio_dir / "a_16k.wav").windows == 1
    assert sorted(name for name, _ in sessions) == sorted([AVX2_ONNX, DECODER_ONNX, HEAD_ONNX])
    sessions.clear()
    monkeypatch.setenv("EDGEQ_AVX2", "0")
    edgeq.load(path)
    assert sorted(name for name, _ in sessions) == sorted([ENCODER_ONNX, DECODER_ONNX, HEAD_ONNX])


def test_with_int8_cross_attention_the_vnni_graphs_pass_value_codes_as_int8_to_a_decoder_of_their_own(bundles):
    """Host-independent: encoder.vnni.onnx writes the value codes as int8 and decoder.vnni.onnx (its
    weights in decoder.onnx.data) multiplies both cross-attention products as uint8 x int8; the
    portable pair keeps uint8, and a bundle without int8 cross-attention has no second decoder."""
    import onnx

    T = onnx.TensorProto
    bundle = _get(bundles, "onnx-int8-dynamic")
    layout = json.loads((bundle.path / "onnx.json").read_text())
    assert (layout["encoder_vnni"], layout["decoder_vnni"]) == (VNNI_ONNX, DECODER_VNNI_ONNX)
    assert DECODER_VNNI_ONNX in bundle.manifest.files and not (bundle.path / f"{DECODER_VNNI_ONNX}.data").exists()
    assert (bundle.path / DECODER_VNNI_ONNX).stat().st_size < (bundle.path / DECODER_ONNX).stat().st_size + 100_000
    assert json.loads((_get(bundles, "onnx-int8-static").path / "onnx.json").read_text()).get("decoder_vnni") is None

    def types(path, io):
        graph = onnx.load(str(bundle.path / path), load_external_data=False).graph
        return {v.name: v.type.tensor_type.elem_type for v in getattr(graph, io) if v.name.startswith("cross_")
                and not v.name.endswith(("_channel", "_row", "_scale"))}

    for encoder, decoder, values in ((ENCODER_ONNX, DECODER_ONNX, T.UINT8), (VNNI_ONNX, DECODER_VNNI_ONNX, T.INT8)):
        written, read = types(encoder, "output"), types(decoder, "input")
        assert written == read
        assert {t for n, t in written.items() if "_v_" in n} == {values}
        assert {t for n, t in written.items() if "_k_" in n} == {T.UINT8}  # the keys are the uint8 operand
    graph = onnx.load(str(bundle.path / DECODER_VNNI_ONNX), load_external_data=False).graph
    inits = {t.name: t.data_type for t in graph.initializer}
    # (the weight MatMulIntegers of options.decoder_int8 = "channels" read an initializer)
    cross = [n for n in graph.node if n.op_type == "MatMulInteger" and n.input[1] not in inits]
    assert len(cross) == 2 * layout["n_layers"]
    assert {(inits.get(n.input[2]), inits.get(n.input[3])) for n in cross} == {(T.UINT8, T.INT8)}
    ints = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[2] and inits.get(n.input[2]) == T.INT8]
    assert len(ints) == layout["n_layers"]  # each layer's query


@pytest.mark.skipif(not vnni_kernels(), reason="this CPU has no VNNI: the runtime runs encoder.onnx here, not encoder.vnni.onnx")
@pytest.mark.parametrize("name", ["onnx-int8-dynamic", "onnx-int8-static"])
def test_on_a_vnni_cpu_the_int8_weights_graph_runs_and_changes_no_number(name, bundles, audio_dir, monkeypatch):
    import edgeq
    from edgeq.runtime import onnx_engine
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram

    monkeypatch.setenv("EDGEQ_ORT_CACHE", "0")
    path = _get(bundles, name).path
    features = log_mel_spectrogram(load_audio(str(audio_dir / "a_16k.wav")))
    chosen = []
    choose = onnx_engine._encoder_graph
    monkeypatch.setattr(onnx_engine, "_encoder_graph", lambda *a: chosen.append(choose(*a)) or chosen[-1])
    signed = edgeq.load(path, threads=2, language="en")
    monkeypatch.setenv("EDGEQ_VNNI", "0")
    portable = edgeq.load(path, threads=2, language="en")
    assert chosen == [VNNI_ONNX, ENCODER_ONNX]
    one, two = signed.engine.encode(features), portable.engine.encode(features)
    with_decoder = DECODER_VNNI_ONNX in _get(bundles, name).manifest.files  # int8 cross-attention
    for key in one:
        a, b = one[key].numpy(), two[key].numpy()
        if with_decoder and key.startswith("cross_v_") and a.dtype != np.float32:  # int8 codes, v / scale
            assert (a.dtype, b.dtype) == (np.int8, np.uint8)
            a, b = a.astype(np.int16), b.astype(np.int16) - 128
        np.testing.assert_array_equal(a, b)
    # ... and the decoder that goes with each: uint8 x int8 cross-attention products give the same logits.
    prompt = signed.settings.prompt("en")
    logits = [t.engine.step(t.engine.start(e), prompt)[0] for t, e in ((signed, one), (portable, two))]
    np.testing.assert_array_equal(logits[0], logits[1])


def _on_a_cpu(monkeypatch, machine: str, flags: list[str], exact: bool):
    """A small layout without the CPU-specific graphs, on a CPU of this machine, flags and u8 x s8
    exactness (what int8_kernels would find there)."""
    from edgeq.format.layout import OnnxLayout
    from edgeq.runtime import int8_kernels

    monkeypatch.setattr(int8_kernels.platform, "machine", lambda: machine)
    monkeypatch.setattr(int8_kernels, "cpuinfo", lambda: ("a CPU", flags))
    monkeypatch.setattr(int8_kernels, "signed_weights_exact", lambda: exact)
    return OnnxLayout.for_dims(n_mels=80, n_audio_ctx=1500, n_layers=1, heads=1, head_dim=8, vocab_size=10,
                               max_target_positions=8)


@pytest.mark.parametrize("machine, flags, exact, device, env, expected", [
    ("x86_64", ["avx2", "avx512_vnni"], True, "cpu", "1", VNNI_ONNX),
    ("x86_64", ["avx2", "avx_vnni"], True, "cpu", "1", VNNI_ONNX),
    ("AMD64", ["avx2", "amx_int8"], True, "cpu", "1", VNNI_ONNX),
    ("x86_64", ["avx2", "avx512_vnni"], False, "cpu", "1", ENCODER_ONNX),  # an emulator's flags: the probe saturated
    ("x86_64", ["avx2", "avx512f", "avx512bw"], False, "cpu", "1", ENCODER_ONNX),  # u8 x s8 would saturate
    ("x86_64", [], True, "cpu", "1", ENCODER_ONNX),  # flags unknown: the graph exact everywhere
    ("aarch64", ["asimd", "asimddp", "i8mm"], True, "cpu", "1", ENCODER_ONNX),
    ("x86_64", ["avx512_vnni"], True, "cuda", "1", ENCODER_ONNX),
    ("x86_64", ["avx512_vnni"], True, "cpu", "0", ENCODER_ONNX),  # EDGEQ_VNNI=0
])
def test_the_runtime_picks_the_int8_weights_graph_only_on_x86_with_vnni(machine, flags, exact, device, env, expected,
                                                                        monkeypatch):
    from edgeq.runtime import onnx_engine

    layout = _on_a_cpu(monkeypatch, machine, flags, exact)
    monkeypatch.setenv("EDGEQ_VNNI", env)
    assert onnx_engine._encoder_graph(layout, device) == ENCODER_ONNX  # a bundle without the graph
    assert onnx_engine._encoder_graph(replace(layout, encoder_vnni=VNNI_ONNX), device) == expected
    # The decoder goes with the encoder: decoder.vnni.onnx reads the int8 value codes encoder.vnni.onnx writes.
    both = replace(layout, encoder_vnni=VNNI_ONNX, decoder_vnni=DECODER_VNNI_ONNX)
    encoder = onnx_engine._encoder_graph(both, device)
    assert (encoder, onnx_engine._decoder_graph(both, encoder)) == \
        (expected, DECODER_VNNI_ONNX if expected == VNNI_ONNX else DECODER_ONNX)
    assert onnx_engine._decoder_graph(replace(layout, encoder_vnni=VNNI_ONNX), expected) == DECODER_ONNX  # older bundles


@pytest.mark.parametrize("machine, flags, exact, device, env, expected", [
    ("x86_64", ["avx2", "fma"], False, "cpu", "1", AVX2_ONNX),  # AVX2: u8 x s8 saturates
    ("x86_64", ["avx2", "avx512f", "avx512bw"], False, "cpu", "1", AVX2_ONNX),  # AVX-512 without VNNI
    ("x86_64", ["avx2", "avx512_vnni"], False, "cpu", "1", AVX2_ONNX),  # an emulator's flags: the probe saturated
    ("x86_64", [], True, "cpu", "1", AVX2_ONNX),  # flags unknown: 7-bit codes are exact on every kernel
    ("x86_64", ["avx2", "avx512_vnni"], True, "cpu", "1", VNNI_ONNX),
    ("aarch64", ["asimd", "asimddp"], False, "cpu", "1", ENCODER_ONNX),  # ARM's kernels: no saturation to avoid
    ("x86_64", ["avx2"], False, "cuda", "1", ENCODER_ONNX),
    ("x86_64", ["avx2"], False, "cpu", "0", ENCODER_ONNX),  # EDGEQ_AVX2=0
])
def test_the_runtime_picks_the_7_bit_graph_only_on_x86_without_exact_int8_products(machine, flags, exact, device, env,
                                                                                   expected, monkeypatch):
    from edgeq.runtime import onnx_engine

    layout = _on_a_cpu(monkeypatch, machine, flags, exact)
    monkeypatch.setenv("EDGEQ_AVX2", env)
    every = replace(layout, encoder_vnni=VNNI_ONNX, decoder_vnni=DECODER_VNNI_ONNX, encoder_avx2=AVX2_ONNX)
    encoder = onnx_engine._encoder_graph(every, device)
    assert encoder == expected
    assert onnx_engine._decoder_graph(every, encoder) == (DECODER_VNNI_ONNX if expected == VNNI_ONNX else DECODER_ONNX)
    if expected == AVX2_ONNX:  # a bundle from before the graph: its portable encoder there
        assert onnx_engine._encoder_graph(replace(every, encoder_avx2=None), device) == ENCODER_ONNX


def _spins(session) -> tuple[str, str]:
    options = session.get_session_options()
    return (options.get_session_config_entry("session.intra_op.allow_spinning"),
            options.get_session_config_entry("session.force_spinning_stop"))


def test_spinning_is_the_decoder_s_alone_and_changes_no_token(bundles, audio_dir):
    import edgeq
    from edgeq.runtime.audio import load_audio

    path, audio = _get(bundles, "onnx-int8-dynamic").path, load_audio(str(audio_dir / "a_16k.wav"))
    still = edgeq.load(path, threads=2, language="en")
    spinning = edgeq.load(path, threads=2, language="en", spinning="decoder")
    assert _spins(still.engine._encoder) == _spins(still.engine._decoder) == ("0", "1")
    assert _spins(spinning.engine._encoder) == ("0", "1")  # the encoder's never spin
    assert _spins(spinning.engine._decoder) == ("1", "1")  # ... and the decoder's stop when a step ends
    assert spinning.transcribe(audio).tokens == still.transcribe(audio).tokens


def _prepacks(session) -> bool:
    try:
        return session.get_session_options().get_session_config_entry("session.disable_prepacking") != "1"
    except RuntimeError:  # ONNX Runtime raises for an entry never set: its default, prepacking
        return True


def test_only_the_int8_dynamic_encoder_is_made_without_prepacking_and_no_number_changes(bundles, audio_dir,
                                                                                          monkeypatch):
    import edgeq
    from edgeq.runtime import onnx_engine
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram
    from edgeq.schema import replace

    monkeypatch.setenv("EDGEQ_ORT_CACHE", "0")  # both loads make their sessions from the bundle
    path = _get(bundles, "onnx-int8-dynamic").path
    assert json.loads((path / "onnx.json").read_text())["encoder_prepack"] is False  # the recipe's option
    for name in ("onnx-int4", "onnx-fp32"):
        other = edgeq.load(_get(bundles, name).path)
        assert _prepacks(other.engine._encoder) and _prepacks(other.engine._decoder), name
    audio = load_audio(str(audio_dir / "a_16k.wav"))
    features = log_mel_spectrogram(audio)
    unpacked = edgeq.load(path, threads=2, language="en")
    assert not _prepacks(unpacked.engine._encoder) and _prepacks(unpacked.engine._decoder)
    read = onnx_engine.read_layout
    monkeypatch.setattr(onnx_engine, "read_layout", lambda b: replace(read(b), encoder_prepack=True))
    packed = edgeq.load(path, threads=2, language="en")
    assert _prepacks(packed.engine._encoder)
    one, two = unpacked.engine.encode(features), packed.engine.encode(features)
    assert sorted(one) == sorted(two)
    for name in one:
        np.testing.assert_array_equal(one[name].numpy(), two[name].numpy())
    assert unpacked.transcribe(audio).tokens == packed.transcribe(audio).tokens


def test_the_encoder_arena_keeps_a_window_s_outputs_and_changes_no_number(bundles, audio_dir, monkeypatch):
    # On a CPU the encoder session uses ONNX Runtime's arena (its activations are reused window to
    # window instead of mapped afresh: onnx_engine.load_engine); EDGEQ_ENCODER_ARENA=0 turns it off.
    # A window's outputs must stay as they were while the next window reuses the arena's memory.
    import edgeq
    from edgeq.runtime import heap
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram

    path = _get(bundles, "onnx-int8-dynamic").path
    audio = load_audio(str(audio_dir / "a_16k.wav"))
    first, second = log_mel_spectrogram(audio), log_mel_spectrogram(audio[: len(audio) // 2])
    pooled = edgeq.load(path, threads=2, language="en")
    assert pooled.engine._encoder.get_session_options().enable_cpu_mem_arena
    assert not pooled.engine._decoder.get_session_options().enable_cpu_mem_arena
    monkeypatch.setenv("EDGEQ_ENCODER_ARENA", "0")
    mapped = edgeq.load(path, threads=2, language="en")
    assert not mapped.engine._encoder.get_session_options().enable_cpu_mem_arena
    assert mapped.engine._encoding is heap.large_blocks_mapped  # what the arena replaces
    held = pooled.engine.encode(first)
    copies = {name: value.numpy().copy() for name, value in held.items()}
    later = pooled.engine.encode(second)
    for name, value in held.items():
        np.testing.assert_array_equal(value.numpy(), copies[name])
    for features, outputs in ((first, held), (second, later)):
        for name, value in mapped.engine.encode(features).items():
            np.testing.assert_array_equal(outputs[name].numpy(), value.numpy())
    assert pooled.transcribe(audio).tokens == mapped.transcribe(audio).tokens


def test_spinning_with_more_threads_than_cpus_is_turned_off_with_a_warning(bundles, caplog):
    import edgeq
    from edgeq.util import usable_cpus

    usable = usable_cpus()
    with caplog.at_level("WARNING", logger="edgeq.runtime.transcriber"):
        t = edgeq.load(_get(bundles, "onnx-int4").path, threads=usable + 1, spinning="decoder")
    assert "spinning turned off" in caplog.text
    assert _spins(t.engine._decoder) == ("0", "1")


def test_an_unknown_spinning_is_refused(bundles, audio_dir):
    from helpers import edgeq

    import edgeq as library
    from edgeq.errors import EdgeqError

    with pytest.raises(EdgeqError, match="spinning must be one of off, decoder, not 'always'"):
        library.load(_get(bundles, "onnx-int4").path, spinning="always")
    proc = edgeq("transcribe", "--spinning", "always", _get(bundles, "onnx-int4").path, audio_dir / "a_16k.wav")
    # click's usage error: its usage line, then the one line that says what is wrong
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Invalid value for '--spinning': 'always' is not one of 'off', 'decoder'." in proc.stderr


def test_recipe_checks(tmp_path):
    from edgeq.spec.recipe import load_recipe

    torch_int4_table = tmp_path / "t.toml"
    torch_int4_table.write_text('backend = "hqq"\nscheme = "weight-only"\n[weights]\nformat = "int4"\n'
                                'granularity = "group"\ngroup_size = 64\n[modules]\nembeddings = "int4"\n')
    with pytest.raises(RecipeError, match=r"embeddings 'int4' needs the onnx backend"):
        load_recipe(str(torch_int4_table))
    low_opset = tmp_path / "o.toml"
    low_opset.write_text('backend = "onnx"\nscheme = "none"\n[weights]\nformat = "float32"\n[options]\nopset = 17\n')
    with pytest.raises(RecipeError, match=r"opset"):
        load_recipe(str(low_opset))
    static4 = tmp_path / "s4.toml"  # a 4-bit decoder is the dynamic scheme's only (not calibrated, not tested)
    static4.write_text('backend = "onnx"\nscheme = "static"\n[weights]\nformat = "int4"\ngranularity = "group"\n'
                       'group_size = 128\n[activations]\nformat = "int8"\n')
    with pytest.raises(RecipeError, match=r"has no static/int4; it supports dynamic/int4, dynamic/int8"):
        load_recipe(str(static4))


def test_per_channel_dynamic_recipe_is_refused_before_export(tiny_model, tmp_path):
    import edgeq

    recipe = tmp_path / "pc.toml"
    recipe.write_text('backend = "onnx"\nscheme = "dynamic"\n[weights]\nformat = "int8"\n'
                      'granularity = "per-channel"\n[activations]\nformat = "int8"\n')
    with pytest.raises(RecipeError, match=r"granularity = 'group'"):
        edgeq.build(str(recipe), model=str(tiny_model), out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- bench


def test_bench_measures_an_onnx_bundle(bundles, audio_dir, tmp_path):
    from helpers import edgeq

    dataset = tmp_path / "ds"
    dataset.mkdir()
    shutil.copy(audio_dir / "a_16k.wav", dataset / "a.wav")
    (dataset / "manifest.tsv").write_text("file\ttranscript\na.wav\thello world\n")
    bundle = _get(bundles, "onnx-int4").path
    proc = edgeq("bench", bundle, "-d", dataset / "manifest.tsv", "--threads", "1", "--warmup", "0",
                 "--target", "x86-avx2", "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (summary,) = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "failed" not in summary
    records = [json.loads(line) for line in (tmp_path / "out" / f"{bundle.name}.jsonl").read_text().splitlines()]
    run = next(r for r in records if r["type"] == "run")
    assert run["system_info"]["runtime"] == "onnxruntime"
    assert (run["settings"]["threads"], run["settings"]["spinning"]) == (1, "decoder")  # --threads, the target's
    assert any(r["type"] == "utterance" for r in records)


# --------------------------------------------------------------------------- `pip install edgeq[runtime]`


@pytest.mark.slow
def test_runtime_extra_alone_transcribes_an_onnx_bundle(bundles, audio_dir, tmp_path):
    """What a Pi user does: a fresh virtualenv, `pip install 'edgeq[runtime]'` (no torch, no
    transformers), then `edgeq transcribe` and `edgeq bench` on a copied ONNX bundle."""
    import os
    import venv

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    repo = REPO
    # A copy of the tree: building the wheel must not write into the checkout under test.
    src = tmp_path / "src"
    shutil.copytree(repo, src, ignore=shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "__pycache__", "build"))
    pip = subprocess.run([py, "-m", "pip", "install", "--quiet", f"{src}[runtime]"],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode:
        pytest.fail(f"pip install '.[runtime]' failed:\n{pip.stderr[-3000:]}")
    probe = subprocess.run([py, "-c", "import importlib.util as u; "
                            "print([m for m in ('torch', 'transformers', 'onnx') if u.find_spec(m)])"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "[]", f"the runtime extra installed {probe.stdout.strip()}"

    bundle = tmp_path / "copied-bundle"
    shutil.copytree(_get(bundles, "onnx-int8-dynamic").path, bundle)
    edgeq_cli = env_dir / "bin" / "edgeq"
    env = {**os.environ, "PYTHONPATH": ""}
    audio = audio_dir / "b_44k_stereo.flac"
    out = subprocess.run([edgeq_cli, "transcribe", bundle, audio, "--json"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(rows) == 1 and rows[0]["path"].endswith("b_44k_stereo.flac")

    dataset = tmp_path / "ds"
    dataset.mkdir()
    shutil.copy(audio_dir / "a_16k.wav", dataset / "a.wav")
    (dataset / "manifest.tsv").write_text("file\ttranscript\na.wav\thello world\n")
    bench = subprocess.run([edgeq_cli, "bench", bundle, "-d", dataset / "manifest.tsv", "--threads", "1",
                            "--warmup", "0", "-o", tmp_path / "bench"], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env=env)
    assert bench.returncode == 0, bench.stderr[-3000:]
    (summary,) = json.loads((tmp_path / "bench" / "summary.json").read_text())
    assert "failed" not in summary


# --------------------------------------------------------------------------- prepared graphs


def _first_logits(bundle_path, audio_dir):
    import edgeq
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram

    t = edgeq.load(bundle_path, language="en")
    features = log_mel_spectrogram(load_audio(audio_dir / "a_16k.wav"))
    logits, _ = t.engine.step(t.engine.start(t.engine.encode(features)), t.settings.prompt("en"))
    return logits


@pytest.fixture
def sessions(monkeypatch, tmp_path):
    """A cache of its own, and the graph each ONNX Runtime session was made from."""
    from edgeq.runtime import onnx_engine

    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path / "cache"))
    made = []
    session = onnx_engine._session

    def spy(ort, bundle, name, options, providers, graphs=None, reuse=False):
        made.append((name, "prepared" if reuse else "bundle"))
        return session(ort, bundle, name, options, providers, graphs, reuse)

    monkeypatch.setattr(onnx_engine, "_session", spy)
    return made


def _graphs_here(bundle_path) -> tuple[str, str]:
    """The encoder and decoder graphs the runtime makes its sessions from on this CPU (the .vnni.onnx
    ones with VNNI). Each load also makes the head's (HEAD_ONNX), in the encoder's thread: the
    sessions of one load are listed in no fixed order, so the tests look them up by graph."""
    from edgeq.format.bundle import open_bundle
    from edgeq.format.layout import read_layout
    from edgeq.runtime.onnx_engine import _decoder_graph, _encoder_graph

    layout = read_layout(open_bundle(bundle_path))
    encoder = _encoder_graph(layout, "cpu")
    return encoder, _decoder_graph(layout, encoder)


def _prepared_copies(tmp_path) -> list[Path]:
    root = tmp_path / "cache" / "onnxruntime"
    return sorted(p for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("name", ["onnx-int8-dynamic", "onnx-int4"])
def test_a_second_load_uses_the_graphs_the_first_prepared_with_the_same_logits(name, bundles, audio_dir, sessions,
                                                                                 tmp_path, monkeypatch):
    path = _get(bundles, name).path
    first = _first_logits(path, audio_dir)
    (copy,) = _prepared_copies(tmp_path)
    encoder, decoder = _graphs_here(path)
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        [encoder, f"{encoder}.data", decoder, f"{decoder}.data", "hashes.json"])  # the head loads from the bundle
    # The copy holds the weights once: no prepacked ones, which onnxruntime would pack again anyway
    # (runtime/prepared.py). With them each graph's data held its int8 weights twice.
    for graph in (encoder, decoder):
        bundle_data = (path / f"{graph.split('.')[0]}.onnx.data").stat().st_size  # encoder / decoder weights
        assert (copy / f"{graph}.data").stat().st_size <= 1.1 * bundle_data, graph
    again = _first_logits(path, audio_dir)
    assert sorted(sessions) == sorted([(encoder, "bundle"), (decoder, "bundle"), (HEAD_ONNX, "bundle"),
                                       (encoder, "prepared"), (decoder, "prepared"), (HEAD_ONNX, "bundle")])
    monkeypatch.setenv("EDGEQ_ORT_CACHE", "0")
    plain = _first_logits(path, audio_dir)
    assert dict(sessions[-3:])[decoder] == "bundle"
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(again, plain)


def test_the_engine_says_whether_its_load_made_the_prepared_copy(bundles, sessions, monkeypatch):
    import edgeq

    path = _get(bundles, "onnx-int8-dynamic").path
    # edgeq bench marks a load that made the copy: its time is not what later loads take
    assert [edgeq.load(path, language="en").engine.prepared_copy for _ in range(2)] == ["made", "reused"]
    monkeypatch.setenv("EDGEQ_ORT_CACHE", "0")
    assert edgeq.load(path, language="en").engine.prepared_copy == "off"


def test_loads_alternating_between_the_encoder_graphs_keep_a_prepared_copy_each(bundles, audio_dir, sessions,
                                                                                  tmp_path, monkeypatch):
    from edgeq.runtime import int8_kernels

    monkeypatch.setattr(int8_kernels, "vnni_kernels", lambda: True)  # the choice, not the numbers, is tested
    path = _get(bundles, "onnx-int8-dynamic").path
    for vnni in ("1", "0", "1", "0"):
        monkeypatch.setenv("EDGEQ_VNNI", vnni)
        _first_logits(path, audio_dir)
    assert len(_prepared_copies(tmp_path)) == 2
    assert [s for s in sessions if s[0] in (VNNI_ONNX, ENCODER_ONNX)] == [
        (VNNI_ONNX, "bundle"), (ENCODER_ONNX, "bundle"), (VNNI_ONNX, "prepared"), (ENCODER_ONNX, "prepared")]


def test_how_many_prepared_copies_are_kept_can_be_set(bundles, audio_dir, sessions, tmp_path, monkeypatch, caplog):
    from edgeq.runtime import int8_kernels, prepared

    monkeypatch.setattr(int8_kernels, "vnni_kernels", lambda: True)
    monkeypatch.setenv("EDGEQ_ORT_CACHE_COPIES", "1")
    path = _get(bundles, "onnx-int8-dynamic").path
    for vnni in ("1", "0"):
        monkeypatch.setenv("EDGEQ_VNNI", vnni)
        _first_logits(path, audio_dir)
    assert len(_prepared_copies(tmp_path)) == 1  # the second graph's copy evicted the first's
    monkeypatch.setenv("EDGEQ_ORT_CACHE_COPIES", "all")
    with caplog.at_level("WARNING", logger="edgeq.runtime.prepared"):
        assert prepared.max_copies() == prepared.MAX_COPIES
    assert "not a positive number" in caplog.text


def test_a_changed_prepared_copy_is_made_again_not_used(bundles, audio_dir, sessions, tmp_path, caplog):
    import time

    path = _get(bundles, "onnx-int8-dynamic").path
    encoder, decoder = _graphs_here(path)
    reference = _first_logits(path, audio_dir)
    (copy,) = _prepared_copies(tmp_path)
    time.sleep(2.1)  # older than verified.RACY_S: the next load stamps the copy, then hashes nothing
    _first_logits(path, audio_dir)
    assert dict(sessions[-3:])[decoder] == "prepared"
    data = bytearray((copy / f"{encoder}.data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / f"{encoder}.data").write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="edgeq.runtime.prepared"):
        logits = _first_logits(path, audio_dir)
    assert sorted(sessions[-3:]) == sorted([(encoder, "bundle"), (decoder, "bundle"), (HEAD_ONNX, "bundle")])
    assert "was changed; making it again" in caplog.text
    np.testing.assert_array_equal(logits, reference)
    _first_logits(path, audio_dir)
    assert set(sessions[-3:]) == {(encoder, "prepared"), (decoder, "prepared"), (HEAD_ONNX, "bundle")}  # made again


def test_no_prepared_copy_when_turned_off_or_the_cache_is_unwritable(bundles, audio_dir, sessions, tmp_path,
                                                                      monkeypatch, caplog):
    path = _get(bundles, "onnx-int8-dynamic").path
    _, decoder = _graphs_here(path)
    monkeypatch.setenv("EDGEQ_ORT_CACHE", "0")
    _first_logits(path, audio_dir)
    assert _prepared_copies(tmp_path) == []
    monkeypatch.delenv("EDGEQ_ORT_CACHE")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("EDGEQ_CACHE", str(blocked))
    with caplog.at_level("WARNING"):
        logits = _first_logits(path, audio_dir)  # loads all the same, from the bundle
    assert np.isfinite(logits).all() and dict(sessions[-3:])[decoder] == "bundle"


def test_the_prepared_copy_belongs_to_one_bundle_onnxruntime_and_cpu(monkeypatch, tmp_path):
    from edgeq.runtime import prepared

    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path))
    key = prepared.PreparedGraphs("a" * 64, "1.32.0").path
    assert key.parent == tmp_path / "onnxruntime"
    assert prepared.PreparedGraphs("b" * 64, "1.32.0").path != key
    assert prepared.PreparedGraphs("a" * 64, "1.31.0").path != key
    monkeypatch.setattr(prepared, "_cpu", lambda: "aarch64||Cortex-A76|asimd fp")
    assert prepared.PreparedGraphs("a" * 64, "1.32.0").path != key


def test_the_prepared_copy_s_cpu_key_is_util_cpuinfo_s_model_and_flags(monkeypatch):
    # One /proc/cpuinfo parser (edgeq.util.cpuinfo) for the benchmarks' records and this key; the
    # flags in any order are one CPU, other flags another (they choose the kernels packed for).
    from edgeq.runtime import int8_kernels, prepared

    monkeypatch.setattr(int8_kernels, "flags_overstate_vnni", lambda: False)
    monkeypatch.setattr(prepared, "cpuinfo", lambda: ("A CPU", ["b", "a"]))
    key = prepared._cpu()
    assert key.endswith("|A CPU|a b")
    monkeypatch.setattr(prepared, "cpuinfo", lambda: ("A CPU", ["a", "b"]))
    assert prepared._cpu() == key
    monkeypatch.setattr(prepared, "cpuinfo", lambda: ("A CPU", ["a", "b", "asimddp"]))
    assert prepared._cpu() != key


def test_an_arm64_cpuinfo_without_a_model_name_is_named_by_its_core_part(monkeypatch):
    from pathlib import Path as P

    from edgeq import util

    text = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd crc32\nCPU part\t: 0xd08\n"
    real = P.read_text
    monkeypatch.setattr(P, "read_text", lambda self, *a, **k: text if str(self) == "/proc/cpuinfo" else real(self, *a, **k))
    model, flags = util.cpuinfo()
    assert model.endswith("CPU part 0xd08") and flags == ["fp", "asimd", "crc32"]


def test_a_staging_folder_left_by_a_killed_load_is_cleared(monkeypatch, tmp_path):
    import os

    from edgeq.runtime import prepared

    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path))
    graphs = prepared.PreparedGraphs("a" * 64, "1.32.0")
    old, recent = graphs.root / f".{graphs.path.name}.1", graphs.root / f".{graphs.path.name}.2"
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "encoder.onnx.data").write_bytes(b"half")
    os.utime(old, (0, 0))
    assert graphs.start()
    assert not old.exists() and recent.exists() and graphs.staging.is_dir()  # another load may still be writing
    graphs.discard()
    assert not graphs.staging.exists()


def test_only_the_most_recently_used_prepared_copies_are_kept(monkeypatch, tmp_path):
    import os

    from edgeq.runtime import prepared

    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path))
    olds = [prepared.PreparedGraphs(c * 64, "1.32.0") for c in "abcd"]
    for age, graphs in enumerate(olds):
        graphs.path.mkdir(parents=True)
        os.utime(graphs.path, (1000 - age, 1000 - age))  # "a" used last, "d" longest ago
    new = prepared.PreparedGraphs("e" * 64, "1.32.0")
    assert new.start()
    (new.staging / "encoder.onnx").write_bytes(b"graph")
    new.commit()
    kept = {p.name for p in new.root.iterdir()}
    assert kept == {new.path.name, olds[0].path.name, olds[1].path.name}
    assert (new.path / "hashes.json").is_file()
