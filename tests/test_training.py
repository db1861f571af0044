"""The shared training pieces: the fast-path step equals the plain step, lr schedule, decay groups,
optimizer state portable between eager and CUDA-graph runs."""

import math

import pytest
import torch

from smollm2_config import get_config
from smollm2_model import SmolLM2ForCausalLM
from smollm2.loss import linear_cross_entropy
from smollm2.training import (StepConfig, TrainStep, build_optimizer, load_optimizer_state, lr_at,
                              optimizer_state_for_checkpoint, param_groups, set_lr)

CPU = torch.device("cpu")


def one_step(fused: bool, clip: float = 1.0):
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(get_config("tiny"))
    opt = build_optimizer(model, 1e-3, 0.1, CPU)
    step = TrainStep(model, model, opt, StepConfig(grad_clip=clip, fused_loss=fused), CPU)
    g = torch.Generator().manual_seed(1)
    xs = torch.randint(0, 49152, (3, 2, 16), generator=g)
    ys = torch.randint(0, 49152, (3, 2, 16), generator=g)
    loss, norm = step(xs, ys)
    return model, loss, norm


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_fused_loss_step_equals_plain_step(clip):
    m_plain, l_plain, n_plain = one_step(False, clip)
    m_fused, l_fused, n_fused = one_step(True, clip)
    assert abs(l_plain.item() - l_fused.item()) < 1e-5
    assert abs(n_plain.item() - n_fused.item()) < 1e-5 * max(1.0, n_plain.item())
    # Compare the accumulated gradients the step used (left on .grad until the next step): one Adam step
    # turns gradients near eps into +-lr updates, so weights after the step would amplify rounding.
    for (k, a), (_, b) in zip(m_plain.named_parameters(), m_fused.named_parameters()):
        scale = a.grad.abs().max().item()
        assert (a.grad - b.grad).abs().max().item() <= 1e-5 * scale + 1e-9, k


def stacked_or_accumulated(B, A, fused, stack, lr=1e-3):
    """One TrainStep from seed 0 on fixed (A, B, T) windows; returns the model (grads left on .grad), loss, norm."""
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(get_config("tiny"))
    step = TrainStep(model, model, build_optimizer(model, lr, 0.1, CPU),
                     StepConfig(grad_clip=1.0, fused_loss=fused, stack_micro=stack), CPU)
    g = torch.Generator().manual_seed(1)
    xs, ys = (torch.randint(0, 49152, (A, B, 24), generator=g) for _ in range(2))
    loss, norm = step(xs, ys)
    assert step.micro_steps == (1 if stack else A)
    return model, loss, norm


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("B,A", [(1, 4), (2, 3), (3, 1)])
def test_stacked_step_equals_accumulated(B, A, fused):
    """The step's A micro-batches of B windows as one (A * B)-row batch: the same mean loss, the same
    gradients and the same weights after AdamW as A accumulated passes, up to float32 summation order."""
    acc, l_acc, n_acc = stacked_or_accumulated(B, A, fused, stack=0)
    stk, l_stk, n_stk = stacked_or_accumulated(B, A, fused, stack=1)
    assert l_stk.item() == pytest.approx(l_acc.item(), rel=1e-6)
    assert n_stk.item() == pytest.approx(n_acc.item(), rel=1e-5)
    for (k, a), (_, b) in zip(acc.named_parameters(), stk.named_parameters()):
        scale = a.grad.abs().max().item()
        assert (a.grad - b.grad).abs().max().item() <= 1e-6 * scale, k
        # Adam's first update is lr * g / (|g| + eps), whose slope in g is at most 1/eps: entries whose gradient
        # is near rounding level can move by up to lr * |dg| / eps (1e-6 here at most), the rest by rounding.
        bound = 1e-3 * (a.grad - b.grad).abs() / 1e-8 + 1e-7
        assert ((a - b).abs() <= bound).all(), k


def test_stacking_decision_follows_the_memory_estimate(monkeypatch):
    from smollm2 import training
    model = SmolLM2ForCausalLM(get_config("tiny"))
    xs = torch.zeros(4, 2, 16, dtype=torch.long)
    need = training.activation_bytes(model.config, 4 * 2 * 16, 16, 4, True)
    n = model.num_params()
    pending = 12 * n  # grads and AdamW moments, not allocated before the first step

    def plan(stack, free, A=4):
        monkeypatch.setattr(training, "available_memory", lambda device: free)
        lines = []
        step = TrainStep(model, model, build_optimizer(model, 1e-3, 0.1, CPU),
                         StepConfig(grad_clip=1.0, fused_loss=True, stack_micro=stack), CPU, log=lines.append)
        return step._plan(xs[:A].shape), lines

    roomy = pending + int(need / training.STACK_HEADROOM) + 1
    assert plan(-1, roomy) == (1, [f"micro-batches stacked: 4 x 2 -> 8 (est. {need / 1e9:.2f} GB of "
                                   f"{(roomy - pending) / 1e9:.2f} GB free)"])
    steps, lines = plan(-1, roomy - 2)
    assert steps == 4 and lines[0].startswith("micro-batches accumulated: 4 x 2 (stacked 8: est.")
    assert plan(1, 0) == (1, ["micro-batches stacked: 4 x 2 -> 8 (stack_micro 1)"])
    assert plan(0, 10 ** 15) == (4, ["micro-batches accumulated: 4 x 2 (stack_micro 0)"])
    assert plan(-1, 0, A=1) == (1, [])  # one micro-batch: nothing to decide, nothing logged


def saved_bytes_per_token(config, amp: bool, T: int = 32) -> float:
    """Bytes of the tensors a real forward saves for its backward (parameters left out), per token: the
    difference between batches of 2 and 1 windows, so per-forward constants (weight casts, the loss's
    weight gradient, the RoPE tables) cancel."""
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(config)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved(B):
        storages = {}

        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                storages[st.data_ptr()] = st.nbytes()
            return t

        x = torch.randint(0, config.vocab_size, (B, T))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(x, x, fused_loss=linear_cross_entropy)
        return sum(storages.values())

    return (saved(2) - saved(1)) / T


@pytest.mark.parametrize("preset,attn", [("tiny", "sdpa"), ("tiny", "manual"), ("smollm2-135m", "sdpa")])
@pytest.mark.parametrize("amp", [False, True])
def test_activation_estimate_bounds_the_saved_tensors(preset, attn, amp):
    """activation_bytes' per-token count against what autograd really keeps (CPU, bf16 autocast or
    float32): never below it (an underestimate could stack a batch that does not fit), at most 20% above.
    The 135M widths with 2 of its 30 layers and a small vocabulary: the count is per layer, and the loss's
    transient logits (left out here, loss_chunk=0) are not saved tensors."""
    from smollm2.training import activation_bytes
    config = get_config(preset, attn_impl=attn, num_hidden_layers=2, vocab_size=1024)
    got = saved_bytes_per_token(config, amp)
    estimate = activation_bytes(config, 1, 32, 2 if amp else 4, fused_loss=True, loss_chunk=0)
    assert got <= estimate <= 1.2 * got, (got, estimate)


def test_lr_schedule_shape():
    kw = dict(warmup_steps=200, max_steps=5000, max_lr=3e-4, min_lr=3e-5)
    assert lr_at(1, **kw) == pytest.approx(3e-4 / 200)
    assert lr_at(200, **kw) == pytest.approx(3e-4)
    assert lr_at(2600, **kw) == pytest.approx(3e-5 + 0.5 * (3e-4 - 3e-5))
    assert lr_at(5000, **kw) == pytest.approx(3e-5)
    assert lr_at(5050, **kw) == pytest.approx(3e-5)
    lrs = [lr_at(s, **kw) for s in range(200, 5001)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))  # monotone after warmup
    # raising max_steps on resume continues from (about) where the old schedule ended
    assert lr_at(5001, 200, 5050, 3e-4, 3e-5) == pytest.approx(3e-5, rel=0.01)


def test_weight_decay_on_matrices_only():
    model = SmolLM2ForCausalLM(get_config("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()
    assert any(p is model.model.embed_tokens.weight for p in decay["params"])  # the tied matrix, once


def test_optimizer_state_moves_between_float_and_tensor_lr():
    model = SmolLM2ForCausalLM(get_config("tiny"))
    opt = build_optimizer(model, 1e-3, 0.1, CPU)
    model(torch.randint(0, 49152, (1, 8)), torch.randint(0, 49152, (1, 8)))[1].backward()
    opt.step()
    saved = optimizer_state_for_checkpoint(opt)
    assert all(isinstance(g["lr"], float) for g in saved["param_groups"])
    fresh = torch.optim.AdamW(param_groups(model, 0.1), lr=torch.tensor(5e-4))  # a graph run's tensor lr
    load_optimizer_state(fresh, saved)
    assert all(torch.is_tensor(g["lr"]) for g in fresh.param_groups)
    set_lr(fresh, 2e-4)
    assert math.isclose(float(fresh.param_groups[0]["lr"]), 2e-4, rel_tol=1e-6)
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_evaluation_loss_path_equals_plain_loss():
    """Validation runs under no_grad through the chunked loss (no gradients formed): same value as the
    plain full-logits loss, ignore_index included."""
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(get_config("tiny"))
    x, y = torch.randint(0, 49152, (2, 40)), torch.randint(0, 49152, (2, 40))
    y[0, :5] = -100
    with torch.no_grad():
        plain = model(x, y)[1]
        chunked = model(x, y, fused_loss=linear_cross_entropy)[1]
    assert abs(plain.item() - chunked.item()) < 1e-5


def test_validation_in_fewer_larger_forwards_gives_the_same_loss():
    """train.py evaluates the validation windows EVAL_TOKENS at a time instead of one step's rows at a time:
    the same windows (val_batches counts windows), the same token-weighted mean up to summation order."""
    from smollm2.data import TokenBatches, TokenDataset, TokenStream
    from smollm2.training import evaluate

    class Segment:  # one in-memory shard
        def __init__(self, n, seed):
            self.ids = torch.randint(0, 49152, (n,), generator=torch.Generator().manual_seed(seed)).numpy()
            self.n_tokens = n

        def read(self, start, count):
            return self.ids[start:start + count]

    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(get_config("tiny")).eval()
    split = TokenDataset(TokenStream([Segment(4000, 2)]), TokenStream([Segment(32 * 13 + 5, 3)]), "test", "in memory")
    data = TokenBatches(split, 32, 0, "epoch")
    small = list(data.val_batches(12, 4))
    large = list(data.val_batches(12, 64))
    assert [x.shape[0] for x, _ in small] == [4, 4, 4] and [x.shape[0] for x, _ in large] == [12]
    assert torch.equal(torch.cat([x for x, _ in small]), large[0][0])
    assert sum(x.shape[0] for x, _ in data.val_batches(100, 64)) == 13  # no more windows than the split holds
    a, b = evaluate(model, small, CPU, None), evaluate(model, large, CPU, None)
    assert a == pytest.approx(b, rel=1e-6)
