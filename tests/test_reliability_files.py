"""Never lose a file or a step: a full disk between saves, concurrent preparation,
exports over a user's folder, and the last tracebacks. One test per class of failure, CPU, tiny preset, a few
steps each; docs/reliability.md lists each promise beside its test."""

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPUS, REPO_ROOT, TINY_TRAIN_ARGS, TOKENIZER_JSON, copy_into, finished_run, one_line_error, run_train

from smollm2.checkpoint import load_checkpoint

QUICK = ["--log_every", 1, "--save_every", 2]


def metrics_lines(folder) -> list[dict]:
    text = (Path(folder) / "metrics.jsonl").read_text()
    assert text.endswith("\n"), text[-300:]
    return [json.loads(line) for line in text.splitlines()]  # every line whole: none torn


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A finished 2-step run (latest = step 2) with its token cache; tests work on copies."""
    return finished_run(tmp_path_factory, "two_steps", "--max_steps", 2, *QUICK)


# ----------------------------------------------------------------------------- the disk fills between saves
def test_a_full_disk_between_saves_is_a_clean_stop_with_no_torn_line(run_copy):
    latest = (run_copy / "checkpoints" / "checkpoint_latest.pt").read_bytes()
    # A per-file limit a few log lines above train.log's size: the log (or metrics.jsonl) hits it mid-line
    # some steps into the resumed run, long before the next save (and any save would hit it too).
    limit = max(os.path.getsize(run_copy / n) for n in ("train.log", "metrics.jsonl")) + 4000
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *TINY_TRAIN_ARGS, "--out_dir", str(run_copy),
           "--max_steps", "300", "--log_every", "1", "--save_every", "0", "--resume", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert r.returncode == 1, r.stderr[-2000:]
    line = one_line_error(r.stderr)
    assert "could not write" in line and "File too large" in line and "--resume 1" in line
    assert "free disk space" in line
    # The save at the stop could not land either: the latest is the one from before, whole.
    assert (run_copy / "checkpoints" / "checkpoint_latest.pt").read_bytes() == latest
    assert not [p for p in run_copy.rglob("*.tmp.*")]
    events = metrics_lines(run_copy)
    assert not (run_copy / "train.log").read_text().endswith(("|", " ")) and \
        (run_copy / "train.log").read_text().endswith("\n")

    # The next run in the folder appends after whole lines and continues from step 2.
    r = run_train(run_copy, "--max_steps", 4, *QUICK, "--resume", 1)
    assert "RESUME: starting from global_step=2" in r.stdout
    events = metrics_lines(run_copy)
    assert [e["step"] for e in events if e["event"] == "train"][-2:] == [3, 4]


def test_a_torn_metrics_line_is_set_aside_before_the_next_run_appends(run_copy):
    with open(run_copy / "metrics.jsonl", "ab") as f:
        f.write(b'{"event": "train", "step": 3, "lr": 0.0001, "lo')  # a line cut short by a killed run
    r = run_train(run_copy, "--max_steps", 3, *QUICK, "--resume", 1)
    assert "REPAIRED: the last line of metrics.jsonl" in r.stdout
    events = metrics_lines(run_copy)
    assert events[-1]["event"] == "wall" and any(e["event"] == "train" and e["step"] == 3 for e in events)
    assert (run_copy / "metrics.jsonl.torn").read_bytes() == b'{"event": "train", "step": 3, "lr": 0.0001, "lo\n'
    from smollm2.metrics import read_events, summarize
    assert summarize(read_events(str(run_copy / "train.log"))).train[-1][0] == 3


def test_a_damaged_token_cache_in_the_run_folder_is_rebuilt(run_copy):
    shard = next((run_copy / "cache").glob("data-*/train_00000.bin"))
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = run_train(run_copy, "--max_steps", 3, *QUICK, "--resume", 1)
    assert "is damaged" in r.stdout and "rebuilding it" in r.stdout
    assert "RESUME: starting from global_step=2" in r.stdout  # the same fingerprint: the resume is accepted
    assert shard.read_bytes() != bytes(data)


@pytest.mark.parametrize("errno_name,words", [("ENOSPC", "free disk space"), ("EFBIG", "file-size limit"),
                                               ("EACCES", "make /x/checkpoints writable"),
                                               ("EROFS", "make /x/checkpoints writable")])
def test_a_failed_write_is_advised_by_what_the_error_is(errno_name, words):
    import errno
    from smollm2.io import write_failure_advice
    advice = write_failure_advice(OSError(getattr(errno, errno_name), "x"), "/x/checkpoints")
    assert words in advice
    if errno_name in ("EACCES", "EROFS"):
        assert "disk space" not in advice


# ----------------------------------------------------------------------------- preparation: one writer, whole shards
def prepare_cmd(out_dir, *extra):
    return [sys.executable, str(REPO_ROOT / "prepare_data.py"), str(CORPUS), "--out_dir", str(out_dir),
            "--tokenizer_id", str(TOKENIZER_JSON), "--workers", "0", "--quiet", "--shard_tokens", "100000",
            *map(str, extra)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """input.txt prepared into two train shards (seed 1); tests work on copies."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    subprocess.run(prepare_cmd(out, "--seed", 1), check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture
def data_copy(prepared, tmp_path):
    return copy_into(prepared, tmp_path)


def shard_bytes(folder):
    """The shards and the manifest (the seed picks held-out documents; input.txt is one, so it changes only this)."""
    return {p.name: p.read_bytes() for p in sorted([*Path(folder).glob("*.bin"), Path(folder) / "manifest.json"])}


def test_a_folder_a_run_reads_is_not_prepared_again_under_it(data_copy):
    from smollm2.data import open_prepared
    from smollm2.tokenizer import load_tokenizer
    before = shard_bytes(data_copy)
    dataset = open_prepared(str(data_copy), load_tokenizer(str(TOKENIZER_JSON), log=lambda m: None))
    try:
        r = subprocess.run(prepare_cmd(data_copy, "--seed", 2, "--overwrite", 1), capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2
        assert "being read by a training run" in one_line_error(r.stderr)
        assert shard_bytes(data_copy) == before
        r = subprocess.run(prepare_cmd(data_copy, "--seed", 1), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "up to date" in r.stdout  # the same job: nothing to rewrite
    finally:
        dataset.lock.close()
    r = subprocess.run(prepare_cmd(data_copy, "--seed", 2, "--overwrite", 1), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and shard_bytes(data_copy) != before  # once the run is gone


def test_two_preparations_never_share_a_folder(data_copy):
    from smollm2.shards import FolderLock
    before = shard_bytes(data_copy)
    writer = FolderLock(str(data_copy), exclusive=True)  # as a preparation running now holds it
    try:
        r = subprocess.run(prepare_cmd(data_copy, "--seed", 2, "--overwrite", 1), capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2
        line = one_line_error(r.stderr)
        assert "being prepared by another process" in line and f"pid {os.getpid()}" in line
        assert shard_bytes(data_copy) == before
        r = run_train(data_copy.parent / "run", "--max_steps", 1, "--input_file", data_copy, check=False)
        assert r.returncode == 2 and "being prepared" in one_line_error(r.stderr)  # a run does not read it half-made
    finally:
        writer.close()


@pytest.mark.parametrize("damage", ["deleted", "flipped"])
def test_a_missing_or_damaged_shard_is_rebuilt_by_the_same_command(data_copy, damage):
    before = shard_bytes(data_copy)
    shard = data_copy / "train_00001.bin"
    if damage == "deleted":
        shard.unlink()
    else:
        st, data = shard.stat(), bytearray(shard.read_bytes())
        data[5000] ^= 0xFF
        shard.write_bytes(bytes(data))
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were
    r = subprocess.run(prepare_cmd(data_copy, "--seed", 1), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "rebuilding" in r.stdout and "up to date" not in r.stdout
    assert shard_bytes(data_copy) == before


def test_a_shard_changed_with_its_mtime_restored_is_caught_by_the_next_run(data_copy, tmp_path):
    from smollm2.data import open_prepared
    from smollm2.shards import DataError
    from smollm2.tokenizer import load_tokenizer
    tok, verified = load_tokenizer(str(TOKENIZER_JSON), log=lambda m: None), str(tmp_path / "verified.json")
    open_prepared(str(data_copy), tok, verified).lock.close()  # a first run: every shard hashed and recorded
    shard = data_copy / "train_00001.bin"
    st, data = shard.stat(), bytearray(shard.read_bytes())
    data[7000] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match="does not match its sha256"):
        open_prepared(str(data_copy), tok, verified)


def test_a_users_own_manifest_is_never_called_a_dataset_nor_deleted(tmp_path):
    (tmp_path / "manifest.json").write_text('{"name": "my project", "files": []}\n')
    r = subprocess.run(prepare_cmd(tmp_path, "--overwrite", 1), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    line = one_line_error(r.stderr)
    assert "did not write" in line and "other inputs" not in line
    assert (tmp_path / "manifest.json").read_text() == '{"name": "my project", "files": []}\n'


# ----------------------------------------------------------------------------- what a directory input reads
def test_a_folder_that_links_to_itself_is_walked_once(tmp_path):
    from smollm2.sources import expand_inputs
    (tmp_path / "a.txt").write_text("one document")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("another")
    os.symlink(".", tmp_path / "self")
    os.symlink("a.txt", tmp_path / "alias.txt")  # the same file by another name: once
    assert expand_inputs([str(tmp_path)]) == [str(tmp_path / "a.txt"), str(tmp_path / "sub" / "b.txt")]


def test_a_directory_input_lists_what_it_skipped(tmp_path):
    from smollm2.sources import expand_inputs
    (tmp_path / "doc.txt").write_text("read")
    for name in ("notes.json", "table.csv", "old.txt.gz"):
        (tmp_path / name).write_text("not read")
    said = []
    assert expand_inputs([str(tmp_path)], said.append) == [str(tmp_path / "doc.txt")]
    assert len(said) == 1 and "skipped 3 file(s)" in said[0]
    assert all(name in said[0] for name in ("notes.json", "table.csv", "old.txt.gz"))


def test_a_run_folder_inside_its_input_folder_is_not_read_as_input(tmp_path, corpus_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(corpus_path, corpus / "input.txt")
    run_train(corpus / "run", "--max_steps", 1, *QUICK, "--input_file", corpus)  # writes run/metrics.jsonl
    r = run_train(corpus / "run", "--max_steps", 2, *QUICK, "--input_file", corpus, "--resume", 1)
    assert "RESUME: starting from global_step=1" in r.stdout  # same data: the run's files are not inputs


# ----------------------------------------------------------------------------- exports, the app
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch
    from smollm2.checkpoint import save_checkpoint
    from smollm2_config import get_config
    from smollm2_model import SmolLM2ForCausalLM

    torch.manual_seed(3)
    cfg = get_config("tiny")
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "checkpoint_latest.pt"
    corpus = str(folder / "private" / "corpus.txt")
    save_checkpoint(str(path), dict(global_step=1, model=SmolLM2ForCausalLM(cfg).state_dict(),
                                    model_config=cfg.to_dict(), args={"model": "tiny", "input_file": corpus},
                                    metrics={"data": f"{folder}/run/cache/data-0123: 1,000 tokens", "device": "cpu"}))
    return path


def export(ckpt, out_dir, capsys, *extra):
    import export_hf
    with pytest.raises(SystemExit) as e:
        export_hf.cli(["--checkpoint", str(ckpt), "--out_dir", str(out_dir), "--tokenizer_id", str(TOKENIZER_JSON),
                       *extra])
    return e.value.code, capsys.readouterr().err


def test_export_refuses_a_folder_that_is_not_an_earlier_export(tmp_path, tiny_checkpoint, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    own = {"README.md": "my project", "config.json": '{"mine": true}', "notes.txt": "notes"}
    for name, text in own.items():
        (mine / name).write_text(text)
    code, err = export(tiny_checkpoint, mine, capsys)
    assert code == 2 and "not an earlier export" in err and "README.md, config.json, notes.txt" in err
    assert {p.name: p.read_text() for p in mine.iterdir()} == own
    code, err = export(tiny_checkpoint, mine, capsys, "--overwrite")
    assert code == 0 and (mine / "notes.txt").read_text() == "notes" and (mine / "model.safetensors").exists()
    code, err = export(tiny_checkpoint, mine, capsys)  # now an earlier export: replaced without asking
    assert code == 0


KILLED_SWAP = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import export_hf
real_replace, real_swap, calls = os.replace, export_hf.swap_in, []
def replace(a, b):
    calls.append(a)
    if len(calls) == 2:  # SIGKILL between two renames of the swap
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(a, b)
def swap(*a):
    os.replace = replace
    real_swap(*a)
export_hf.swap_in = swap
export_hf.main({args!r})
"""


def test_a_kill_during_the_export_swap_never_strands_the_users_files(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "hf"
    assert export(tiny_checkpoint, out, capsys)[0] == 0
    (out / "NOTES.md").write_text("the user's own file")
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    args = ["--checkpoint", str(tiny_checkpoint), "--out_dir", str(out), "--tokenizer_id", str(TOKENIZER_JSON)]
    r = subprocess.run([sys.executable, "-c", KILLED_SWAP.format(repo=str(REPO_ROOT), args=args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9
    assert (out / "NOTES.md").read_text() == "the user's own file" and (out / ".git" / "HEAD").exists()
    assert export(tiny_checkpoint, out, capsys)[0] == 0  # deletes the killed export's temporary
    assert (out / "NOTES.md").read_text() == "the user's own file" and (out / ".git" / "HEAD").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_every_exported_file_is_readable_by_all(tmp_path, tiny_checkpoint, capsys):
    old = os.umask(0o022)
    try:
        assert export(tiny_checkpoint, tmp_path / "hf", capsys)[0] == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_the_card_summary_and_panel_publish_no_local_path(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "hf"
    assert export(tiny_checkpoint, out, capsys)[0] == 0
    private = [str(tiny_checkpoint.parent), str(TOKENIZER_JSON.parent), str(tmp_path)]
    for name in ("README.md", "training_summary.json"):
        text = (out / name).read_text()
        assert not [p for p in private if p in text], (name, text)
    facts = json.loads((out / "training_summary.json").read_text())
    assert facts["source"] == "checkpoint_latest.pt" and facts["tokenizer"] == "tokenizer.json"
    assert facts["data"]["input_file"] == "corpus.txt" and facts["data"]["description"].startswith("data-0123:")

    import app
    import torch
    from smollm2.checkpoint import load_checkpoint
    from smollm2.hub import training_facts
    from smollm2_config import get_config
    from smollm2_model import SmolLM2ForCausalLM
    model = SmolLM2ForCausalLM(get_config("tiny"))
    facts = training_facts(load_checkpoint(str(tiny_checkpoint)), model, str(TOKENIZER_JSON), str(tiny_checkpoint))
    shown = app.panel(app.Loaded("x", model, None, facts, torch.device("cpu")))
    assert not [p for p in private if p in shown], shown


def test_the_app_offers_every_model_under_its_own_label(tmp_path, tiny_checkpoint, monkeypatch):
    import app
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        shutil.copy(tiny_checkpoint, tmp_path / run / "checkpoint_latest.pt")
    offered = {}

    class Demo:
        def queue(self, **kw):
            pass

        def launch(self, **kw):
            pass

    def build(models, *a):
        offered.update(models.sources)
        return Demo()
    monkeypatch.setattr(app, "build", build)
    monkeypatch.setattr(app.Models, "get", lambda self, label: None)
    paths = [str(tmp_path / "a" / "checkpoint_latest.pt"), str(tmp_path / "b" / "checkpoint_latest.pt")]
    assert app.main(["--model", paths[0], "--model", paths[1], "--model", paths[0], "--device", "cpu"]) == 0
    assert offered == {"a/checkpoint_latest.pt (checkpoint)": (paths[0], None),
                       "b/checkpoint_latest.pt (checkpoint)": (paths[1], None)}


# ----------------------------------------------------------------------------- resume
def test_without_run_json_a_resume_still_never_adopts_another_runs_step_file(run_copy):
    from smollm2.checkpoint import save_checkpoint
    ckpts = run_copy / "checkpoints"
    own_id = json.loads((run_copy / "run.json").read_text())["run_id"]
    foreign = load_checkpoint(str(ckpts / "checkpoint_step_2.pt"))
    foreign.update(global_step=5, run_id="0123456789abcdef")
    save_checkpoint(str(ckpts / "checkpoint_step_5.pt"), foreign)
    (ckpts / "checkpoint_latest.pt").unlink()  # a hard link to step 2: unlink before writing garbage
    (ckpts / "checkpoint_latest.pt").write_bytes(b"not a checkpoint" * 100)
    (run_copy / "run.json").unlink()
    r = run_train(run_copy, "--max_steps", 3, *QUICK, "--resume", 1)
    assert "RESUME: starting from global_step=2" in r.stdout and "written by another run" in r.stderr
    assert json.loads((run_copy / "run.json").read_text())["run_id"] == own_id


def test_random_bytes_are_called_not_a_checkpoint_without_torchs_advice(run_copy):
    ckpts = run_copy / "checkpoints"
    for p in ckpts.iterdir():
        p.unlink()
        p.write_bytes(os.urandom(4096))
    r = run_train(run_copy, "--max_steps", 3, *QUICK, "--resume", 1, check=False)
    assert r.returncode == 2
    line = one_line_error(r.stderr.split("\n")[-2] + "\n")  # the error line, after the fallback warnings
    assert "(not a checkpoint:" in line and "weights_only" not in line and "arbitrary code" not in line
    assert "weights_only" not in r.stderr


# ----------------------------------------------------------------------------- one line, not a traceback
def test_a_tokenizer_that_is_a_fifo_is_refused_instead_of_hanging(tmp_path):
    fifo = tmp_path / "tokenizer.fifo"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *TINY_TRAIN_ARGS, "--out_dir", str(tmp_path / "out"),
                        "--max_steps", "1", "--tokenizer_id", str(fifo)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a regular file" in one_line_error(r.stderr)


def test_a_seed_beyond_64_bits_is_one_line(tmp_path, tiny_checkpoint):
    r = subprocess.run([sys.executable, str(REPO_ROOT / "generate.py"), "--checkpoint", str(tiny_checkpoint),
                        "--tokenizer_id", str(TOKENIZER_JSON), "--seed", str(2**64), "--max_new_tokens", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--seed" in r.stderr and "Traceback" not in r.stderr
    import app
    import torch
    with pytest.raises(ValueError, match="2\\^64 - 1"):
        app.seeded_generator(2**64, torch.device("cpu"))
    assert app.seeded_generator(2**64 - 1, torch.device("cpu")).initial_seed() == 2**64 - 1


def test_the_app_on_a_taken_port_is_one_line_and_announces_nothing(tmp_path, tiny_checkpoint):
    import socket
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = subprocess.run([sys.executable, str(REPO_ROOT / "app.py"), "--model", str(tiny_checkpoint), "--device", "cpu",
                            "--port", str(port)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"--port {port}" in r.stderr and "taken" in r.stderr and "serving on" not in r.stdout


def test_a_corrupt_compile_cache_is_one_line_saying_so(tmp_path, capfd):
    from smollm2.parallel import load_artifacts
    bad = tmp_path / "compile_artifacts.bin"
    bad.write_bytes(b"not a cache" * 50)
    said = []
    load_artifacts(str(bad), said.append)
    assert len(said) == 1 and "ignored" in said[0] and "corrupt" in said[0] and "loaded 0" not in said[0]
    assert "Traceback" not in capfd.readouterr().err


def test_sigterm_while_train_py_prepares_its_corpus_is_one_line(tmp_path, corpus_path):
    import signal
    import time
    corpus = tmp_path / "big.txt"
    corpus.write_text(corpus_path.read_text() * 6)  # ~7 MB: seconds of tokenizing, in this process
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *TINY_TRAIN_ARGS, "--out_dir", str(out),
                          "--max_steps", "1", "--input_file", str(corpus)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "cache").glob("data-*")) and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM
    line = one_line_error(err)
    assert "SIGTERM" in line and "no checkpoint saved" in line
    assert not list(out.rglob("*.tmp.*"))


SECOND_CTRL_C = """
import os, signal, sys
sys.path.insert(0, {repo!r})
sys.argv = {argv!r}
import smollm2.loop, train
real = smollm2.loop.save_checkpoint
def save(path, state):
    if state["global_step"] == 2:  # Ctrl-C, then Ctrl-C again while this save runs
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    real(path, state)
smollm2.loop.save_checkpoint = save
train.cli(fast_exit=True)
"""


def test_a_second_ctrl_c_during_a_save_is_one_line_naming_the_last_checkpoint(tmp_path):
    argv = ["train.py", *TINY_TRAIN_ARGS, "--out_dir", str(tmp_path), "--max_steps", "4", "--log_every", "1",
            "--save_every", "1", "--async_save", "0"]
    r = subprocess.run([sys.executable, "-c", SECOND_CTRL_C.format(repo=str(REPO_ROOT), argv=argv)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 130
    line = one_line_error(r.stderr)
    assert "aborted; the last complete checkpoint is" in line and "checkpoint_step_1.pt" in line
    assert load_checkpoint(str(tmp_path / "checkpoints" / "checkpoint_latest.pt"))["global_step"] == 1


def test_prepare_data_on_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path):
    limit = 200_000  # input.txt's shard is about 680 kB
    r = subprocess.run(prepare_cmd(tmp_path / "data"), capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert "File too large" in line and "run the same command again" in line
    assert not list((tmp_path / "data").glob("*.tmp.*"))
    r = subprocess.run(prepare_cmd(tmp_path / "data"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (tmp_path / "data" / "manifest.json").exists()


EXPORT_UNDER_LIMIT = """
import resource, sys
sys.path.insert(0, {repo!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # below the weights' size: safetensors fails
import export_hf
export_hf.cli({args!r})
"""


def test_export_hitting_a_full_disk_inside_safetensors_is_one_line(tmp_path, tiny_checkpoint):
    args = ["--checkpoint", str(tiny_checkpoint), "--out_dir", str(tmp_path / "hf"), "--tokenizer_id", str(TOKENIZER_JSON)]
    r = subprocess.run([sys.executable, "-c", EXPORT_UNDER_LIMIT.format(repo=str(REPO_ROOT), args=args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "could not write the weights" in lines[0] and "File too large" in lines[0]
    assert os.listdir(tmp_path) == []  # no export, no temporary


def test_sanity_check_feeds_the_tiny_rows_no_more_than_the_tiny_positions(monkeypatch, capsys):
    import dataclasses
    import sanity_check
    from smollm2_config import get_config
    # A chosen preset with more positions than tiny's 1,024 (as smollm2-135m has), small enough for a test.
    wide = dataclasses.replace(get_config("tiny"), max_position_embeddings=2048)
    monkeypatch.setattr(sanity_check, "get_config", lambda name, **kw: wide if name == "smollm2-135m" else get_config(name, **kw))
    sanity_check.main(["--seq_len", "1025", "--batch_size", "1"])
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if "transformers parity, tiny preset" in l]
    assert rows and all("PASS" in l for l in rows), out
    assert all("1024 positions" in l for l in rows)


def test_the_app_refuses_uploads(tmp_path, tiny_checkpoint):
    import socket
    import time
    import urllib.error
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), "--model", str(tiny_checkpoint), "--device",
                             "cpu", "--port", str(port), "--tokenizer_id", str(TOKENIZER_JSON)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None and time.time() < deadline, "app.py did not start"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        boundary = "smollm2boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * (2 << 20) + \
            f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/upload", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60).close()
        assert refused.value.code == 413
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# ----------------------------------------------------------------------------- wrong words
@pytest.mark.parametrize("what", ["corpus", "tokenizer"])
def test_a_refused_resume_prepares_nothing_and_logs_nothing(run_copy, tmp_path, what):
    if what == "corpus":
        other = tmp_path / "corpus.txt"
        other.write_text(CORPUS.read_text(encoding="utf-8")[:200_000] + "\nAn edit.\n", encoding="utf-8")
        flag = ["--input_file", other]
    else:  # the same vocabulary, another definition: another fingerprint
        spec = json.loads(TOKENIZER_JSON.read_text(encoding="utf-8"))
        spec["normalizer"] = {"type": "NFC"}
        other = tmp_path / "tokenizer.json"
        other.write_text(json.dumps(spec), encoding="utf-8")
        flag = ["--tokenizer_id", other]
    caches = sorted(p.name for p in (run_copy / "cache").iterdir())
    log, metrics = (run_copy / "train.log").read_bytes(), (run_copy / "metrics.jsonl").read_bytes()
    r = run_train(run_copy, "--max_steps", 3, "--resume", 1, *flag, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "data.fingerprint: '" in r.stderr and f"this command's tokenizer is {TOKENIZER_JSON if what == 'corpus' else other}" in r.stderr
    assert sorted(p.name for p in (run_copy / "cache").iterdir()) == caches  # no new token cache
    assert (run_copy / "train.log").read_bytes() == log and (run_copy / "metrics.jsonl").read_bytes() == metrics


METRICS_DISK_FULL = """
import errno, sys
sys.path.insert(0, {repo!r})
sys.argv = {argv!r}
from smollm2 import io
real, seen = io.LineFile.write_line, []
def write_line(self, line):
    if self.path.endswith("metrics.jsonl") and '"event": "train"' in line:
        seen.append(line)
        if len(seen) == 3:  # the disk fills at the third logged step, between saves
            raise OSError(errno.ENOSPC, "No space left on device")
    real(self, line)
io.LineFile.write_line = write_line
import train
train.cli(fast_exit=True)
"""


def test_a_failed_metrics_write_saves_the_step_when_the_disk_allows(tmp_path):
    argv = ["train.py", *TINY_TRAIN_ARGS, "--out_dir", str(tmp_path), "--max_steps", "20", "--log_every", "1",
            "--save_every", "10"]
    r = subprocess.run([sys.executable, "-c", METRICS_DISK_FULL.format(repo=str(REPO_ROOT), argv=argv)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert "metrics.jsonl (No space left on device)" in line and "saved step 3" in line and "--resume 1" in line
    assert load_checkpoint(str(tmp_path / "checkpoints" / "checkpoint_latest.pt"))["global_step"] == 3
    assert [e["step"] for e in metrics_lines(tmp_path) if e["event"] == "train"] == [1, 2]
    r = run_train(tmp_path, "--max_steps", 4, *QUICK, "--resume", 1)
    assert "RESUME: starting from global_step=3" in r.stdout


def test_an_input_folder_inside_the_run_folder_is_refused_in_those_words(tmp_path, corpus_path):
    out = tmp_path / "run"
    (out / "corpus").mkdir(parents=True)
    shutil.copy(corpus_path, out / "corpus" / "input.txt")
    for input_folder in (out, out / "corpus"):
        r = run_train(out, "--max_steps", 1, *QUICK, "--input_file", input_folder, check=False)
        assert r.returncode == 2 and "inside the training run's own folder" in one_line_error(r.stderr)
