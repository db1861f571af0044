"""train_ablation.py on CPU: a two-variant sweep through train.py, its CSV, skip-on-rerun, --force, the
error row of a variant that cannot run (bf16 autocast needs CUDA) and the plots."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
from conftest import CORPUS, TOKENIZER_JSON  # noqa: E402
SEED_COLUMNS = ["timestamp", "variant", "steps", "seq_len", "batch_size", "grad_accum", "seed", "device", "autocast",
                "amp_dtype", "compile", "attention_impl", "tie_word_embeddings", "params", "warmup_ignored_steps",
                "avg_tok_s_steady", "peak_mem_bytes"]


def sweep(out_dir, *extra, variants=("baseline", "sdpa_on")):
    cmd = [sys.executable, str(REPO / "train_ablation.py"), "--input_file", str(CORPUS),
           "--tokenizer_id", str(TOKENIZER_JSON), "--model", "tiny", "--seq_len", "32",
           "--batch_size", "1", "--grad_accum", "2", "--steps", "4", "--ignore_first_steps", "2", "--log_every", "2",
           "--out_dir", str(out_dir), *[a for v in variants for a in ("--variant", v)], *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def rows(out_dir):
    with open(out_dir / "ablation_results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_variant_sweep_csv_rerun_force_and_plots(tmp_path):
    out = tmp_path / "abl"
    sweep(out)
    got = rows(out)
    header = open(out / "ablation_results.csv").readline().strip().split(",")
    assert header[:len(SEED_COLUMNS)] == SEED_COLUMNS
    for col in ("device_name", "mfu", "ms_per_step", "final_loss", "status"):
        assert col in header
    assert [r["variant"] for r in got] == ["baseline", "sdpa_on"]
    ok, failed = got
    assert ok["status"] == "ok" and float(ok["avg_tok_s_steady"]) > 0 and float(ok["final_loss"]) > 0
    assert ok["params"] == "3219776" and ok["attention_impl"] == "manual" and ok["amp_dtype"] == "fp32"
    assert failed["status"] == "error" and "CUDA" in failed["error"]
    assert (out / "logs" / "baseline.log").read_text().count("step ") >= 2
    for png in ("tokens_per_s.png", "peak_mem.png", "loss_curves.png"):
        assert (out / png).stat().st_size > 1000
    assert len((out / "ablation_results.jsonl").read_text().splitlines()) == 2

    again = sweep(out)
    assert "skip baseline" in again and "skip sdpa_on" in again
    assert len(rows(out)) == 2

    # --force reruns the variants it is given (here one, so the error row's rerun, the same code path, is not
    # paid for twice); the rerun row is appended after sdpa_on's and must be put back in VARIANTS order.
    before = {r["variant"]: r for r in rows(out)}
    forced = sweep(out, "--force", variants=("baseline",))
    assert "run  baseline" in forced and "sdpa_on" not in forced
    after = rows(out)
    assert [r["variant"] for r in after] == ["baseline", "sdpa_on"]
    assert after[1] == before["sdpa_on"] and after[0]["timestamp"] != before["baseline"]["timestamp"]


def test_side_by_side_slots_keep_variant_order(tmp_path):
    # --gpus 0,1: two variants at once (on CPU the ids only name the slots); rows come back in VARIANTS order
    out = tmp_path / "abl"
    log = sweep(out, "--device", "cpu", "--gpus", "0,1", variants=("sdpa_with_tie_off", "baseline"))
    assert "on GPU 0" in log and "on GPU 1" in log
    got = rows(out)
    assert [r["variant"] for r in got] == ["baseline", "sdpa_with_tie_off"]
    assert all(r["gpus"] in ("0", "1") and r["world_size"] == "1" for r in got)
    assert got[0]["status"] == "ok" and got[1]["status"] == "error"  # bf16 autocast needs CUDA
    assert not list((out / "logs").glob("*.std*"))  # the per-process capture files are folded into the logs


def test_torchrun_variant_reports_total_and_per_gpu(tmp_path):
    out = tmp_path / "abl"
    sweep(out, "--nproc_per_node", "2", variants=("baseline",))
    (row,) = rows(out)
    assert row["status"] == "ok" and row["world_size"] == "2"
    assert abs(float(row["tok_s_per_gpu"]) * 2 - float(row["avg_tok_s_steady"])) < 1e-6 * float(row["avg_tok_s_steady"])
    assert "world size 2" in (out / "logs" / "baseline.log").read_text()


@pytest.mark.parametrize("flags", [["--variant", "nope"], ["--variant", "fast", "--gpus", "0,x"],
                                   ["--variant", "fast", "--gpus", "0,1,2", "--nproc_per_node", "2"],
                                   ["--variant", "fast", "--nproc_per_node", "0"]])
def test_bad_flags_exit_2(tmp_path, flags):
    r = subprocess.run([sys.executable, str(REPO / "train_ablation.py"), *flags, "--out_dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_sigterm_takes_torchrun_workers_down(tmp_path):
    # A job limit's SIGTERM to the sweep must not leave a torchrun variant's workers running (they run in
    # sessions of their own, out of reach of a signal to the launcher's group).
    import os
    import signal
    import time
    out = tmp_path / "abl"
    cmd = [sys.executable, str(REPO / "train_ablation.py"), "--input_file", str(CORPUS),
           "--tokenizer_id", str(TOKENIZER_JSON), "--model", "tiny", "--seq_len", "32",
           "--batch_size", "1", "--grad_accum", "1", "--steps", "100000", "--ignore_first_steps", "2",
           "--log_every", "50", "--out_dir", str(out), "--variant", "baseline", "--nproc_per_node", "2"]
    sweep = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def workers():
        found = []
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"train.py") for a in args) and str(out).encode() in b" ".join(args):
                found.append(int(pid))
        return found

    deadline = time.monotonic() + 120
    while len(workers()) < 2 and time.monotonic() < deadline:  # the launcher, then its two workers
        time.sleep(0.5)
    time.sleep(3)
    assert workers(), "the variant never started"
    sweep.send_signal(signal.SIGTERM)
    sweep.communicate(timeout=60)
    assert sweep.returncode == 143
    deadline = time.monotonic() + 30
    while workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = workers()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"left running: {left}"


def test_switch_pairs_are_one_flag_apart():
    """Each SWITCH_PAIRS pair names two variants of VARIANTS whose train.py flags differ in exactly one, so the
    README line written from the pair measures that switch alone; SAME_AS names exactly the variants that
    are another's configuration."""
    from smollm2.switches import SAME_AS, SWITCH_PAIRS, VARIANTS
    assert len({name for name, _, _ in SWITCH_PAIRS}) == len(SWITCH_PAIRS)
    for name, on, off in SWITCH_PAIRS:
        a, b = VARIANTS[on].train_flags(), VARIANTS[off].train_flags()
        differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert len(differ) == 1, (name, differ)
    names = list(VARIANTS)
    twins = {later: first for i, first in enumerate(names) for later in names[i + 1:]
             if VARIANTS[later] == VARIANTS[first]}
    assert twins == SAME_AS


def test_each_variant_and_impl_is_what_train_py_resolves_its_flags_to():
    """A variant's (or bench impl's) Switches, passed to train.py as flags, resolve back to the same Switches:
    the sweep measures exactly the named configuration, whatever --fast would have chosen."""
    import torch
    import train
    from smollm2.switches import IMPLS, VARIANTS
    named = {**VARIANTS, **{k: v for k, v in IMPLS.items() if v.ddp_overlap}}  # ddp_overlap: bench-only
    for name, sw in named.items():
        args = train.parse_args([a for k, v in sw.train_flags().items() for a in (f"--{k}", str(v))])
        assert train.resolve_switches(args, torch.device("cuda"), 1) == sw, name
