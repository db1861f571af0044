"""Text generation: one decoding loop for generate.py (a terminal), app.py (a browser) and train.py's samples,
and one loader for the first two.

generate_stream decodes against the model's preallocated KV cache (smollm2_model.KVCache), sampling each token
with sample_next (greedy, temperature, top-k, top-p); generate returns the whole sequence. On CUDA a DecodeGraph
captures one decoding step as a CUDA graph and replays it per token (the position on the device, a key mask
over the filled slots). load_model turns a training checkpoint, an export_hf.py folder or the released weights
into our model; stream_text runs generate_stream and yields the text as it grows, so both front ends print
exactly the same characters for the same model, prompt and settings.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterator, Optional

import torch

from smollm2.checkpoint import CheckpointError, checkpoint_tokenizer_id, model_from_checkpoint
from smollm2_model import KVCache, SmolLM2ForCausalLM
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED_MAX = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes (it raises a bare RuntimeError above)


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- decoding
@torch.no_grad()
def generate_stream(model: SmolLM2ForCausalLM, input_ids: torch.Tensor, max_new_tokens: int,
                    temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                    eos_token_id: Optional[int] = None, generator: Optional[torch.Generator] = None,
                    use_cache: bool = True, graph: Optional["DecodeGraph"] = None) -> Iterator[torch.Tensor]:
    """Yields the next token (B,) at each step. temperature 0 means greedy. Stops early when
    every row has produced eos_token_id. With use_cache=False it recomputes the whole sequence
    each step (the reference the cache is tested against). With a DecodeGraph (CUDA) each new token
    is one replay of its captured step, against its own cache."""
    B, T0 = input_ids.shape
    total = T0 + max_new_tokens
    if total > model.config.max_position_embeddings:
        raise ValueError(f"prompt + new tokens = {total} exceeds max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    if graph is not None and total > graph.cache.max_len:
        raise ValueError(f"prompt + new tokens = {total} exceeds the DecodeGraph's {graph.cache.max_len} positions")
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, B, total, input_ids.device, dtype) if use_cache and graph is None else None
    seq, pos = input_ids, 0
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for i in range(max_new_tokens):
        if graph is not None:
            logits = graph.prefill(input_ids) if i == 0 else graph.step(seq[:, -1])  # (B, V) float32
        else:
            step_in = seq[:, pos:] if use_cache else seq
            logits = model(step_in, kv_cache=cache, start_pos=pos if use_cache else 0)[0][:, -1].float()
            if use_cache:
                pos = seq.shape[1]
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
            finished |= nxt == eos_token_id
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        yield nxt
        if eos_token_id is not None and bool(finished.all()):
            break


def generate(model: SmolLM2ForCausalLM, input_ids: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """Returns (B, T0 + n_generated): the prompt followed by the new tokens."""
    new = list(generate_stream(model, input_ids, max_new_tokens, **kwargs))
    return torch.cat([input_ids] + [t[:, None] for t in new], dim=1)


class DecodeGraph:
    """One decoding step captured as a CUDA graph (on CPU the same step runs eagerly, which is how the tests
    check its numbers): the (B, 1) last token at a position held on the device, against its own KVCache
    of max_len slots, -> (B, V) float32 logits. Made once and replayed for every
    new token of every sample (one launch instead of about twenty per layer, which is what bounds eager
    decoding of a small model). It reads the parameters in place, so it follows a model that keeps training
    (fused AdamW updates them where they are). The prompt runs eagerly into the same cache (prefill).
    amp_dtype: the autocast dtype the model runs in (None: its weights' dtype)."""

    def __init__(self, model: SmolLM2ForCausalLM, batch_size: int, max_len: int,
                 amp_dtype: Optional[torch.dtype] = None):
        weight = next(model.parameters())
        self.model, self.amp_dtype, self.batch_size = model, amp_dtype, batch_size
        self.capture = weight.device.type == "cuda"  # elsewhere the same static-cache step runs eagerly
        self.cache = KVCache(model.config, batch_size, max_len, weight.device, amp_dtype or weight.dtype)
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=weight.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=weight.device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.logits: Optional[torch.Tensor] = None

    def _forward(self, ids: torch.Tensor, start_pos) -> torch.Tensor:
        # autocast's weight-cast cache off: a captured graph must cast the current weights at every replay
        with torch.autocast(ids.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None, cache_enabled=False):
            return self.model(ids, kv_cache=self.cache, start_pos=start_pos)[0][:, -1].float()

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (B, T0) -> logits for the next token (B, V); the cache holds positions 0..T0-1
        if input_ids.shape[0] != self.batch_size or input_ids.shape[1] >= self.cache.max_len:
            raise ValueError(f"DecodeGraph was made for batch {self.batch_size} and {self.cache.max_len} "
                             f"positions, got {tuple(input_ids.shape)}")
        self.pos.fill_(input_ids.shape[1])
        return self._forward(input_ids, 0)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        # token: (B,) at position self.pos -> logits (B, V), a buffer the next step overwrites
        self.token.copy_(token[:, None])
        if not self.capture:
            logits = self._forward(self.token, self.pos)
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
            logits = self.logits
        self.pos += 1
        return logits

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward(self.token, self.pos)  # warm-up outside the capture; writes what the replay rewrites
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward(self.token, self.pos)


def sample_next(logits: torch.Tensor, temperature: float, top_k: Optional[int], top_p: Optional[float],
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    # logits: (B, V) float32 -> (B,) int64
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- text
class TextStream:
    """The text of a growing list of token ids, handed out as it grows (push returns the new characters).

    The whole list is decoded at every step and only the new suffix is returned, because a byte-level
    BPE token is not always a whole character: a token can end halfway through a UTF-8 sequence, which
    decodes to U+FFFD until the next token completes it. Trailing U+FFFDs are therefore held back.
    Lossy UTF-8 decoding only ever rewrites that unfinished tail, so what was handed out stays a prefix.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.written = 0  # characters of the decoded text already handed out

    def _new(self, text: str) -> str:
        piece = text[self.written:] if len(text) > self.written else ""
        self.written = max(self.written, len(text))
        return piece

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._new(self.tokenizer.decode(self.ids).rstrip("\ufffd"))

    def finish(self) -> str:
        return self._new(self.tokenizer.decode(self.ids))


def stream_text(model: SmolLM2ForCausalLM, tok, prompt_ids: list[int], max_new_tokens: int,
                temperature: float, top_k: int, top_p: float, stop_at_eos: bool = True,
                generator: Optional[torch.Generator] = None) -> Iterator[tuple[int, str]]:
    """Yields (tokens generated so far, new text) once per generated token, then once more for a held-back
    tail. With stop_at_eos the end-of-text token ends the sample and adds no text."""
    eos = model.config.eos_token_id
    device = next(model.parameters()).device
    stream = TextStream(tok)
    x = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T0)
    steps = generate_stream(model, x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  eos_token_id=eos if stop_at_eos else None, generator=generator)
    n = 0
    for nxt in steps:
        token = int(nxt[0])  # waits for the device, so a caller's timings are honest
        n += 1
        if stop_at_eos and token == eos:
            yield n, ""
            break
        yield n, stream.push(token)
    tail = stream.finish()
    if tail:
        yield n, tail


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    # bf16 halves the bytes every decode step reads on a GPU; on CPU float32 is both faster and exact.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def own_tokenizer(path: str) -> bool:
    """Whether a local model (a .gguf, or a folder) carries a tokenizer that load_tokenizer can read."""
    if os.path.isfile(path):
        return path.endswith(".gguf")
    return any(f == "tokenizer.json" or f.endswith(".gguf") for f in os.listdir(path))


def load_model(checkpoint: Optional[str] = None, pretrained: Optional[str] = None,
               log: Callable[[str], None] = log_stderr) -> tuple[SmolLM2ForCausalLM, str, str, Optional[dict]]:
    """(model on CPU in float32, description, tokenizer id to use unless overridden, the checkpoint dict or
    None). `pretrained` "" means the default released weights; otherwise `checkpoint` is a .pt or a folder."""
    if pretrained is not None:
        from smollm2.hf import load_pretrained
        source = pretrained or None
        model, desc = load_pretrained(source, log=log)
        if source is None or not os.path.exists(source):
            return model, f"pretrained {desc}", source or DEFAULT_TOKENIZER_ID, None  # a hub repo holds both
        return model, f"pretrained {desc}", source if own_tokenizer(source) else DEFAULT_TOKENIZER_ID, None
    path = checkpoint
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise CheckpointError(f"{path} is a folder without config.json "
                                  f"(pass a .pt checkpoint or a folder written by export_hf.py)")
        from smollm2.hf import load_pretrained  # an HF-format folder: AutoModelForCausalLM, then our model
        model, desc = load_pretrained(path, log=log)
        return model, f"exported folder {desc}", path if own_tokenizer(path) else DEFAULT_TOKENIZER_ID, None
    model, ckpt = model_from_checkpoint(path)
    return (model, f"checkpoint {path} (global_step={ckpt.get('global_step')})", checkpoint_tokenizer_id(ckpt),
            ckpt)
