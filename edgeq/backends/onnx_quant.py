"""ONNX Runtime quantization of the exported Whisper graphs.

Measured on whisper-base, 8 LibriSpeech utterances, 2 threads of an AVX2 CPU (fp32: 291 MB, WER
2.82); these numbers chose the methods below:

* Encoder, int8: `quantize_dynamic` with uint8 per-channel weights on the MatMuls keeps WER 2.82
  (per-tensor: 3.39); signed int8 per-channel weights lose more (WER 4.5) because AVX2's u8*s8
  multiply saturates. Its M=1500 GEMMs run faster as QGemm than as MatMulNBits (CPU 1.3 s vs 2.0 s).
* Decoder, int8: MatMulNBits 8-bit, blocks of 128, symmetric, accuracy_level 4 (int8 activations):
  8/8 identical transcripts, about 2x faster steps than fp32. accuracy_level 4 is required: without
  it the 8-bit kernel dequantizes the whole weight on every call (30x slower).
  `quantize_dynamic` on the decoder either duplicates the tied table (Gemm -> transposed MatMul
  copy) or quantizes it per-tensor through the Gather; so the table is quantized first
  (`quantize_tied_table`), and only then may quantize_dynamic take the decoder's Linear layers:
  int8 7-bit per channel (options.decoder_int8 = "channels"), which later measured faster than
  MatMulNBits on x86 CPUs without AMX at the same WER (recipes/onnx-int8-dynamic.toml).
* The tied token-embedding / LM-head table (27 % of whisper-base) is stored once, in MatMulNBits
  layout, and read both by MatMulNBits (logits) and GatherBlockQuantized (embedding): see
  `quantize_tied_table`.
* 4-bit: MatMulNBits blocks of 32 with zero points (asymmetric) on both graphs and a 4-bit table:
  57 MB, WER 2.82 (3.39 in an earlier run on other features); symmetric blocks or blocks of
  64/128 did worse there (3.95-5.65).
* Static QDQ (`quantize_static`) is used for the encoder only (on the decoder it made greedy
  decoding loop), and not for fc2, whose post-GELU input has outliers (backends/onnx.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
# MatMulNBits needs a power-of-two block of at least 16.
MIN_BLOCK = 16


@contextlib.contextmanager
def quiet_ort():
    """Keep onnxruntime.quantization's chatter off the user's terminal.

    It logs through the root logger (`logging.warning(...)`, which also calls basicConfig() when
    root has no handler) and matmul_nbits_quantizer calls basicConfig(level=INFO) on import. A
    placeholder handler makes those basicConfig() calls no-ops; root is raised to ERROR meanwhile
    (edgeq's own logger has its level set by the CLI and is unaffected).
    """
    root = logging.getLogger()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder:
        root.addHandler(placeholder)
    named = [logging.getLogger(n) for n in ("onnxruntime", "onnxruntime.quantization.matmul_nbits_quantizer")]
    saved = [root.level, *(lg.level for lg in named)]
    for lg in (root, *named):
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip((root, *named), saved):
            lg.setLevel(level)
        if placeholder:
            root.removeHandler(placeholder)


def fit_block(block: int, dim: int) -> int:
    """The largest power-of-two block <= `block` that divides `dim` (0 if below MIN_BLOCK)."""
    while block >= MIN_BLOCK and dim % block:
        block //= 2
    return block if block >= MIN_BLOCK else 0


# --------------------------------------------------------------------------- the tied table


def _quantize_rows(table: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric block quantization of a [N, K] table along K, in MatMulNBits' layout.

    Returns packed uint8 [N, K/block, block*bits/8] (implicit zero point 2^(bits-1)) and float32
    scales [N, K/block]. The signed extreme of each block maps to -2^(bits-1), so the full range
    of codes is used.
    """
    n, k = table.shape
    blocks = table.reshape(n, k // block, block).astype(np.float32)
    hi, lo = blocks.max(-1, keepdims=True), blocks.min(-1, keepdims=True)
    extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
    half = 2 ** (bits - 1)
    scale = (extreme / -half).astype(np.float32)
    safe = np.where(scale == 0, 1, scale)
    q = (np.clip(np.round(blocks / safe), -half, half - 1) + half).astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return np.ascontiguousarray(q), scale[..., 0]


def quantize_tied_table(model: onnx.ModelProto, bits: int, block: int,
                        accuracy_level: int | None) -> dict | None:
    """Store the decoder's tied [vocab, d_model] table once, quantized, for both of its users.

    The exported decoder reads the table through Gather(table, ids) (embedding) and
    Gemm(h, table, transB=1) (logits). Both become contrib ops on one packed initializer:
    MatMulNBits (N=vocab, K=d_model) and GatherBlockQuantized (gather_axis 0, quantize_axis 2).
    The scales are stored once; GatherBlockQuantized reads them through a Reshape. Returns what
    was done, or None when the graph has no such table.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    gemm = next((n for n in g.node if n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] in inits
                 and any(a.name == "transB" and a.i == 1 for a in n.attribute)), None)
    if gemm is None:
        return None
    name = gemm.input[1]
    gathers = [n for n in g.node if n.op_type == "Gather" and n.input[0] == name]
    table = numpy_helper.to_array(inits[name])
    vocab, dim = table.shape
    block = fit_block(block, dim)
    if not block or (len(gemm.input) > 2 and gemm.input[2]):
        log.warning("tied table %s kept float (d_model %d, bias %s)", name, dim, len(gemm.input) > 2)
        return None
    q, scale = _quantize_rows(table, bits, block)
    kb = dim // block
    qname, sname, s3name, shape = f"{name}_q{bits}", f"{name}_scales", f"{name}_scales3d", f"{name}_rows"
    s3shape = f"{name}_scales3d_shape"
    g.initializer.remove(inits[name])
    g.initializer.extend([
        numpy_helper.from_array(q, qname),
        numpy_helper.from_array(scale, sname),
        numpy_helper.from_array(np.array([vocab, kb, 1], np.int64), s3shape),
        numpy_helper.from_array(np.array([0, 0, dim], np.int64), shape),
    ])
    # GatherBlockQuantized wants the same scales as [vocab, K/block, 1]: a Reshape of the one copy
    # (ORT folds it at load) instead of a second initializer, 3.3 MB less on whisper-base at block 32.
    nodes = [helper.make_node("Reshape", [sname, s3shape], [s3name], name=f"{name}_scales_rows")]
    for n in g.node:
        if n is gemm:
            extra = {"accuracy_level": accuracy_level} if accuracy_level else {}
            nodes.append(helper.make_node(
                "MatMulNBits", [n.input[0], qname, sname], [n.output[0]], name=f"{n.name}_nbits",
                domain=MS_DOMAIN, K=dim, N=vocab, bits=bits, block_size=block, **extra))
        elif n in gathers:
            blocked = f"{n.output[0]}_blocks"
            nodes.append(helper.make_node(
                "GatherBlockQuantized", [qname, n.input[1], s3name], [blocked], name=f"{n.name}_gbq",
                domain=MS_DOMAIN, gather_axis=0, quantize_axis=2, block_size=block, bits=bits))
            # [B, T, K/block, block] -> [B, T, K]
            nodes.append(helper.make_node("Reshape", [blocked, shape], [n.output[0]], name=f"{n.name}_rows"))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    _use_ms_domain(model)
    return {"initializer": qname, "bits": bits, "block_size": block, "users": ["MatMulNBits", "GatherBlockQuantized"]}


def store_floats_as_float16(model: onnx.ModelProto, min_elements: int) -> list[str]:
    """Store float32 initializers of at least `min_elements` as float16, cast back to float32 at load.

    Compute stays float32; only storage halves. For the convolutions and positional tables that
    weight-only recipes leave float (1.9 M values, 7.6 MB of whisper-base) a float16 copy is off
    by at most 5e-4 relative. Returns the initializers changed.
    """
    g = model.graph
    users = {i for n in g.node for i in n.input}
    # Scales of MatMulNBits / GatherBlockQuantized stay initializers: their kernels pre-pack them.
    packed = {i for n in g.node if n.domain == MS_DOMAIN for i in n.input}
    changed, casts = [], []
    for t in list(g.initializer):
        if (t.data_type != onnx.TensorProto.FLOAT or t.name not in users or t.name in packed
                or int(np.prod(t.dims)) < min_elements):
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), f"{t.name}_fp16")
        g.initializer.remove(t)
        g.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [t.name], name=f"{t.name}_cast",
                                      to=onnx.TensorProto.FLOAT))
        changed.append(t.name)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    return changed


def _use_ms_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


# --------------------------------------------------------------------------- Linear layers


def matmul_nbits(model: onnx.ModelProto, bits: int, block: int, symmetric: bool,
                 accuracy_level: int | None, exclude: Iterable[str]) -> onnx.ModelProto:
    """Block-wise weight-only MatMulNBits on every MatMul with a constant weight, but `exclude`."""
    with quiet_ort():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(
            model, bits=bits, block_size=block, is_symmetric=symmetric, accuracy_level=accuracy_level or None,
            nodes_to_exclude=list(exclude), op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
    out = quantizer.model.model
    _use_ms_domain(out)
    return out


def dynamic_int8(model: onnx.ModelProto, per_channel: bool, reduce_range: bool,
                 exclude: Sequence[str] = (), only: Sequence[str] | None = None,
                 signed: bool = False) -> onnx.ModelProto:
    """ORT dynamic quantization of the weight MatMuls (all but `exclude`, or `only` those):
    uint8 weights (`signed`: int8, symmetric), activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = sorted((set(weight_matmuls(model)) if only is None else set(only)) - set(exclude))
    if not nodes:
        return model
    with tempfile.TemporaryDirectory(prefix="edgeq-onnx-") as tmp, quiet_ort():
        src, out = _spill(model, Path(tmp)), Path(tmp) / "q.onnx"
        quantize_dynamic(src, out, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                         nodes_to_quantize=nodes, extra_options={"MatMulConstBOnly": True})
        return onnx.load(out)


class _Feeds:
    """An onnxruntime CalibrationDataReader over encoder inputs."""

    def __init__(self, name: str, features: Sequence[np.ndarray]):
        self._it = iter([{name: np.ascontiguousarray(f, dtype=np.float32)[None]} for f in features])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - only some calibrators call it
        pass


def static_int8(model: onnx.ModelProto, features: Sequence[np.ndarray], input_name: str,
                per_channel: bool, reduce_range: bool, exclude: Sequence[str]) -> onnx.ModelProto:
    """QDQ int8 on the MatMuls with constant weights, activation ranges calibrated on `features`.

    MinMax ranges: Percentile/Entropy keep every calibrated tensor of every utterance in memory
    (GBs for whisper-base); MinMax keeps two numbers per tensor.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # Named explicitly: the QDQ quantizer ignores MatMulConstBOnly and would also quantize the
    # attention MatMuls (Q.K^T, softmax.V), which alone made the encoder's output 40 % off.
    nodes = sorted(set(weight_matmuls(model)) - set(exclude))
    if not nodes:  # an empty nodes_to_quantize means "all" to onnxruntime
        return model
    with tempfile.TemporaryDirectory(prefix="edgeq-onnx-") as tmp, quiet_ort():
        src, out = _spill(model, Path(tmp)), Path(tmp) / "q.onnx"
        quantize_static(
            src, out, _Feeds(input_name, features), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"], per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
            # No CalibMaxIntermediateOutputs: in onnxruntime 1.32 MinMax then drops what it collected.
            calibrate_method=CalibrationMethod.MinMax,
        )
        return onnx.load(out)


def _spill(model: onnx.ModelProto, folder: Path) -> Path:
    """Write `model` for a quantizer that takes a path (given a ModelProto, quantize_static
    rewrites it in place to point at external data in a folder it then deletes)."""
    path = folder / "in.onnx"
    save_model(model, path)
    return path


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """The graph in NAME.onnx, its weights in NAME.onnx.data beside it.

    Not only for the 2 GiB protobuf limit: ONNX Runtime memory-maps external weights instead of
    parsing them into the process with the protobuf, so a bundle loads faster and peaks lower
    (whisper-base onnx-int8-dynamic, two sessions: 160 MB resident after loading instead of 185 MB,
    0.15 s instead of 0.27 s)."""
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=1024)
    # onnx creates the data file owner-only (0600); a bundle's files are all read alike.
    os.chmod(path.parent / (path.name + ".data"), 0o644)


def to_float16(model: onnx.ModelProto, keep: Sequence[str]) -> onnx.ModelProto:
    """Weights and compute in float16; the inputs/outputs named in `keep` stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with quiet_ort():
        converted = OnnxModel(convert_float_to_float16(model, keep_io_types=list(keep)))
        # The converter appends the Casts of kept inputs after their users.
        converted.topological_sort()
    return converted.model


# --------------------------------------------------------------------------- which nodes


def weight_matmuls(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """MatMul node name -> its constant weight [K, N], for MatMuls whose B is an initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    return {n.name: numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits}


def node_modules(model: onnx.ModelProto, linears: dict[str, np.ndarray]) -> dict[str, str | None]:
    """Map each weight MatMul to the transformers Linear whose weight it holds (None: unknown).

    The dynamo exporter names folded weights `val_123`, so the link is made by value: a MatMul's
    B is the Linear's weight transposed.
    """
    by_bytes = {}
    for name, w in linears.items():
        by_bytes.setdefault((w.shape[::-1], _digest(np.ascontiguousarray(w.T))), name)
    out = {}
    for node, b in weight_matmuls(model).items():
        out[node] = by_bytes.get((b.shape, _digest(np.ascontiguousarray(b, dtype=np.float32))))
    return out


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()
