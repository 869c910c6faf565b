"""The token embedding and the LM head stored once, as int8 rows.

Whisper ties `proj_out.weight` to `model.decoder.embed_tokens.weight`: for whisper-small that
matrix is 51865 x 768, 16% of all weights, and no quantization library here handles an
embedding and a Linear that share one tensor. Stored as int8 with one float scale per row
(per token), the embedding lookup dequantizes only the rows it gathers, and the LM head runs the
same int8 matrix through PyTorch's dynamic int8 GEMM (FBGEMM on x86, QNNPACK on ARM). On disk it
is one copy, a quarter of the fp32 bytes; in memory the GEMM keeps a packed copy next to it.

Why not `torch._weight_int8pack_mm` (weight-only, fp32 activations)? On an AVX2 CPU it took
31-55 ms for the [1, 512] x [51865, 512]^T whisper-base head against 14-19 ms for fp32 F.linear
and 4-12 ms for the dynamic int8 GEMM: it has no vectorized fp32 path there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeq.backends.base import quantized_tensors_allowed


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: weight ~= qweight * scale[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    qweight = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return qweight, scale


class Int8Embedding(nn.Module):
    def __init__(self, num_embeddings: int, dim: int, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, dim, dtype
        self.register_buffer("qweight", torch.empty(num_embeddings, dim, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(num_embeddings, dtype=torch.float32, device=device))

    @classmethod
    def from_float(cls, embedding: nn.Embedding, dtype: torch.dtype) -> "Int8Embedding":
        module = cls(embedding.num_embeddings, embedding.embedding_dim, dtype)
        qweight, scale = quantize_rows(embedding.weight)
        module.qweight.copy_(qweight)
        module.scale.copy_(scale)
        return module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.qweight).to(self.dtype)
        return rows * self.scale[ids].unsqueeze(-1).to(self.dtype)

    def packed(self):
        """The matrix prepacked for the quantized engine in use (made on first use, not saved)."""
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != torch.backends.quantized.engine:
            zeros = torch.zeros(self.num_embeddings, dtype=torch.long)
            with quantized_tensors_allowed():
                weight = torch._make_per_channel_quantized_tensor(self.qweight, self.scale.double(), zeros, 0)
            cached = (torch.backends.quantized.engine, torch.ops.quantized.linear_prepack(weight, None))
            self.__dict__["_packed"] = cached
        return cached[1]


class Int8TiedHead(nn.Module):
    """proj_out over an `Int8Embedding`'s matrix; holds no tensors of its own."""

    def __init__(self, embedding: Int8Embedding):
        super().__init__()
        # A plain attribute, not a submodule: the state dict must hold the matrix once.
        object.__setattr__(self, "embedding", embedding)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        emb = self.embedding
        flat = hidden.reshape(-1, hidden.shape[-1])
        if flat.device.type == "cpu":
            # reduce_range: 7-bit activations, which x86's u8*s8 multiply-add needs to not saturate.
            out = torch.ops.quantized.linear_dynamic(flat.float(), emb.packed(), True).to(hidden.dtype)
        else:
            out = F.linear(flat.to(emb.dtype), emb.qweight.to(emb.dtype)) * emb.scale.to(emb.dtype)
        return out.reshape(*hidden.shape[:-1], -1)


def quantize_tied_embedding(model: nn.Module, dtype: torch.dtype) -> None:
    """Replace the tied embedding + proj_out of a float model by one int8 matrix."""
    embedding = Int8Embedding.from_float(model.model.decoder.embed_tokens, dtype)
    model.model.decoder.embed_tokens = embedding
    model.proj_out = Int8TiedHead(embedding)


def int8_embedding_skeleton(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """The same structure, with empty buffers, to load a saved state into."""
    old = model.model.decoder.embed_tokens
    embedding = Int8Embedding(old.num_embeddings, old.embedding_dim, dtype, device=device)
    model.model.decoder.embed_tokens = embedding
    model.proj_out = Int8TiedHead(embedding)
