"""The PyTorch runtime: a Whisper model (float or quantized) behind the decoding `Engine` protocol.

This is the torch counterpart of `edgeq.runtime.onnx_engine`, in one module: saving a quantized
model into a bundle, rebuilding it from the bundle alone, running it, and loading a float
checkpoint as the baseline. It needs torch, transformers and the backend's library on the device.

The weights go into one safetensors file (never pickle) and the backend's rebuild metadata into
quantization.json. Loading builds the model from config.json on the meta device (no memory, no
random init), lets the backend rebuild its quantized modules, then assigns every remaining
tensor; a tensor the model expects but the file lacks is an error, not a silent random weight.
"""

from __future__ import annotations

import copy
import errno
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.whisper.modeling_whisper import WhisperDecoder

from edgeq.backends.base import DTYPES, state_tensors
from edgeq.backends.embedding import int8_embedding_skeleton
from edgeq.errors import BundleError, DeviceError, ModelSourceError
from edgeq.format.bundle import CONFIG, GENERATION_CONFIG, QUANTIZATION, TOKENIZER, WEIGHTS, Bundle
from edgeq.spec.catalogue import load_backend
from edgeq.spec.recipe import Recipe
from edgeq.util import one_line, read_json

# transformers 5.x renamed the decoder's `past_key_values` argument to `cache` (the old name is a
# deprecated alias until 5.40); ask the signature instead of pinning a narrow version range.
_CACHE_ARG = "cache" if "cache" in inspect.signature(WhisperDecoder.forward).parameters else "past_key_values"

TIES = {"proj_out.weight": "model.decoder.embed_tokens.weight"}


class TorchEngine:
    def __init__(self, model: torch.nn.Module, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.model = model.eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self._encoder = model.model.encoder
        self._decoder = model.model.decoder
        self._head = model.proj_out

    # torch.no_grad rather than inference_mode: quanto's packed int2/int4 weights re-wrap tensors
    # inside their forward, which inference tensors forbid ("Cannot set version_counter").
    variable_window = True

    @torch.no_grad()
    def encode(self, features: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(features))[None].to(self.device, self.dtype)
        e = self._encoder
        if x.shape[-1] == 2 * e.config.max_source_positions:
            return e(x).last_hidden_state
        # transformers' WhisperEncoder refuses any length but 3000 frames; a shorter window runs
        # the same modules with the positional embedding cut to its length (whisper.cpp's audio_ctx).
        h = F.gelu(e.conv1(x))
        h = F.gelu(e.conv2(h)).permute(0, 2, 1)
        h = h + e.embed_positions.weight[: h.shape[1]].to(h.dtype)
        for layer in e.layers:
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out  # transformers 4.x returns (hidden,), 5.x the tensor
        return e.layer_norm(h)

    def start(self, encoder_state: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return encoder_state, EncoderDecoderCache(DynamicCache(), DynamicCache())

    def fork(self, state: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, Any]:
        # The DynamicCache grows in place at every step: a branch needs its own copy (the encoder
        # output and the cross-attention cache, once filled, are only read, but are copied too).
        encoder_state, cache = state
        return encoder_state, copy.deepcopy(cache)

    @torch.no_grad()
    def step(self, state: tuple[torch.Tensor, Any], tokens: list[int]) -> tuple[np.ndarray, Any]:
        encoder_state, cache = state
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        hidden = self._decoder(
            input_ids=ids, encoder_hidden_states=encoder_state, use_cache=True, **{_CACHE_ARG: cache}
        ).last_hidden_state
        logits = self._head(hidden[:, -1])
        return logits[0].float().cpu().numpy(), state


# --------------------------------------------------------------------------- bundles


def save_model(model: torch.nn.Module, recipe: Recipe, folder: Path) -> None:
    backend = load_backend(recipe.backend)
    tensors, meta = backend.export(model, recipe)
    tensors = state_tensors(model, tensors, handled=list(meta.get("layers", {})))
    for alias, target in TIES.items():
        if alias in tensors and target in tensors and tensors[alias].data_ptr() == tensors[target].data_ptr():
            del tensors[alias]
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    try:
        save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt", "producer": "edgeq"})
    except SafetensorError as err:
        # safetensors reports a full or read-only disk as its own error, not an OSError; as an
        # OSError, write_bundle names the bundle and the file in one line like every other write.
        raise OSError(errno.EIO, one_line(err), str(folder / WEIGHTS)) from None
    (folder / QUANTIZATION).write_text(json.dumps({"backend": recipe.backend, **meta}, indent=1) + "\n")


def load_model(bundle: Bundle, device: str = "cpu") -> torch.nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    recipe = bundle.recipe  # validated with the manifest
    backend = load_backend(recipe.backend)
    config = WhisperConfig.from_json_file(str(bundle.file(CONFIG)))
    dev = torch.device(device)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.eval()
    if recipe.modules.embeddings == "int8":
        int8_embedding_skeleton(model, DTYPES[recipe.dtype], dev)
    tensors = load_file(str(bundle.file(WEIGHTS)), device=str(dev))
    meta = read_json(bundle.file(QUANTIZATION), BundleError)
    if not isinstance(meta, dict) or not isinstance(meta.get("layers", {}), dict):
        raise BundleError(f"{bundle.path}: {QUANTIZATION} is not a JSON object with a 'layers' table")
    # Float tensors first: torch.ao's quantized Linear reads its own keys unconditionally in
    # _load_from_state_dict, so the quantized modules must not exist yet when this runs.
    prefixes = tuple(f"{name}." for name in meta.get("layers", {}))
    rest = {k: v for k, v in tensors.items() if not k.startswith(prefixes)}
    _, unexpected = model.load_state_dict(rest, strict=False, assign=True)
    if unexpected:
        raise BundleError(f"{bundle.path}: {WEIGHTS} holds tensors the model does not use: {unexpected[:3]}")
    backend.restore(model, tensors, meta, recipe, dev)
    if recipe.modules.embeddings != "int8" and "proj_out.weight" not in rest:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    leftover = [n for n, t in _named_tensors(model) if t.device.type == "meta"]
    if leftover:
        raise BundleError(f"{bundle.path}: {WEIGHTS} lacks {len(leftover)} tensors, e.g. {leftover[:3]}")
    return model


def _named_tensors(model: torch.nn.Module):
    yield from model.named_parameters()
    yield from model.named_buffers()


def load_engine(bundle: Bundle, device: str = "cpu", threads: int | None = None, spinning: str = "off") -> TorchEngine:
    """The engine for a torch-runtime bundle (what `edgeq.load` calls through the catalogue).
    `spinning` is ONNX Runtime's: PyTorch's intra-op pool offers no per-model choice, so it is ignored."""
    bundle.require_runtime("torch", "PyTorch")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda asked for, but this PyTorch has no usable CUDA device")
    if threads is not None and threads < 1:
        raise DeviceError(f"threads must be 1 or more, not {threads}")
    if threads:
        torch.set_num_threads(threads)
    model = load_model(bundle, device)
    return TorchEngine(model, device, _activation_dtype(model, DTYPES[bundle.recipe.dtype]))


def _activation_dtype(model, recipe_dtype):
    # An fp16 reference bundle stores fp16 weights: its inputs must be fp16 too.
    conv = model.model.encoder.conv1.weight
    return conv.dtype if conv.dtype in (torch.float16, torch.bfloat16) else recipe_dtype


# --------------------------------------------------------------------------- float checkpoints


def load_checkpoint(model: str, device: str = "cpu", threads: int | None = None,
                    language: str | None = None):
    """A float transformers checkpoint (no bundle), decoded by the same rules: the baseline.

    Returns the transcriber and the size in bytes of the checkpoint's weight files.
    """
    from edgeq.builder.source import load_float_model, resolve_source
    from edgeq.runtime.decoding import DecodeSettings
    from edgeq.runtime.tokenizer import WhisperTokenizer
    from edgeq.runtime.transcriber import Transcriber

    if threads is not None and threads < 1:
        raise DeviceError(f"threads must be 1 or more, not {threads}")
    source = resolve_source(model)
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda asked for, but this PyTorch has no usable CUDA device")
    float_model = load_float_model(source).to(device)
    generation = read_json(source.path / GENERATION_CONFIG, ModelSourceError)
    settings = DecodeSettings.from_configs(generation, source.config, language, where=str(source.path))
    size = sum(f.stat().st_size for f in source.path.glob("*.safetensors"))
    transcriber = Transcriber(TorchEngine(float_model, device), WhisperTokenizer(source.path / TOKENIZER),
                              settings, None, int(source.config.get("num_mel_bins", 80)), device)
    return transcriber, size
