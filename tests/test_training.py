"""The shared training pieces: the fast-path step equals the plain step, lr schedule, decay groups,
optimizer state portable between eager and CUDA-graph runs."""

import math

import pytest
import torch

from smollm2_config import get_config
from smollm2_model import SmolLM2ForCausalLM
from smollm2_training import (StepConfig, TrainStep, build_optimizer, load_optimizer_state, lr_at,
                              optimizer_state_for_checkpoint, param_groups, set_lr)

CPU = torch.device("cpu")


def one_step(fused: bool, clip: float = 1.0):
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(get_config("tiny"))
    opt = build_optimizer(model, 1e-3, 0.1, CPU)
    step = TrainStep(model, model, opt, StepConfig(grad_accum=3, grad_clip=clip, amp_dtype=None, fused_loss=fused,
                                                  cuda_graph=False), CPU)
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


def test_accumulation_equals_one_big_batch():
    """grad_accum A over micro-batches == one batch of all of them (equal-size micro-batches)."""
    torch.manual_seed(0)
    a = SmolLM2ForCausalLM(get_config("tiny"))
    b = SmolLM2ForCausalLM(get_config("tiny"))
    b.load_state_dict(a.state_dict())
    xs = torch.randint(0, 49152, (4, 1, 16))
    ys = torch.randint(0, 49152, (4, 1, 16))
    cfg = dict(grad_clip=0.0, amp_dtype=None, fused_loss=True, cuda_graph=False)
    TrainStep(a, a, build_optimizer(a, 1e-3, 0.1, CPU), StepConfig(grad_accum=4, **cfg), CPU)(xs, ys)
    TrainStep(b, b, build_optimizer(b, 1e-3, 0.1, CPU), StepConfig(grad_accum=1, **cfg), CPU)(
        xs.reshape(1, 4, 16), ys.reshape(1, 4, 16))
    for (k, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert (p.grad - q.grad).abs().max().item() <= 1e-5 * p.grad.abs().max().item() + 1e-9, k


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
        chunked = model(x, y, return_logits=False)[1]
    assert abs(plain.item() - chunked.item()) < 1e-5
