"""evaluate.py and smollm2/evaluation.py against references no one here wrote: lm-evaluation-harness's own
scoring of the same multiple-choice files on the same model, transformers' own loss for bits per byte,
train.py's own held-out split, and the UTF-8 byte count of the text itself."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TOKENIZER_JSON, one_line_error, run_train

import evaluate
from smollm2.common import run_cli
from smollm2.evaluation import (TASKS, EvalError, build_items, read_text_split, score_items, score_text, text_windows,
                                token_byte_lengths)
from smollm2.tokenizer import load_tokenizer

LONG = " ".join(["the river ran on past the old mill and the town"] * 8)  # > 64 ids: truncated at max_length 64
MAX_LENGTH = 64

# Two to four items per layout, in the hub datasets' own field names; the long ones exercise left truncation.
ROWS = {
    "hellaswag": [
        {"activity_label": "Baking cookies", "ctx_a": "A woman puts flour in a bowl.", "ctx_b": "she",
         "ctx": "A woman puts flour in a bowl. she", "endings": ["adds sugar and mixes [title] well.", "jumps.",
                                                                "reads a book about  dogs.", "pours milk in."],
         "label": "0"},
        {"activity_label": "Running", "ctx_a": LONG, "ctx_b": "then the man",
         "ctx": LONG + " then the man", "endings": ["stops.", "keeps running down the road.", "sits", "sings"],
         "label": "3"},
    ],
    "arc_easy": [
        {"question": "Which is a liquid at room temperature?",
         "choices": {"text": ["ice", "water", "steam", "salt"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
        {"question": "What do plants need to make food?",
         "choices": {"text": ["sunlight", "darkness", "sand"], "label": ["1", "2", "3"]}, "answerKey": "1"},
    ],
    "openbookqa": [
        {"question_stem": "The sun is responsible for",
         "choices": {"text": ["puppies learning new tricks", "plants sprouting, blooming and wilting",
                              "the moon", "rain"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
        {"question_stem": LONG, "choices": {"text": ["a", "b c", "d e f", "g"], "label": ["A", "B", "C", "D"]},
         "answerKey": " D"},
    ],
    "piqa": [
        {"goal": "To open a jar,", "sol1": "twist the lid.", "sol2": "hit it with a fish.", "label": 0},
        {"goal": "Keep bread fresh", "sol1": "Leave it in the sun for a week.", "sol2": "Store it in a bag.",
         "label": 1},
    ],
    "winogrande": [
        {"sentence": "The trophy does not fit in the suitcase because the _ is too big.", "option1": "trophy",
         "option2": "suitcase", "answer": "1"},
        {"sentence": LONG + " so _ went home early.", "option1": "Ann", "option2": "the town", "answer": "2"},
    ],
}
# Our task name -> the harness task it mirrors (the file is the same, its YAML is the harness's own).
HARNESS_YAML = {"hellaswag": "hellaswag/hellaswag.yaml", "arc_easy": "arc/arc_easy.yaml",
                "openbookqa": "openbookqa/openbookqa.yaml", "piqa": "piqa/piqa.yaml",
                "winogrande": "winogrande/default.yaml"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TOKENIZER_JSON), log=lambda m: None)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- bits per byte
def test_token_bytes_add_up_to_the_text(tokenizer, corpus_path):
    table = token_byte_lengths(tokenizer)
    for text in (corpus_path.read_text(encoding="utf-8"),
                 "Ünïcödé ½ Ⅻ ४२ 中文 😀 e\u0301 \u00a0nbsp\ttabs\r\n  and 3.14159 x 1,000"):
        ids = tokenizer.encode(text)
        assert int(table[ids].sum()) == len(text.encode("utf-8"))
    assert table[tokenizer.tokenizer.token_to_id("<|endoftext|>")] == 0


def test_windows_predict_every_id_but_the_first_once():
    for n, T in [(10, 3), (11, 5), (2, 7), (1024, 1023), (1025, 1024)]:
        predicted = [i for s, e in text_windows(n, T) for i in range(s + 1, e)]
        assert predicted == list(range(1, n)) and all(e - s <= T + 1 for s, e in text_windows(n, T))


def test_held_out_split_is_train_pys(tokenizer, corpus_path, tmp_path):
    from smollm2.data import load_training_data

    ours = read_text_split(str(corpus_path), "val", tokenizer, eos_id=0).ids
    theirs = load_training_data(str(corpus_path), tokenizer, str(tmp_path), log=lambda m: None).val
    assert len(ours) == len(theirs) and np.array_equal(ours, theirs.read(0, len(theirs)))


def test_released_weights_bpb_equals_transformers_loss(repo_root, corpus_path, tmp_path):
    pytest.importorskip("gguf")
    from smollm2.hf import load_pretrained_hf

    out = tmp_path / "bpb.json"
    assert evaluate.main(["--pretrained", "--data", str(corpus_path), "--split", "all", "--max_tokens", "1024",
                          "--seq_len", "1024", "--out", str(out)]) == 0
    ours = json.loads(out.read_text())
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in ours["weights"]["description"] and len(ours["weights"]["sha256"]) == 64

    hf, _ = load_pretrained_hf(log=lambda m: None)
    tok = load_tokenizer("HuggingFaceTB/SmolLM2-135M", log=lambda m: None)
    ids = tok.encode(corpus_path.read_text(encoding="utf-8"))[:1024]
    with torch.no_grad():
        loss = hf(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()  # transformers' own
    assert abs(loss - 3.7089) < 5e-4  # REFERENCE.md
    predicted_bytes = len(tok.decode(ids[1:]).encode("utf-8"))
    assert ours["tokens"] == 1023 and ours["bytes"] == predicted_bytes
    assert ours["bpb"] == pytest.approx(loss * 1023 / math.log(2) / predicted_bytes, rel=1e-5)
    assert ours["loss"] == pytest.approx(loss, rel=1e-5)


def test_train_logs_held_out_bpb_that_evaluate_reproduces(tmp_path, corpus_path):
    out = tmp_path / "run"
    run_train(out, "--max_steps", "4", "--val_every", "4", "--val_batches", "2", "--save_every", "4", "--log_every", "4")
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [e for e in val if e["event"] == "val"][-1]
    assert f"val bpb {val['bpb']:.4f}" in (out / "train.log").read_text()
    # train.py's val windows: 2 batches x (2 x 2) rows of seq_len 32, consecutive from the held-out split's start.
    res = tmp_path / "bpb.json"
    assert evaluate.main(["--checkpoint", str(out / "checkpoints" / "checkpoint_step_4.pt"), "--data", str(corpus_path),
                          "--seq_len", "32", "--max_tokens", str(2 * 4 * 32 + 1), "--tokenizer_id", str(TOKENIZER_JSON),
                          "--out", str(res)]) == 0
    ours = json.loads(res.read_text())
    assert ours["tokens"] == 2 * 4 * 32
    assert ours["loss"] == pytest.approx(val["loss"], abs=1e-4) and ours["bpb"] == pytest.approx(val["bpb"], abs=1e-4)


# ----------------------------------------------------------------------------- multiple choice vs the harness
def harness_tasks(folder: Path, files: dict[str, Path]) -> list[str]:
    """A local task per layout: the harness's own YAML (prompts, choices, metrics) over our file."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    names = []
    for task, path in files.items():
        name = f"local_{task}"
        (folder / f"{name}.yaml").write_text(
            f"include: {root / HARNESS_YAML[task]}\ntask: {name}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {path}\n"
            "training_split: null\nvalidation_split: validation\ntest_split: null\n", encoding="utf-8")
        names.append(name)
    return names


def test_choice_loglikelihoods_and_acc_equal_lm_evaluation_harness(tmp_path, tiny_model, tokenizer, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from smollm2.hf import write_hf_folder

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "hf"
    write_hf_folder(str(folder), tiny_model, tokenizer)
    files = {t: write_jsonl(tmp_path / f"{t}.jsonl", rows) for t, rows in ROWS.items()}
    names = harness_tasks(tmp_path, files)
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32,max_length={MAX_LENGTH}",
                                  tasks=names, task_manager=TaskManager(include_path=str(tmp_path)), batch_size=3,
                                  device="cpu", log_samples=True)
    for task, path in files.items():
        items = build_items(task, ROWS[task], str(path))
        ours = score_items(tiny_model, tokenizer, items, batch_size=5, device=torch.device("cpu"), max_len=MAX_LENGTH,
                           metric_names=TASKS[task].metrics)
        samples = sorted(out["samples"][f"local_{task}"], key=lambda s: s["doc_id"])
        assert len(samples) == len(items)
        for item_lls, sample in zip(ours.lls, samples):
            theirs = [r[0][0] for r in sample["resps"]]
            assert np.allclose(item_lls, theirs, rtol=0, atol=1e-4), (task, item_lls, theirs)
        for metric in TASKS[task].metrics:
            assert ours.metrics[metric] == out["results"][f"local_{task}"][f"{metric},none"], (task, metric)
    truncated = score_items(tiny_model, tokenizer, build_items("hellaswag", ROWS["hellaswag"], "h"), 4,
                            torch.device("cpu"), max_len=MAX_LENGTH).truncated
    assert truncated == 4  # the long item's four choices


def test_task_items_match_the_harness_prompts():
    items = build_items("winogrande", ROWS["winogrande"][:1], "w")
    assert items[0].contexts == ["The trophy does not fit in the suitcase because the trophy",
                                 "The trophy does not fit in the suitcase because the suitcase"]
    assert items[0].continuations == [" is too big."] * 2 and items[0].gold == 0
    h = build_items("hellaswag", ROWS["hellaswag"][:1], "h")[0]
    assert h.contexts[0] == "Baking cookies: A woman puts flour in a bowl. She"
    assert h.choices[0] == "adds sugar and mixes. well." and h.choices[2] == "reads a book about dogs."


# ----------------------------------------------------------------------------- bad input
HS = {"activity_label": "x", "ctx_a": "a", "ctx_b": "b", "endings": ["one", "two", "three", "four"], "label": 0}
ARC = {"question": "q", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "B"}
PIQA = {"goal": "g", "sol1": "a", "sol2": "b", "label": 0}
# (test id, task, bad items, the message after "FILE item N: "); each file is a good item and then these.
BAD = [
    ("piqa-missing", "piqa", [{"goal": "g", "sol1": "a", "label": 0}], "missing field 'sol2'"),
    ("piqa-label-range", "piqa", [{**PIQA, "label": 2}], "field 'label' is 2, out of range for 2 choices"),
    ("piqa-goal-number", "piqa", [{**PIQA, "goal": 5}], "field 'goal' must be a string, got int 5"),
    ("hellaswag-endings-string", "hellaswag", [{**HS, "endings": "abcd"}],
     "field 'endings' must be a list of strings, got str 'abcd'"),
    ("hellaswag-endings-dict", "hellaswag", [{**HS, "endings": {"one": 1, "two": 2}}],
     "field 'endings' must be a list of strings, got dict {'one': 1, 'two': 2}"),
    ("hellaswag-ending-number", "hellaswag", [{**HS, "endings": ["one", 2, "three"]}],
     "field 'endings' must be a list of strings; entry 1 is int 2"),
    ("hellaswag-endings-empty", "hellaswag", [{**HS, "endings": []}],
     "field 'endings' holds 0 entries; a multiple-choice item needs at least 2 choices"),
    ("hellaswag-ending-blank", "hellaswag", [{**HS, "endings": ["one", " ", "three"]}], "choice 1 is empty"),
    ("hellaswag-label-bool", "hellaswag", [{**HS, "label": True}],
     "field 'label' must be a whole number from 0 to 3, got bool True"),
    ("hellaswag-label-fraction", "hellaswag", [{**HS, "label": 1.5}],
     "field 'label' must be a whole number from 0 to 3, got float 1.5"),
    ("hellaswag-label-range", "hellaswag", [{**HS, "label": "4"}], "field 'label' is '4', out of range for 4 choices"),
    ("hellaswag-ctx-number", "hellaswag", [{**HS, "ctx_a": 7}], "field 'ctx_a' must be a string, got int 7"),
    ("arc-key-unknown", "arc_easy", [{**ARC, "answerKey": "E"}],
     "field 'answerKey' is 'E', not one of the labels ['A', 'B', 'C']"),
    ("arc-key-past-choices", "arc_easy",  # the key names a 4th label, but only 3 choices have a text
     [{**ARC, "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C", "D"]}, "answerKey": "D"}],
     "field 'choices' has 3 texts but 4 labels"),
    ("arc-text-string", "arc_easy", [{**ARC, "choices": {"text": "abc", "label": ["A", "B", "C"]}}],
     "field 'choices.text' must be a list of strings, got str 'abc'"),
    ("arc-choices-empty", "arc_easy", [{**ARC, "choices": {"text": [], "label": []}}],
     "field 'choices.text' holds 0 entries"),
    ("arc-labels-repeat", "arc_easy", [{**ARC, "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "B"]}}],
     "field 'choices.label' repeats a label"),
    ("arc-key-list", "arc_easy", [{**ARC, "answerKey": ["B"]}], "field 'answerKey' must be one of the labels"),
    ("arc-choices-list", "arc_easy", [{**ARC, "choices": ["a", "b"]}], "field 'choices' must be {'text'"),
    ("openbookqa-stem-blank", "openbookqa", [{"question_stem": " ", "choices": ARC["choices"], "answerKey": "A"}],
     "the context (the question or sentence the choices follow) is empty"),
    ("winogrande-no-blank", "winogrande",
     [{"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"}], "field 'sentence' has no '_' blank"),
    ("winogrande-answer-range", "winogrande",
     [{"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "3"}],
     "field 'answer' is '3', out of range for 2 choices (1 to 2)"),
]


@pytest.mark.parametrize("task,rows,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_task_file_is_one_line_before_the_model_loads(tmp_path, task, rows, message):
    """Each item is checked as it is read: a field of the wrong shape (a string or a dict where a list of choices
    belongs, an answer key past the choices) is one line naming the file, the item and the field, before the
    model (never_read.pt) is opened and before anything is scored."""
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[task][0], *rows])
    with pytest.raises(EvalError) as e:
        evaluate.main(["--checkpoint", str(tmp_path / "never_read.pt"), "--task", task, "--data", str(path),
                       "--out", str(tmp_path / "r.json")])
    assert str(e.value).startswith(f"{path} item 1: {message}") and "\n" not in str(e.value), str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


@pytest.mark.parametrize("name,text,kind", [("plain.txt", "ROMEO: a line of a play\n", "JSON lines"),
                                             ("broken.json", "[{\"ctx\": ", "JSON")])
def test_a_file_that_is_not_a_task_file_says_which_formats_are(tmp_path, name, text, kind):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EvalError) as e:
        evaluate.main(["--checkpoint", str(tmp_path / "never_read.pt"), "--task", "hellaswag", "--data", str(path)])
    msg = str(e.value)
    assert "\n" not in msg and f"cannot be read as {kind} (" in msg and ".jsonl" in msg and ".parquet" in msg
    assert sorted(os.listdir(tmp_path)) == [name]


def tiny_checkpoint(path: Path, tiny_model) -> Path:
    from smollm2.checkpoint import save_checkpoint

    save_checkpoint(str(path), dict(global_step=1, model=tiny_model.state_dict(), model_config=tiny_model.config.to_dict(),
                                    args={"tokenizer_id": str(TOKENIZER_JSON)}))
    return path


def test_cli_bad_input_exit_2_and_truncation_said(tmp_path, tiny_model, repo_root):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", tiny_model)
    bad = write_jsonl(tmp_path / "bad.jsonl", BAD[1][2])
    r = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", str(ckpt), "--task", "piqa", "--data", str(bad),
                        "--out", str(tmp_path / "bad.json")], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("evaluate.py: error: "), r.stderr
    assert not (tmp_path / "bad.json").exists()

    good = write_jsonl(tmp_path / "h.jsonl", ROWS["hellaswag"])
    r = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", str(ckpt), "--task", "hellaswag", "--data",
                        str(good), "--max_length", str(MAX_LENGTH), "--out", str(tmp_path / "h.json")], cwd=repo_root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 choice(s) longer than 64 positions lost their left end" in r.stderr
    res = json.loads((tmp_path / "h.json").read_text())
    assert res["truncated"] == 4 and res["items"] == 2 and len(res["lls"]) == 2 and "acc_norm" in r.stdout
    # a result file is committed beside the code: it names files by bare name, never by this machine's paths
    assert str(tmp_path) not in (tmp_path / "h.json").read_text() and "h.json" in res["command"]


def test_prepared_data_of_another_tokenizer_is_refused(tmp_path, tiny_model, tokenizer, corpus_path):
    from smollm2.prepare import PrepareSettings, prepare

    other = json.loads(tokenizer.definition)
    other["model"]["merges"] = other["model"]["merges"][:-1]  # a different tokenizer: its last merge gone
    (tmp_path / "other.json").write_text(json.dumps(other), encoding="utf-8")
    text = tmp_path / "doc.txt"
    text.write_text(corpus_path.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    prepare([str(text)], str(tmp_path / "data"), load_tokenizer(str(tmp_path / "other.json"), log=lambda m: None),
            PrepareSettings(), workers=0, log=lambda m: None, progress_bar=False)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", tiny_model)
    with pytest.raises(EvalError, match="was prepared with tokenizer .* but the model's tokenizer is"):
        evaluate.main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_an_out_that_cannot_be_written_is_refused_before_anything_is_scored(tmp_path, tiny_model, repo_root):
    """--out under a regular file (unwritable for root too), an --out that is a folder, and the default
    results/eval in a checkout where it cannot be made: one line naming the path, exit 2, before the model loads
    (never_read.pt) or anything is scored."""
    good = write_jsonl(tmp_path / "piqa.jsonl", ROWS["piqa"])
    (tmp_path / "afile").write_text("not a folder\n", encoding="utf-8")
    for out, message in ((tmp_path / "afile" / "r.json", f"--out {tmp_path / 'afile' / 'r.json'}: {tmp_path / 'afile'} "
                                                         f"is a file, not a folder"),
                         (tmp_path, f"--out {tmp_path} is a folder; pass a file name")):
        with pytest.raises(evaluate.UsageError) as e:
            evaluate.main(["--checkpoint", str(tmp_path / "never_read.pt"), "--task", "piqa", "--data", str(good),
                           "--out", str(out)])
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", tiny_model)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "results").write_text("a file where results/ would go\n", encoding="utf-8")
    r = subprocess.run([sys.executable, str(repo_root / "evaluate.py"), "--checkpoint", str(ckpt), "--task", "piqa",
                        "--data", str(good), "--name", "tiny"], cwd=checkout, capture_output=True, text=True,
                       timeout=120)
    line = one_line_error(r.stderr)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout)
    assert line.startswith(f"evaluate.py: error: the default --out {os.path.join('results', 'eval', 'tiny_piqa.json')}: "
                           f"{checkout / 'results'} is a file, not a folder"), line
    assert sorted(os.listdir(checkout)) == ["results"]


def test_a_write_that_fails_after_scoring_keeps_the_printed_scores(tmp_path, tiny_model, monkeypatch, capsys):
    """The table is printed before the results file is written; a write that fails then (the folder gone, a full
    disk) is one line naming the file, exit 1, with the scores on the screen."""
    import errno

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", tiny_model)
    good = write_jsonl(tmp_path / "piqa.jsonl", ROWS["piqa"])

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(evaluate, "atomic_write_text", full_disk)
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: evaluate.main(["--checkpoint", str(ckpt), "--task", "piqa", "--data", str(good), "--out",
                                       str(out)]), "evaluate.py")
    assert e.value.code == 1
    printed = capsys.readouterr()
    assert "acc_norm" in printed.out and "items" in printed.out and "wrote" not in printed.out
    assert one_line_error(printed.err) == (f"evaluate.py: error: could not write {out} ({os.strerror(errno.ENOSPC)}); "
                                           f"the scores are printed above, not saved")
    assert not out.exists()


def test_train_scores_a_task_every_n_steps_as_evaluate_does(tmp_path):
    piqa = write_jsonl(tmp_path / "piqa.jsonl", ROWS["piqa"] * 3)
    out = tmp_path / "run"
    run_train(out, "--max_steps", "2", "--task_eval", f"piqa:{piqa}", "--task_every", "2", "--save_every", "2")
    task = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    task = [e for e in task if e["event"] == "task"]
    assert [(e["step"], e["task"], e["items"]) for e in task] == [(2, "piqa", 6)]
    assert f"task piqa | acc {task[0]['acc']:.4f} | acc_norm {task[0]['acc_norm']:.4f}" in (out / "train.log").read_text()
    res = tmp_path / "piqa.json"
    assert evaluate.main(["--checkpoint", str(out / "checkpoints" / "checkpoint_step_2.pt"), "--task", "piqa",
                          "--data", str(piqa), "--out", str(res)]) == 0
    ours = json.loads(res.read_text())
    assert (ours["acc"], ours["acc_norm"]) == (task[0]["acc"], task[0]["acc_norm"])

    bad = write_jsonl(tmp_path / "bad.jsonl", BAD[0][2])
    r = run_train(tmp_path / "never", "--task_eval", f"piqa:{bad}", "--task_every", "2", check=False)
    assert r.returncode == 2 and "missing field 'sol2'" in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "never").exists()


def test_train_refuses_a_task_choice_longer_than_the_model_at_start(tmp_path):
    """A choice whose own ids outnumber the model's positions cannot be scored: train.py --task_eval tokenizes
    every item at start-up and refuses it in one line naming the file, the item and the lengths, exit 2, before
    the run folder exists (not at the first task score, after the steps before it)."""
    long = " ".join(["the river ran on past the old mill and the town"] * 100)  # ~1,100 ids; tiny has 1,024
    task = write_jsonl(tmp_path / "piqa.jsonl", [ROWS["piqa"][0], {**ROWS["piqa"][1], "sol1": long}])
    r = run_train(tmp_path / "run", "--max_steps", "2", "--task_eval", f"piqa:{task}", "--task_every", "2",
                  "--save_every", "2", check=False)
    line = one_line_error(r.stderr)
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(rf"train.py: error: {re.escape(str(task))} item 1: choice 0 alone is 1\d\d\d ids, more than the "
                        rf"model's 1024 positions; shorten that choice or remove the item", line), line
    assert not (tmp_path / "run").exists()


def test_harness_mode_exports_and_runs_lm_eval(tmp_path, tiny_model, tokenizer, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", tiny_model)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    harness_tasks(tasks, {"piqa": write_jsonl(tmp_path / "piqa.jsonl", ROWS["piqa"])})
    out = tmp_path / "h.json"
    assert evaluate.main(["--checkpoint", str(ckpt), "--harness", "lm_eval", "--tasks", "local_piqa", "--include_path",
                          str(tasks), "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]["local_piqa"]
    ours = score_items(tiny_model, tokenizer, build_items("piqa", ROWS["piqa"], "p"), 2, torch.device("cpu"))
    assert (res["acc,none"], res["acc_norm,none"]) == (ours.metrics["acc"], ours.metrics["acc_norm"])

    monkeypatch.setattr(evaluate.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EvalError, match=r"lm-evaluation-harness is not installed: pip install lm_eval==0\.4\.13"):
        evaluate.main(["--checkpoint", str(ckpt), "--harness", "lm_eval", "--tasks", "hellaswag",
                       "--out", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()


# ----------------------------------------------------------------------------- the docs page
def test_docs_block_is_rendered_from_the_result_files(repo_root):
    import update_readme
    from smollm2.report import eval_block

    text = (repo_root / "docs" / "evaluation.md").read_text(encoding="utf-8")
    a, b = update_readme.marker_span(text, "EVAL_RESULTS")
    block, _ = eval_block(str(repo_root / "results" / "eval"), str(repo_root / "docs"))
    assert "EVAL_RESULTS" in update_readme.OPTIONAL and text[a:b].strip("\n") == block.strip("\n")
    for path in (repo_root / "results" / "eval").glob("*.json"):
        r = json.loads(path.read_text())
        assert r["device"].startswith(("CPU: ", "NVIDIA")) and r["weights"]["description"]
        assert f"**{r['bpb']:.4f}**" in block if r["task"] == "bpb" else r["task"] in block


def test_eval_block_renders_each_kind(tmp_path):
    from smollm2.report import eval_block
    from smollm2.results import InputError

    w = {"description": "checkpoint x.pt (global_step=5000)"}
    docs = {"a_bpb.json": {"name": "seed", "weights": w, "task": "bpb", "text": "input.txt held out", "seq_len": 256,
                           "tokens": 100, "bytes": 300, "bpb": 2.5, "loss": 5.2, "ppl": 181.3, "device": "NVIDIA H200"},
            "b_piqa.json": {"name": "seed", "weights": w, "task": "piqa", "data": "piqa.jsonl", "items": 1838,
                            "acc": 0.61, "acc_norm": 0.6, "device": "NVIDIA H200"},
            "c_lm.json": {"name": "seed", "weights": w, "task": "lm_eval", "device": "NVIDIA H200",
                          "results": {"arc_easy": {"acc,none": 0.45, "acc_stderr,none": 0.01, "alias": "arc_easy"}}}}
    for name, doc in docs.items():
        (tmp_path / name).write_text(json.dumps(doc))
    block, note = eval_block(str(tmp_path), str(tmp_path))
    assert note == "3 result files" and "| **2.5000** | 5.2000 | 181.30 | NVIDIA H200 | [a_bpb.json](a_bpb.json) |" in block
    assert "| piqa | piqa.jsonl | 1,838 | 0.6100 | 0.6000 |" in block and "| arc_easy | acc | 0.4500 |" in block
    (tmp_path / "d.json").write_text("not json")
    with pytest.raises(InputError, match="d.json is not a JSON file written by evaluate.py"):
        eval_block(str(tmp_path), str(tmp_path))


# ----------------------------------------------------------------------------- the fast paths
def test_batched_tokenization_gives_the_ids_of_one_text_at_a_time(tokenizer):
    from smollm2.evaluation import encode_pairs

    class OneAtATime:  # a tokenizer without encode_batch: the reference path
        encode = staticmethod(tokenizer.encode)

    pairs = [("The cat sat ", "on the mat."), ("The cat sat ", "under it."), ("Numbers 2024", " and 1999"),
             ("  spaced  ", "  out  "), ("Ünïcödé — ", "ok")]
    assert encode_pairs(tokenizer, pairs) == encode_pairs(OneAtATime(), pairs)
    whole = [tokenizer.encode(c.rstrip() + c[len(c.rstrip()):] + x) for c, x in pairs]
    assert [a + b for a, b in encode_pairs(tokenizer, pairs)] == whole


def test_compiled_model_scores_as_the_eager_one(tmp_path, tiny_model, corpus_path, repo_root):
    """--compile 1: the same bits per byte (every batch padded to one shape, the last one too), with the compile
    timed apart; a task's changing widths are refused in one line."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", tiny_model)
    got = {}
    for c in ("0", "1"):
        out = tmp_path / f"bpb{c}.json"
        assert evaluate.main(["--checkpoint", str(ckpt), "--data", str(corpus_path), "--split", "all",
                              "--max_tokens", "1000", "--seq_len", "64", "--batch_size", "4", "--compile", c,
                              "--out", str(out)]) == 0  # 16 windows of 64 ids, the last one shorter
        got[c] = json.loads(out.read_text())
    eager, fast = got["0"], got["1"]
    assert eager["compile_s"] is None and fast["compile_s"] > 0
    assert fast["tokens"] == eager["tokens"] == 999
    assert fast["loss"] == pytest.approx(eager["loss"], abs=1e-5)
    # and the padded batches of the eager path equal one window at a time
    one = score_text(tiny_model, read_text_split(str(corpus_path), "all", load_tokenizer(str(TOKENIZER_JSON)), 0, 1000).ids,
                     np.ones(49152, dtype=np.int64), 64, 1, torch.device("cpu"))
    assert one.nats / one.targets == pytest.approx(eager["loss"], abs=1e-5)
    task = write_jsonl(tmp_path / "hs.jsonl", ROWS["hellaswag"])
    r = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", str(ckpt), "--task", "hellaswag", "--data",
                        str(task), "--compile", "1"], cwd=repo_root, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--compile 1 is for bits per byte" in r.stderr
