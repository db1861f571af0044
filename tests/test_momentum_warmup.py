"""--muon_momentum_warmup_steps: Muon's momentum rises from 0.85 to 0.95 over the first steps (modded-nanogpt's
warmup). The update under a moving momentum is torch.optim.Muon's with the same momentum set in its groups; the
compiled passes take it as a device tensor (no recompile as it moves); a resume inside the warmup is bit-exact
and may not change it."""

import pytest
import torch

from conftest import assert_same_weights, checkpoint_weights, one_line_error, run_train, step_losses
from smollm2.muon import MOMENTUM, MOMENTUM_WARMUP_START, MuonAdamW, momentum_at, set_momentum
from smollm2.training import build_optimizer, load_optimizer_state, optimizer_state_for_checkpoint, set_lr
from smollm2_config import get_config
from smollm2_model import SmolLM2ForCausalLM

CPU = torch.device("cpu")


def test_the_momentum_rises_linearly_to_muons_at_the_last_warmup_step():
    assert [momentum_at(s, 4) for s in (1, 2, 3, 4, 5, 100)] == pytest.approx([0.875, 0.9, 0.925, 0.95, 0.95, 0.95])
    assert momentum_at(1, 0) == momentum_at(7, 0) == MOMENTUM == 0.95 and MOMENTUM_WARMUP_START == 0.85
    values = [momentum_at(s, 300) for s in range(1, 301)]
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] == MOMENTUM


def test_a_moving_momentum_is_torch_muons_with_the_same_momentum():
    torch.manual_seed(1)
    shapes = [(48, 32), (48, 32), (32, 96)]
    ours = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = MuonAdamW([{"params": ours[:2], "muon": True, "lr_scale": 1.0, "weight_decay": 0.1},
                     {"params": ours[2:], "muon": True, "lr_scale": 1.0, "weight_decay": 0.1}], lr=0.02)
    torch_opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(1, 6):
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape)
            b.grad = a.grad.clone()
        set_momentum(opt, momentum_at(step, 4))
        for g in torch_opt.param_groups:
            g["momentum"] = momentum_at(step, 4)
        opt.step()
        torch_opt.step()
        for a, b in zip(ours, ref):
            assert torch.equal(opt.state[a]["momentum_buffer"], torch_opt.state[b]["momentum_buffer"])
            torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
    assert opt.param_groups[0]["momentum"] == MOMENTUM  # the warmup ended at 0.95


def tiny_model():
    return SmolLM2ForCausalLM(get_config("tiny"))


def test_compiled_passes_take_the_momentum_as_a_tensor_and_equal_the_eager_ones():
    from torch._dynamo.utils import counters

    runs = []
    for compiled in (False, True):
        torch.manual_seed(3)
        model = tiny_model()
        opt = build_optimizer(model, 2e-3, 0.1, CPU, kind="muon", compile_update=compiled, momentum_schedule=True)
        muon_groups = [g for g in opt.param_groups if g["muon"]]
        assert all(torch.is_tensor(g["momentum"]) == compiled for g in muon_groups)
        for step in range(1, 5):
            for p in model.parameters():  # the same gradients for both runs, whatever the weights
                p.grad = torch.randn(p.shape) * 0.01
            set_momentum(opt, momentum_at(step, 3))
            opt.step()
            if step == 1:
                graphs = counters["stats"]["unique_graphs"]
        assert counters["stats"]["unique_graphs"] == graphs  # the momentum moved 0.883 -> 0.95: no recompile
        runs.append(opt)
    eager, comp = runs
    for a, b in zip(eager.param_groups, comp.param_groups):
        for p, q in zip(a["params"], b["params"]):
            if a["muon"]:  # as in test_muon's compiled test: the buffers to float32 rounding, the weights to a
                # few bf16 ulps of the update (lr 2e-3 x 0.2 sqrt(max side) x ~0.3)
                torch.testing.assert_close(eager.state[p]["momentum_buffer"], comp.state[q]["momentum_buffer"],
                                           rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=4 * 2 ** -8 * 2e-3 * 0.2 * 192 ** 0.5)
            else:
                assert torch.equal(p, q)


def test_the_compiled_moving_momentum_is_one_fused_pass():
    """Inductor has no lowering for _foreach_lerp with a list of tensor weights: given one, it calls ATen's kernel
    outside the fused code (two extra passes over the hidden weights, 2% of the step at seq 2048 x 16 on an
    H100). The moving momentum's compiled pass holds no ATen call and equals the float path to float32 rounding."""
    from torch._inductor.utils import run_and_get_code
    from smollm2.muon import momentum_step

    torch.manual_seed(4)
    grads = [torch.randn(48, 32) for _ in range(3)]
    bufs = [torch.randn(48, 32) for _ in range(3)]
    twins = [b.clone() for b in bufs]
    compiled = torch.compile(momentum_step, fullgraph=True, dynamic=False)
    out, (code,) = run_and_get_code(compiled, grads, bufs, torch.tensor(0.9), True)
    assert "torch.ops.aten." not in code.replace("torch.ops.aten.view", ""), code
    ref = momentum_step(grads, twins, 0.9, True)
    for a, b in zip(bufs, twins):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2 ** -7, atol=0)


def test_a_tensor_momentum_survives_a_checkpoint_round_trip():
    model = tiny_model()
    opt = build_optimizer(model, 2e-3, 0.1, CPU, kind="muon", compile_update=True, momentum_schedule=True)
    set_momentum(opt, 0.9)
    sd = optimizer_state_for_checkpoint(opt)
    saved = [g["momentum"] for g in sd["param_groups"] if g["muon"]]
    assert saved and all(type(m) is float and m == pytest.approx(0.9) for m in saved)  # floats in the file
    twin = build_optimizer(tiny_model(), 2e-3, 0.1, CPU, kind="muon", compile_update=True, momentum_schedule=True)
    load_optimizer_state(twin, sd)
    assert all(torch.is_tensor(g["momentum"]) for g in twin.param_groups if g["muon"])  # this run's kind kept
    plain = build_optimizer(tiny_model(), 2e-3, 0.1, CPU, kind="muon")
    load_optimizer_state(plain, sd)
    assert all(g["momentum"] == pytest.approx(0.9) for g in plain.param_groups if g["muon"])


WARM = ["--optimizer", "muon", "--log_every", 1, "--muon_momentum_warmup_steps", 6, "--save_every", 3]


def test_resume_inside_the_momentum_warmup_is_bit_exact_and_may_not_change_it(tmp_path):
    run_train(tmp_path / "full", *WARM, "--max_steps", 8)
    run_train(tmp_path / "split", *WARM, "--max_steps", 3)
    r = run_train(tmp_path / "split", *WARM, "--max_steps", 8, "--resume", 1)
    assert "RESUME: starting from global_step=3" in r.stdout
    assert_same_weights(checkpoint_weights(tmp_path / "split", 8), checkpoint_weights(tmp_path / "full", 8))
    full, split = (step_losses((tmp_path / d / "train.log").read_text()) for d in ("full", "split"))
    assert full == split and len(full) == 8
    run_train(tmp_path / "plain", *WARM[:-4], "--muon_momentum_warmup_steps", 0, "--save_every", 3, "--max_steps", 8)
    assert step_losses((tmp_path / "plain" / "train.log").read_text()) != full  # the warmup acts
    changed = [a if a != 6 else 4 for a in WARM]
    r = run_train(tmp_path / "split", *changed, "--max_steps", 10, "--resume", 1, check=False)
    assert r.returncode == 2 and "muon_momentum_warmup_steps: 6 -> 4" in r.stderr, r.stderr


def test_a_checkpoint_saved_before_the_option_existed_resumes_without_a_momentum_warmup(tmp_path):
    out = tmp_path / "run"
    run_train(out, "--optimizer", "muon", "--max_steps", 2, "--save_every", 2)
    for path in (out / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=False)
        ckpt["args"].pop("muon_momentum_warmup_steps", None)  # the latest checkpoint may share a file
        torch.save(ckpt, path)
    r = run_train(out, "--optimizer", "muon", "--muon_momentum_warmup_steps", 4, "--max_steps", 4, "--resume", 1,
                  check=False)
    assert r.returncode == 2 and "muon_momentum_warmup_steps: 0 -> 4" in r.stderr, r.stderr
    run_train(out, "--optimizer", "muon", "--max_steps", 4, "--resume", 1)


@pytest.mark.parametrize("extra, says", [
    (["--optimizer", "adamw", "--muon_momentum_warmup_steps", 4], "schedules Muon's momentum; this run uses --optimizer adamw"),
    (["--muon_momentum_warmup_steps", 4], "--optimizer auto chose adamw"),
    (["--optimizer", "muon", "--muon_momentum_warmup_steps", -2], "--muon_momentum_warmup_steps must be >= 0, got -2"),
])
def test_a_momentum_warmup_that_cannot_act_is_refused_in_one_line(tmp_path, extra, says):
    r = run_train(tmp_path / "out", *extra, "--max_steps", 2, check=False)
    assert r.returncode == 2 and says in one_line_error(r.stderr), r.stderr
    assert not (tmp_path / "out").exists()


def test_a_tensor_momentum_is_never_read_back_to_the_host():
    # Under a CUDA graph a read of a device value (aten._local_scalar_dense, .item()) cannot be captured: the
    # eager step with the momentum as a tensor (--compile 0 --cuda_graph 1) must not make one.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func))
            return func(*args, **(kwargs or {}))

    model = tiny_model()
    opt = build_optimizer(model, 2e-3, 0.1, CPU, kind="muon", capturable=True, momentum_schedule=True)
    assert all(torch.is_tensor(g["momentum"]) for g in opt.param_groups if g["muon"])
    for p in model.parameters():
        p.grad = torch.randn(p.shape)
    set_momentum(opt, momentum_at(1, 3))
    with torch.no_grad(), Ops() as ops:
        opt._muon_group(next(g for g in opt.param_groups if g["muon"]))
    assert any("lerp" in op for op in ops.seen) and not any("_local_scalar_dense" in op for op in ops.seen), ops.seen


def test_the_default_is_a_quarter_of_the_horizon_under_muon_and_a_resume_keeps_its_runs(tmp_path):
    # TINY_TRAIN_ARGS' --lr_decay_steps 40 is the horizon: 10 steps; AdamW has none; a resume that raises
    # --max_steps keeps the saved run's 10 whatever today's default would give.
    run_train(tmp_path / "m", "--optimizer", "muon", "--max_steps", 2, "--save_every", 2)
    assert '"muon_momentum_warmup_steps": 10' in (tmp_path / "m" / "train.log").read_text()
    run_train(tmp_path / "m", "--optimizer", "muon", "--max_steps", 4, "--lr_decay_steps", 80, "--resume", 1,
              "--allow_config_change", 0)
    args_lines = [l for l in (tmp_path / "m" / "train.log").read_text().splitlines() if l.startswith("Args: ")]
    assert len(args_lines) == 2 and all('"muon_momentum_warmup_steps": 10' in l for l in args_lines)
    run_train(tmp_path / "a", "--optimizer", "adamw", "--max_steps", 1)
    assert '"muon_momentum_warmup_steps": 0' in (tmp_path / "a" / "train.log").read_text()
