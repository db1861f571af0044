"""train.py under torchrun on CPU (gloo), tiny preset: 2 processes x grad_accum 2 against the reference of
1 process x grad_accum 4 (same seed, same global batch of 4 micro-batches), resumes across world sizes,
FSDP2 checkpoints that load in one process, and a rank that dies.

Tolerances: the two orders of summing four micro-batch gradients, ((g1+g2)+g3)+g4 and (g1+g2)+(g3+g4),
differ by an ulp, and Adam turns that into weight differences of a few 1e-7 after 10 steps (measured
5.6e-7 at seed 1337, in 4 elements of the tied embedding; 1.3e-7 to 2.5e-7 at seeds 1-6), so weights
are held to 1e-6, not to bit equality. That bound only means something with the same kernels on both
sides: the single-process run with 2 threads instead of 1 differs from itself by 3.9e-6, so every run
here gets OMP_NUM_THREADS=1. The log prints losses to 4 decimals, which cannot show a 1e-5 relative
difference, so the equivalence test also records the logged all-ranks mean at full precision
(HOOKED_TRAIN; measured 8.9e-8 relative).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import (CORPUS, REPO_ROOT, TOKENIZER_JSON, checkpoint_weights, free_port, max_weight_diff, run_checked,
                      step_losses)

BASE = ["--model", "tiny", "--seq_len", "32", "--batch_size", "2", "--warmup_steps", "5", "--lr_decay_steps", "10",
        "--tokenizer_id", str(TOKENIZER_JSON), "--input_file", str(CORPUS), "--sample_every", "0", "--val_every", "0",
        "--log_every", "1", "--save_every", "10"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # 2 ranks on 2 cores; the same thread count in every run
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-6
COMPILED_RTOL, COMPILED_WEIGHT_ATOL = 1e-5, 1e-5
MUON_LOSS_RTOL = 1e-4


# train.py itself, with the logged all-ranks mean loss also appended at full precision to $LOSS_FILE
# (rank 0), and with rank $DIE_RANK SIGKILLing itself at step $DIE_AT_STEP (as the OOM killer would).
HOOKED_TRAIN = r"""
import os, signal, sys
sys.path.insert(0, {repo!r})
import smollm2.parallel, train
rank = int(os.environ.get("RANK", "0"))
real_mean, real_any = smollm2.parallel.mean_across_ranks, smollm2.parallel.any_rank
def mean_across_ranks(value):
    v = real_mean(value)
    if rank == 0 and "LOSS_FILE" in os.environ:
        with open(os.environ["LOSS_FILE"], "a") as f:
            f.write(repr(v) + "\n")
    return v
steps = []
real_step = train.TrainStep.__call__
def counted_step(self, *args):
    steps.append(1)
    return real_step(self, *args)
train.TrainStep.__call__ = counted_step
def any_rank(flag):  # the first any_rank after the optimizer step of step $DIE_AT_STEP
    if str(rank) == os.environ.get("DIE_RANK") and len(steps) == int(os.environ.get("DIE_AT_STEP", 0)):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_any(flag)
smollm2.parallel.mean_across_ranks, smollm2.parallel.any_rank = mean_across_ranks, any_rank
sys.argv = ["train.py"] + sys.argv[1:]
train.cli(fast_exit=True)  # as `python train.py` leaves: no interpreter teardown (see train.exit_without_teardown)
"""


def launch(out_dir, *extra, nproc=1, hooked=False, env=None):
    """nproc 1: plain `python train.py`; more: `python -m torch.distributed.run --standalone` (a free port)."""
    script = REPO_ROOT / "train.py"
    if hooked:
        script = Path(out_dir).parent / f"{Path(out_dir).name}_hooked_train.py"
        script.write_text(HOOKED_TRAIN.format(repo=str(REPO_ROOT)))
    runner = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [sys.executable, *runner, str(script), *BASE, "--out_dir", str(out_dir), *map(str, extra)], {**ENV, **(env or {})}


def run_train(out_dir, *extra, nproc=1, hooked=False, env=None, check=True):
    cmd, env = launch(out_dir, *extra, nproc=nproc, hooked=hooked, env=env)
    return run_checked(cmd, env=env, timeout=300, check=check)


def assert_logged_losses_match(losses, ref_losses, steps):
    # Printed to 4 decimals: two values 1e-7 apart may print one unit apart.
    for s in steps:
        assert abs(losses[s] - ref_losses[s]) <= 1e-4 + 1e-9, (s, losses[s], ref_losses[s])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1 process x grad_accum 4, 10 steps: the run every multi-process run is compared with."""
    out = tmp_path_factory.mktemp("ref")
    run_train(out, "--grad_accum", 4, "--max_steps", 10, hooked=True, env={"LOSS_FILE": str(out / "losses.txt")})
    precise = [float(v) for v in (out / "losses.txt").read_text().split()]
    return out, step_losses((out / "train.log").read_text()), precise


def test_two_ranks_match_one_process(reference, tmp_path):
    ref_dir, ref_losses, ref_precise = reference
    out = tmp_path / "ddp"
    r = run_train(out, "--grad_accum", 2, "--max_steps", 10, nproc=2, hooked=True,
                  env={"LOSS_FILE": str(tmp_path / "losses.txt")})
    precise = [float(v) for v in (tmp_path / "losses.txt").read_text().split()]
    assert len(precise) == len(ref_precise) == 10
    rel = max(abs(a - b) / abs(b) for a, b in zip(precise, ref_precise))
    assert rel <= LOSS_RTOL, rel
    log = (out / "train.log").read_text()
    assert_logged_losses_match(step_losses(log), ref_losses, range(1, 11))
    assert max_weight_diff(checkpoint_weights(out, 10), checkpoint_weights(ref_dir, 10)) <= WEIGHT_ATOL
    # One header, written by rank 0 alone, with the global batch of all ranks.
    for text in (log, r.stdout):
        assert text.count("Global batch: 2 x grad_accum 2 x world 2 x seq 32 = 256 tokens/step") == 1
        assert len(re.findall(r"^Args: \{", text, re.M)) == 1
        assert len(re.findall(r"^step\s+10/10 \|", text, re.M)) == 1
    assert "world size 2" in log and "| DDP" in log
    assert "micro-batches stacked: 2 x 2 -> 4 (est." in log  # each rank stacks its own; both agreed (auto)


def test_two_nodes_match_two_local_processes_bit_for_bit(reference, tmp_path):
    """The several-hosts launch of docs/multigpu.md, as two "nodes" of one process each on this machine
    (torchrun --nnodes 2 with a c10d rendezvous on 127.0.0.1): the same ranks and the same gloo all-reduce as
    2 processes on one node, so the same weights bit for bit; and the one-process run's to the accumulation
    order's rounding, as every data-parallel run here."""
    ref_dir, _, _ = reference
    local = tmp_path / "local"
    run_train(local, "--grad_accum", 2, "--max_steps", 10, nproc=2)
    out, port = tmp_path / "nodes", free_port()
    cmd, env = launch(out, "--grad_accum", 2, "--max_steps", 10)
    script_and_args = cmd[1:]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "twonodes",
                               *script_and_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [n.communicate(timeout=300) for n in nodes]
    for n, (o, e) in zip(nodes, outs):
        assert n.returncode == 0, f"{o[-2000:]}\n{e[-2000:]}"
    log = (out / "train.log").read_text()
    assert "world size 2" in log and log.count("Global batch: 2 x grad_accum 2 x world 2") == 1
    two_nodes, two_local = checkpoint_weights(out, 10), checkpoint_weights(local, 10)
    assert two_nodes.keys() == two_local.keys()
    for k in two_nodes:
        assert torch.equal(two_nodes[k], two_local[k]), k
    assert max_weight_diff(two_nodes, checkpoint_weights(ref_dir, 10)) <= WEIGHT_ATOL


@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_compiled_scopes_under_ddp_match_one_process(reference, tmp_path, scope):
    """The whole model compiled inside DDP (dynamo's DDPOptimizer splits it at bucket boundaries) or each
    decoder layer compiled alone changes where gradients become ready, not what they are: same losses and
    weights as the eager single process, to the rounding of Inductor's fused float32 kernels (measured
    with blocks: losses 1.8e-7 relative, weights 5.3e-6 after 10 steps)."""
    ref_dir, _, ref_precise = reference
    out = tmp_path / scope
    r = run_train(out, "--grad_accum", 2, "--max_steps", 10, "--compile", 1, "--compile_scope", scope, nproc=2,
                  hooked=True, env={"LOSS_FILE": str(tmp_path / "losses.txt")})
    precise = [float(v) for v in (tmp_path / "losses.txt").read_text().split()]
    rel = max(abs(a - b) / abs(b) for a, b in zip(precise, ref_precise))
    assert len(precise) == 10 and rel <= COMPILED_RTOL, rel
    assert max_weight_diff(checkpoint_weights(out, 10), checkpoint_weights(ref_dir, 10)) <= COMPILED_WEIGHT_ATOL
    assert f"compile_scope {scope}" in r.stdout and "| DDP" in r.stdout


def test_bf16_gradient_all_reduce_is_a_gpu_option(tmp_path):
    # DDP's bf16 compression hook needs NCCL: on CPU (gloo) every rank refuses it, in one line, before
    # anything is written (the launcher's own report of the failed workers follows).
    r = run_train(tmp_path / "out", "--grad_accum", 2, "--max_steps", 2, "--grad_reduce_dtype", "bf16", nproc=2,
                  check=False)
    assert r.returncode != 0 and "--grad_reduce_dtype bf16 is a DDP option on CUDA" in r.stderr
    assert not (tmp_path / "out" / "train.log").exists()


def test_two_rank_checkpoint_resumes_on_one_process(reference, tmp_path):
    ref_dir, ref_losses, _ = reference
    run_train(tmp_path, "--grad_accum", 2, "--max_steps", 5, nproc=2)
    r = run_train(tmp_path, "--grad_accum", 4, "--max_steps", 10, "--resume", 1)
    assert "RESUME: starting from global_step=5" in r.stdout
    log = (tmp_path / "train.log").read_text()
    after = log[log.index("RESUME: starting from global_step=5"):]
    assert min(step_losses(after)) == 6
    assert_logged_losses_match(step_losses(log), ref_losses, range(1, 11))
    assert max_weight_diff(checkpoint_weights(tmp_path, 10), checkpoint_weights(ref_dir, 10)) <= WEIGHT_ATOL
    headers = re.findall(r"^Global batch: (.*)$", log, re.M)  # one per run, none from rank 1
    assert headers == ["2 x grad_accum 2 x world 2 x seq 32 = 256 tokens/step",
                       "2 x grad_accum 4 x world 1 x seq 32 = 256 tokens/step"]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """FSDP2 (fully_shard per decoder layer and at the root) on 2 CPU processes over gloo, 4 steps."""
    out = tmp_path_factory.mktemp("fsdp")
    r = run_train(out, "--grad_accum", 2, "--max_steps", 4, "--fsdp", 1, nproc=2)
    return out, r


def test_fsdp_trains_like_one_process(reference, fsdp_run):
    _, ref_losses, _ = reference
    out, r = fsdp_run
    log = (out / "train.log").read_text()
    assert "| FSDP2" in log and log.count("Global batch: 2 x grad_accum 2 x world 2") == 1
    assert_logged_losses_match(step_losses(log), ref_losses, range(1, 5))
    saved = checkpoint_weights(out, 4)  # gathered into full, plain tensors
    assert all(type(v) is torch.Tensor for v in saved.values())
    assert saved["model.embed_tokens.weight"].shape == (49152, 64)


@pytest.mark.parametrize("nproc", [1, 2], ids=["on_one_process", "on_fsdp"])
def test_fsdp_checkpoint_resumes(reference, fsdp_run, tmp_path, nproc):
    ref_dir, ref_losses, _ = reference
    shutil.copytree(fsdp_run[0] / "checkpoints", tmp_path / "checkpoints")
    extra = ["--grad_accum", 4] if nproc == 1 else ["--grad_accum", 2, "--fsdp", 1]
    r = run_train(tmp_path, *extra, "--max_steps", 10, "--resume", 1, nproc=nproc)
    assert "RESUME: starting from global_step=4" in r.stdout
    losses = step_losses((tmp_path / "train.log").read_text())
    assert min(losses) == 5
    assert_logged_losses_match(losses, ref_losses, range(5, 11))
    assert max_weight_diff(checkpoint_weights(tmp_path, 10), checkpoint_weights(ref_dir, 10)) <= WEIGHT_ATOL


def test_fsdp_without_torchrun_is_a_usage_error(tmp_path):
    r = run_train(tmp_path / "out", "--grad_accum", 2, "--max_steps", 2, "--fsdp", 1, check=False)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("train.py: error: --fsdp 1"), r.stderr
    assert not (tmp_path / "out").exists()


def test_dead_rank_ends_the_run(tmp_path):
    """Rank 1 is SIGKILLed after step 3 of 500: rank 0's next collective fails (gloo: connection reset),
    torchrun tears the group down and names the dead rank as the root cause, within seconds."""
    cmd, env = launch(tmp_path / "out", "--grad_accum", 2, "--max_steps", 500, nproc=2, hooked=True,
                      env={"DIE_RANK": "1", "DIE_AT_STEP": "3"})
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a hang: take the launcher and its workers down
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    elapsed = time.monotonic() - t0
    assert proc.returncode not in (0, None), (out[-2000:], err[-2000:])
    assert "Root Cause" in err and re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", err), err[-3000:]
    steps = sorted(step_losses((tmp_path / "out" / "train.log").read_text()))
    assert steps[:3] == [1, 2, 3] and steps[-1] < 10 and "DONE:" not in out
    assert elapsed < 90, elapsed


def test_allreduce_probe_reports_bus_bandwidth_and_checks_the_sum(tmp_path):
    """benchmarks/allreduce_probe.py on 2 gloo processes: one row merged into its table, bus bandwidth
    = algbw x 2(n-1)/n, and the reduction's result checked (a sum of ones over the ranks, iterated)."""
    import json as _json

    stem = tmp_path / "links"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO_ROOT / "benchmarks" / "allreduce_probe.py"), "--mb", "1", "--warmup", "1", "--iters", "2",
           "--out", str(stem)]
    run_checked(cmd, env=ENV, timeout=120)
    rows = _json.loads((tmp_path / "links.json").read_text())
    assert len(rows) == 1 and (tmp_path / "links.csv").exists()
    r = rows[0]
    assert r["world_size"] == 2 and r["backend"] == "gloo" and r["result_checked"] is True and r["mb"] == 1.0
    assert abs(r["busbw_gb_s"] - r["algbw_gb_s"] * 2 * (2 - 1) / 2) <= 0.1
    alone = run_checked([sys.executable, str(REPO_ROOT / "benchmarks" / "allreduce_probe.py")], check=False)
    assert alone.returncode == 2 and "run it under torchrun" in alone.stderr and "Traceback" not in alone.stderr


# ----------------------------------------------------------------------------- --optimizer muon
@pytest.fixture(scope="module")
def muon_reference(tmp_path_factory):
    """1 process x grad_accum 4 with Muon (micro-batches stacked), and the same run with them accumulated one
    by one (--stack_micro 0): the control, a run whose only difference is the order of the gradient sums."""
    out = tmp_path_factory.mktemp("muon_ref")
    run_train(out / "ref", "--optimizer", "muon", "--grad_accum", 4, "--max_steps", 10, hooked=True,
              env={"LOSS_FILE": str(out / "losses.txt")})
    run_train(out / "control", "--optimizer", "muon", "--grad_accum", 4, "--max_steps", 10, "--stack_micro", 0)
    control = max_weight_diff(checkpoint_weights(out / "control", 10), checkpoint_weights(out / "ref", 10))
    return out / "ref", [float(v) for v in (out / "losses.txt").read_text().split()], control


def test_muon_two_ranks_match_one_process(muon_reference, tmp_path):
    """Muon under DDP: every rank orthogonalises the same averaged gradients, so 2 processes x accum 2 train
    as 1 x accum 4, as closely as a run that only sums the same gradients in another order. With Muon that is
    not 1e-6: an ulp of the gradient can flip a bf16 rounding in Newton-Schulz (an update change of
    lr * 0.2 * sqrt(128) * 2**-8, ~3e-5), the next gradients differ a little, and AdamW turns near-zero
    embedding gradients of another sign into lr-sized steps: after 10 steps the control differs from the
    reference by 2.8e-3 and the DDP run by 1.9e-3 (measured, seed 1337). A rank that skipped the all-reduce or applied its own update
    would show in the loss (held to 1e-4 relative; measured 8e-6)."""
    ref_dir, ref_precise, control = muon_reference
    out = tmp_path / "ddp"
    r = run_train(out, "--optimizer", "muon", "--grad_accum", 2, "--max_steps", 10, nproc=2, hooked=True,
                  env={"LOSS_FILE": str(tmp_path / "losses.txt")})
    precise = [float(v) for v in (tmp_path / "losses.txt").read_text().split()]
    rel = max(abs(a - b) / abs(b) for a, b in zip(precise, ref_precise))
    diff = max_weight_diff(checkpoint_weights(out, 10), checkpoint_weights(ref_dir, 10))
    print(f"muon ddp: loss rel {rel:.3g}, weights {diff:.3g}, control {control:.3g}")
    assert len(precise) == 10 and rel <= MUON_LOSS_RTOL, rel
    assert 0 < control and diff <= 3 * control, (diff, control)
    assert "optimizer muon | DDP" in r.stdout


def test_muon_under_fsdp_is_refused_in_one_line(tmp_path):
    r = run_train(tmp_path / "out", "--optimizer", "muon", "--grad_accum", 2, "--max_steps", 2, "--fsdp", 1, nproc=2,
                  check=False)
    errors = [l for l in r.stderr.splitlines() if l.startswith("train.py: error:")]
    assert r.returncode != 0 and errors and all(e == errors[0] for e in errors), r.stderr[-2000:]
    assert errors[0].startswith("train.py: error: --optimizer muon orthogonalises each whole matrix and --fsdp 1")
    assert not (tmp_path / "out" / "train.log").exists()
