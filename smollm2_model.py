"""SmolLM2 (Llama architecture), written by hand from the public config.json.

Notable features:
- RMSNorm computed in float32 and cast back to its input's dtype (as Llama does), no biases anywhere.
- The residual stream's dtype is one switch (config.residual_dtype, see stream_dtype): float32 by default
  (the embedding's dtype, as transformers keeps it under autocast), or the autocast dtype, which halves
  the bytes every residual add and RMSNorm moves.
- Rotary position embeddings in the rotate-half layout (the Hugging Face layout), so released
  weights load without permuting q_proj/k_proj rows. cos/sin are cached once in float32.
- Grouped-query attention: 9 query heads share 3 key/value heads. Two interchangeable paths:
  "sdpa" (F.scaled_dot_product_attention with is_causal and native GQA, no K/V copies) and
  "manual" (explicit float32 softmax over repeated K/V), which must agree.
- SwiGLU MLP: down(silu(gate(x)) * up(x)).
- Projections that share an input (q/k/v; gate/up) run as one GEMM under autocast (stacked_linear); the
  parameters stay separate, under transformers' names.
- Embedding tied to the output head (the same Parameter object, made once in __init__).
- Parameter names are exactly transformers' LlamaForCausalLM names, so state dicts move both ways
  with strict=True.
- The loss (the end of this file): cross_entropy, float32 cross-entropy over the logits, the reference. For
  training, forward takes a loss fused with the output head instead (smollm2.loss.linear_cross_entropy:
  chunked over tokens, so the [tokens x 49152] float32 logits never exist; the same loss and gradients),
  passed in by the caller: this file imports nothing of the package.
- Incremental decoding against a preallocated KV cache (KVCache): the prompt fills a prefix, or one new
  position held on the device is written under a key mask over the filled slots, which is what lets
  smollm2.inference.DecodeGraph replay one decoding step as a CUDA graph. The decoding loop and the samplers
  live in smollm2/inference.py.
- Document masking, for training on packed windows: forward(..., document_end=id) lets each token attend only
  within its own document (a document ends at that id, the end-of-text token), through FlexAttention with a
  block mask built on the device from the ids (document_block_mask), or a dense mask (the "manual" path, CPU).
  RoPE is relative, so a document sees what it would see alone. Off by default; the weights are unchanged.

The model does no I/O and knows no optimizer; training code talks to it through forward().
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from smollm2_config import SmolLM2Config


# ----------------------------------------------------------------------------- math
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: (..., C) -> (..., C) in x's dtype. Variance in float32 whatever the input dtype: bf16 squares lose
    # too many bits. The result keeps the stream's dtype: a float32 gain times a bf16 stream would otherwise
    # promote to float32 and double the bytes the next op reads. (Same dtypes in and out: the cast is a no-op.)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * xf.to(x.dtype)).to(x.dtype)


def stream_dtype(residual_dtype: str, x: torch.Tensor) -> torch.dtype:
    # The residual stream's dtype, the one place it is decided. "fp32": the embedding's dtype (float32
    # master weights), so under autocast every residual add and RMSNorm reads and writes float32, as
    # transformers does. "bf16": the autocast dtype while autocast is on (as llm.c keeps activations), so
    # they move half the bytes; norms still compute in float32 (rms_norm) and the loss still takes its
    # softmax in float32. Without autocast the model runs in its weights' dtype either way.
    if residual_dtype == "bf16" and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# Stacked projections pay where the GEMMs are latency-bound: the seed's 1,024 tokens a step ran 8.9 -> 8.1 ms
# (H200), while 98,304 tokens (seq 2048 x 48) ran 4% slower and took 4 GB more, the backward concatenating the
# gradients of the split outputs. Between those two sizes it was not measured.
STACK_MAX_TOKENS = 8192


def stacked_linear(x: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x (..., C) through weights (n_i, C) sharing that input -> (..., n_i) each. Under autocast and for at
    most STACK_MAX_TOKENS tokens, one GEMM on the concatenated weights (the concatenation rides on the cast to
    the autocast dtype that every call makes anyway; compiled, it is the same one kernel). Otherwise each
    weight on its own: without the cast a concatenation would be one more copy of the weights every call
    (slow CPU decoding), and large GEMMs gain nothing from it."""
    dev = x.device.type
    if not torch.is_autocast_enabled(dev) or x.numel() > STACK_MAX_TOKENS * x.shape[-1]:
        return tuple(F.linear(x, w) for w in weights)
    dtype = torch.get_autocast_dtype(dev)
    fused = torch.cat([w.to(dtype) for w in weights])  # (sum n_i, C)
    return F.linear(x, fused).split([w.shape[0] for w in weights], dim=-1)


def rope_cache(head_dim: int, max_positions: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    # inv_freq: (hd/2,); angles: (T, hd/2); returned cos/sin: (T, hd) with the halves duplicated,
    # which is what the rotate-half layout expects.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hd); cos/sin: (T, hd), broadcast over batch and heads.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    # (B, n_kv, T, hd) -> (B, n_kv * n_rep, T, hd): each K/V head serves n_rep consecutive query heads.
    if n_rep == 1:
        return x
    B, n_kv, T, hd = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, T, hd).reshape(B, n_kv * n_rep, T, hd)


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    # (q_len, kv_len) bool, True = may attend. Query i sits at absolute position kv_len - q_len + i.
    offset = kv_len - q_len
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=offset)


# ----------------------------------------------------------------------------- document masking
FLEX_BLOCK = 128  # FlexAttention's tile: the block mask says which (query tile, key tile) pairs to compute


def document_ids(input_ids: torch.Tensor, document_end: int) -> torch.Tensor:
    # (B, T) token ids -> (B, T) int32: each token's document within its window, counted from 0. The end
    # token belongs to the document it ends; the token after it starts the next.
    ends = (input_ids == document_end).to(torch.int32)
    return ends.cumsum(1, dtype=torch.int32) - ends


def dense_document_mask(docs: torch.Tensor) -> torch.Tensor:
    # (B, T) document ids -> (B, 1, T, T) bool, True = may attend: causal and within one document.
    T = docs.shape[1]
    return causal_mask(T, T, docs.device) & (docs[:, None, :, None] == docs[:, None, None, :])


def document_block_mask(docs: torch.Tensor) -> BlockMask:
    """(B, T) document ids, non-decreasing along T -> FlexAttention's BlockMask of causal, same-document
    attention. Built from tile-level first/last ids with fixed-shape tensor ops only: no host sync, so it
    runs inside torch.compile and a captured CUDA graph. A key tile j <= i is needed by query tile i when its
    last document reaches i's first; it is full (no per-element mask) when j < i and both hold one document."""
    B, T = docs.shape
    n = -(-T // FLEX_BLOCK)
    padded = F.pad(docs, (0, n * FLEX_BLOCK - T), value=-1) if T % FLEX_BLOCK else docs  # pad: no one's document
    tiles = padded.view(B, n, FLEX_BLOCK)
    first, last = tiles[..., 0], tiles.amax(-1)  # (B, n): the pad's -1 never is a tile's max
    i = torch.arange(n, device=docs.device)
    below = i[None, :] <= i[:, None]  # (n_q, n_k) causal at tile level
    needed = below & (last[:, None, :] >= first[:, :, None])  # (B, n_q, n_k)
    full = (i[None, :] < i[:, None]) & (first[:, None, :] == last[:, :, None])
    partial = needed & ~full

    def tiles_of(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, n_q, n_k) bool -> counts (B, 1, n_q) and the key tiles listed first (B, 1, n_q, n_k), int32
        order = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True)
        return m.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]

    def same_document(b, h, q, kv):
        return (q >= kv) & (padded[b, q] == padded[b, kv])

    return BlockMask.from_kv_blocks(*tiles_of(partial), *tiles_of(full), BLOCK_SIZE=FLEX_BLOCK,
                                    mask_mod=same_document, seq_lengths=(T, T))


_compiled_flex: Optional[Callable] = None


def flex(q, k, v, block_mask: BlockMask, enable_gqa: bool) -> torch.Tensor:
    """flex_attention, compiled once on CUDA (its fused kernel; eager it would form every score), as is on CPU."""
    global _compiled_flex
    if not q.is_cuda:
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


# ----------------------------------------------------------------------------- attention
def sdpa_attention(q, k, v, dropout_p: float = 0.0, key_mask=None) -> torch.Tensor:
    # q: (B, nh, Tq, hd); k, v: (B, n_kv, Tk, hd) -> (B, nh, Tq, hd). key_mask: (Tk,) bool, True = a filled
    # cache slot, for one query (Tq = 1) against a whole preallocated cache (KVCache, graph-safe decoding);
    # or a document mask for training on packed windows: a BlockMask (document_block_mask, CUDA) or a dense
    # (B, 1, T, T) bool one (dense_document_mask).
    Tq, Tk = q.shape[-2], k.shape[-2]
    n_rep = q.shape[1] // k.shape[1]
    if isinstance(key_mask, BlockMask):
        if dropout_p:
            raise ValueError("document masking runs FlexAttention, which has no attention dropout")
        return flex(q, k, v, key_mask, enable_gqa=n_rep > 1)
    if q.is_cuda and q.dtype == torch.float32 and n_rep > 1:
        # Native GQA runs on CUDA's flash and cuDNN kernels, which take bf16/fp16 only; in float32 it
        # would fall back to the math kernel and hold every layer's (B, nh, T, T) scores. Copied K/V let
        # the memory-efficient kernel run instead (the same result: repeat_kv is exact).
        k, v, n_rep = repeat_kv(k, n_rep), repeat_kv(v, n_rep), 1
    if key_mask is not None:  # (Tk,) cache slots, or (B, 1, T, T) documents (dense_document_mask)
        mask = key_mask if key_mask.dim() > 1 else key_mask[None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                              enable_gqa=n_rep > 1)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True,
                                              enable_gqa=n_rep > 1)
    # Decoding against a cache: is_causal would align the mask top-left, so pass it explicitly.
    mask = None if Tq == 1 else causal_mask(Tq, Tk, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          enable_gqa=n_rep > 1)


def manual_attention(q, k, v, dropout_p: float = 0.0, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    # The textbook path: repeat K/V per query head, scores in float32, masked softmax. key_mask: a decoding
    # cache's (Tk,) slots or a (B, 1, T, T) document mask (dense_document_mask), True = may attend.
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, Tq, Tk)
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if key_mask is None else key_mask
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.softmax(scores.float(), dim=-1).to(q.dtype)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return probs @ v


ATTENTION = {"sdpa": sdpa_attention, "manual": manual_attention}


# ----------------------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class KVCache:
    """Preallocated keys/values for every layer: (B, n_kv, max_len, hd) each.

    start_pos is an int (the prompt, eager decoding: the filled prefix is returned) or a (1,) int64 device
    tensor (one new position, no host value: what a CUDA graph can replay). Then the whole cache comes back
    with key_mask, True on the filled slots, for the attention to ignore the rest."""

    def __init__(self, config: SmolLM2Config, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.slots = torch.arange(max_len, device=device)

    def update(self, layer: int, k_new, v_new, start_pos):
        # k_new, v_new: (B, n_kv, T, hd) -> keys and values so far, and the key mask ((max_len,) or None)
        if torch.is_tensor(start_pos):
            self.k[layer].index_copy_(2, start_pos, k_new.to(self.k[layer].dtype))
            self.v[layer].index_copy_(2, start_pos, v_new.to(self.v[layer].dtype))
            return self.k[layer], self.v[layer], self.slots <= start_pos
        end = start_pos + k_new.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.k[layer][:, :, start_pos:end] = k_new
        self.v[layer][:, :, start_pos:end] = v_new
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end], None


class LlamaAttention(nn.Module):
    def __init__(self, config: SmolLM2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.dropout = config.attention_dropout
        self.attend = ATTENTION[config.attn_impl]
        C = config.hidden_size
        self.q_proj = nn.Linear(C, self.n_head * self.hd, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv * self.hd, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.hd, C, bias=False)

    def forward(self, x, cos, sin, kv_cache: Optional[KVCache] = None, start_pos=0, doc_mask=None):
        B, T, _ = x.shape
        q, k, v = stacked_linear(x, self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
        q = q.view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)    # (B, n_kv, T, hd)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)    # (B, n_kv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        key_mask = doc_mask  # None, or the window's document mask (training only: no cache then)
        if kv_cache is not None:
            k, v, key_mask = kv_cache.update(self.layer_idx, k, v, start_pos)
        y = self.attend(q, k, v, self.dropout if self.training else 0.0, key_mask)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class LlamaMLP(nn.Module):
    def __init__(self, config: SmolLM2Config):
        super().__init__()
        C, H = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, H, bias=False)
        self.up_proj = nn.Linear(C, H, bias=False)
        self.down_proj = nn.Linear(H, C, bias=False)

    def forward(self, x):
        gate, up = stacked_linear(x, self.gate_proj.weight, self.up_proj.weight)  # (B, T, H) each
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: SmolLM2Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x, cos, sin, kv_cache=None, start_pos=0, doc_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, start_pos, doc_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: SmolLM2Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.residual_dtype = config.residual_dtype
        self.flex_documents = config.attn_impl == "sdpa"  # document masks as FlexAttention block masks
        self.rope_args = (config.head_dim, config.max_position_embeddings, config.rope_theta)
        # Not in the state dict (transformers keeps none either): derived from the config.
        self.register_buffer("rope_cos", None, persistent=False)
        self.register_buffer("rope_sin", None, persistent=False)
        self.reset_rope()

    def reset_rope(self) -> None:
        """(Re)compute the cos/sin buffers, on the device the embedding lives on."""
        cos, sin = rope_cache(*self.rope_args)
        self.rope_cos, self.rope_sin = cos.to(self.embed_tokens.weight.device), sin.to(self.embed_tokens.weight.device)

    def forward(self, input_ids, kv_cache=None, start_pos=0, document_end: Optional[int] = None):
        T = input_ids.shape[1]
        if torch.is_tensor(start_pos):  # (1,) on the device: one new token against a whole static cache
            cos, sin = self.rope_cos.index_select(0, start_pos), self.rope_sin.index_select(0, start_pos)
        else:
            cos = self.rope_cos[start_pos:start_pos + T]
            sin = self.rope_sin[start_pos:start_pos + T]
        x = self.embed_tokens(input_ids)  # (B, T, C)
        x = x.to(stream_dtype(self.residual_dtype, x))  # every layer keeps the dtype it is given
        if document_end is not None and kv_cache is not None:
            raise ValueError("document_end masks packed training windows; decoding with a cache sees one text")
        doc_mask = None
        if document_end is not None:
            docs = document_ids(input_ids, document_end)
            # FlexAttention on CUDA; a dense mask on the manual path and on CPU (FlexAttention has no CPU backward)
            doc_mask = (document_block_mask(docs) if self.flex_documents and input_ids.is_cuda
                        else dense_document_mask(docs))
        for layer in self.layers:
            x = layer(x, cos, sin, kv_cache, start_pos, doc_mask)
        return self.norm(x)


class SmolLM2ForCausalLM(nn.Module):
    def __init__(self, config: SmolLM2Config, init: bool = True):
        """init=False leaves the weights unset, for a caller about to load all of them (a resume)."""
        super().__init__()
        self.config = config
        # Built on the meta device, then given memory once on the current default device: nn.Linear's own
        # kaiming init would draw every weight only for init_weights to draw it again.
        with torch.device("meta"):
            self.model = LlamaModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.to_empty(device=torch.get_default_device())
        self.model.reset_rope()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter, two names
        if init:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """As transformers' LlamaPreTrainedModel does it: every Linear and the Embedding get
        N(0, initializer_range); RMSNorm weights start at 1 (identity scale). With tying, the shared
        matrix is drawn once (as the embedding)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        if self.config.tie_word_embeddings:
            assert self.lm_head.weight is self.model.embed_tokens.weight

    def tie_holds(self) -> bool:
        return self.lm_head.weight is self.model.embed_tokens.weight

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() counts a tied matrix once

    def forward(self, input_ids: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
                fused_loss: Optional[Callable] = None, kv_cache: Optional[KVCache] = None, start_pos=0,
                document_end: Optional[int] = None):
        """input_ids: (B, T) int64. Returns (logits (B, T, V) or None, loss float32 scalar or None).

        With targets and a fused_loss (training passes smollm2.loss.linear_cross_entropy), the loss is
        fused_loss(hidden (B*T, C), head weight (V, C), targets (B*T,)) and no logits are formed (the training
        fast path); otherwise it is cross_entropy over the logits. document_end: a token id that ends a
        document; given, attention stays inside each document of the window (training on packed windows).
        """
        h = self.model(input_ids, kv_cache, start_pos, document_end)  # (B, T, C)
        if targets is not None and fused_loss is not None:
            return None, self.head_loss(h, targets, fused_loss)
        logits = self.lm_head(h)  # (B, T, V)
        return logits, None if targets is None else cross_entropy(logits, targets)

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor, fused_loss: Callable) -> torch.Tensor:
        """The head fused with the loss: final hidden states (B, T, C), targets (B, T) -> float32 mean loss.
        Its own method so that --compile_scope blocks can compile it as one more region."""
        return fused_loss(h.flatten(0, 1), self.lm_head.weight, targets.flatten())


# ----------------------------------------------------------------------------- the loss
IGNORE_INDEX = -100


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # logits: (B, T, V) any dtype; targets: (B, T) -> scalar float32 mean over targets != -100
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
