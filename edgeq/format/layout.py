"""The ONNX layout contract: what `onnx.json` in an ONNX bundle says, written once for both sides.

The writer (`edgeq.backends.onnx`, on the workstation) builds an `OnnxLayout` from the model and
serialises it with `to_dict`; the reader (`edgeq.runtime.onnx_engine`, on the device) gets it back
with `from_dict`, which checks the version first and then every field's type, so a bundle from
another layout version, or an edited onnx.json, is refused in one line before a graph is loaded.

    encoder.onnx   input_features [1, n_mels, F]   (F = n_frames; from version 2, any even F <= n_frames)
                   -> cross_k_0, cross_v_0, ... cross_k_{L-1}, cross_v_{L-1}   [1, H, F / 2, Dh]
    decoder.onnx   input_ids [1, T] int64,
                   past_k_i, past_v_i [1, H, P, Dh]  (P = 0 on the first step),
                   cross_k_i, cross_v_i [1, H, F / 2, Dh]
                   -> logits [1, vocab] (last position only), present_k_i, present_v_i [1, H, P+T, Dh]

With `decoder_head` (bundles from 2026-12-06) the decoder stops before its projection onto the
token table: it outputs `hidden` [1, d_model] in place of logits, and decoder_head.onnx, which
reads decoder.onnx's weights file, makes the logits from it (backends.onnx_head: the runtime makes
that session in a second thread while it makes the decoder's).

Tensors are float32 (float16 in a float16 bundle, `dtype`), except that cross_* may be float16 in
a float32 bundle (recipe option cross_kv; `quantization.cross_kv` says so). No version change for
that: the reader binds the encoder's outputs to the decoder's inputs as they are, whatever their
type. (An edgeq that predates the option still refuses the bundle: its manifest's recipe lists
the option, which that edgeq's schema does not know.) With cross_kv = "int8" (`cross_int8`) the
cross_* are uint8 codes, and the encoder outputs, and the decoder takes, their float32 scales after
them (cross_scale_names). (Bundles of edgeq 0.1.0 before the keys-first product have the key
codes transposed, [1, H, Dh, F / 2]; their own decoder reads them so, and they load as they are.)

With `self_cache = "shared"` (the default since layout files have the field; absent means
"concat") the decoder's past_k_i/past_v_i are buffers of max_target_positions rows that the
decoder writes the new rows into (its present_k_i/present_v_i are the same buffers: the runtime
binds one OrtValue to both), and it takes an int64 scalar `past_length` after everything else: how
many rows are filled (backends.onnx_self_cache).

With `encoder_vnni` (int8 encoders) a second encoder graph, with the same inputs and outputs and
reading the same weights file, takes its uint8 weights as int8 for CPUs with VNNI (backends.onnx_vnni).
With `decoder_vnni` as well (int8 cross-attention), that encoder writes the value codes cross_v_i as
int8 (v / scale, without the +128) and is run only with decoder_vnni, a second decoder graph reading
decoder's weights file (backends.onnx_cross_int8.signed_cross_codes).

With `encoder_avx2` (int8 encoders, bundles from 2026-12-06) a third encoder graph, again with the
same inputs and outputs and weights file, takes its uint8 weights as 7-bit int8 codes for x86 CPUs
without VNNI (backends.onnx_avx2); it runs with the portable decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from edgeq.errors import BundleError
from edgeq.schema import Meta, Schema, SchemaError, convert, field, to_dict

LAYOUT_FILE = "onnx.json"
# Version 2: the encoder takes windows shorter than n_frames (variable_frames). Version 1 bundles
# (fixed 30 s windows) still load; they are encoded on the full window.
LAYOUT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The decoder's extra input with self_cache = "shared": rows of the past buffers already filled.
PAST_LENGTH = "past_length"
LOGITS = "logits"
# With decoder_head: what the decoder outputs first, and the head takes.
HIDDEN = "hidden"
ENCODER_ONNX = "encoder.onnx"
DECODER_ONNX = "decoder.onnx"
# A graph is a plain file at the top of the bundle: no folders, no "..", nothing absolute.
_GRAPH_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.onnx$"


def io_names(n_layers: int) -> tuple[list[str], list[str], list[str]]:
    """past_*, present_* and cross_* names, k before v, layer by layer."""

    def names(kind: str) -> list[str]:
        return [f"{kind}_{kv}_{i}" for i in range(n_layers) for kv in ("k", "v")]

    return names("past"), names("present"), names("cross")


def cross_scale_names(cross: list[str]) -> list[str]:
    """The float32 scales of int8 cross-attention keys/values, in order: per key a channel scale
    and a frame scale, per value a channel scale."""
    names = []
    for name in cross:
        names += [f"{name}_channel", f"{name}_row"] if "_k_" in name else [f"{name}_scale"]
    return names


Positive = Annotated[int, Meta(gt=0)]
GraphName = Annotated[str, Meta(pattern=_GRAPH_NAME)]


class OnnxLayout(Schema, kw_only=True):
    """What the runtime needs to drive the two graphs."""

    layout_version: int = LAYOUT_VERSION
    encoder: GraphName = ENCODER_ONNX
    decoder: GraphName = DECODER_ONNX
    n_mels: Positive
    n_frames: Positive  # encoder input length (3000)
    n_audio_ctx: Positive  # encoder output length (1500)
    variable_frames: bool = False  # the encoder takes any even length up to n_frames
    # cross_* are uint8 codes followed by their float32 scales (recipe option cross_kv = "int8";
    # backends.onnx_cross_int8 has the arithmetic). An edgeq without this field refuses the bundle.
    cross_int8: bool = False
    # "shared": past/present are one buffer per layer and name, written in place, and the decoder
    # takes past_length (backends.onnx_self_cache). Bundles without the field concatenate.
    self_cache: Literal["concat", "shared"] = "concat"
    # False: the runtime makes the encoder's session without prepacking its weights (recipe option
    # encoder_prepack). Bundles without the field prepack.
    encoder_prepack: bool = True
    # The encoder with its uint8 weights read as int8, for x86 CPUs with VNNI (backends.onnx_vnni);
    # it shares encoder's weights file. Absent (older bundles, float encoders): encoder everywhere.
    encoder_vnni: GraphName | None = None
    # With encoder_vnni and int8 cross-attention: the decoder run with it, whose cross-attention
    # products are uint8 x int8 (encoder_vnni then writes the value codes as int8); it shares
    # decoder's weights file. Absent (older bundles): decoder with either encoder.
    decoder_vnni: GraphName | None = None
    # The encoder with its uint8 weights as 7-bit int8 codes, for x86 CPUs whose u8 x s8 product
    # saturates (no VNNI: backends.onnx_avx2); it shares encoder's weights file and runs with
    # decoder. Absent (older bundles, float encoders): encoder there. An edgeq without this field
    # refuses the bundle.
    encoder_avx2: GraphName | None = None
    # The projection onto the token table, split off the decoder (backends.onnx_head): decoder(_vnni)
    # then outputs HIDDEN first instead of logits. Absent (older bundles): the decoder makes the
    # logits. An edgeq without this field refuses the bundle.
    decoder_head: GraphName | None = None
    n_layers: Positive
    heads: Positive
    head_dim: Positive
    vocab_size: Positive
    max_target_positions: Positive
    encoder_inputs: list[str]
    encoder_outputs: list[str]
    decoder_inputs: list[str]
    decoder_outputs: list[str]
    dtype: Literal["float32", "float16"] = "float32"
    opset: Annotated[int, Meta(ge=1)] = 18
    # Informational, written by the builder and shown by tools; the runtime does not read them.
    quantization: dict[str, Any] = field(default_factory=dict)
    providers: dict[str, Any] = field(default_factory=dict)
    export_check: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_dims(cls, *, n_mels: int, n_audio_ctx: int, n_layers: int, heads: int, head_dim: int,
                 vocab_size: int, max_target_positions: int, variable_frames: bool = False,
                 cross_int8: bool = False, self_cache: str = "concat", head: bool = False) -> OnnxLayout:
        past, present, cross = io_names(n_layers)
        if cross_int8:
            cross = cross + cross_scale_names(cross)
        length = [PAST_LENGTH] if self_cache == "shared" else []
        return convert(cls, dict(
            variable_frames=variable_frames, cross_int8=cross_int8, self_cache=self_cache,
            n_mels=n_mels, n_frames=2 * n_audio_ctx, n_audio_ctx=n_audio_ctx, n_layers=n_layers, heads=heads,
            head_dim=head_dim, vocab_size=vocab_size, max_target_positions=max_target_positions,
            encoder_inputs=["input_features"], encoder_outputs=cross,
            decoder_inputs=["input_ids", *past, *cross, *length], decoder_outputs=[HIDDEN if head else LOGITS, *present],
        ))

    @property
    def past_names(self) -> list[str]:
        return [n for n in self.decoder_inputs if n.startswith("past_") and n != PAST_LENGTH]

    @property
    def present_names(self) -> list[str]:
        return [n for n in self.decoder_outputs if n.startswith("present_")]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str | Path = "") -> OnnxLayout:
        prefix = f"{where}: " if str(where) else ""
        if not isinstance(data, dict):
            raise BundleError(f"{prefix}{LAYOUT_FILE} is not a JSON object")
        version = data.get("layout_version")
        if version not in READABLE_VERSIONS:
            raise BundleError(
                f"{prefix}{LAYOUT_FILE} has layout version {version!r}; this edgeq reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: rebuild the bundle or install the edgeq that wrote it"
            )
        if version == 1 and data.get("variable_frames"):
            raise BundleError(f"{prefix}{LAYOUT_FILE}: variable_frames needs layout version 2; rebuild the bundle")
        try:
            layout = convert(cls, data)
        except SchemaError as err:
            raise BundleError(f"{prefix}{LAYOUT_FILE}: {err.problem.text()}; rebuild the bundle") from None
        expected = cls.for_dims(n_mels=layout.n_mels, n_audio_ctx=layout.n_audio_ctx, n_layers=layout.n_layers,
                                heads=layout.heads, head_dim=layout.head_dim, vocab_size=layout.vocab_size,
                                max_target_positions=layout.max_target_positions, cross_int8=layout.cross_int8,
                                self_cache=layout.self_cache, head=layout.decoder_head is not None)
        for key in ("encoder_inputs", "encoder_outputs", "decoder_inputs", "decoder_outputs"):
            if getattr(layout, key) != getattr(expected, key):
                raise BundleError(f"{prefix}{LAYOUT_FILE}: {key} do not follow layout version {version}")
        if layout.n_frames != 2 * layout.n_audio_ctx:
            raise BundleError(f"{prefix}{LAYOUT_FILE}: n_frames must be twice n_audio_ctx")
        return layout


def read_layout(bundle) -> OnnxLayout:
    """A bundle's onnx.json, validated; its graphs (and their external data) must be listed, so
    verified, files of the bundle (`bundle` is an edgeq.format.bundle.Bundle)."""
    from edgeq.util import read_json

    layout = OnnxLayout.from_dict(read_json(bundle.file(LAYOUT_FILE), BundleError), bundle.path)
    for name in graph_files(bundle, layout):
        bundle.file(name)  # listed (so verified), or BundleError
    return layout


def graph_files(bundle, layout: OnnxLayout) -> list[str]:
    """The graphs and, where present, their external weights: ONNX Runtime reads `NAME.onnx.data`
    from beside the graph (the graph's own, hashed, bytes name it), so it must be verified too."""
    names = [layout.encoder, layout.decoder,
             *filter(None, (layout.encoder_vnni, layout.decoder_vnni, layout.encoder_avx2, layout.decoder_head))]
    return names + [f"{n}.data" for n in names if (bundle.path / f"{n}.data").exists()]
