"""Whisper as two ONNX graphs with an explicit key/value cache, exported from a float torch model.

The graphs' inputs and outputs are the layout contract in `edgeq.format.layout`.

The encoder computes the decoder's cross-attention keys/values once per window, so a decoder step
never re-projects the 1500 audio frames. The wrappers call the checkpoint's own Linear, LayerNorm,
Conv and Embedding modules but none of transformers' attention or Cache code, so the export does
not depend on the Cache classes or the attention registry of a given transformers release. The
LM head reads the token-embedding matrix through F.linear, so the decoder graph holds the tied
[vocab, d_model] table once, used by a Gather (embedding) and a Gemm (logits).

The exporter is torch.onnx.export(dynamo=True): the TorchScript exporter constant-folds the head's
Transpose into a second copy of the table (+106 MB on whisper-base).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeq.format.layout import OnnxLayout, io_names

log = logging.getLogger(__name__)

# With options.attention = "blocks": self-attention in 6 blocks of queries (250 each on a full
# window), identical outputs to one block. The default, "fused", writes one MultiHeadAttention node
# per layer instead (onnx_fusion), which peaks lower on both whisper-base and whisper-small.
ENCODER_QUERY_CHUNKS = 6
# The protobuf limit is 2 GiB; above ~1.8 GB of weights the graphs keep their tensors in .onnx.data.
EXTERNAL_DATA_BYTES = 1_800_000_000


def layout_for_model(model) -> OnnxLayout:
    """The layout contract (edgeq.format.layout) of `model`'s two graphs."""
    c = model.config
    heads = c.decoder_attention_heads
    return OnnxLayout.for_dims(
        n_mels=c.num_mel_bins, n_audio_ctx=c.max_source_positions, n_layers=c.decoder_layers, heads=heads,
        head_dim=c.d_model // heads, vocab_size=c.vocab_size, max_target_positions=c.max_target_positions,
        variable_frames=True,
    )


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:  # [B, S, D] -> [B, H, S, Dh]
    b, s, d = x.shape
    return x.view(b, s, n, d // n).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:  # [B, H, S, Dh] -> [B, S, D]
    b, h, s, dh = x.shape
    return x.transpose(1, 2).reshape(b, s, h * dh)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    # Whisper's exact (erf) GELU, written in the one operand order ONNX Runtime's GeluFusion
    # matches: x/sqrt(2) -> Erf -> +1 -> *x -> *0.5. F.gelu exports as 0.5*(1+erf)*x, which it does
    # not fuse, leaving five elementwise ops and four [frames, 4*d_model] float temporaries per layer.
    return x * (1.0 + torch.erf(x / math.sqrt(2.0))) * 0.5


def _activation(model):
    """The layers' activation: every Whisper checkpoint uses exact GELU; keep any other as is."""
    if model.config.activation_function == "gelu":
        return _gelu
    return model.model.decoder.layers[0].activation_fn


class _ScaledQuery(nn.Module):
    """An attention's q_proj with Whisper's query scaling (head_dim ** -0.5) folded into its weight
    and bias, so that the graphs hold no Mul after each query projection (one per encoder layer on
    [frames, d_model], two per decoder layer and step). Every Whisper checkpoint has 64-wide heads,
    a scaling of 1/8: a power of two, so the products are exact and the quantizers' codes the same
    as for the unscaled weight, each scale multiplied by 1/8 (`exported_linear_weights`)."""

    def __init__(self, attention):
        super().__init__()
        bias = attention.q_proj.bias
        self.weight = nn.Parameter(_scaled(attention.q_proj.weight, attention), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(_scaled(bias, attention), requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


def _scaled(tensor, attention):
    """`tensor` (of `attention`'s q_proj) times the attention's query scaling, in float32: the one
    computation behind both the exported weights and the weights the quantizer looks them up by."""
    return tensor.detach().float() * attention.scaling


def exported_linear_weights(model) -> dict:
    """Each Linear layer's weight (numpy float32) as the exported graphs hold it: query projections
    scaled as `_ScaledQuery` does. onnx_quant.node_modules finds the layers in the graphs by it."""
    from edgeq.builder.plan import linear_names

    out = {}
    for name in linear_names(model):
        weight = model.get_submodule(name).weight
        if name.endswith(".q_proj"):
            out[name] = _scaled(weight, model.get_submodule(name.rsplit(".", 1)[0])).numpy()
        else:
            out[name] = weight.detach().float().numpy()
    return out


def _attend(q, k, v, mask=None):
    # q is already scaled, as in Whisper (q_proj(x) * head_dim**-0.5; _ScaledQuery).
    w = q @ k.transpose(-1, -2)
    if mask is not None:
        w = w + mask
    return torch.softmax(w, dim=-1) @ v


class EncoderGraph(nn.Module):
    def __init__(self, model, query_chunks: int = ENCODER_QUERY_CHUNKS):
        super().__init__()
        self.encoder = model.model.encoder
        self.cross = nn.ModuleList(layer.encoder_attn for layer in model.model.decoder.layers)
        self.queries = nn.ModuleList(_ScaledQuery(layer.self_attn) for layer in self.encoder.layers)
        self.enc_heads = model.config.encoder_attention_heads
        self.dec_heads = model.config.decoder_attention_heads
        self.query_chunks = query_chunks
        self.act = _activation(model)

    def forward(self, input_features):
        e = self.encoder
        x = _gelu(e.conv1(input_features))
        x = _gelu(e.conv2(x)).permute(0, 2, 1)
        x = x + e.embed_positions.weight[: x.shape[1]]
        for layer, query in zip(e.layers, self.queries):
            a = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = _heads(query(h), self.enc_heads)
            k, v = _heads(a.k_proj(h), self.enc_heads), _heads(a.v_proj(h), self.enc_heads)
            if self.query_chunks:
                # A fixed number of slices of ceil(frames / n) queries (the last ones may be empty):
                # torch.split by a fixed size would export a sequence whose length was traced at
                # 3000 frames, and a shorter window then fails in SequenceAt.
                c = (q.shape[2] + self.query_chunks - 1) // self.query_chunks
                o = torch.cat([_attend(q[:, :, i * c : (i + 1) * c], k, v) for i in range(self.query_chunks)], dim=2)
            else:  # one chain per layer, for onnx_fusion
                o = _attend(q, k, v)
            x = x + a.out_proj(_merge(o))
            x = x + layer.fc2(self.act(layer.fc1(layer.final_layer_norm(x))))
        x = e.layer_norm(x)
        out = []
        for ca in self.cross:
            out += [_heads(ca.k_proj(x), self.dec_heads), _heads(ca.v_proj(x), self.dec_heads)]
        return tuple(out)


class DecoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.decoder = model.model.decoder
        self.heads = model.config.decoder_attention_heads
        self.n_layers = len(self.decoder.layers)
        self.act = _activation(model)
        self.queries = nn.ModuleList(_ScaledQuery(layer.self_attn) for layer in self.decoder.layers)
        self.cross_queries = nn.ModuleList(_ScaledQuery(layer.encoder_attn) for layer in self.decoder.layers)
        head = model.proj_out.weight
        self.tied = head is self.decoder.embed_tokens.weight
        # An untied head (some fine-tunes) is its own matrix; a tied one must not be registered twice.
        self.head = None if self.tied else head

    def forward(self, input_ids, *kv):
        d, n = self.decoder, self.n_layers
        past, cross = kv[: 2 * n], kv[2 * n :]
        t, p = input_ids.shape[1], past[0].shape[2]
        x = d.embed_tokens(input_ids) * d.embed_scale + d.embed_positions.weight[p : p + t]
        # Query i (absolute position p+i) sees keys 0..p+i.
        q_pos = torch.arange(t, device=input_ids.device) + p
        k_pos = torch.arange(p + t, device=input_ids.device)
        mask = (k_pos[None, :] > q_pos[:, None]).to(x.dtype) * torch.finfo(x.dtype).min
        present = []
        for i, layer in enumerate(d.layers):
            sa = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = _heads(self.queries[i](h), self.heads)
            k = torch.cat([past[2 * i], _heads(sa.k_proj(h), self.heads)], dim=2)
            v = torch.cat([past[2 * i + 1], _heads(sa.v_proj(h), self.heads)], dim=2)
            present += [k, v]
            x = x + sa.out_proj(_merge(_attend(q, k, v, mask)))
            ca = layer.encoder_attn
            q = _heads(self.cross_queries[i](layer.encoder_attn_layer_norm(x)), self.heads)
            x = x + ca.out_proj(_merge(_attend(q, cross[2 * i], cross[2 * i + 1])))
            x = x + layer.fc2(self.act(layer.fc1(layer.final_layer_norm(x))))
        # Last position only, as a 2-D input: F.linear becomes Gemm(transB=1) on the shared table.
        x = d.layer_norm(x)[:, -1, :]
        logits = F.linear(x, d.embed_tokens.weight if self.tied else self.head)
        return (logits, *present)


def export_float(model, folder: Path, opset: int, attention: str = "fused") -> OnnxLayout:
    """Write the float32 encoder and decoder graphs for `model` into `folder`; the encoder's
    self-attention as MultiHeadAttention nodes, or `attention="blocks"` in query blocks."""
    from torch.export import Dim

    model = model.float().eval()
    layout = layout_for_model(model)
    big = sum(p.numel() for p in model.parameters()) * 4 > EXTERNAL_DATA_BYTES
    past, _, cross = io_names(layout.n_layers)
    shape = (1, layout.heads)
    enc_path, dec_path = folder / layout.encoder, folder / layout.decoder
    # The window length is dynamic (any even number of frames up to 3000) so that the runtime can
    # encode only the audio of a short clip (DecodeOptions.encoder_window = "fit"); the positional
    # embedding is sliced to the length, as whisper.cpp's audio_ctx does.
    half = Dim("audio_ctx", min=2, max=layout.n_audio_ctx)
    with torch.no_grad():
        fused = attention == "fused"
        _export(EncoderGraph(model, query_chunks=0 if fused else ENCODER_QUERY_CHUNKS).eval(),
                (torch.zeros(1, layout.n_mels, layout.n_frames),), enc_path,
                opset, big, layout.encoder_inputs, layout.encoder_outputs, ({2: 2 * half},))
        if fused:
            _fuse_attention(enc_path, model.config.encoder_attention_heads, model.config.encoder_layers)
        # Example sizes must not be 0 or 1: torch.export specializes dimensions of those sizes.
        t, p = 3, 5
        ids = torch.zeros(1, t, dtype=torch.long)
        pasts = tuple(torch.zeros(*shape, p, layout.head_dim) for _ in past)
        crosses = tuple(torch.zeros(*shape, layout.n_audio_ctx, layout.head_dim) for _ in cross)
        t_dim = Dim("tokens", min=1, max=layout.max_target_positions)
        p_dim = Dim("past", min=0, max=layout.max_target_positions)
        # forward(input_ids, *kv): one spec for input_ids, one tuple for *kv.
        a_dim = Dim("audio_ctx", min=2, max=layout.n_audio_ctx)
        dynamic = ({1: t_dim}, tuple({2: p_dim} for _ in past) + tuple({2: a_dim} for _ in cross))
        _export(DecoderGraph(model).eval(), (ids, *pasts, *crosses), dec_path, opset, big,
                layout.decoder_inputs, layout.decoder_outputs, dynamic)
    return layout


def _fuse_attention(path: Path, heads: int, layers: int) -> None:
    import onnx

    from edgeq.backends.onnx_fusion import fuse_encoder_attention

    graph = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
    fuse_encoder_attention(graph, heads, layers)
    onnx.save(graph, str(path))


def _export(module, args, path: Path, opset: int, external: bool, inputs, outputs, dynamic) -> None:
    with _quiet():
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, input_names=inputs, output_names=outputs,
            dynamic_shapes=dynamic, verbose=False, optimize=True,
        )
        program.save(str(path), external_data=external)
    log.debug("exported %s", path.name)


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress to stdout and logs warnings (missing torchvision, ...): keep
    them out of the user's terminal, at debug level in our log."""
    out = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if out.getvalue().strip():
            log.debug("torch.onnx: %s", out.getvalue().strip())
