"""--batch_warmup_steps: the batch grows in whole micro-batches over the first steps. The data order is the plain
run's micro-batches, only grouped differently; a ramped step equals a plain step on the same windows; a resume
mid-ramp is bit-exact and may not change the ramp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_same_weights, checkpoint_weights, forget_options, one_line_error, run_train, step_losses
from smollm2.data import TokenBatches, TokenDataset
from smollm2.hub import training_facts
from smollm2.training import accum_at, micro_batches_before
from smollm2_config import get_config
from smollm2_model import SmolLM2ForCausalLM


@pytest.mark.parametrize("grad_accum, ramp", [(2, 200), (4, 10), (3, 7), (8, 3), (4, 0), (1, 5)])
def test_micro_batches_before_is_the_sum_of_the_ramp(grad_accum, ramp):
    done = 0
    for step in range(1, 3 * max(ramp, 1) + 5):
        assert micro_batches_before(step, grad_accum, ramp) == done, step
        done += accum_at(step, grad_accum, ramp)


def test_the_ramp_grows_linearly_to_grad_accum_at_the_last_ramp_step():
    assert [accum_at(s, 4, 10) for s in range(1, 13)] == [1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4, 4]
    assert [accum_at(s, 2, 200) for s in (1, 100, 101, 200, 201)] == [1, 1, 2, 2, 2]
    assert [accum_at(s, 3, 0) for s in (1, 2)] == [3, 3]


@pytest.mark.parametrize("world", [1, 2])
def test_a_ramped_run_reads_the_plain_runs_micro_batches_in_order(world):
    data = TokenBatches(TokenDataset.from_array(np.arange(20001)), 16, seed=5, sampler="epoch")
    grad_accum, ramp, steps = 4, 9, 14
    ramped = []
    for step in range(1, steps + 1):
        a, before = accum_at(step, grad_accum, ramp), micro_batches_before(step, grad_accum, ramp)
        for rank in range(world):  # rank-major within a step, as the plain run's indices are
            ramped.append(data.step_batch(step, a, 2, "cpu", rank, world, before)[0].flatten(0, 1))
    ramped = np.concatenate(ramped)
    plain = np.concatenate([data.step_batch(m, 1, 2, "cpu")[0].flatten(0, 1) for m in range(1, len(ramped) // 2 + 1)])
    assert len(ramped) == 2 * world * micro_batches_before(steps + 1, grad_accum, ramp)
    assert np.array_equal(ramped, plain)


RAMP = ["--optimizer", "adamw", "--warmup_steps", 2, "--log_every", 1]


def test_a_ramped_step_is_a_plain_step_on_the_same_windows(tmp_path):
    # Steps 1-2 of a ramp to 2 over 4 steps hold one micro-batch each: the plain --grad_accum 1 run's steps 1-2.
    run_train(tmp_path / "ramp", *RAMP, "--grad_accum", 2, "--batch_warmup_steps", 4, "--max_steps", 2,
              "--save_every", 2)
    run_train(tmp_path / "plain", *RAMP, "--grad_accum", 1, "--max_steps", 2, "--save_every", 2)
    assert_same_weights(checkpoint_weights(tmp_path / "ramp", 2), checkpoint_weights(tmp_path / "plain", 2))
    log = (tmp_path / "ramp" / "train.log").read_text()
    assert "(batch warmup: from 1 micro-batch at step 1 to 2 at step 4)" in log


def test_resume_inside_the_ramp_is_bit_exact_and_may_not_change_it(tmp_path):
    flags = [*RAMP, "--grad_accum", 3, "--batch_warmup_steps", 6, "--save_every", 3]
    run_train(tmp_path / "full", *flags, "--max_steps", 8)
    run_train(tmp_path / "split", *flags, "--max_steps", 3)
    r = run_train(tmp_path / "split", *flags, "--max_steps", 8, "--resume", 1)
    assert "RESUME: starting from global_step=3" in r.stdout and "batch warmup: 2 -> 3 micro-batches" in r.stdout
    assert_same_weights(checkpoint_weights(tmp_path / "split", 8), checkpoint_weights(tmp_path / "full", 8))
    full, split = (step_losses((tmp_path / d / "train.log").read_text()) for d in ("full", "split"))
    assert full == split and len(full) == 8
    # the model card's tokens count what the ramp's steps held: 1+1+2+2+3+3+3+3 micro-batches of 2 x 32 tokens
    ckpt = torch.load(tmp_path / "full" / "checkpoints" / "checkpoint_step_8.pt", weights_only=False)
    assert training_facts(ckpt, SmolLM2ForCausalLM(get_config("tiny")), "tok", "run")["tokens_seen"] == 18 * 64
    changed = [a if a != 6 else 4 for a in flags]
    r = run_train(tmp_path / "split", *changed, "--max_steps", 10, "--resume", 1, check=False)
    assert r.returncode == 2 and "batch_warmup_steps: 6 -> 4" in r.stderr, r.stderr


@pytest.mark.parametrize("extra, says", [
    (["--grad_accum", 1, "--batch_warmup_steps", 4], "with --grad_accum 1 there is nothing to grow"),
    (["--batch_warmup_steps", -1], "--batch_warmup_steps must be >= 0, got -1"),
])
def test_a_ramp_that_cannot_act_is_refused_in_one_line(tmp_path, extra, says):
    r = run_train(tmp_path / "out", *extra, "--max_steps", 2, check=False)
    assert r.returncode == 2 and says in one_line_error(r.stderr)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_saved_before_the_option_existed_resumes_as_a_run_without_a_ramp(tmp_path):
    # A checkpoint whose args record no batch_warmup_steps was trained with the whole batch from step 1: a resume
    # that adds a ramp is refused like one that changes it, and the plain resume goes on.
    out = tmp_path / "run"
    run_train(out, *RAMP, "--max_steps", 2, "--save_every", 2)
    forget_options(out, "batch_warmup_steps")
    r = run_train(out, *RAMP, "--batch_warmup_steps", 4, "--max_steps", 4, "--resume", 1, check=False)
    assert r.returncode == 2 and "batch_warmup_steps: 0 -> 4" in r.stderr, r.stderr
    run_train(out, *RAMP, "--max_steps", 4, "--resume", 1)
