"""The ONNX Runtime engine: an ONNX bundle behind the decoding `Engine` protocol, without PyTorch.

This module imports only numpy and (when a bundle is loaded) onnxruntime; with the tokenizer,
soundfile and edgeq.runtime.features it is all a device needs (`pip install 'edgeq[runtime]'`).

The caches never leave ONNX Runtime: the encoder's cross-attention keys/values and the decoder's
self-attention cache stay OrtValues bound with IOBinding, on the GPU when running on CUDA, so a
decoder step copies only the new token in and the logits out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

import numpy as np

from edgeq.errors import BundleError, DeviceError
from edgeq.format.bundle import Bundle
from edgeq.format.layout import HIDDEN, LAYOUT_FILE, LOGITS, PAST_LENGTH, OnnxLayout, read_layout
from edgeq.runtime import heap, int8_kernels, prepared
from edgeq.spec.protocols import Spinning
from edgeq.util import cache_dir

log = logging.getLogger(__name__)

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def load_engine(bundle: Bundle, device: str = "cpu", threads: int | None = None,
                spinning: Spinning = "off") -> "OnnxEngine":
    import onnxruntime as ort  # edgeq.load checked it is installed (catalogue.require_runtime)

    bundle.require_runtime("onnxruntime", "ONNX Runtime")
    layout = read_layout(bundle)
    enc_providers, dec_providers = _providers(ort, device, layout, bundle)
    encoder_graph = _encoder_graph(layout, device)
    decoder_graph = _decoder_graph(layout, encoder_graph)
    # On a CPU: the graphs as ONNX Runtime optimized and prepacked them the first time this bundle
    # loaded on this device, or they are written now (edgeq.runtime.prepared).
    graphs = prepared.PreparedGraphs(bundle.manifest_sha256, ort.__version__,
                                     encoder_graph if encoder_graph != layout.encoder else "") \
        if device != "cuda" and prepared.enabled() else None
    reuse = graphs is not None and graphs.usable([encoder_graph, decoder_graph])
    if graphs is not None and not reuse and not graphs.start():
        graphs = None
    writing = graphs is not None and not reuse
    # The weights files ONNX Runtime will memory-map, and what of them is mapped already (another
    # engine of this bundle in this process): see the end of this function.
    mapped = [bundle.path / name for name in bundle.manifest.files if name.endswith(".onnx.data")]
    if reuse:
        mapped += [graphs.file(f"{name}.data") for name in (encoder_graph, decoder_graph)]
    before = set(heap.mappings(mapped))
    # Neither session uses memory patterns (one planned block per input shape, kept for the run:
    # whisper-base's encoder peaked at 248-271 MB with them against 218-221 MB without, padded
    # windows of speech-dev, 2 threads). The decoder uses no arena either: its allocations grow
    # with its cache; without the arena peak RSS fell from 265-268 to 256-261 MB on whisper-base
    # (speech-dev, 3 alternating pairs) and from 727-739 to 670-673 MB on the whisper-small shape
    # (2 clips of 224 tokens, 2 pairs), at the same speed (5.26-5.76 vs 5.37-5.69 s; 13.8-14.1 s).
    # The encoder on a CPU does use ONNX Runtime's arena (EDGEQ_ENCODER_ARENA=0: not), which keeps
    # a window's activations for the next window. Without it, every window's blocks of a window's
    # size were new mappings (runtime.heap), 12,000-54,000 page faults and 50-96 ms of kernel time
    # per padded window of whisper-base: with it, no faults after the first window, and the encoder
    # took 0.294-0.298 against 0.355-0.544 s per window in the pipeline, peak 218 against 209-214 MB
    # (benchmarks/padded_window.py, speech-dev, 3 rounds; docs/performance.md "edgeq against what users would
    # pick instead" has the comparison with the peers).
    arena = device != "cuda" and os.environ.get("EDGEQ_ENCODER_ARENA", "1") != "0"
    spin = spinning == "decoder"
    in_thread = [lambda: _session(ort, bundle, encoder_graph,
                                  _options(ort, threads, spin=False, prepack=layout.encoder_prepack, arena=arena),
                                  enc_providers, graphs, reuse)]
    # The head (the decoder's projection onto the token table) after the encoder, in the second
    # thread: its packing and the rest of the decoder's then take about as long. Always from the
    # bundle: one operator leaves nothing to optimize, and a prepared copy would hold the table
    # again (27 MB on whisper-base, 40 MB on small) only to be packed all the same.
    if layout.decoder_head:  # older bundles have none
        in_thread.append(lambda: _session(ort, bundle, layout.decoder_head, _options(ort, threads, spin=spin),
                                          dec_providers))
    try:
        (encoder, *heads), decoder = _sessions_side_by_side(
            in_thread, lambda: _session(ort, bundle, decoder_graph, _options(ort, threads, spin=spin),
                                        dec_providers, graphs, reuse))
    except BaseException:
        if writing:
            graphs.discard()
        raise
    if writing:
        graphs.commit()
    if device == "cuda" and "CUDAExecutionProvider" not in decoder.get_providers():
        raise DeviceError(
            "ONNX Runtime could not start its CUDA provider (are the CUDA and cuDNN libraries that "
            "onnxruntime-gpu needs installed?); use --device cpu or fix the CUDA installation"
        )
    # What ONNX Runtime left mapped after prepacking (the token table): resident only where read.
    heap.release_mapped(mapped)
    # ... and which of this load's mappings is the token table, to release again before every window.
    table = [m for m in heap.mappings(mapped, _table_bytes(layout)) if m not in before] if device != "cuda" else []
    _check_io(bundle, encoder, layout.encoder_inputs, layout.encoder_outputs, encoder_graph)
    _check_io(bundle, decoder, layout.decoder_inputs, layout.decoder_outputs, decoder_graph)
    head = heads[0] if heads else None
    if head is not None:
        _check_io(bundle, head, [HIDDEN], [LOGITS], layout.decoder_head)
    # What the engine makes itself: features and the empty self-attention cache (the encoder's
    # outputs go to the decoder as they are, whatever their type).
    past = set(layout.past_names)
    types = {encoder.get_inputs()[0].type, *(i.type for i in decoder.get_inputs() if i.name in past)}
    if not types <= set(_DTYPES):
        raise BundleError(f"{bundle.path}: the graphs take {sorted(types - set(_DTYPES))}; this edgeq reads float32/float16")
    engine = OnnxEngine(encoder, decoder, layout, device, table, head)
    engine.prepared_copy = "reused" if reuse else "made" if writing else "off"
    return engine


def _encoder_graph(layout: OnnxLayout, device: str) -> str:
    """The bundle's encoder graph for this CPU: on x86-64, the one reading int8 weights where the
    CPU has VNNI and ONNX Runtime computes its int8 product exactly (runtime.int8_kernels), the one
    reading 7-bit codes where that product saturates (AVX2, AVX-512 without VNNI; backends.
    onnx_avx2); else, and where the bundle has neither, the portable one (ARM's kernels take any
    alike). EDGEQ_VNNI=0 and EDGEQ_AVX2=0 keep the portable one (to measure one against the other)."""
    if device == "cuda" or not (layout.encoder_vnni or layout.encoder_avx2) or not int8_kernels.x86():
        return layout.encoder
    if int8_kernels.vnni_kernels():
        return layout.encoder_vnni if layout.encoder_vnni and os.environ.get("EDGEQ_VNNI", "1") != "0" \
            else layout.encoder
    return layout.encoder_avx2 if layout.encoder_avx2 and os.environ.get("EDGEQ_AVX2", "1") != "0" \
        else layout.encoder


def _decoder_graph(layout: OnnxLayout, encoder_graph: str) -> str:
    """The decoder graph that goes with `encoder_graph`: decoder_vnni with encoder_vnni where the
    bundle has it (that encoder writes the value codes as int8, which only decoder_vnni reads),
    else the portable one."""
    return layout.decoder_vnni if layout.decoder_vnni and encoder_graph == layout.encoder_vnni else layout.decoder


def _sessions_side_by_side(in_thread, make_decoder):
    """The sessions `in_thread` makes (the encoder's, then the head's), one after the other in a
    second thread, while this one makes the decoder's: ONNX Runtime releases the GIL while it
    creates a session (reading the graph, mapping the weights, packing them), so on two cores the
    two threads overlap. compare_systems, 3 rounds, against making encoder and decoder one after
    the other in the same rounds: whisper-base onnx-int8-dynamic loads in 0.19-0.22 s instead of
    0.21-0.31 s, whisper-small's shape 0.35-0.47 s instead of 0.57-1.16 s. A bare thread rather
    than concurrent.futures: that import alone costs 7-9 ms here, a few per cent of whisper-base's
    load."""
    made: list[Any] = []
    failed: list[BaseException] = []

    def work():
        try:
            for make in in_thread:
                made.append(make())
        except BaseException as err:  # re-raised in the caller's thread below
            failed.append(err)

    worker = threading.Thread(target=work, name="edgeq-encoder-session", daemon=True)
    worker.start()
    try:
        decoder = make_decoder()
    finally:
        worker.join()
    if failed:
        raise failed[0]
    return made, decoder


def _table_bytes(layout: OnnxLayout) -> list[int]:
    """The sizes a [vocab, d_model] token table has as 4-bit, 8-bit, 16-bit or 32-bit numbers."""
    cells = layout.vocab_size * layout.heads * layout.head_dim
    return [cells // 2, cells, cells * 2, cells * 4]


def _options(ort, threads: int | None, spin: bool, prepack: bool = True, arena: bool = False):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default (physical cores)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the library never prints
    options.enable_cpu_mem_arena = arena  # see load_engine
    options.enable_mem_pattern = False
    # Between operators, idle worker threads spin for work (`spin`: the decoder's, on request) or
    # sleep. A decoder step is ~60 small operators of 2-15 ms in all, and waking a sleeping thread
    # for each costs: whisper-small's shape, full window, 2 threads, one step 12.0-12.3 ms sleeping,
    # 10.1 ms spinning (whisper-base 2.87 -> 2.47 ms). The encoder's operators are large and spinning
    # never paid there. Spinning takes a core from whoever else needs it: benchmarks/spinning.py
    # (whisper-base int8, 2 threads; docs/performance.md "Threads") has the whole pipeline, idle and shared.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    # ... and a spinning pool stops when its run ends, not spinning on into the encoder's run or
    # the Python between two steps.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if not prepack:  # the bundle's layout says so (recipe option encoder_prepack)
        options.add_session_config_entry("session.disable_prepacking", "1")
    # Diagnosis only (benchmarks/decoder_step.py --profile): ONNX Runtime times every operator of
    # every run into PREFIX_<date>.json. It slowed a whisper-small decoder step by about 40 % (15.1
    # against 10.8 ms, AMD EPYC), so read the per-operator split from such a run, not its timing.
    profile = os.environ.get("EDGEQ_ORT_PROFILE")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return options


class OnnxEngine:
    def __init__(self, encoder, decoder, layout: OnnxLayout, device: str = "cpu", table=(), head=None):
        import onnxruntime as ort

        self._encoder, self._decoder = encoder, decoder
        # What this load did with the bundle's prepared copy for this device (runtime.prepared):
        # "made" it (the first load here: slower, and it may peak higher), "reused" it, or "off"
        # (CUDA, EDGEQ_ORT_CACHE=0, a cache that cannot be written). `edgeq bench` marks made ones,
        # whose load time is not what later loads take.
        self.prepared_copy = "off"
        self._head = head  # the projection onto the token table, where the bundle has it apart
        self._device = "cuda" if device == "cuda" else "cpu"
        # On a CPU, each thread that steps gets one binding of the head onto two buffers made once
        # (the hidden state the decoder writes and the head reads, and the logits), instead of a new
        # binding and new outputs every step (0.09-0.14 ms a step on whisper-base). Per thread, so
        # that decodes in several threads sharing this engine keep their own, as before.
        self._head_local = threading.local() if head is not None and self._device == "cpu" and \
            all(isinstance(d, int) for d in head.get_inputs()[0].shape + head.get_outputs()[0].shape) else None
        self._cross = list(layout.encoder_outputs)
        self._past = layout.past_names
        self._present = layout.present_names
        inputs = {i.name: i for i in decoder.get_inputs()}
        self._features_dtype = _DTYPES[encoder.get_inputs()[0].type]
        self._row_bytes = layout.heads * layout.head_dim * np.dtype(self._features_dtype).itemsize
        kv_dtype = _DTYPES[inputs[self._past[0]].type]
        shape = [1, layout.heads, 0, layout.head_dim]
        empty = ort.OrtValue.ortvalue_from_shape_and_type(shape, kv_dtype, self._device, 0)
        self._empty = tuple(empty for _ in self._past)
        # self_cache "shared": one [1, H, max_target_positions, Dh] buffer per past name, bound as
        # both past input and present output, that each step writes its new rows into
        # (backends.onnx_self_cache). A step then copies only the new token's keys/values.
        self._shared = layout.self_cache == "shared"
        self._buffer_shape = (1, layout.heads, layout.max_target_positions, layout.head_dim)
        self._kv_dtype = kv_dtype
        self._ort = ort
        # On a CPU without the encoder's arena (load_engine), its large activations are mapped and
        # given back (heap.large_blocks_mapped). With the arena that made no difference (peak 217
        # against 218 MB, the same speed): the arena keeps them.
        arena = encoder.get_session_options().enable_cpu_mem_arena
        self._encoding = heap.large_blocks_mapped if self._device == "cpu" and not arena else contextlib.nullcontext
        # The decoder reads the token table a row per step, but every row it reads faults in the
        # page-cache folio around it (256 KB here, 500 rows of whisper-base): over speech-dev's 24
        # clips 21 of its 26 MB became resident. Its pages go back before each window is encoded
        # (heap.release: unwritten file pages only), which is when the peak is made.
        self._table = list(table)
        self.providers = decoder.get_providers()
        self.variable_window = layout.variable_frames

    def encode(self, features: np.ndarray) -> dict[str, Any]:
        heap.release(self._table)
        binding = self._encoder.io_binding()
        binding.bind_cpu_input("input_features", np.ascontiguousarray(features, dtype=self._features_dtype)[None])
        for name in self._cross:
            binding.bind_output(name, self._device)
        # the conv stem halves the frames: one activation is [frames // 2, d_model]
        with self._encoding(heap.encoder_threshold(features.shape[-1] // 2 * self._row_bytes)):
            self._encoder.run_with_iobinding(binding)
        return dict(zip(self._cross, binding.get_outputs()))

    def start(self, encoder_state: dict[str, Any]) -> tuple:
        if not self._shared:
            return encoder_state, self._empty, 0, None, None
        # Fresh buffers for every decode: a large allocation's pages become resident only as a step
        # writes its rows, so a 224-token decode holds half of the buffers' 448 rows.
        arrays = [np.empty(self._buffer_shape, self._kv_dtype) for _ in self._past]
        return encoder_state, self._bind_arrays(arrays), 0, arrays, self._held()

    def _held(self) -> _HeldBinding | None:
        """A binding to make at a decode's first step and reuse at every later one, where its inputs
        and outputs stay where they are: the shared cache's buffers (written in place), the window's
        keys/values, a head buffer (CPU with a head graph of fixed shapes)."""
        return _HeldBinding() if self._shared and self._head_local is not None else None

    def _bind_arrays(self, arrays: list[np.ndarray]) -> tuple:
        ort = self._ort
        if self._device == "cpu":  # the OrtValues are the arrays' memory, not copies
            return tuple(ort.OrtValue.ortvalue_from_numpy(a) for a in arrays)
        return tuple(ort.OrtValue.ortvalue_from_numpy(a, self._device, 0) for a in arrays)

    def fork(self, state: tuple) -> tuple:
        cross, past, filled, arrays, _ = state
        if not self._shared:
            # step() binds the past as inputs and gets the present in fresh outputs: it never
            # writes into a state it was given, so branches can share one.
            return state
        if self._device == "cpu":
            copies = [np.empty(self._buffer_shape, self._kv_dtype) for _ in arrays]
            for new, old in zip(copies, arrays):
                new[:, :, :filled] = old[:, :, :filled]
            # a binding of its own: the parent's is bound to the parent's buffers
            return cross, self._bind_arrays(copies), filled, copies, self._held()
        # On the GPU the buffers are ONNX Runtime's: through the host (beam search and best_of only)
        copies = [v.numpy() for v in past]
        return cross, self._bind_arrays(copies), filled, None, None

    def step(self, state: tuple, tokens: list[int]) -> tuple[np.ndarray, Any]:
        cross, past, filled, arrays, held = state
        if filled + len(tokens) > self._buffer_shape[2]:
            raise ValueError(f"the decoder holds {self._buffer_shape[2]} positions; {filled + len(tokens)} asked")
        if held is not None:
            return self._step_held(state, tokens)
        binding = self._decoder.io_binding()
        binding.bind_cpu_input("input_ids", np.array([tokens], dtype=np.int64))
        for name, value in zip(self._past, past):
            binding.bind_ortvalue_input(name, value)
        for name, value in cross.items():
            binding.bind_ortvalue_input(name, value)
        # Without a head graph the decoder makes the logits; with one, the hidden state it hands to
        # the head stays where the decoder made it (the GPU on CUDA).
        buffers = self._head_buffers() if self._head_local is not None else None
        if buffers is not None:
            binding.bind_ortvalue_output(HIDDEN, buffers[0])
        elif self._head is not None:
            binding.bind_output(HIDDEN, self._device)
        else:
            binding.bind_output(LOGITS, "cpu")
        if self._shared:
            binding.bind_cpu_input(PAST_LENGTH, np.array(filled, dtype=np.int64))
            for name, value in zip(self._present, past):
                binding.bind_ortvalue_output(name, value)  # written in place
        else:
            for name in self._present:
                binding.bind_output(name, self._device)
        self._decoder.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if buffers is not None:
            _, head_binding, out = buffers
            self._head.run_with_iobinding(head_binding)
            logits = out[0].copy()
        else:
            logits = np.array(self._project(outputs[0]).numpy()[0], dtype=np.float32)
        if self._shared:
            return logits, (cross, past, filled + len(tokens), arrays, None)
        return logits, (cross, tuple(outputs[1:]), filled + len(tokens), None, None)

    def _step_held(self, state: tuple, tokens: list[int]) -> tuple[np.ndarray, Any]:
        """step() through the decode's held binding: only the token ids, the cache length and (on
        another thread) the head buffer change from one step to the next.

        Why: a fresh binding every step bound every input and output again (whisper-small's shape: 86
        inputs, 25 outputs), each through Python and ONNX Runtime's checks, and wrapped every output
        in a new Python object. Steps alternating between the two in one decode (benchmarks/
        decoder_step.py --bindings, AMD EPYC Zen 4, 2 threads spinning, padded window, 3 rounds), held
        against fresh: whisper-small's shape 8.84-9.52 against 9.18-9.89 ms (int8), 6.98-7.63 against
        7.22-8.01 ms (4-bit decoder); whisper-base 2.92-3.08 against 3.16-3.32 ms and 2.43-2.45
        against 2.63-2.65 ms; faster in every round, the same logits."""
        cross, past, filled, arrays, held = state
        buffers = self._head_buffers()
        if held.binding is None:
            held.bind(self._decoder.io_binding(), self._ort, cross, zip(self._past, past), zip(self._present, past))
        held.feed(tokens, filled, buffers[0])
        self._decoder.run_with_iobinding(held.binding)
        _, head_binding, out = buffers
        self._head.run_with_iobinding(head_binding)
        return out[0].copy(), (cross, past, filled + len(tokens), arrays, held)

    def _head_buffers(self) -> tuple:
        """This thread's (hidden OrtValue, head binding, logits array), made at its first step."""
        made = getattr(self._head_local, "buffers", None)
        if made is None:
            ort, head = self._ort, self._head
            hidden, logits = head.get_inputs()[0], head.get_outputs()[0]
            value = ort.OrtValue.ortvalue_from_shape_and_type(hidden.shape, _DTYPES[hidden.type], "cpu", 0)
            out = np.empty(logits.shape, _DTYPES[logits.type])
            binding = head.io_binding()
            binding.bind_ortvalue_input(HIDDEN, value)
            binding.bind_ortvalue_output(LOGITS, ort.OrtValue.ortvalue_from_numpy(out))
            made = self._head_local.buffers = (value, binding, out)
        return made

    def _project(self, first):
        """The logits: the decoder's first output, or what the head makes of it (on the GPU: the
        hidden state stays there, the logits come to the host)."""
        if self._head is None:
            return first
        binding = self._head.io_binding()
        binding.bind_ortvalue_input(HIDDEN, first)
        binding.bind_output(LOGITS, "cpu")
        self._head.run_with_iobinding(binding)
        return binding.get_outputs()[0]


class _HeldBinding:
    """One decode's decoder binding (OnnxEngine._step_held), with the arrays its two changing
    inputs read: ONNX Runtime reads an OrtValue made from a numpy array in place, so a step writes
    the next token and the cache length into them and binds nothing again."""

    def __init__(self):
        self.binding = self.ort = None  # made by bind(), at the decode's first step
        self.one_token = np.zeros((1, 1), np.int64)
        self.one_value = None  # the OrtValue over one_token
        self.length = np.zeros((), np.int64)
        self.ids = None  # the OrtValue bound as input_ids now (the one-token array's, or a prompt's)
        self.hidden = None  # the head buffer bound as the hidden state now (each thread has its own)
        self.keep = None  # a prompt's ids array, alive while it is bound

    def bind(self, binding, ort, cross: dict, pasts, presents) -> None:
        for name, value in pasts:
            binding.bind_ortvalue_input(name, value)
        for name, value in cross.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in presents:
            binding.bind_ortvalue_output(name, value)  # written in place
        binding.bind_ortvalue_input(PAST_LENGTH, ort.OrtValue.ortvalue_from_numpy(self.length))
        self.one_value = ort.OrtValue.ortvalue_from_numpy(self.one_token)
        self.ort, self.binding = ort, binding

    def feed(self, tokens: list[int], filled: int, hidden) -> None:
        self.length[()] = filled
        if len(tokens) == 1:
            self.one_token[0, 0] = tokens[0]
            value = self.one_value
        else:
            self.keep = np.array([tokens], dtype=np.int64)
            value = self.ort.OrtValue.ortvalue_from_numpy(self.keep)
        if value is not self.ids:
            self.binding.bind_ortvalue_input("input_ids", value)
            self.ids = value
        if hidden is not self.hidden:
            self.binding.bind_ortvalue_output(HIDDEN, hidden)
            self.hidden = hidden


def _providers(ort, device: str, layout: OnnxLayout, bundle: Bundle) -> tuple[list, list]:
    if device != "cuda":
        return ["CPUExecutionProvider"], ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise DeviceError(
            "--device cuda asked for, but this onnxruntime has no CUDA provider: "
            "pip uninstall onnxruntime && pip install onnxruntime-gpu"
        )
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" not in available or os.environ.get("EDGEQ_TENSORRT", "1") == "0":
        return cuda, cuda
    # TensorRT for the encoder only: its shapes are fixed, so one engine is built once and cached.
    # The decoder's cache grows every step, which would make TensorRT rebuild engines; CUDA runs it.
    cache = cache_dir() / "tensorrt" / bundle.manifest_sha256[:16]
    log.info("TensorRT runs the encoder; its engine is built on first use (minutes) and cached in %s", cache)
    trt = ("TensorrtExecutionProvider", {
        "trt_fp16_enable": layout.dtype == "float16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
    })
    return [trt, *cuda], cuda


def _session(ort, bundle: Bundle, name: str, options, providers, graphs=None, reuse=False):
    path, where = bundle.file(name), name
    if reuse:
        # optimized already: optimizing again would only cost time
        path, options.graph_optimization_level = graphs.file(name), ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        where = f"{name} as prepared in {graphs.path} (EDGEQ_ORT_CACHE=0 loads the bundle's own)"
    elif graphs is not None:
        graphs.save_options(options, name)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own pybind exception types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BundleError(f"{bundle.path}: ONNX Runtime cannot load {where}: {first[:300]}") from None


def _check_io(bundle: Bundle, session, inputs: list[str], outputs: list[str], name: str) -> None:
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != list(inputs) or got_out != list(outputs):
        raise BundleError(
            f"{bundle.path}: {name} does not match {LAYOUT_FILE} (inputs {got_in[:3]}..., outputs "
            f"{got_out[:3]}...); the bundle is inconsistent, rebuild it"
        )
