"""Text generation shared by generate.py (a terminal) and app.py (a browser): one loader, one decoding loop.

load_model turns a training checkpoint, an export_hf.py folder or the released weights into our model;
stream_text runs the model's KV-cache decoding (SmolLM2ForCausalLM.generate_stream) and yields the text as
it grows, so both front ends print exactly the same characters for the same model, prompt and settings.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterator, Optional

import torch

from smollm2.checkpoint import checkpoint_tokenizer_id, model_from_checkpoint
from smollm2_model import SmolLM2ForCausalLM
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED_MAX = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes (it raises a bare RuntimeError above)


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    steps = model.generate_stream(x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
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
            raise ValueError(f"{path} is a folder without config.json "
                             f"(pass a .pt checkpoint or a folder written by export_hf.py)")
        from smollm2.hf import load_pretrained  # an HF-format folder: AutoModelForCausalLM, then our model
        model, desc = load_pretrained(path, log=log)
        return model, f"exported folder {desc}", path if own_tokenizer(path) else DEFAULT_TOKENIZER_ID, None
    model, ckpt = model_from_checkpoint(path)
    return (model, f"checkpoint {path} (global_step={ckpt.get('global_step')})", checkpoint_tokenizer_id(ckpt),
            ckpt)
