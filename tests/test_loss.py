"""The fused linear + cross-entropy against references: float64 autograd on the full logits, its own
eager path under torch.compile, and the one-backward contract of its in-place gradient scaling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smollm2.loss import linear_cross_entropy
from smollm2_model import IGNORE_INDEX


def _maxdiff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_linear_cross_entropy_compiled_equals_eager():
    # Under torch.compile the softmax-minus-onehot gradient takes its fusable (out-of-place) form.
    g = torch.Generator().manual_seed(1)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = torch.randn(97, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 97, (40,), generator=g)
    t[::5] = IGNORE_INDEX
    eager = linear_cross_entropy(h, w, t, chunk_size=16)
    ge = torch.autograd.grad(eager, (h, w))
    compiled = torch.compile(lambda a, b, c: linear_cross_entropy(a, b, c, chunk_size=16), fullgraph=True)(h, w, t)
    gc = torch.autograd.grad(compiled, (h, w))
    assert abs(compiled.item() - eager.item()) <= 1e-6 * abs(eager.item())  # float32 rounding, relative
    for a, b in zip(gc, ge):
        assert _maxdiff(a, b) <= 1e-6 * b.abs().max().item()


def test_linear_cross_entropy_backward_once():
    # Its gradients are scaled in place (one float32 [V, C] buffer, not two): a second backward is refused.
    h = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.randint(0, 11, (6,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()


@pytest.mark.parametrize("chunk_size", [7, 16, 1000])
def test_linear_cross_entropy_chunks_and_ignore_index(chunk_size):
    # Float32 inputs (the fused path accumulates in float32); the reference is float64 autograd.
    g = torch.Generator().manual_seed(0)
    N, C, V = 50, 16, 97  # 7 does not divide 50
    h = torch.randn(N, C, generator=g, requires_grad=True)
    w = torch.randn(V, C, generator=g, requires_grad=True)
    t = torch.randint(0, V, (N,), generator=g)
    t[::4] = IGNORE_INDEX
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.cross_entropy(h64 @ w64.t(), t, ignore_index=IGNORE_INDEX)
    ref_gh, ref_gw = torch.autograd.grad(ref, (h64, w64))
    got = linear_cross_entropy(h, w, t, chunk_size=chunk_size)
    gh, gw = torch.autograd.grad(got * 1.0, (h, w))
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) <= 1e-5
    assert _maxdiff(gh, ref_gh) <= 1e-6 and _maxdiff(gw, ref_gw) <= 1e-6
    with torch.no_grad():  # the no-grad (evaluation) path
        assert abs(linear_cross_entropy(h, w, t, chunk_size=chunk_size).item() - ref.item()) <= 1e-5


def test_evaluation_loss_runs_in_smaller_chunks_and_stays_exact(monkeypatch):
    """Without gradients the logits chunk is capped at NO_GRAD_CHUNK (validation's peak memory): more tokens than
    one such chunk, ignored targets included, give the float64 reference loss; every matmul the no-grad path
    runs has at most NO_GRAD_CHUNK rows."""
    from smollm2 import loss

    g = torch.Generator().manual_seed(3)
    N, C, V = 2 * loss.NO_GRAD_CHUNK + 77, 8, 31
    h, w = torch.randn(N, C, generator=g), torch.randn(V, C, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    t[::5] = IGNORE_INDEX
    ref = F.cross_entropy(h.double() @ w.double().t(), t, ignore_index=IGNORE_INDEX)
    rows = []
    real_ce = F.cross_entropy
    monkeypatch.setattr(loss.F, "cross_entropy", lambda x, *a, **k: rows.append(x.shape[0]) or real_ce(x, *a, **k))
    with torch.no_grad():
        got = linear_cross_entropy(h, w, t)
    assert abs(got.item() - ref.item()) <= 1e-5
    assert rows == [loss.NO_GRAD_CHUNK, loss.NO_GRAD_CHUNK, 77]


def test_blocks_scope_compiles_the_head_and_keeps_its_numbers(tiny_model):
    """--compile_scope blocks compiles each layer (covered under DDP in test_distributed) and, with compile_head,
    the final norm and the fused head + loss: loss and every gradient as the eager model's to float32 rounding;
    transformers' model is left alone."""
    import copy

    from smollm2.parallel import compile_head
    eager = tiny_model.train()
    compiled = copy.deepcopy(eager)
    compile_head(compiled)
    assert hasattr(compiled.head_loss, "_torchdynamo_orig_callable")
    assert not hasattr(eager.head_loss, "_torchdynamo_orig_callable")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, eager.config.vocab_size, (2, 24), generator=g)
    y = torch.randint(0, eager.config.vocab_size, (2, 24), generator=g)
    losses = [m(x, y, fused_loss=linear_cross_entropy)[1] for m in (eager, compiled)]
    for loss in losses:
        loss.backward()
    assert abs(losses[1].item() - losses[0].item()) <= 1e-5 * abs(losses[0].item())
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert _maxdiff(q.grad, p.grad) <= 1e-4 * p.grad.abs().max().item(), name


def test_blocks_scope_compiles_every_layer_and_the_head(tiny_model, monkeypatch):
    # What build_forward does for --compile_scope blocks (the compiling itself is timed on the GPU, and its
    # numbers are checked above and in test_distributed): each decoder layer in place, then compile_head.
    from smollm2 import parallel
    compiled, heads = [], []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    monkeypatch.setattr(parallel, "compile_head", lambda model, dynamic=None: heads.append(model))
    assert parallel.build_forward(tiny_model, True, "blocks", torch.device("cpu")) is tiny_model
    assert compiled == list(tiny_model.model.layers) and heads == [tiny_model]
