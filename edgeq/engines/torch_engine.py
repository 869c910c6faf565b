"""The PyTorch runtime: a Whisper model (float or quantized) behind the decoding Engine protocol."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.whisper.modeling_whisper import WhisperDecoder

# transformers 5.x renamed the decoder's `past_key_values` argument to `cache` (the old name is a
# deprecated alias until 5.40); ask the signature instead of pinning a narrow version range.
_CACHE_ARG = "cache" if "cache" in inspect.signature(WhisperDecoder.forward).parameters else "past_key_values"


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
    @torch.no_grad()
    def encode(self, features: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(features))[None].to(self.device, self.dtype)
        return self._encoder(x).last_hidden_state

    def start(self, encoder_state: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return encoder_state, EncoderDecoderCache(DynamicCache(), DynamicCache())

    @torch.no_grad()
    def step(self, state: tuple[torch.Tensor, Any], tokens: list[int]) -> tuple[np.ndarray, Any]:
        encoder_state, cache = state
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        hidden = self._decoder(
            input_ids=ids, encoder_hidden_states=encoder_state, use_cache=True, **{_CACHE_ARG: cache}
        ).last_hidden_state
        logits = self._head(hidden[:, -1])
        return logits[0].float().cpu().numpy(), state
