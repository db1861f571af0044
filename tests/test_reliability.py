"""Never lose or silently corrupt a run: one test per class of failure, CPU, tiny preset, a few
steps each. Refusals that happen before any compute run in-process through train.cli(); the rest run
train.py as a subprocess, as a user would.

Each test names the promise it checks; README.md ("Reliability") lists them."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CORPUS, REPO_ROOT, TINY_TRAIN_ARGS, TOKENIZER_JSON, finished_run, one_line_error, run_train

from smollm2 import run  # noqa: E402
from smollm2.checkpoint import load_checkpoint, nonfinite_names, save_checkpoint  # noqa: E402
from smollm2.run import FIXED, IGNORED, REFUSED, RULES, rule  # noqa: E402

QUICK = ["--log_every", 1, "--save_every", 1]


def cli(monkeypatch, capsys, out_dir, *extra):
    """train.py's command line in this process: (exit status, stdout, stderr)."""
    import train
    monkeypatch.setattr(sys, "argv", ["train.py", *TINY_TRAIN_ARGS, "--out_dir", str(out_dir), *map(str, extra)])
    with pytest.raises(SystemExit) as e:
        train.cli()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def start_train(out_dir, *extra, **popen):
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *TINY_TRAIN_ARGS, "--out_dir", str(out_dir), *map(str, extra)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_step(out_dir, step, proc, timeout=300):
    log, deadline = Path(out_dir) / "train.log", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and f"step {step:5d}/" in log.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} never logged; exit status {proc.poll()}")


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder, "checkpoints").iterdir())}


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A finished 2-step run (step files 1 and 2, latest = 2); tests work on copies."""
    return finished_run(tmp_path_factory, "two_steps", "--max_steps", 2, *QUICK)


# ----------------------------------------------------------------------------- loss of data
def test_resume_0_refuses_a_folder_that_holds_a_run_and_overwrite_replaces_it(run_copy):
    before, log_before = snapshot(run_copy), (run_copy / "train.log").read_text()
    old_id = json.loads((run_copy / "run.json").read_text())["run_id"]
    r = run_train(run_copy, "--max_steps", 1, *QUICK, check=False)
    assert r.returncode == 2
    line = one_line_error(r.stderr)
    assert "checkpoint_step_2.pt" in line and "--resume 1" in line and "--out_dir" in line and "--overwrite 1" in line
    assert snapshot(run_copy) == before and (run_copy / "train.log").read_text() == log_before

    r = run_train(run_copy, "--max_steps", 1, *QUICK, "--overwrite", 1)
    assert "Starting from scratch" in r.stdout and "OVERWRITE: deleted the earlier run" in r.stdout
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["checkpoint_latest.pt", "checkpoint_step_1.pt"]
    assert json.loads((run_copy / "run.json").read_text())["run_id"] != old_id
    assert "Starting from scratch" in (run_copy / "train.log").read_text().split("OVERWRITE")[0]  # a fresh log


def _rewrite_latest(folder, change):
    """Replace checkpoint_latest.pt (a hard link to the step file: unlink it first) by a changed copy."""
    latest = folder / "checkpoints" / "checkpoint_latest.pt"
    ckpt = load_checkpoint(str(latest))
    latest.unlink()
    change(ckpt)
    save_checkpoint(str(latest), ckpt)


@pytest.mark.parametrize("defect,reason", [
    ("lacks_keys", "lacks optimizer"),
    ("nonfinite", "non-finite weights"),
    ("other_run", "written by another run"),
])
def test_a_bad_latest_falls_back_to_the_newest_good_step_file_of_the_same_run(run_copy, defect, reason):
    ckpts = run_copy / "checkpoints"
    # A newer step file written by another run: must never be picked up.
    foreign = load_checkpoint(str(ckpts / "checkpoint_step_2.pt"))
    foreign.update(global_step=5, run_id="0123456789abcdef")
    save_checkpoint(str(ckpts / "checkpoint_step_5.pt"), foreign)
    changes = {"lacks_keys": lambda c: c.pop("optimizer"),
               "nonfinite": lambda c: c["model"]["model.norm.weight"].fill_(float("nan")),
               "other_run": lambda c: c.update(run_id="fedcba9876543210")}
    _rewrite_latest(run_copy, changes[defect])
    r = run_train(run_copy, "--max_steps", 2, "--resume", 1)
    assert "RESUME: starting from global_step=2 (loaded checkpoint_step_2.pt)" in r.stdout
    assert reason in r.stderr and "checkpoint_step_5.pt written by another run" in r.stderr
    assert "Traceback" not in r.stderr


def test_no_usable_checkpoint_lists_every_file_and_why(run_copy, monkeypatch, capsys):
    ckpts = run_copy / "checkpoints"
    for name in ("checkpoint_latest.pt", "checkpoint_step_2.pt"):
        (ckpts / name).unlink()
        (ckpts / name).write_bytes(b"garbage")
    step1 = load_checkpoint(str(ckpts / "checkpoint_step_1.pt"))
    step1.pop("rng")
    save_checkpoint(str(ckpts / "checkpoint_step_1.pt"), step1)
    # In this process (a refusal before the first step; anything but SystemExit would fail the test): the
    # subprocess path of the same refusals is test_resume_0_refuses_a_folder_that_holds_a_run_....
    code, _, err = cli(monkeypatch, capsys, run_copy, "--max_steps", 3, "--resume", 1)
    assert code == 2
    line = [l for l in err.splitlines() if l.startswith("train.py: error: ")][0]
    assert "Traceback" not in err and "train with --resume 0 first" not in err
    assert "checkpoint_latest.pt is not a readable checkpoint" in line
    assert "checkpoint_step_2.pt is not a readable checkpoint" in line and "checkpoint_step_1.pt lacks rng" in line


def test_second_run_on_a_folder_is_refused_and_a_killed_run_leaves_it_free(tmp_path):
    first = start_train(tmp_path, "--max_steps", 200, "--log_every", 1, "--save_every", 1000)
    try:
        wait_for_step(tmp_path, 1, first)
        r = run_train(tmp_path, "--max_steps", 1, check=False)
        assert r.returncode == 2
        line = one_line_error(r.stderr)
        assert "in use by another training run" in line and f"pid {first.pid}" in line
    finally:
        first.kill()  # SIGKILL: the kernel drops the lock with the process
        first.communicate()
    assert (tmp_path / "train.log").read_text().count("SmolLM2 from-scratch training") == 1  # B wrote nothing
    folder = run.RunFolder(str(tmp_path))
    folder.open(primary=True)  # the killed run left the folder free
    folder.close()


def test_nothing_non_finite_is_saved_and_the_run_exits_1(tmp_path):
    # lr 1e30: step 1 is finite, step 2's gradient norm is NaN while its loss (computed before the update) is not.
    r = run_train(tmp_path, "--max_steps", 4, "--max_lr", 1e30, "--warmup_steps", 0, "--log_every", 100,
                  "--save_every", 1, check=False)
    assert r.returncode == 1
    assert "non-finite loss or gradient norm by step 2" in one_line_error(r.stderr)
    ckpts = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["checkpoint_latest.pt", "checkpoint_step_1.pt"]
    for name in os.listdir(ckpts):
        ckpt = load_checkpoint(str(ckpts / name))
        assert ckpt["global_step"] == 1 and not nonfinite_names(ckpt["model"])


def test_train_step_flag_catches_a_nonfinite_norm_without_a_sync_per_step():
    from smollm2_config import get_config
    from smollm2_model import SmolLM2ForCausalLM
    from smollm2.training import StepConfig, TrainStep, build_optimizer

    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(get_config("tiny"))
    cpu = torch.device("cpu")
    step = TrainStep(model, model, build_optimizer(model, 3e-4, 0.1, cpu), StepConfig(grad_clip=1.0, fused_loss=True), cpu)
    x = torch.randint(0, 1000, (1, 1, 8))
    step(x, x)
    assert step.all_finite()
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    step(x, x)
    step(x, x)
    assert not step.all_finite()  # stays false: every step since the start is covered


def test_resume_refuses_what_breaks_exact_continuation(run_copy, monkeypatch, capsys):
    # In this process, like the other refusals before the first step (see test_no_usable_checkpoint_...).
    log_before = (run_copy / "train.log").read_text()
    changed = dict(seed=7, seq_len=16, batch_size=1, grad_accum=3, val_fraction=0.2, max_lr=1e-3, warmup_steps=2)
    flags = [a for k, v in changed.items() for a in (f"--{k}", v)]
    code, _, err = cli(monkeypatch, capsys, run_copy, "--max_steps", 3, "--resume", 1, *flags)
    assert code == 2 and "Traceback" not in err
    for line in ("seed: 1337 -> 7", "seq_len: 32 -> 16", "batch_size: 2 -> 1", "grad_accum x world_size: 2 -> 3",
                 "val_fraction: 0.1 -> 0.2", "max_lr: 0.0003 -> 0.001", "warmup_steps: 5 -> 2"):
        assert f"\n  {line}\n" in err, (line, err)
    assert "--allow_config_change 1" in err
    assert (run_copy / "train.log").read_text() == log_before

    code, _, err = cli(monkeypatch, capsys, run_copy, "--max_steps", 3, "--resume", 1, "--model_impl", "hf")
    assert code == 2 and "Traceback" not in err and "model_impl: 'ours' -> 'hf'" in err


@pytest.mark.parametrize("what", ["corpus", "tokenizer"])
def test_resume_refuses_other_data(run_copy, tmp_path, what, monkeypatch, capsys):
    if what == "corpus":
        other = tmp_path / "corpus.txt"
        other.write_text(CORPUS.read_text(encoding="utf-8")[:200_000] + "\nAn edit.\n", encoding="utf-8")
        flag = ["--input_file", other]
    else:  # the same vocabulary, another definition (a normalizer): another fingerprint
        spec = json.loads(TOKENIZER_JSON.read_text(encoding="utf-8"))
        spec["normalizer"] = {"type": "NFC"}
        other = tmp_path / "tokenizer.json"
        other.write_text(json.dumps(spec), encoding="utf-8")
        flag = ["--tokenizer_id", other]
    code, _, err = cli(monkeypatch, capsys, run_copy, "--max_steps", 3, "--resume", 1, *flag)  # in this process
    assert code == 2 and "Traceback" not in err
    assert "data.fingerprint: '" in err
    assert "step     3/" not in (run_copy / "train.log").read_text()


def test_resume_logs_allowed_changes_and_forced_ones_as_warnings(run_copy):
    r = run_train(run_copy, "--max_steps", 3, "--resume", 1, "--log_every", 3, "--seed", 7,
                  "--allow_config_change", 1)
    log = (run_copy / "train.log").read_text()
    assert "CHANGED on resume: max_steps: 2 -> 3" in log and "CHANGED on resume: log_every: 1 -> 3" in log
    assert "WARNING: --allow_config_change 1: seed: 1337 -> 7" in log
    assert "RESUME: starting from global_step=2" in r.stdout


def test_every_train_flag_has_a_resume_rule():
    import train
    for name in vars(train.parse_args([])):
        assert name in RULES, f"--{name} has no entry in smollm2.run.RULES"
    assert rule("model.hidden_size") == FIXED and rule("data.fingerprint") == REFUSED and rule("resume") == IGNORED


@pytest.mark.parametrize("flags,words", [
    (["--grad_clip", "nan"], "--grad_clip must be a finite number"),
    (["--max_lr", "inf"], "--max_lr must be a finite number"),
    (["--weight_decay", "nan"], "--weight_decay must be a finite number"),
    (["--weight_decay", "inf"], "--weight_decay must be a finite number"),
    (["--min_lr", "nan"], "--min_lr must be a finite number"),
    (["--val_fraction", "1.5"], "--val_fraction must be in [0, 1)"),
    (["--seed", "-1"], "--seed must be in [0, 2**63 - 1]"),
    (["--seed", str(2**64)], "--seed must be in [0, 2**63 - 1]"),
    (["--overwrite", "1", "--resume", "1"], "pass one of them"),
])
def test_every_numeric_flag_is_checked_up_front(monkeypatch, capsys, tmp_path, flags, words):
    code, _, err = cli(monkeypatch, capsys, tmp_path / "out", "--max_steps", 2, *flags)
    assert code == 2 and words in one_line_error(err)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- compute lost to crashes
def test_sighup_finishes_the_step_saves_and_exits_0(tmp_path):
    proc = start_train(tmp_path, "--max_steps", 200, "--log_every", 1, "--save_every", 1000)
    wait_for_step(tmp_path, 2, proc)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "STOP: SIGHUP received" in out
    assert load_checkpoint(str(tmp_path / "checkpoints" / "checkpoint_latest.pt"))["global_step"] >= 2


def test_closed_stdout_does_not_stop_training(tmp_path):
    proc = start_train(tmp_path, "--max_steps", 3, "--log_every", 1, "--save_every", 3)
    proc.stdout.readline()
    proc.stdout.close()  # `train.py | head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    log = (tmp_path / "train.log").read_text()
    assert "step     3/3" in log and "DONE:" in log


def test_unwritable_folders_are_found_before_the_first_step(monkeypatch, capsys, tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    code, _, err = cli(monkeypatch, capsys, afile, "--max_steps", 2)
    assert code == 2 and "exists and is not a folder" in one_line_error(err) and afile.read_text() == "not a folder"

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("")
    code, _, err = cli(monkeypatch, capsys, tmp_path / "run", "--max_steps", 2)
    assert code == 2 and "checkpoint folder" in one_line_error(err) and not (tmp_path / "run" / "train.log").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_checkpoints_are_found_before_the_first_step(monkeypatch, capsys, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints").chmod(0o555)
    try:
        code, _, err = cli(monkeypatch, capsys, tmp_path, "--max_steps", 2)
    finally:
        (tmp_path / "checkpoints").chmod(0o755)
    assert code == 2 and "cannot write in" in one_line_error(err)


def test_sample_longer_than_the_positions_is_found_before_the_first_step(monkeypatch, capsys, tmp_path):
    code, out, err = cli(monkeypatch, capsys, tmp_path, "--max_steps", 2, "--sample_every", 1, "--sample_tokens", 2000)
    assert code == 2 and "positions" in one_line_error(err) and "step " not in out


def test_tokenizer_larger_than_the_embedding_is_found_before_the_first_step(monkeypatch, capsys, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {f"w{i}": i for i in range(50_000)}
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "big.json"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    code, out, err = cli(monkeypatch, capsys, tmp_path / "out", "--max_steps", 2, "--tokenizer_id", tmp_path / "big.json",
                         "--input_file", corpus)
    assert code == 2 and "50,001 ids" in one_line_error(err) and "step " not in out


def test_stale_temporaries_are_removed_at_start_and_only_those(tmp_path):
    dead = 4_194_304 + 12345  # above any pid_max: no such process
    stale = [tmp_path / "checkpoints" / f"checkpoint_step_10.pt.tmp.{dead}",
             tmp_path / "checkpoints" / f"checkpoint_latest.pt.tmp.{dead}",
             tmp_path / "cache" / f"tokens-abc.u16.tmp.{dead}", tmp_path / f"run.json.tmp.{dead}"]
    kept = [tmp_path / "checkpoints" / f"checkpoint_step_20.pt.tmp.{os.getpid()}",  # a live writer's
            tmp_path / "checkpoints" / "notes.txt", tmp_path / "cache" / "tokens-abc.u16"]
    for p in stale + kept:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    folder = run.RunFolder(str(tmp_path))
    folder.open(primary=True)
    folder.close()
    assert not [p for p in stale if p.exists()] and all(p.exists() for p in kept)


OUT_OF_MEMORY = r"""
import sys, torch
sys.path.insert(0, {repo!r})
import train
def step(self, *a):
    if {what!r} == "cpu":
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 80000000000 bytes. Error code 12 (Cannot allocate memory)")
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
train.TrainStep.__call__ = step
sys.argv = ["train.py"] + {args!r}
train.cli(fast_exit=True)
"""


@pytest.mark.parametrize("what", ["cpu", "cuda"])
def test_out_of_memory_says_what_to_lower(tmp_path, what):
    args = [*TINY_TRAIN_ARGS, "--out_dir", str(tmp_path), "--max_steps", "2"]
    r = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY.format(repo=str(REPO_ROOT), what=what, args=args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    line = one_line_error(r.stderr)
    assert "out of memory" in line and "--batch_size" in line and "--seq_len" in line


def test_file_size_limit_during_a_save_is_one_line_and_leaves_no_temporary(tmp_path):
    limit = 20 << 20  # the tiny model's checkpoint is about 38 MB
    r = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *TINY_TRAIN_ARGS, "--out_dir", str(tmp_path), "--max_steps", "1"],
                       capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert r.returncode == 1
    assert "File too large" in one_line_error(r.stderr)
    assert os.listdir(tmp_path / "checkpoints") == []


def test_non_regular_corpus_is_refused_instead_of_hanging(tmp_path):
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)
    r = run_train(tmp_path / "out", "--max_steps", 1, "--input_file", fifo, check=False, timeout=120)
    assert r.returncode == 2 and "not a regular file" in one_line_error(r.stderr)


# ----------------------------------------------------------------------------- clear words, other scripts
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from smollm2_config import get_config
    from smollm2_model import SmolLM2ForCausalLM

    torch.manual_seed(3)
    cfg = get_config("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(str(path), dict(global_step=1, model=SmolLM2ForCausalLM(cfg).state_dict(),
                                    model_config=cfg.to_dict(), args={}))
    return path


def export(ckpt, out_dir, capsys):
    import export_hf
    with pytest.raises(SystemExit) as e:
        export_hf.cli(["--checkpoint", str(ckpt), "--out_dir", str(out_dir), "--tokenizer_id", str(TOKENIZER_JSON)])
    return e.value.code, capsys.readouterr().err


def test_export_names_a_folder_and_a_nonfinite_checkpoint(tmp_path, tiny_checkpoint, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run_dir / "checkpoints" / "checkpoint_latest.pt")
    code, err = export(run_dir, tmp_path / "hf", capsys)
    assert code == 2 and "is a folder, not a checkpoint file" in err and "does not exist" not in err
    assert "checkpoints/checkpoint_latest.pt" in err

    ckpt = load_checkpoint(str(tiny_checkpoint))
    ckpt["model"]["model.embed_tokens.weight"][0, 0] = float("nan")  # the tied matrix: once a "tie mismatch"
    save_checkpoint(str(tmp_path / "nan.pt"), ckpt)
    code, err = export(tmp_path / "nan.pt", tmp_path / "hf", capsys)
    assert code == 2 and "non-finite weights" in err and "differs" not in err
    assert not (tmp_path / "hf").exists()


def test_failed_export_leaves_the_earlier_export_whole(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    import smollm2.hf
    out = tmp_path / "hf"
    assert export(tiny_checkpoint, out, capsys)[0] == 0
    (out / "NOTES.md").write_text("the user's own file")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    newer = load_checkpoint(str(tiny_checkpoint))
    newer["model"] = {k: v * 0.5 for k, v in newer["model"].items()}
    save_checkpoint(str(tmp_path / "newer.pt"), newer)

    def broken_tokenizer(_):  # fails after the new weights are written: midway through the export
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(smollm2.hf, "hf_tokenizer", broken_tokenizer)
    code, err = export(tmp_path / "newer.pt", out, capsys)
    assert code == 2 and "No space left" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["hf", "newer.pt"]  # no temporary folder left beside it

    monkeypatch.undo()
    assert export(tmp_path / "newer.pt", out, capsys)[0] == 0
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert (out / "NOTES.md").read_text() == "the user's own file"  # swapped in, the user's file carried over


def test_sanity_check_bad_seq_len_is_one_line(repo_root):
    r = subprocess.run([sys.executable, "sanity_check.py", "--model", "tiny", "--seq_len", "5000"], cwd=repo_root,
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "exceeds the 1024 positions" in lines[0], r.stderr
    assert "FAIL" not in r.stdout


def test_sanity_check_loss_comparison_has_an_offline_default(tmp_path, tokenizer_json_path, capsys, monkeypatch,
                                                          tiny_model):
    # A fresh offline clone: no input.txt where it runs. In-process, with a tiny HF folder as the weights.
    import sanity_check
    from smollm2.hf import to_hf_model

    to_hf_model(tiny_model).save_pretrained(tmp_path / "tiny_hf")
    monkeypatch.chdir(tmp_path)
    rc = sanity_check.main(["--model", "tiny", "--compare_pretrained", "--seq_len", "16",
                            "--pretrained_source", str(tmp_path / "tiny_hf"), "--tokenizer_id", str(tokenizer_json_path)])
    out = capsys.readouterr().out
    row = [l for l in out.splitlines() if l.startswith("loss on first 1024 ids vs transformers")][-1]
    assert " PASS " in row and "text README.md" in row
    assert rc == 1  # the random tiny weights do not say " Paris"; every other row passes
    assert "11/12 checks passed, 1 FAILED" in out and "FAIL  greedy" in out


@pytest.mark.parametrize("content", [os.urandom(4096), "just some text, not a training log\n".encode()],
                         ids=["random_bytes", "text"])
def test_update_readme_refuses_a_log_it_cannot_parse(tmp_path, content):
    readme = "<!-- TRAIN_LOG_BEGIN -->\n<!-- TRAIN_LOG_END -->\n<!-- ABLATION_TABLE_BEGIN -->\n<!-- ABLATION_TABLE_END -->\n"
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "train.log").write_bytes(content)
    r = subprocess.run([sys.executable, str(REPO_ROOT / "update_readme.py"), "--train_log", "train.log"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "README.md").read_text() == readme
    assert not (tmp_path / "out_smollm2_scratch").exists()  # no plot either


def test_checkpoints_are_written_without_crc_and_a_torn_one_still_fails_to_load(tmp_path):
    # save_checkpoint skips torch.save's CRC32 (torch.load never checks it; it was half of a 1.6 GB write),
    # for its own write only. The content reads back exactly; a file cut short is refused in one line.
    import zipfile

    from smollm2.checkpoint import CheckpointError
    from torch.utils.serialization import config
    state = {"model": {"w": torch.randn(64, 32)}, "optimizer": {"m": torch.randn(100)}, "global_step": 3}
    path = tmp_path / "c.pt"
    save_checkpoint(str(path), state)
    assert config.save.compute_crc32  # the global setting is left as it was
    records = [i for i in zipfile.ZipFile(path).infolist() if i.filename.split("/")[-2:-1] == ["data"]]
    assert records and all(i.CRC == 0 for i in records)
    back = load_checkpoint(str(path))
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["global_step"] == 3
    torn = tmp_path / "torn.pt"
    torn.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(str(torn))
