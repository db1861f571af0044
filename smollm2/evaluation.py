"""How good is a model: bits per byte on held-out text, and multiple-choice tasks scored as
lm-evaluation-harness scores them. Shared by evaluate.py and train.py; imports none of the training stack.

Bits per byte. Loss per token depends on the tokenizer; bits per byte does not, so a model with another
tokenizer (or the released SmolLM2) can be compared on the same documents:
    bpb = (nats of every predicted id) / ln 2 / (UTF-8 bytes of the predicted ids' text)
A byte-level BPE id stands for a fixed byte string, so the bytes of the predicted ids add up to the bytes
of the documents' UTF-8 text (token_byte_lengths; tests check it on whole corpora). Document-end ids are
predicted and cost nats but carry no bytes (one per document: on realdocs' held-out split they move bpb
in the fourth decimal). With no per-token masking the same number follows from a mean loss and a byte
count, which is how train.py logs it beside its val loss at no extra cost (ByteCount).

Multiple choice. Each choice is a (context, continuation) pair; its score is the summed log-probability
of the continuation's ids given the context. Everything below mirrors lm-evaluation-harness 0.4.x so the
numbers are the harness's (tests/test_evaluation.py runs both on the same model and files):
  - prompts: HellaSwag "{activity_label}: {ctx_a} {Ctx_b}" cleaned of WikiHow brackets, endings as
    choices; ARC "Question: {question}\\nAnswer:"; OpenBookQA the bare question_stem; PIQA
    "Question: {goal}\\nAnswer:" with sol1/sol2; Winogrande partial scoring: the sentence up to the blank
    filled with each option is the context, the rest of the sentence the (shared) continuation;
    the continuation is " " + choice (the harness's target_delimiter);
  - ids: trailing whitespace of a context moves to the continuation; the continuation's ids are the ids
    of context + continuation after the first len(ids(context)) (the harness's _encode_pair); no BOS;
  - longer than the model's positions: the last max_len + 1 ids are kept and the last one dropped
    (truncated from the left, as the harness does; counted and reported);
  - acc: argmax of the log-likelihoods is the gold index; acc_norm: argmax of log-likelihood divided by
    the choice's length in characters; ties go to the first index (numpy's argmax). Winogrande: acc only.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from smollm2.common import SmolError
from smollm2.shards import ShardInfo, is_prepared, load_manifest, read_header, read_ids
from smollm2.tiktoken_bpe import _bytes_of_char

LN2 = math.log(2)
VAL_FRACTION = 0.1  # train.py's default --val_fraction: what it holds out of a raw corpus


class EvalError(SmolError, ValueError):
    """Bad evaluation input (task file, data, tokenizer); the message is one line that says what to do."""

    code = 2


# ============================================================================ bits per byte
_TOKEN_BYTES: dict[str, np.ndarray] = {}


def token_byte_lengths(tokenizer) -> np.ndarray:
    """(vocab_size,) int64: the UTF-8 bytes each id stands for; 0 for added (special) tokens such as
    <|endoftext|>. Byte-level vocabularies spell bytes with GPT-2's printable alphabet, mapped back here;
    a character outside it counts its own UTF-8 length. Cached per tokenizer definition."""
    key = tokenizer.fingerprint()
    if key not in _TOKEN_BYTES:
        tok = tokenizer.tokenizer
        byte_of = _bytes_of_char()
        out = np.zeros(tokenizer.vocab_size, dtype=np.int64)
        for piece, i in tok.get_vocab(with_added_tokens=False).items():
            out[i] = sum(1 if ch in byte_of else len(ch.encode("utf-8")) for ch in piece)
        for i in tok.get_added_tokens_decoder():
            out[i] = 0
        _TOKEN_BYTES[key] = out
    return _TOKEN_BYTES[key]


def bits_per_byte(nats: float, n_bytes: int) -> Optional[float]:
    return None if n_bytes <= 0 else nats / LN2 / n_bytes


class ByteCount:
    """Wraps an iterable of (inputs, targets) batches, adding up the targets and their bytes as they pass:
    train.py's held-out bpb is then val_loss * targets / ln 2 / bytes."""

    def __init__(self, batches: Iterable, token_bytes: np.ndarray):
        self.batches, self.token_bytes = batches, token_bytes
        self.targets, self.bytes = 0, 0

    def __iter__(self):
        for x, y in self.batches:
            self.targets += y.numel()
            self.bytes += int(self.token_bytes[y.cpu().numpy()].sum())
            yield x, y

    def bpb(self, mean_loss: float) -> Optional[float]:
        return bits_per_byte(mean_loss * self.targets, self.bytes)


@dataclass
class TextIds:
    """The ids to score and where they came from (one line, for the output)."""
    ids: np.ndarray
    description: str


def read_prepared_split(path: str, split: str, tokenizer, max_tokens: Optional[int] = None) -> TextIds:
    """The ids of a prepare_data.py folder's split ("val": the held-out documents, or the tail of the train
    stream when it was prepared that way; "train"), checked against `tokenizer`."""
    if split not in ("val", "train"):
        raise EvalError(f"--split {split}: a prepared folder has the splits 'val' and 'train'")
    manifest = load_manifest(path)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    prepared = manifest["tokenizer"]
    if tokenizer.fingerprint() != prepared["fingerprint"]:
        raise EvalError(f"{folder} was prepared with tokenizer {prepared['source']} (fingerprint "
                        f"{prepared['fingerprint']}) but the model's tokenizer is {tokenizer.source} "
                        f"({tokenizer.fingerprint()}); pass --tokenizer_id {prepared['source']} or prepare the data again")
    tail = manifest["val"]["mode"] == "tail"
    shards = [read_header(os.path.join(folder, e["file"])) for e in manifest["shards"]["train" if tail else split]]
    total = sum(s.n_tokens for s in shards)
    if tail:
        n_val = manifest["val"]["tokens"]
        lo, hi = (total - n_val, total) if split == "val" else (0, total - n_val)
    else:
        lo, hi = 0, total
    if max_tokens:
        hi = min(hi, lo + max_tokens)
    if hi - lo < 2:
        raise EvalError(f"the {split} split of {folder} has {hi - lo} ids, too few to score; pick another split")
    ids = _read_range(shards, lo, hi)
    return TextIds(ids, f"{folder} {split} split ({manifest['val']['mode']}): ids {lo:,}..{hi:,} of {total:,}")


def _read_range(shards: list[ShardInfo], lo: int, hi: int) -> np.ndarray:
    parts, start = [], 0
    for s in shards:
        a, b = max(lo, start), min(hi, start + s.n_tokens)
        if a < b:
            parts.append(read_ids(s, a - start, b - a).astype(np.int64))
        start += s.n_tokens
    return np.concatenate(parts)


def read_text_split(path: str, split: str, tokenizer, eos_id: int, max_tokens: Optional[int] = None,
                    val_fraction: float = VAL_FRACTION) -> TextIds:
    """The ids of one raw text file (one document, as train.py reads a .txt): "all" of it, or "val",
    what train.py holds out of it: the last int(val_fraction * ids) ids and the end-of-text id after them."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise EvalError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); pass a UTF-8 text file") from e
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if split == "val":
        n = int(len(ids) * val_fraction)
        ids = np.concatenate([ids[len(ids) - n:], [eos_id]]) if n else ids[:0]
        where = f"train.py's held-out tail ({val_fraction:g} of its ids + end-of-text)"
    elif split == "all":
        where = "whole file"
    else:
        raise EvalError(f"--split {split} is for prepared folders; a text file has splits 'all' and 'val'")
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise EvalError(f"{path} ({split}) gives {len(ids)} ids, too few to score; pass a longer text")
    return TextIds(ids, f"{path} {where}: {len(ids):,} ids")


def read_eval_text(path: str, split: str, tokenizer, eos_id: int, max_tokens: Optional[int] = None) -> TextIds:
    if is_prepared(path):
        return read_prepared_split(path, split, tokenizer, max_tokens)
    if os.path.isdir(path) or not os.path.isfile(path):
        raise EvalError(f"{path} is neither a text file nor a folder prepared by prepare_data.py; for a corpus of "
                        f"many files run prepare_data.py on it first")
    if path.endswith((".jsonl", ".gz", ".zst", ".parquet")):
        raise EvalError(f"{path} holds documents in records; run prepare_data.py on it and pass the folder")
    return read_text_split(path, split, tokenizer, eos_id, max_tokens)


@dataclass
class TextScore:
    nats: float  # summed over every predicted id
    targets: int
    bytes: int
    windows: int

    def as_dict(self) -> dict:
        loss = self.nats / self.targets
        return {"bpb": bits_per_byte(self.nats, self.bytes), "loss": loss, "ppl": math.exp(min(loss, 50)),
                "tokens": self.targets, "bytes": self.bytes, "bytes_per_token": self.bytes / self.targets,
                "windows": self.windows}


def text_batch_shape(n_ids: int, seq_len: int, batch_size: int) -> tuple[int, int]:
    """(rows, ids per row) of every batch score_text runs, the last one padded to it: what a compile sees."""
    return min(batch_size, len(text_windows(n_ids, seq_len))), min(seq_len + 1, n_ids)


def text_windows(n_ids: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, end) of each window: ids [start, end) are read, ids start+1..end-1 predicted. Consecutive
    windows share one id, so every id but the first is predicted exactly once; the last may be shorter."""
    return [(s, min(s + seq_len + 1, n_ids)) for s in range(0, n_ids - 1, seq_len)]


@torch.no_grad()
def score_text(model, ids: np.ndarray, token_bytes: np.ndarray, seq_len: int, batch_size: int,
               device: torch.device, amp_dtype: Optional[torch.dtype] = None, progress: bool = False,
               nats_fn: Optional[Callable] = None) -> TextScore:
    """Summed nats of ids[1:] given what precedes them within windows of seq_len, and their bytes. Every
    batch has the one shape (batch_size, seq_len + 1): the last is padded with rows no target reads, so a
    compiled `nats_fn` (compiled_nats: ids (B, T+1) -> nats (B, T)) compiles once; without one the eager trunk
    runs and the head only on the scored positions. The GPU is synchronised once, at the end."""
    from tqdm import tqdm

    model.eval()
    windows = text_windows(len(ids), seq_len)
    shape = text_batch_shape(len(ids), seq_len, batch_size)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    targets = 0
    for i in tqdm(range(0, len(windows), batch_size), desc="bits per byte", unit="batch", disable=not progress,
                  dynamic_ncols=True):
        batch = windows[i:i + batch_size]
        rows = np.zeros(shape, dtype=np.int64)
        mask = np.zeros((shape[0], shape[1] - 1), dtype=bool)
        for r, (s, e) in enumerate(batch):
            rows[r, :e - s] = ids[s:e]
            mask[r, :e - s - 1] = True
        t = _upload(rows, device)
        full = mask.all()  # every window but the last: all positions scored, no gather
        m = None if full else torch.from_numpy(mask).to(device)
        if nats_fn is not None:
            per = nats_fn(t)  # (B, T)
            scored = per if full else per[m]
        else:
            h = _hidden(model.model, t[:, :-1], amp_dtype)  # (B, T, C)
            y = t[:, 1:]
            h, y = (h.reshape(-1, h.shape[-1]), y.reshape(-1)) if full else (h[m], y[m])
            scored = _token_nats(model, h, y, amp_dtype)  # (N,)
        nats += scored.double().sum()
        targets += int(mask.sum())
    predicted = ids[1:]
    return TextScore(float(nats), targets, int(token_bytes[predicted].sum()), len(windows))


def _upload(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on the device; to a GPU through pinned memory without waiting, so the next batch is built
    while this one is computed."""
    t = torch.from_numpy(a)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _hidden(forward: Callable, x: torch.Tensor, amp_dtype) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return forward(x)


def _head_nats(model, h: torch.Tensor, targets: torch.Tensor, amp_dtype) -> torch.Tensor:
    """h (..., C), targets (...) -> -log p(target) (...) float32: logsumexp(logits) - logits[target], the head
    under autocast, the rest in float32 whatever the autocast dtype; no log-probabilities are kept."""
    with torch.autocast(h.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model.lm_head(h)
    logits = logits.float()  # (..., V)
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[..., None]).squeeze(-1)


def _token_nats(model, h: torch.Tensor, targets: torch.Tensor, amp_dtype, chunk: int = 16384) -> torch.Tensor:
    """_head_nats of the scored rows h (N, C) -> (N,), a chunk at a time: a (64, 2048) batch's float32 logits
    would be 26 GB."""
    out = [_head_nats(model, h[i:i + chunk], targets[i:i + chunk], amp_dtype) for i in range(0, h.shape[0], chunk)]
    return torch.cat(out) if len(out) > 1 else out[0]


def position_nats(model, t: torch.Tensor, amp_dtype) -> torch.Tensor:
    """ids (B, T+1) -> -log p(t[:, 1:]) (B, T) float32: the trunk and the head over every position in one
    graph, for torch.compile to fuse the float32 cast, logsumexp and gather into one pass over the logits."""
    return _head_nats(model, _hidden(model.model, t[:, :-1], amp_dtype), t[:, 1:], amp_dtype)


@torch.no_grad()
def compiled_nats(model, shape: tuple[int, int], device: torch.device, amp_dtype=None) -> Callable:
    """position_nats under torch.compile for bits per byte, whose batches have one shape (score_text pads the
    last): compiled here, by one run on a batch of `shape` (rows, ids per row), so the compile is done (and
    can be timed) before scoring starts."""
    fn = torch.compile(lambda t: position_nats(model, t, amp_dtype), dynamic=False)
    fn(torch.zeros(shape, dtype=torch.long, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return fn


# ============================================================================ multiple choice
@dataclass
class Item:
    contexts: list[str]  # one per choice (Winogrande) or the same for all
    continuations: list[str]
    gold: int
    choices: list[str]  # what acc_norm divides by (characters), as the harness's doc_to_choice returns them


def _harness_clean(text: str) -> str:
    # lm-evaluation-harness's HellaSwag preprocess: WikiHow's bracketed artifacts removed.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _shown(value) -> str:
    """A wrong value in an error line: its type and the start of its repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _need(doc: dict, keys: tuple[str, ...], where: str, texts: tuple[str, ...] = ()) -> list:
    """The fields `keys` of an item, each present; those named in `texts` must be strings."""
    missing = [k for k in keys if k not in doc or doc[k] is None]
    if missing:
        raise EvalError(f"{where}: missing field {missing[0]!r} (the layout needs {', '.join(keys)})")
    for k in texts:
        _text(doc[k], k, where)
    return [doc[k] for k in keys]


def _text(value, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise EvalError(f"{where}: field {name!r} must be a string, got {_shown(value)}")
    return value


def _texts(value, name: str, where: str, least: int = 2) -> list[str]:
    """A list of strings, as the hub's layouts hold choices: a string or a dict here would be scored one
    character or one key per choice."""
    if not isinstance(value, (list, tuple)):
        raise EvalError(f"{where}: field {name!r} must be a list of strings, got {_shown(value)}")
    for k, v in enumerate(value):
        if not isinstance(v, str):
            raise EvalError(f"{where}: field {name!r} must be a list of strings; entry {k} is {_shown(v)}")
    if len(value) < least:
        raise EvalError(f"{where}: field {name!r} holds {len(value)} entries; a multiple-choice item needs at "
                        f"least {least} choices")
    return list(value)


def _label(value, n: int, name: str, where: str, offset: int = 0) -> int:
    """The gold index from a whole number or its text (the hub's HellaSwag and Winogrande hold text)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
            raise ValueError
        gold = int(value.strip() if isinstance(value, str) else value) - offset
    except ValueError:
        raise EvalError(f"{where}: field {name!r} must be a whole number from {offset} to {n - 1 + offset}, "
                        f"got {_shown(value)}") from None
    if not 0 <= gold < n:
        raise EvalError(f"{where}: field {name!r} is {value!r}, out of range for {n} choices "
                        f"({offset} to {n - 1 + offset})")
    return gold


def _keyed_choices(doc: dict, stem: str, where: str) -> tuple[list[str], int, str]:
    question, choices, key = _need(doc, (stem, "choices", "answerKey"), where, texts=(stem,))
    if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
        raise EvalError(f"{where}: field 'choices' must be {{'text': [...], 'label': [...]}}, got {_shown(choices)}")
    texts = _texts(choices["text"], "choices.text", where)
    labels = _texts(choices["label"], "choices.label", where, least=0)
    if len(labels) != len(texts):
        raise EvalError(f"{where}: field 'choices' has {len(texts)} texts but {len(labels)} labels; each choice "
                        f"needs one of each")
    if len(set(labels)) != len(labels):
        raise EvalError(f"{where}: field 'choices.label' repeats a label ({labels}), so the answer key is ambiguous")
    if isinstance(key, bool) or not isinstance(key, (str, numbers.Integral)):
        raise EvalError(f"{where}: field 'answerKey' must be one of the labels {labels}, got {_shown(key)}")
    key = str(key).lstrip()
    if key not in labels:
        raise EvalError(f"{where}: field 'answerKey' is {key!r}, not one of the labels {labels}")
    return texts, labels.index(key), question


def hellaswag(doc: dict, where: str) -> Item:
    endings, label = _need(doc, ("endings", "label"), where)
    endings = _texts(endings, "endings", where)
    if "ctx" in doc and "ctx_a" not in doc:  # a file with the joined context only (ctx_b not capitalized then)
        label_text, ctx = _need(doc, ("activity_label", "ctx"), where, texts=("activity_label", "ctx"))
    else:
        keys = ("activity_label", "ctx_a", "ctx_b")
        label_text, a, b = _need(doc, keys, where, texts=keys)
        ctx = a + " " + b.capitalize()
    query = _harness_clean(label_text + ": " + ctx)
    choices = [_harness_clean(e) for e in endings]
    return Item([query] * len(choices), [" " + c for c in choices], _label(label, len(choices), "label", where),
                choices)


def arc(doc: dict, where: str) -> Item:
    texts, gold, question = _keyed_choices(doc, "question", where)
    return Item([f"Question: {question}\nAnswer:"] * len(texts), [" " + t for t in texts], gold, texts)


def openbookqa(doc: dict, where: str) -> Item:
    texts, gold, question = _keyed_choices(doc, "question_stem", where)
    return Item([question] * len(texts), [" " + t for t in texts], gold, texts)


def piqa(doc: dict, where: str) -> Item:
    goal, sol1, sol2, label = _need(doc, ("goal", "sol1", "sol2", "label"), where, texts=("goal", "sol1", "sol2"))
    return Item([f"Question: {goal}\nAnswer:"] * 2, [" " + sol1, " " + sol2], _label(label, 2, "label", where),
                [sol1, sol2])


def winogrande(doc: dict, where: str) -> Item:
    sentence, o1, o2, answer = _need(doc, ("sentence", "option1", "option2", "answer"), where,
                                     texts=("sentence", "option1", "option2"))
    if "_" not in sentence:
        raise EvalError(f"{where}: field 'sentence' has no '_' blank to fill")
    i = sentence.index("_")
    contexts = [sentence[:i] + o1, sentence[:i] + o2]
    rest = sentence[i + 1:].strip()
    if not rest:
        raise EvalError(f"{where}: field 'sentence' has nothing after the blank, so there is no continuation to score")
    return Item(contexts, [" " + rest] * 2, _label(answer, 2, "answer", where, offset=1), contexts)


@dataclass(frozen=True)
class Task:
    layout: Callable[[dict, str], Item]
    hub: tuple  # datasets.load_dataset arguments: (path, name, split)
    metrics: tuple = ("acc", "acc_norm")


# The splits lm-evaluation-harness scores (ARC and OpenBookQA: test; the others: validation).
TASKS = {
    "hellaswag": Task(hellaswag, ("Rowan/hellaswag", None, "validation")),
    "arc_easy": Task(arc, ("allenai/ai2_arc", "ARC-Easy", "test")),
    "arc_challenge": Task(arc, ("allenai/ai2_arc", "ARC-Challenge", "test")),
    "openbookqa": Task(openbookqa, ("allenai/openbookqa", "main", "test")),
    "piqa": Task(piqa, ("baber/piqa", None, "validation")),
    "winogrande": Task(winogrande, ("allenai/winogrande", "winogrande_xl", "validation"), ("acc",)),
}


def hub_hint(task: str) -> str:
    path, name, split = TASKS[task].hub
    args = f"'{path}'" + (f", '{name}'" if name else "") + f", split='{split}'"
    return (f"on a machine online: python -c \"import datasets; datasets.load_dataset({args})"
            f".to_json('{task}.jsonl')\", then --data {task}.jsonl")


def read_records(path: str) -> list[dict]:
    """Rows of a .jsonl, .json (a list, or {"data"/"rows": [...]}) or .parquet file."""
    if not os.path.isfile(path):
        raise EvalError(f"task file {path} does not exist")
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq
            return pq.read_table(path).to_pylist()
        with open(path, encoding="utf-8") as f:
            if path.endswith(".json"):
                rows = json.load(f)
                rows = rows.get("data", rows.get("rows")) if isinstance(rows, dict) else rows
            else:
                rows = [json.loads(line) for line in f if line.strip()]
    except (ValueError, OSError) as e:
        kind = {".parquet": "Parquet", ".json": "JSON"}.get(os.path.splitext(path)[1], "JSON lines")
        raise EvalError(f"{path} cannot be read as {kind} ({str(e).splitlines()[0][:120]}); a task file holds one "
                        f"item per JSON line (.jsonl), a JSON list (.json) or Parquet rows (.parquet)") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise EvalError(f"{path} must hold one JSON object per item")
    return rows


def load_task_rows(task: str, data: Optional[str], log: Callable[[str], None]) -> tuple[list[dict], str]:
    """The task's rows from a local file, else through `datasets` from the hub (never required)."""
    if data:
        return read_records(data), data
    path, name, split = TASKS[task].hub
    try:
        import datasets
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # offline, no datasets, a hub error: all the same to the user
        raise EvalError(f"{task}: no --data file and {path} could not be loaded ({type(e).__name__}); "
                        + hub_hint(task)) from e
    log(f"{task}: {len(ds):,} items from {path}" + (f"/{name}" if name else "") + f" ({split})")
    return [dict(r) for r in ds], f"hf:{path}" + (f"/{name}" if name else "") + f":{split}"


def build_items(task: str, rows: list[dict], source: str, limit: Optional[int] = None) -> list[Item]:
    if task not in TASKS:
        raise EvalError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    rows = rows[:limit] if limit else rows
    if not rows:
        raise EvalError(f"{source} holds no items")
    items = []
    for n, doc in enumerate(rows):
        if not isinstance(doc, dict):
            raise EvalError(f"{source} item {n} is not a JSON object")
        where = f"{source} item {n}"
        try:
            item = TASKS[task].layout(doc, where)
        except (TypeError, AttributeError) as e:  # a number or a list where text belongs
            raise EvalError(f"{where}: a field of the {task} layout has the wrong type ({e})") from e
        if len(item.choices) < 2:
            raise EvalError(f"{where}: {len(item.choices)} choice(s); a multiple-choice item needs at least 2")
        for c, text in enumerate(item.choices):
            if not isinstance(text, str) or not text.strip():
                raise EvalError(f"{where}: choice {c} is empty")
        if not all(c.strip() for c in item.contexts):  # nothing for the choices to follow: no position predicts them
            raise EvalError(f"{where}: the context (the question or sentence the choices follow) is empty")
        items.append(item)
    return items


@dataclass
class Request:
    item: int
    choice: int
    ids: list[int]  # what the model reads (already truncated)
    cont: list[int]  # the continuation's ids, predicted by the last len(cont) positions of ids


def _split_pair(context: str, continuation: str) -> tuple[str, str]:
    """The harness's split of a pair: trailing whitespace of the context goes with the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    return (context[:-n_spaces], context[-n_spaces:] + continuation) if n_spaces else (context, continuation)


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of each pair as the harness splits them: the continuation's ids are those
    of the whole text past the context's own. Each distinct text is encoded once (the choices of an item share
    their context), all in one call of the tokenizer's batch encoder when it has one (parallel, in Rust)."""
    split = [_split_pair(c, x) for c, x in pairs]
    texts = list(dict.fromkeys(t for c, x in split for t in (c, c + x)))
    batch = getattr(tokenizer, "encode_batch", None)
    ids = dict(zip(texts, batch(texts) if batch else [tokenizer.encode(t) for t in texts]))
    out = []
    for c, x in split:
        ctx, whole = ids[c], ids[c + x]
        out.append((ctx, whole[len(ctx):]))
    return out


def build_requests(items: list[Item], tokenizer, max_len: int, where: str = "") -> tuple[list[Request], int]:
    """One request per (item, choice), and how many were truncated from the left to fit max_len."""
    for i, item in enumerate(items):
        if not all(item.contexts):
            raise EvalError(f"{where} item {i}: empty context")
    index = [(i, c) for i, item in enumerate(items) for c in range(len(item.contexts))]
    encoded = encode_pairs(tokenizer, [(items[i].contexts[c], items[i].continuations[c]) for i, c in index])
    requests, truncated = [], 0
    for (i, c), (ctx_ids, cont_ids) in zip(index, encoded):
        if not cont_ids:
            raise EvalError(f"{where} item {i}: choice {c} gives no ids to score")
        if len(cont_ids) > max_len:
            raise EvalError(f"{where} item {i}: choice {c} alone is {len(cont_ids)} ids, more than the model's "
                            f"{max_len} positions; shorten that choice or remove the item")
        full = ctx_ids + cont_ids
        truncated += len(full) > max_len + 1
        requests.append(Request(i, c, full[-(max_len + 1):][:-1], cont_ids))
    return requests, truncated


@torch.no_grad()
def score_requests(model, requests: list[Request], batch_size: int, device: torch.device, amp_dtype=None,
                   progress: bool = False) -> list[float]:
    """Summed log-probability of each request's continuation. Longest first (the batch's padding shrinks as
    it goes, and running out of memory happens at once); right padding, which a causal model never sees.
    The sums stay on the device until the end, so the next batch is built while the GPU works."""
    from tqdm import tqdm

    model.eval()
    order = sorted(range(len(requests)), key=lambda k: -len(requests[k].ids))
    sums = torch.zeros(len(requests), dtype=torch.float64, device=device)
    bar = tqdm(total=len(requests), desc="scoring choices", unit="choice", disable=not progress, dynamic_ncols=True)
    for b in range(0, len(order), batch_size):
        picked = order[b:b + batch_size]
        batch = [requests[k] for k in picked]
        x = np.zeros((len(batch), len(batch[0].ids)), dtype=np.int64)
        owner, rows, cols, targets = [], [], [], []
        for r, (k, req) in enumerate(zip(picked, batch)):
            n = len(req.ids)
            x[r, :n] = req.ids
            owner += [k] * len(req.cont)
            rows += [r] * len(req.cont)
            cols += range(n - len(req.cont), n)
            targets += req.cont
        xt, it = _upload(x, device), _upload(np.array([rows, cols, targets, owner], dtype=np.int64), device)
        h = _hidden(model.model, xt, amp_dtype)  # (B, T, C)
        nats = _token_nats(model, h[it[0], it[1]], it[2], amp_dtype)  # (scored positions,)
        sums.index_add_(0, it[3], -nats.double())
        bar.update(len(batch))
    bar.close()
    return sums.tolist()


@dataclass
class ChoiceScores:
    lls: list[list[float]]  # per item, per choice
    truncated: int
    metrics: dict = field(default_factory=dict)


def score_items(model, tokenizer, items: list[Item], batch_size: int, device: torch.device, amp_dtype=None,
                max_len: Optional[int] = None, progress: bool = False, where: str = "",
                metric_names: tuple = ("acc", "acc_norm")) -> ChoiceScores:
    max_len = max_len or model.config.max_position_embeddings
    requests, truncated = build_requests(items, tokenizer, max_len, where)
    flat = score_requests(model, requests, batch_size, device, amp_dtype, progress)
    lls = [[0.0] * len(it.choices) for it in items]
    for r, ll in zip(requests, flat):
        lls[r.item][r.choice] = ll
    return ChoiceScores(lls, truncated, choice_metrics(items, lls, metric_names))


def choice_metrics(items: list[Item], lls: list[list[float]], names: tuple = ("acc", "acc_norm")) -> dict:
    """acc and acc_norm as lm-evaluation-harness computes them, with the harness's standard errors
    (sample standard deviation over items / sqrt(items))."""
    acc = np.array([float(np.argmax(ll) == it.gold) for it, ll in zip(items, lls)])
    norm = np.array([float(np.argmax(np.array(ll) / np.array([float(len(c)) for c in it.choices])) == it.gold)
                     for it, ll in zip(items, lls)])
    out = {"items": len(items)}
    for name, v in (("acc", acc), ("acc_norm", norm)):
        if name in names:
            out[name] = float(v.mean())
            out[f"{name}_stderr"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return out



def load_task_spec(spec: str, limit: Optional[int]) -> tuple[str, list[Item]]:
    """train.py --task_eval TASK:FILE: the task and its first `limit` items, every one checked."""
    task, sep, path = spec.partition(":")
    if not sep or task not in TASKS or not path:
        raise EvalError(f"--task_eval wants TASK:FILE with TASK one of {', '.join(TASKS)}, got {spec!r}")
    return task, build_items(task, read_records(path), path, limit)


def check_task_fits(spec: str, limit: Optional[int], tokenizer_id: str, max_len: int) -> None:
    """train.py --task_eval at start-up: every item of the spec tokenized as its task score will tokenize it,
    so a choice the model cannot score (alone longer than its `max_len` positions) stops the command before the
    run folder is touched, not at the first task score mid-run. A longer context + choice is not refused: it
    loses its left end, as lm-evaluation-harness and evaluate.py do."""
    from smollm2.tokenizer import load_tokenizer

    _, items = load_task_spec(spec, limit)
    build_requests(items, load_tokenizer(tokenizer_id, log=lambda m: None), max_len, spec.partition(":")[2])
