"""--optimizer muon (smollm2/muon.py) against torch.optim.Muon and torch.optim.AdamW, and in train.py: the
checkpoint carries Muon's state and a resume continues bit-exactly; a resume that changes --optimizer and
Muon under --fsdp 1 are refused in one line. (Muon under DDP: tests/test_distributed.py.)

Tolerances, measured on CPU: Newton-Schulz batched by shape gives the bits of torch.optim.Muon's per-matrix
_zeropower_via_newtonschulz (max difference 0); the parameters differ from torch.optim.Muon's by at most 3e-8
after 5 steps, from adding the lr-scaled update as one float32 product instead of add_(alpha=...).
"""

import copy
import sys

import pytest
import torch

from conftest import assert_same_weights, checkpoint_weights, run_train, step_losses
from smollm2.muon import (NS_COEFFICIENTS, POLAR_EXPRESS_COEFFICIENTS, POLAR_EXPRESS_SAFETY, MuonAdamW, adjusted_lr_scale,
                         is_muon_matrix, newton_schulz, per_neuron_normalise)
from smollm2.training import build_optimizer, param_groups, set_lr
from smollm2_config import get_config
from smollm2_model import SmolLM2ForCausalLM

CPU = torch.device("cpu")
SHAPES = [(48, 32), (48, 32), (32, 96), (32, 96), (32, 96), (20, 32), (32, 32)]  # tall, wide, square; repeats batch


def test_newton_schulz_batched_equals_torch_per_matrix():
    from torch.optim._muon import _zeropower_via_newtonschulz

    torch.manual_seed(0)
    for shape in [(5, 48, 32), (3, 32, 96), (2, 32, 32)]:
        G = torch.randn(shape)
        batched = newton_schulz(G)
        per_matrix = torch.stack([newton_schulz(g) for g in G])
        reference = torch.stack([_zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7) for g in G])
        assert batched.dtype == reference.dtype == torch.bfloat16 and batched.shape == G.shape
        # bf16 results of magnitude < 1: two ulps are 2 * 2**-8
        torch.testing.assert_close(batched, per_matrix, rtol=0, atol=2 ** -7)
        torch.testing.assert_close(batched, reference, rtol=0, atol=2 ** -7)
        # what it is for: the singular values of the result are pushed towards 1 (into ~[0.5, 1.5])
        s = torch.linalg.svdvals(batched.float())
        assert s.min() > 0.3 and s.max() < 1.6, (s.min(), s.max())


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_groups_equal_torch_muon(nesterov):
    torch.manual_seed(1)
    ours = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in SHAPES]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    by_shape: dict = {}
    for p in ours:
        by_shape.setdefault(tuple(p.shape), []).append(p)
    opt = MuonAdamW([{"params": ps, "muon": True, "lr_scale": 1.0, "weight_decay": 0.1} for ps in by_shape.values()],
                    lr=0.02, nesterov=nesterov)
    torch_opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    for step in range(5):
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape)
            b.grad = a.grad.clone()
        if step == 3:  # the lr moves along the schedule between steps
            set_lr(opt, 0.01)
            for g in torch_opt.param_groups:
                g["lr"] = 0.01
        opt.step()
        torch_opt.step()
        for a, b in zip(ours, ref):
            assert torch.equal(opt.state[a]["momentum_buffer"], torch_opt.state[b]["momentum_buffer"])
            torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
    moved = min((a.detach() - s).abs().max().item() for a, s in zip(ours, start))
    assert moved > 1e-3  # every matrix moved: the comparison is not between two untouched copies


@pytest.mark.parametrize("variant,fuse_normuon", [("muon", True), ("normuon", True), ("normuon", False)])
def test_compiled_update_equals_the_eager_one(variant, fuse_normuon):
    """--compile 1 on CUDA runs Muon's elementwise passes (momentum, Nesterov, bf16 stacking; NorMuon's per-neuron
    normalisation with the weight decay and update, or only the latter with fuse_normuon off) through
    torch.compile, Newton-Schulz eager between them. Fused, the lerps round differently by an ulp: the momentum
    buffers agree to float32 rounding, the weights to a bf16 ulp of the update."""
    from torch._dynamo.utils import counters

    shapes = [(48, 32), (48, 32), (32, 96), (32, 96)]
    runs = []
    for compiled in (False, True):
        torch.manual_seed(2)
        params = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
        opt = MuonAdamW([{"params": params[:2], "muon": True, "lr_scale": 1.0, "weight_decay": 0.1},
                         {"params": params[2:], "muon": True, "lr_scale": 1.0, "weight_decay": 0.1}],
                        lr=0.02, compile_update=compiled, variant=variant)
        opt.fuse_normuon = fuse_normuon
        for step in range(3):
            for p in params:
                p.grad = torch.randn(p.shape)
            set_lr(opt, 0.02 / (step + 1))  # a float lr becomes a tensor input: no recompile as it moves
            opt.step()
            if step == 0:
                graphs = counters["stats"]["unique_graphs"]
        assert counters["stats"]["unique_graphs"] == graphs
        runs.append((params, [opt.state[p]["momentum_buffer"] for p in params],
                     [opt.state[p].get("neuron_second_moment") for p in params]))
    (eager, eager_bufs, eager_seconds), (comp, comp_bufs, comp_seconds) = runs
    for a, b in zip(eager_bufs, comp_bufs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if variant == "normuon":  # mean squares of Newton-Schulz's bf16 output, a few bf16 ulps apart (relative)
        for a, b in zip(eager_seconds, comp_seconds):
            torch.testing.assert_close(a, b, rtol=6 * 2 ** -8, atol=0)
    # a bf16 ulp of Newton-Schulz's output (~2**-8 at its 0.1-0.3 magnitudes) times lr * scale, a few times
    for a, b in zip(eager, comp):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=3 * 2 ** -8 * 0.02 * 0.2 * 96 ** 0.5)
    torch.manual_seed(2)
    start = [torch.randn(s) * 0.1 for s in shapes]
    assert min((a.detach() - s).abs().max().item() for a, s in zip(comp, start)) > 1e-3  # every matrix moved


def test_adjusted_lr_is_torch_muons():
    from torch.optim._muon import _adjust_lr

    for shape in SHAPES + [(1536, 576), (576, 1536), (192, 576)]:
        for fn in ["match_rms_adamw", "original", None]:
            assert 1e-3 * adjusted_lr_scale(torch.Size(shape), fn) == pytest.approx(_adjust_lr(1e-3, fn, torch.Size(shape)))


def tiny_model():
    torch.manual_seed(0)
    return SmolLM2ForCausalLM(get_config("tiny"))


def test_split_hidden_matrices_to_muon_rest_to_adamw():
    model = tiny_model()
    names = {n for n, p in model.named_parameters() if is_muon_matrix(n, p)}
    assert names == {n for n, p in model.named_parameters() if p.dim() == 2 and "layers." in n}
    assert len(names) == 2 * 7  # q, k, v, o, gate, up, down per layer
    opt = build_optimizer(model, 1e-3, 0.1, CPU, kind="muon", adamw_lr=4e-3)
    muon = [g for g in opt.param_groups if g["muon"]]
    adamw = [g for g in opt.param_groups if not g["muon"]]
    assert all(len({tuple(p.shape) for p in g["params"]}) == 1 for g in muon)  # one shape per group: one batch
    assert sum(len(g["params"]) for g in muon) == len(names)
    # AdamW's groups are --optimizer adamw's, minus the hidden matrices: decay on the embedding, none on the gains
    plain = param_groups(model, 0.1)
    assert [p for g in adamw for p in g["params"]] == [p for g in plain for p in g["params"] if p.dim() == 1
                                                       or p is model.model.embed_tokens.weight]
    assert [g["weight_decay"] for g in adamw] == [0.1, 0.0]
    assert [g["lr"] for g in opt.param_groups] == [1e-3] * len(muon) + [4e-3, 4e-3]
    set_lr(opt, 5e-4)  # the schedule scales both parts
    assert [g["lr"] for g in opt.param_groups] == [5e-4] * len(muon) + [2e-3, 2e-3]
    # --norm_lr: the gains alone at their own peak, scaled by the same schedule
    opt = build_optimizer(model, 1e-3, 0.1, CPU, kind="muon", adamw_lr=4e-3, norm_lr=2e-2)
    assert [g["lr"] for g in opt.param_groups] == [1e-3] * len(muon) + [4e-3, 2e-2]
    set_lr(opt, 5e-4)
    assert [g["lr"] for g in opt.param_groups] == [5e-4] * len(muon) + [2e-3, 1e-2]


def test_muon_optimizer_equals_torch_muon_plus_adamw_on_the_model():
    """The whole --optimizer muon step on the tiny model against torch.optim.Muon over the hidden matrices
    and torch.optim.AdamW over the rest, same groups, same lrs, same gradients."""
    ours, ref = tiny_model(), tiny_model()
    opt = build_optimizer(ours, 2e-3, 0.1, CPU, kind="muon", adamw_lr=4e-3)
    hidden = [p for n, p in ref.named_parameters() if is_muon_matrix(n, p)]
    emb = [ref.model.embed_tokens.weight]
    gains = [p for p in ref.parameters() if p.dim() == 1]
    torch_muon = torch.optim.Muon(hidden, lr=2e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    torch_adamw = torch.optim.AdamW([{"params": emb, "weight_decay": 0.1}, {"params": gains, "weight_decay": 0.0}],
                                    lr=4e-3, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randint(0, 49152, (2, 16))
    for _ in range(4):
        # One gradient for both (the weights differ by rounding after a step, and Adam turns a near-zero
        # gradient's sign into a full lr-sized step: a different gradient would hide what is compared)
        ours.zero_grad(set_to_none=True)
        ours(x, x)[1].backward()
        for p, q in zip(ours.parameters(), ref.parameters()):
            q.grad = p.grad.clone()
        opt.step()
        torch_muon.step()
        torch_adamw.step()
    a, b = dict(ours.named_parameters()), dict(ref.named_parameters())
    for n in a:
        torch.testing.assert_close(a[n].detach(), b[n].detach(), rtol=0, atol=1e-6, msg=n)
    assert (a["model.layers.0.self_attn.q_proj.weight"] - tiny_model().model.layers[0].self_attn.q_proj.weight).abs().max() > 1e-3


def train_once(model, optimizer, x: torch.Tensor) -> None:
    """One step of the model on the batch x (its own targets)."""
    model.zero_grad(set_to_none=True)
    model(x, x)[1].backward()
    optimizer.step()


def test_state_dict_round_trip_continues_exactly():
    """What a checkpoint holds: a fresh optimizer loaded from state_dict() steps as the original does."""
    torch.manual_seed(2)
    model = tiny_model()
    opt = build_optimizer(model, 2e-3, 0.1, CPU, kind="muon")
    x = torch.randint(0, 49152, (2, 16))

    train_once(model, opt, x)
    twin = tiny_model()
    twin.load_state_dict(model.state_dict())
    twin_opt = build_optimizer(twin, 2e-3, 0.1, CPU, kind="muon")
    state = copy.deepcopy(opt.state_dict())  # as a checkpoint file holds it: its own tensors
    assert {k for s in state["state"].values() for k in s} == {"momentum_buffer", "step", "exp_avg", "exp_avg_sq"}
    twin_opt.load_state_dict(state)
    train_once(model, opt, x)
    train_once(twin, twin_opt, x)
    assert_same_weights(model.state_dict(), twin.state_dict())


MUON = ["--optimizer", "muon", "--log_every", 1, "--save_every", 5]


def test_resume_with_muon_is_bit_exact(tmp_path):
    run_train(tmp_path / "full", *MUON, "--max_steps", 10)
    run_train(tmp_path / "split", *MUON, "--max_steps", 5)
    saved = torch.load(tmp_path / "split" / "checkpoints" / "checkpoint_step_5.pt", weights_only=False)
    assert sum("momentum_buffer" in s for s in saved["optimizer"]["state"].values()) == 14
    assert saved["args"]["optimizer"] == "muon" and saved["switches"]["optimizer"] == "muon"
    r = run_train(tmp_path / "split", *MUON, "--max_steps", 10, "--resume", 1)
    assert "RESUME: starting from global_step=5" in r.stdout
    assert_same_weights(checkpoint_weights(tmp_path / "split", 10), checkpoint_weights(tmp_path / "full", 10))
    full, split = (step_losses((tmp_path / d / "train.log").read_text()) for d in ("full", "split"))
    assert full == split and len(full) == 10


@pytest.mark.parametrize("first,then", [("adamw", "muon"), ("muon", "adamw")])
def test_resume_that_changes_the_optimizer_is_refused_in_one_line(tmp_path, first, then):
    run_train(tmp_path, "--optimizer", first, "--max_steps", 2)
    before = (tmp_path / "train.log").read_text()
    for extra in ([], ["--allow_config_change", 1]):  # not even on purpose: the state cannot load
        r = run_train(tmp_path, "--optimizer", then, "--max_steps", 4, "--resume", 1, *extra, check=False)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith("train.py: error: cannot resume from") and f"trained with --optimizer {first}" in lines[0]
        assert f"resume with --optimizer {first}" in lines[0]
    assert (tmp_path / "train.log").read_text() == before  # refused before the log opened


@pytest.mark.parametrize("flag, what", [("--adamw_lr", "the lr of the AdamW part of --optimizer muon"),
                                        ("--norm_lr", "the lr of the norm gains under --optimizer muon")])
def test_the_adamw_part_lrs_belong_to_muon(tmp_path, flag, what):
    r = run_train(tmp_path / "out", "--optimizer", "adamw", flag, 1e-3, "--max_steps", 2, check=False)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and lines == [f"train.py: error: {flag} is {what}; with --optimizer adamw use --max_lr"], \
        r.stderr
    assert not (tmp_path / "out").exists()


def test_recipes_fill_what_is_unset():
    sys.path.insert(0, str(__import__("conftest").REPO_ROOT))
    import train
    from smollm2.training import RECIPES

    for opt in RECIPES:
        args = train.parse_args(["--optimizer", opt])
        assert {k: getattr(args, k) for k in RECIPES[opt]} == RECIPES[opt]
    args = train.parse_args(["--optimizer", "muon", "--max_lr", "0.01", "--lr_schedule", "cosine"])
    assert (args.max_lr, args.lr_schedule, args.adamw_lr) == (0.01, "cosine", RECIPES["muon"]["adamw_lr"])
    assert train.parse_args(["--optimizer", "adamw"]).adamw_lr is None


@pytest.mark.parametrize("flags,chosen", [
    ([], "adamw"),  # the seed's command: 256 x 1 x 4 = 1,024 tokens a step
    (["--seq_len", "2048", "--batch_size", "16", "--grad_accum", "1"], "muon"),  # 32,768
    (["--seq_len", "2048", "--batch_size", "8", "--grad_accum", "2"], "muon"),
    (["--seq_len", "2048", "--batch_size", "4", "--grad_accum", "1"], "muon"),  # 8,192: the smallest measured win
    (["--seq_len", "2048", "--batch_size", "2", "--grad_accum", "1"], "adamw"),  # 4,096
    (["--seq_len", "1024", "--batch_size", "4", "--grad_accum", "2"], "muon"),
    (["--seq_len", "2048", "--batch_size", "16", "--fsdp", "1"], "adamw"),  # Muon is refused under FSDP2
])
def test_auto_optimizer_follows_the_tokens_per_step(flags, chosen):
    sys.path.insert(0, str(__import__("conftest").REPO_ROOT))
    import train
    from smollm2.training import RECIPES

    args = train.parse_args(flags)
    assert args.optimizer == chosen and args.max_lr == RECIPES[chosen]["max_lr"]
    assert train.parse_args([*flags, "--optimizer", "adamw"]).optimizer == "adamw"


def test_per_step_coefficients_repeating_one_triple_are_the_same_iteration():
    torch.manual_seed(5)
    G = torch.randn(3, 32, 96)
    assert torch.equal(newton_schulz(G, (NS_COEFFICIENTS,) * 5, 5), newton_schulz(G))


def test_polar_express_orthogonalises_closer_than_the_quintic():
    """Against the exact polar factor U V^T (float64 SVD): Polar Express's five steps land nearer than Keller
    Jordan's five (whose fixed point leaves singular values between about 0.7 and 1.2)."""
    torch.manual_seed(6)
    G = torch.randn(4, 48, 128, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    exact = U @ Vh
    polar = newton_schulz(G, POLAR_EXPRESS_COEFFICIENTS, 5, safety=POLAR_EXPRESS_SAFETY).double()
    quintic = newton_schulz(G).double()
    err = lambda X: (torch.linalg.matrix_norm(X - exact) / torch.linalg.matrix_norm(exact)).max().item()
    assert err(polar) < 0.12 < 0.2 < err(quintic)  # measured: 0.097 and 0.213 (bf16 rounding bounds polar)
    s = torch.linalg.svdvals(polar)
    assert s.min() > 0.8 and s.max() < 1.2 and torch.linalg.svdvals(quintic).min() < 0.7  # 0.857, 1.142; 0.680


def test_per_neuron_normalise_evens_the_rows_and_keeps_the_size():
    """One step from empty EMAs: every row of each matrix ends with the same norm, each matrix with the Frobenius
    norm it came with; the EMA holds (1 - beta2) x each row's mean square (a float64 loop as the reference)."""
    torch.manual_seed(7)
    O = (torch.randn(2, 6, 10) * torch.rand(2, 6, 1) * 3).bfloat16()
    seconds = [torch.zeros(6, 1), torch.zeros(6, 1)]
    out = per_neuron_normalise(O, seconds, 0.95)
    for i in range(2):
        o = O[i].double()
        rows = torch.linalg.vector_norm(out[i].double(), dim=1)
        torch.testing.assert_close(rows, rows.mean().expand(6), rtol=1e-5, atol=0)
        torch.testing.assert_close(torch.linalg.matrix_norm(out[i].double()), torch.linalg.matrix_norm(o),
                                   rtol=1e-5, atol=0)
        torch.testing.assert_close(seconds[i].double(), 0.05 * o.square().mean(dim=1, keepdim=True),
                                   rtol=1e-6, atol=0)


@pytest.mark.parametrize("variant", ["polar", "normuon", "normuon_polar"])
def test_variant_state_round_trip_continues_exactly(variant):
    torch.manual_seed(8)
    model = tiny_model()
    opt = build_optimizer(model, 2e-3, 0.1, CPU, kind="muon", muon_variant=variant)
    x = torch.randint(0, 49152, (2, 16))

    train_once(model, opt, x)
    plain = tiny_model()
    plain.load_state_dict(model.state_dict())
    twin = tiny_model()
    twin.load_state_dict(model.state_dict())
    twin_opt = build_optimizer(twin, 2e-3, 0.1, CPU, kind="muon", muon_variant=variant)
    state = copy.deepcopy(opt.state_dict())
    keys = {k for s in state["state"].values() for k in s}
    assert ("neuron_second_moment" in keys) == variant.startswith("normuon")
    twin_opt.load_state_dict(state)
    plain_opt = build_optimizer(plain, 2e-3, 0.1, CPU, kind="muon")
    plain_opt.load_state_dict({**state, "state": {k: {n: t for n, t in s.items() if n != "neuron_second_moment"}
                                                  for k, s in state["state"].items()}})
    train_once(model, opt, x)
    train_once(twin, twin_opt, x)
    train_once(plain, plain_opt, x)
    assert_same_weights(model.state_dict(), twin.state_dict())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dict(model.named_parameters())[q], dict(plain.named_parameters())[q])  # the variant acts


def test_muon_variant_is_refused_with_adamw_and_on_a_changed_resume(tmp_path):
    r = run_train(tmp_path / "a", "--optimizer", "adamw", "--muon_variant", "normuon", "--max_steps", 2, check=False)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--muon_variant normuon changes --optimizer muon" in lines[0]
    assert not (tmp_path / "a").exists()
    run_train(tmp_path / "m", "--optimizer", "muon", "--max_steps", 2)  # today's default: NorMuon
    assert '"muon_variant": "normuon"' in (tmp_path / "m" / "train.log").read_text()
    r = run_train(tmp_path / "m", "--optimizer", "muon", "--muon_variant", "muon", "--max_steps", 4, "--resume", 1,
                  check=False)
    assert r.returncode == 2 and "muon_variant: 'normuon' -> 'muon'" in r.stderr, r.stderr


def test_a_checkpoint_without_muon_variant_resumes_as_plain_muon(tmp_path):
    # A checkpoint whose args record no muon_variant was trained with Keller Jordan's Muon (train.py's only update
    # without the option): a resume keeps that, not today's default, and continues without a refusal (the update it
    # continues is the one its optimizer state holds).
    out = tmp_path / "run"
    run_train(out, "--optimizer", "muon", "--muon_variant", "muon", "--max_steps", 2)
    for path in (out / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=False)
        ckpt["args"].pop("muon_variant", None), ckpt["args"].pop("doc_mask", None)  # latest may share a file
        torch.save(ckpt, path)
    run_train(out, "--optimizer", "muon", "--max_steps", 4, "--resume", 1)
    args_lines = [line for line in (out / "train.log").read_text().splitlines() if line.startswith("Args: ")]
    assert len(args_lines) == 2 and all('"muon_variant": "muon"' in line and '"doc_mask": 0' in line
                                        for line in args_lines), args_lines


def test_norm_lr_is_recorded_and_kept_on_resume(tmp_path):
    out = tmp_path / "m"
    run_train(out, "--optimizer", "muon", "--norm_lr", 1e-2, "--max_steps", 2)
    ckpt = torch.load(out / "checkpoints" / "checkpoint_step_2.pt", weights_only=False)
    assert ckpt["args"]["norm_lr"] == 1e-2
    assert [g["lr_scale"] for g in ckpt["optimizer"]["param_groups"] if not g["muon"]] == [1.0, 2.0]  # 5e-3, 1e-2
    r = run_train(out, "--optimizer", "muon", "--max_steps", 4, "--resume", 1, check=False)
    assert r.returncode == 2 and "norm_lr: 0.01 -> None" in r.stderr, r.stderr
    run_train(out, "--optimizer", "muon", "--norm_lr", 1e-2, "--max_steps", 4, "--resume", 1)
