"""--seq_warmup_steps: each window is cut into shorter pieces over the first steps, their length doubling up to
--seq_len. A step then trains on the same tokens and targets as without it, only with attention stopping at the
cuts: a warmup step equals a torch.optim.AdamW step on the cut windows, computed here by hand; a resume inside
the warmup is bit-exact and may not change it; a warmup that cannot act is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import CORPUS, TOKENIZER_JSON, assert_same_weights, checkpoint_weights, forget_options, max_weight_diff, \
    one_line_error, run_train, step_losses
from smollm2.data import TokenBatches, TokenDataset, load_training_data
from smollm2.tokenizer import load_tokenizer
from smollm2.training import (SEQ_WARMUP_MIN_START, build_train_step, lr_at, param_groups, seq_len_at,
                              split_windows)
from smollm2.switches import Switches
from smollm2_config import get_config
from smollm2_model import SmolLM2ForCausalLM


def test_the_window_doubles_in_equal_shares_of_the_warmup():
    # 2048 from 256: three short stages (256, 512, 1024) of 100 steps each, whole windows from step 301
    lengths = {s: seq_len_at(s, 2048, 256, 300) for s in (1, 100, 101, 200, 201, 300, 301, 5000)}
    assert lengths == {1: 256, 100: 256, 101: 512, 200: 512, 201: 1024, 300: 1024, 301: 2048, 5000: 2048}
    assert [seq_len_at(s, 256, 64, 7) for s in range(1, 10)] == [64, 64, 64, 64, 128, 128, 128, 256, 256]
    assert [seq_len_at(s, 2048, 256, 2) for s in (1, 2, 3)] == [256, 512, 2048]  # fewer steps than stages
    assert [seq_len_at(s, 2048, 256, 0) for s in (1, 2)] == [2048, 2048]


def test_the_cut_windows_hold_the_same_tokens_and_each_its_next_token_as_target():
    data = TokenBatches(TokenDataset.from_array(np.arange(5001)), 32, seed=3, sampler="epoch")
    xs, ys = data.step_batch(1, 2, 3, "cpu")  # (2 micro-batches, 3 windows, 32 tokens)
    cx, cy = split_windows(xs, ys, 8)
    assert cx.shape == cy.shape == (2, 12, 8)
    assert torch.equal(cx.flatten(), xs.flatten()) and torch.equal(cy.flatten(), ys.flatten())
    assert torch.equal(cy, cx + 1)  # the corpus counts up: every target is its input's next token
    assert split_windows(xs, ys, 32)[0] is xs


SEQ = ["--optimizer", "adamw", "--seq_len", 256, "--seq_warmup_start", 64, "--log_every", 1]


def test_a_warmup_step_is_an_adamw_step_on_the_cut_windows(tmp_path):
    run_train(tmp_path / "cut", *SEQ, "--seq_warmup_steps", 4, "--max_steps", 1, "--save_every", 1)
    run_train(tmp_path / "whole", *SEQ, "--max_steps", 1, "--save_every", 1)
    log = (tmp_path / "cut" / "train.log").read_text()
    assert "(sequence warmup: windows of 64 tokens at step 1, doubling to 256 at step 5)" in log
    # The reference: train.py's init, its first step's windows cut into pieces of 64, the plain cross-entropy
    # over all of them, the grad clip and one torch.optim.AdamW step at step 1's lr.
    dataset = load_training_data(str(CORPUS), load_tokenizer(str(TOKENIZER_JSON)), str(tmp_path / "cut" / "cache"),
                                 log=lambda m: None)
    xs, ys = TokenBatches(dataset, 256, 1337, "epoch").step_batch(1, 2, 2, "cpu")
    torch.manual_seed(1337)
    model = SmolLM2ForCausalLM(get_config("tiny"))
    logits, _ = model(xs.reshape(-1, 64))
    F.cross_entropy(logits.flatten(0, 1), ys.reshape(-1)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=lr_at(1, 5, 40, 3e-4, 3e-5), betas=(0.9, 0.95), eps=1e-8)
    optimizer.step()
    reference = {k: v.detach() for k, v in model.state_dict().items()}
    cut, whole = checkpoint_weights(tmp_path / "cut", 1), checkpoint_weights(tmp_path / "whole", 1)
    assert max_weight_diff(cut, reference) < 1e-7
    assert max_weight_diff(whole, reference) > 1e-6  # the whole windows' step is another step


def test_resume_inside_the_warmup_is_bit_exact_and_may_not_change_it(tmp_path):
    flags = [*SEQ, "--seq_warmup_steps", 6, "--save_every", 2]
    run_train(tmp_path / "full", *flags, "--max_steps", 8)
    run_train(tmp_path / "split", *flags, "--max_steps", 2)
    r = run_train(tmp_path / "split", *flags, "--max_steps", 8, "--resume", 1)
    assert "RESUME: starting from global_step=2" in r.stdout
    assert "sequence warmup: windows of 64 -> 128 tokens (4 a micro-batch)" in r.stdout  # step 4
    assert "sequence warmup: windows of 128 -> 256 tokens (2 a micro-batch)" in r.stdout  # step 7
    assert_same_weights(checkpoint_weights(tmp_path / "split", 8), checkpoint_weights(tmp_path / "full", 8))
    full, split = (step_losses((tmp_path / d / "train.log").read_text()) for d in ("full", "split"))
    assert full == split and len(full) == 8
    for changed in (["--seq_warmup_steps", 4], ["--seq_warmup_start", 128]):
        given = [*SEQ, "--seq_warmup_steps", 6, "--save_every", 2]
        given[given.index(changed[0]) + 1] = changed[1]
        r = run_train(tmp_path / "split", *given, "--max_steps", 10, "--resume", 1, check=False)
        assert r.returncode == 2 and f"{changed[0][2:]}: " in r.stderr, r.stderr


def test_the_start_is_not_compared_on_resume_when_no_run_warms_up(tmp_path):
    run_train(tmp_path / "run", *SEQ, "--max_steps", 2, "--save_every", 2)  # no warmup: --seq_warmup_start 64 unused
    given = list(SEQ)
    given[given.index("--seq_warmup_start") + 1] = 128
    r = run_train(tmp_path / "run", *given, "--max_steps", 3, "--resume", 1)
    assert "RESUME: starting from global_step=2" in r.stdout and "seq_warmup_start" not in r.stdout.split("RESUME")[1]
    # the step-3 checkpoint records 128; with a warmup asked for, the start is compared again
    r = run_train(tmp_path / "run", *SEQ, "--seq_warmup_steps", 4, "--max_steps", 4, "--resume", 1, check=False)
    assert r.returncode == 2 and "seq_warmup_start: 128 -> 64" in r.stderr and "seq_warmup_steps: 0 -> 4" in r.stderr


@pytest.mark.parametrize("extra, says", [
    (["--seq_len", 256, "--seq_warmup_start", 96, "--seq_warmup_steps", 4],
     "--seq_len must be --seq_warmup_start times a power of two (got 256 and 96); e.g. --seq_warmup_start 64"),
    (["--seq_len", 256, "--seq_warmup_start", 256, "--seq_warmup_steps", 4], "there is nothing to grow"),
    (["--seq_len", 256, "--seq_warmup_start", 32, "--seq_warmup_steps", 4],
     f"--seq_warmup_start must be at least {SEQ_WARMUP_MIN_START}, got 32"),
    (["--seq_warmup_steps", -1], "--seq_warmup_steps must be >= 0, got -1"),
])
def test_a_warmup_that_cannot_act_is_refused_in_one_line(tmp_path, extra, says):
    r = run_train(tmp_path / "out", *extra, "--max_steps", 2, check=False)
    assert r.returncode == 2 and says in one_line_error(r.stderr)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_saved_before_the_option_existed_resumes_as_a_run_without_a_warmup(tmp_path):
    out = tmp_path / "run"
    run_train(out, *SEQ, "--max_steps", 2, "--save_every", 2)
    forget_options(out, "seq_warmup_steps", "seq_warmup_start")
    r = run_train(out, *SEQ, "--seq_warmup_steps", 4, "--max_steps", 4, "--resume", 1, check=False)
    assert r.returncode == 2 and "seq_warmup_steps: 0 -> 4" in r.stderr, r.stderr
    run_train(out, *SEQ, "--max_steps", 4, "--resume", 1)


@pytest.mark.parametrize("static_shapes, dynamic", [(True, False), (False, None)])
def test_each_warmup_length_is_compiled_for_its_own_shape(monkeypatch, static_shapes, dynamic):
    # Under dynamo's default a second shape is compiled once more as a dynamic graph, which every later stage (the
    # whole run at --seq_len) would then run: the warmup's forward is compiled with dynamic=False instead.
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw.get("dynamic", "unset")) or fn)
    model = SmolLM2ForCausalLM(get_config("tiny"))
    build_train_step(model, Switches(compile=True, compile_scope="model"), torch.device("cpu"), lr=1e-3,
                     weight_decay=0.1, grad_clip=1.0, static_shapes=static_shapes)
    assert seen == [dynamic]
