"""--lr_schedule wsd (warmup, stable, linear decay over the last --lr_decay_fraction of the steps) at chosen
steps of each phase, and what a resume with a larger horizon (--max_steps, or --lr_decay_steps) does in each
phase: from warmup or the stable phase the run continues exactly as if the larger horizon had been given from
the start (tested end to end, bit-exact); from inside the decay it goes back up to the new horizon's lr."""

import re

import pytest

from conftest import assert_same_weights, checkpoint_weights, run_train
from smollm2.training import lr_at

KW = dict(warmup_steps=10, max_lr=1.0, min_lr=0.1, schedule="wsd", decay_fraction=0.2)


@pytest.mark.parametrize("step,lr", [
    (1, 0.1), (5, 0.5), (10, 1.0),          # warmup: linear from max_lr / warmup_steps
    (11, 1.0), (50, 1.0), (80, 1.0),        # stable until the last 20% (steps 81..100)
    (81, 1.0 - 0.9 / 20), (90, 0.55), (99, 0.1 + 0.9 / 20),  # linear decay to min_lr
    (100, 0.1), (150, 0.1),                 # min_lr from max_steps on
])
def test_wsd_lr_in_each_phase(step, lr):
    assert lr_at(step, max_steps=100, **KW) == pytest.approx(lr)


def test_wsd_decay_never_starts_inside_the_warmup():
    # a decay fraction reaching into the warmup starts the decay right after it
    lrs = [lr_at(s, 10, 12, 1.0, 0.0, "wsd", 0.5) for s in range(1, 13)]
    assert lrs[9] == 1.0 and lrs[10] == pytest.approx(0.5) and lrs[11] == 0.0


def test_cosine_is_the_default_schedule_and_ignores_the_wsd_fraction():
    for s in (1, 10, 55, 100):
        assert lr_at(s, 10, 100, 1.0, 0.1) == lr_at(s, 10, 100, 1.0, 0.1, "cosine", 0.5)


@pytest.mark.parametrize("stopped_at", [5, 50, 80])  # in warmup, in the stable phase, the last stable step
def test_extending_before_the_decay_is_the_longer_schedule(stopped_at):
    # the steps already run had the same lr under both horizons, and every later step follows the longer one
    for s in range(1, stopped_at + 1):
        assert lr_at(s, max_steps=100, **KW) == lr_at(s, max_steps=300, **KW)


def test_extending_inside_the_decay_rewarms():
    # stopped at 90 (lr 0.55, decaying), extended to 300: step 91 is back at max_lr, the decay is at 241..300
    assert lr_at(90, max_steps=100, **KW) == pytest.approx(0.55)
    assert lr_at(91, max_steps=300, **KW) == 1.0
    assert lr_at(240, max_steps=300, **KW) == 1.0 and lr_at(241, max_steps=300, **KW) < 1.0
    # ... and one finished (at min_lr) likewise
    assert lr_at(101, max_steps=300, **KW) == 1.0


def logged_lrs(out_dir) -> dict[int, float]:
    text = (out_dir / "train.log").read_text()
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"^step\s+(\d+)/\d+ \| lr (\S+)", text, re.M)}


def test_train_in_the_stable_phase_then_extend_and_decay(tmp_path):
    """The workflow WSD exists for: train with a far horizon (--lr_decay_steps 1000: all stable), stop at 12,
    then resume with the real end (--max_steps 20, decay over its last 20%): the same weights, bit for bit, as
    one run of 20 steps with that schedule."""
    common = ["--optimizer", "adamw", "--lr_schedule", "wsd", "--lr_decay_fraction", 0.2, "--log_every", 1, "--save_every", 4]
    run_train(tmp_path / "full", *common, "--lr_decay_steps", 0, "--max_steps", 20)
    run_train(tmp_path / "split", *common, "--lr_decay_steps", 1000, "--max_steps", 12)
    r = run_train(tmp_path / "split", *common, "--lr_decay_steps", 0, "--max_steps", 20, "--resume", 1)
    assert "CHANGED on resume: lr_decay_steps: 1000 -> 0" in r.stdout
    full, split = logged_lrs(tmp_path / "full"), logged_lrs(tmp_path / "split")
    assert full == split
    assert [full[s] for s in (5, 12, 16)] == [pytest.approx(3e-4)] * 3  # stable through step 16 (adamw recipe lr)
    assert full[17] < full[16] and full[20] == pytest.approx(3e-5)
    assert_same_weights(checkpoint_weights(tmp_path / "split", 20), checkpoint_weights(tmp_path / "full", 20))


def test_default_warmup_is_the_optimizers_share_of_the_horizon_up_to_200_steps():
    from smollm2.training import default_warmup
    horizons = (1, 5, 100, 300, 600, 2000, 5000, 5050, 100_000)
    assert [default_warmup(n) for n in horizons] == [1, 1, 10, 30, 60, 200, 200, 200, 200]
    assert [default_warmup(n, "adamw") for n in horizons] == [default_warmup(n) for n in horizons]
    assert [default_warmup(n, "muon") for n in horizons] == [1, 1, 2, 8, 15, 50, 125, 126, 200]


def test_train_py_default_warmup_follows_the_horizon_and_a_resume_keeps_it(tmp_path):
    """No --warmup_steps: the optimizer's share of the horizon (adamw 10%, muon 2.5%) (--max_steps 3 -> 1, --lr_decay_steps 40 -> 4, 1); the resume that raises the horizon keeps the
    run's, which the checkpoint recorded: the same weights as the two commands given that warmup."""
    import sys
    from conftest import REPO_ROOT, TINY_TRAIN_ARGS, assert_same_weights, checkpoint_weights, run_checked

    i = TINY_TRAIN_ARGS.index("--warmup_steps")
    base = TINY_TRAIN_ARGS[:i] + TINY_TRAIN_ARGS[i + 2:]  # --lr_decay_steps 40 stays
    train = lambda out, *extra: run_checked(  # noqa: E731
        [sys.executable, str(REPO_ROOT / "train.py"), *base, "--out_dir", str(out), "--log_every", "1",
         "--save_every", "3", *map(str, extra)], check=True)
    first = train(tmp_path / "split", "--max_steps", 3, "--lr_decay_steps", 0)  # horizon 3 -> warmup 1 ...
    assert '"warmup_steps": 1' in first.stdout
    resumed = train(tmp_path / "split", "--max_steps", 6, "--lr_decay_steps", 0, "--resume", 1)  # ... kept at 6
    assert '"warmup_steps": 1' in resumed.stdout and "warmup_steps:" not in resumed.stdout
    for steps, resume in ((3, 0), (6, 1)):  # the same two commands, the warmup given
        train(tmp_path / "given", "--max_steps", steps, "--lr_decay_steps", 0, "--warmup_steps", 1, "--resume", resume)
    assert_same_weights(checkpoint_weights(tmp_path / "split", 6), checkpoint_weights(tmp_path / "given", 6))
    fresh = train(tmp_path / "long", "--max_steps", 1, "--lr_decay_steps", 40)
    assert '"warmup_steps": 4' in fresh.stdout
    muon = train(tmp_path / "muon", "--max_steps", 1, "--lr_decay_steps", 40, "--optimizer", "muon")
    assert '"warmup_steps": 1' in muon.stdout  # Muon's own share: 2.5%
