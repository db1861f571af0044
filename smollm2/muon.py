"""Muon for the hidden matrices, AdamW for the rest, as one torch.optim.Optimizer (--optimizer muon).

The split is the one of modded-nanogpt's speedrun and nanochat: every 2-D matrix inside a decoder layer (the
attention's q/k/v/o and the MLP's gate/up/down projections) gets Muon; the tied embedding / output head and
the 1-D RMSNorm gains get AdamW (betas, eps and weight-decay groups as --optimizer adamw), at their own peak
lr (--adamw_lr) on the same schedule.

The Muon update is torch.optim.Muon's (torch/optim/_muon.py), line for line in its arithmetic:
  B <- lerp(B, g, 1 - momentum)                 momentum buffer (an EMA of the gradient)
  U <- lerp(g, B, momentum)                     Nesterov
  O <- NS5(U)                                   5 quintic Newton-Schulz steps in bf16 (Keller Jordan's a, b, c)
  W <- W * (1 - lr * weight_decay) - lr * s * O with s = 0.2 * sqrt(max(rows, cols)) ("match_rms_adamw":
                                                Moonshot's scale, so Muon's update has AdamW's RMS and takes
                                                an AdamW-sized lr and weight decay)
What differs is how it is scheduled: torch.optim.Muon orthogonalises the 210 matrices of the 135M model one
at a time (210 x 5 x 3 small matmuls, launch-bound: 141 ms a step on an H200, doubling the step at seq 2048;
measured on that card), while here the matrices of one shape (q and o, k and v, gate and up, down: four
shapes over the 30 layers) form one param group and go through Newton-Schulz as one batch of bmm's. Under
--compile on CUDA the elementwise passes around it (momentum_step; apply_update, with NorMuon's normalisation as
normalise_and_apply) go through torch.compile. Plain Muon's step was 2.7% slower than the AdamW
step at seq 2048 x 48 and 5.9% at x 16 on an H200 (3.1% and 7.4% with those passes eager); train.py's default
(NorMuon, momentum warmup) 8.8% at x 16 on an H100, before the moving momentum's pass was fused (docs/quality.md).
tests/test_muon.py holds the result to torch.optim.Muon's to bf16 rounding, the batched path to the per-matrix
one, and the compiled passes to the eager ones.

Everything the step does is device arithmetic with no host synchronisation, so it is captured in the CUDA graph
of the step like fused AdamW (the lr is then a device tensor per group, as for AdamW). Every rank of a DDP run
orthogonalises every (averaged, identical) gradient itself. FSDP2 is refused (train.py): each rank holds a
shard of each matrix, and Newton-Schulz needs the whole one.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn as nn

# torch.optim._muon's DEFAULT_A/B/C, DEFAULT_NS_STEPS and EPS (Keller Jordan's coefficients).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
MOMENTUM = 0.95
# --muon_momentum_warmup_steps: the momentum rises linearly from this to MOMENTUM over the first steps, as in
# modded-nanogpt's speedrun (0.85 -> 0.95): early on, when the gradient turns quickly, the buffer forgets sooner.
MOMENTUM_WARMUP_START = 0.85
ADJUST_LR_FN = "match_rms_adamw"
# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): one minimax-optimal quintic per step, for
# five steps, computed for a spectrum pushed below 1 by a 2% safety factor on the Frobenius normalisation; the
# coefficients modded-nanogpt's speedrun runs.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 0.02
NORMUON_BETA2 = 0.95  # NorMuon (Li et al. 2025, arXiv:2510.05491): the EMA of each neuron's mean squared update
# --muon_variant: which orthogonaliser, and whether the update is normalised per output neuron afterwards.
VARIANTS = {"muon": (False, False), "polar": (True, False), "normuon": (False, True), "normuon_polar": (True, True)}


def newton_schulz(G: torch.Tensor, coefficients=NS_COEFFICIENTS, steps: int = NS_STEPS,
                  eps: float = NS_EPS, safety: float = 0.0) -> torch.Tensor:
    """The orthogonalised (US'V^T, S' ~ 1) form of each matrix of G (..., rows, cols), in bf16: torch.optim.Muon's
    _zeropower_via_newtonschulz with a batch dimension. Frobenius normalisation bounds the spectral norm by 1
    (by 1 / (1 + safety) with a safety margin). coefficients: one (a, b, c) for every step, or one per step."""
    per_step = tuple(coefficients) if isinstance(coefficients[0], (tuple, list)) else (tuple(coefficients),) * steps
    if len(per_step) < steps:
        raise ValueError(f"{len(per_step)} sets of Newton-Schulz coefficients for {steps} steps")
    X = G.bfloat16()
    tall = G.size(-2) > G.size(-1)
    if tall:  # the Gram matrix of the short side: (cols x cols) work instead of (rows x rows)
        X = X.mT
    batched = X.dim() == 3
    X = X if batched else X.unsqueeze(0)  # (n, r, c) with r <= c
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    X = X / (norm * (1 + safety) if safety else norm).clamp(min=eps)
    for a, b, c in per_step[:steps]:
        A = torch.bmm(X, X.mT)                           # (n, r, r)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)      # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)               # a X + B X
    X = X if batched else X.squeeze(0)
    return X.mT if tall else X


def adjusted_lr_scale(shape: torch.Size, adjust_lr_fn: Optional[str] = ADJUST_LR_FN) -> float:
    """torch.optim.Muon's _adjust_lr as a factor on the lr."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    raise ValueError(f"unknown adjust_lr_fn {adjust_lr_fn!r}")


def is_muon_matrix(name: str, p: nn.Parameter) -> bool:
    """The hidden matrices: 2-D and neither the embedding nor the output head (tied or not; ours or transformers')."""
    return p.dim() == 2 and not name.endswith(("embed_tokens.weight", "lm_head.weight"))


def muon_param_groups(model: nn.Module, weight_decay: float, adamw_lr_scale: float,
                      norm_lr_scale: Optional[float] = None) -> list[dict]:
    """Muon groups, one per matrix shape (the unit of batching), then the AdamW groups: the embedding/head with
    weight decay, the norm gains without (at norm_lr_scale, default adamw_lr_scale). lr_scale: each group's peak
    lr over --max_lr (set_lr applies it)."""
    by_shape: dict[tuple, list] = {}
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied matrix is yielded once
        if not p.requires_grad:
            continue
        if is_muon_matrix(name, p):
            by_shape.setdefault(tuple(p.shape), []).append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": ps, "muon": True, "lr_scale": 1.0, "weight_decay": weight_decay} for ps in by_shape.values()]
    groups += [{"params": decay, "muon": False, "lr_scale": adamw_lr_scale, "weight_decay": weight_decay},
               {"params": no_decay, "muon": False, "lr_scale": adamw_lr_scale if norm_lr_scale is None else norm_lr_scale,
                "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class MuonAdamW(torch.optim.AdamW):
    """torch.optim.AdamW over the groups with muon=False (fused, capturable and its state exactly as the plain
    AdamW run's); Muon over the groups with muon=True, batched by shape. One optimizer, so the checkpoint's
    state_dict, the CUDA-graph capture's save/restore of the state and the resume code need nothing new: a
    Muon parameter's state is its momentum_buffer, the name torch.optim.Muon uses."""

    def __init__(self, groups: list[dict], *, lr, betas=(0.9, 0.95), eps: float = 1e-8, fused: bool = False,
                 capturable: bool = False, momentum: float = MOMENTUM, nesterov: bool = True,
                 ns_coefficients=NS_COEFFICIENTS, ns_steps: int = NS_STEPS, ns_eps: float = NS_EPS,
                 adjust_lr_fn: Optional[str] = ADJUST_LR_FN, compile_update: bool = False, variant: str = "muon"):
        if variant not in VARIANTS:
            raise ValueError(f"unknown Muon variant {variant!r}; one of {tuple(VARIANTS)}")
        polar, per_neuron = VARIANTS[variant]
        if polar:
            ns_coefficients, ns_steps = POLAR_EXPRESS_COEFFICIENTS, len(POLAR_EXPRESS_COEFFICIENTS)
        self.compile_update = compile_update  # momentum_step, apply_update compiled (a setting, not checkpointed)
        # under compile_update, NorMuon's normalisation compiled with the update (False: eager before the compiled
        # update, as before it was fused; benchmarks/quality.py times both)
        self.fuse_normuon = True
        for g in groups:
            if g["muon"]:
                coefficients = tuple(tuple(c) for c in ns_coefficients) if polar else tuple(ns_coefficients)
                g.update(momentum=momentum, nesterov=nesterov, ns_coefficients=coefficients,
                         ns_steps=ns_steps, ns_eps=ns_eps, adjust_lr_fn=adjust_lr_fn,
                         ns_safety=POLAR_EXPRESS_SAFETY if polar else 0.0,
                         neuron_beta2=NORMUON_BETA2 if per_neuron else None)
        super().__init__(groups, lr=lr, betas=betas, eps=eps, fused=fused, capturable=capturable)
        for g in self.param_groups:
            if g["muon"] and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon groups hold 2-D matrices only")

    def __setstate__(self, state):
        # load_state_dict ends here; Adam's __setstate__ converts each state's "step", which Muon's lack.
        groups = state["param_groups"]
        super().__setstate__({**state, "param_groups": [g for g in groups if not g["muon"]]})
        self.param_groups = groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        every = self.param_groups
        try:  # AdamW's own step over its groups only: the same kernels (fused on CUDA) as --optimizer adamw
            self.param_groups = [g for g in every if not g["muon"]]
            super().step()
        finally:
            self.param_groups = every
        for g in every:
            if g["muon"]:
                self._muon_group(g)
        return loss

    def _muon_group(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        lr = group["lr"]  # a float, or a device tensor under a CUDA graph
        if self.compile_update and not torch.is_tensor(lr):  # a float would be a constant of the compiled graph
            lr = torch.tensor(lr, dtype=torch.float32, device=params[0].device)
        momentum, apply = (_compiled(momentum_step), _compiled(apply_update)) if self.compile_update else \
            (momentum_step, apply_update)
        ortho = newton_schulz(momentum(grads, bufs, group["momentum"], group["nesterov"]), group["ns_coefficients"],
                              group["ns_steps"], group["ns_eps"], group.get("ns_safety", 0.0))
        scale, decay, beta2 = adjusted_lr_scale(params[0].shape, group["adjust_lr_fn"]), group["weight_decay"], \
            group.get("neuron_beta2")
        if beta2 is None:
            apply(params, ortho, lr, decay, scale)
        elif self.compile_update and self.fuse_normuon:
            _compiled(normalise_and_apply)(params, ortho, self._neuron_seconds(params), beta2, lr, decay, scale)
        else:
            apply(params, per_neuron_normalise(ortho, self._neuron_seconds(params), beta2), lr, decay, scale)

    def _neuron_seconds(self, params: list[nn.Parameter]) -> list[torch.Tensor]:
        """NorMuon's per-neuron EMAs of the mean squared update, (rows, 1) float32 each, made on first use."""
        for p in params:
            if "neuron_second_moment" not in self.state[p]:
                self.state[p]["neuron_second_moment"] = torch.zeros(p.shape[0], 1, dtype=torch.float32, device=p.device)
        return [self.state[p]["neuron_second_moment"] for p in params]


def momentum_at(step: int, warmup_steps: int) -> float:
    """Muon's momentum at optimizer step `step` (1-based): MOMENTUM_WARMUP_START + (MOMENTUM - it) * step /
    warmup_steps during the warmup, MOMENTUM from step warmup_steps on (and throughout with warmup_steps 0)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return MOMENTUM
    frac = step / warmup_steps
    return (1 - frac) * MOMENTUM_WARMUP_START + frac * MOMENTUM


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    """Every Muon group's momentum (a device tensor under a CUDA graph or torch.compile: filled in place)."""
    for g in optimizer.param_groups:
        if g.get("muon"):
            if torch.is_tensor(g["momentum"]):
                g["momentum"].fill_(momentum)
            else:
                g["momentum"] = momentum


def momentum_step(grads: list[torch.Tensor], bufs: list[torch.Tensor], momentum,
                  nesterov: bool) -> torch.Tensor:
    """The momentum buffers move towards the gradients (in place); returns what Newton-Schulz orthogonalises, the
    n same-shaped matrices stacked (n, rows, cols) in bf16: the Nesterov blend, or the buffers themselves.
    momentum: a float, or a 0-d float32 tensor on the device (a schedule that changes it under a graph)."""
    if torch.is_tensor(momentum):
        # Broadcast over the stacked matrices, not the foreach overloads: a Scalar weight would read the tensor
        # back to the host, and Inductor has no lowering for the tensor-list one (it calls ATen's, unfused: 2% of
        # the step at seq 2048 x 16 on an H100). Compiled, this is one pass like the float path's.
        G = torch.stack(grads)                                   # (n, rows, cols)
        B = torch.stack(bufs).lerp_(G, 1 - momentum)
        torch._foreach_copy_(bufs, list(B.unbind(0)))
        return (G.lerp(B, momentum) if nesterov else B).bfloat16()
    torch._foreach_lerp_(bufs, grads, 1 - momentum)
    updates = torch._foreach_lerp(grads, bufs, momentum) if nesterov else bufs
    return torch.stack(updates).bfloat16()


def per_neuron_normalise(ortho: torch.Tensor, seconds: list[torch.Tensor], beta2: float,
                         eps: float = 1e-10) -> torch.Tensor:
    """NorMuon's step after Newton-Schulz: each output neuron's (row's) update divided by the root of an EMA of
    its mean square, then each matrix rescaled to the Frobenius norm it had, so the rows' sizes even out and the
    step's overall size (and so Muon's lr) stays as it was. ortho (n, rows, cols); seconds: the n (rows, 1)
    float32 EMAs, updated in place. Returns float32 (n, rows, cols)."""
    O = ortho.float()
    mean_sq = O.square().mean(dim=-1, keepdim=True)                     # (n, rows, 1)
    v = torch.stack(seconds).lerp_(mean_sq, 1 - beta2)                  # (n, rows, 1)
    torch._foreach_copy_(seconds, list(v.unbind(0)))
    scaled = O * v.clamp(min=eps).rsqrt()
    keep = torch.linalg.vector_norm(O, dim=(-2, -1), keepdim=True)      # (n, 1, 1)
    return scaled * (keep / torch.linalg.vector_norm(scaled, dim=(-2, -1), keepdim=True).clamp(min=eps))


def normalise_and_apply(params: list[torch.Tensor], ortho: torch.Tensor, seconds: list[torch.Tensor], beta2: float,
                        lr, weight_decay: float, scale: float) -> None:
    """NorMuon's per-neuron normalisation, then apply_update: one function, so that under --compile Inductor fuses
    them (one generated kernel on the CPU) where eager makes about ten passes over the 106M hidden weights: 1.3 ms
    of a 107.6 ms step at seq 2048 x 16 on an H100 (docs/quality.md)."""
    apply_update(params, per_neuron_normalise(ortho, seconds, beta2), lr, weight_decay, scale)


def apply_update(params: list[torch.Tensor], ortho: torch.Tensor, lr, weight_decay: float, scale: float) -> None:
    """W <- W * (1 - lr * weight_decay) - lr * scale * O for each matrix W of params and O of ortho (n, rows, cols):
    the update in float32, added per matrix."""
    if weight_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    step = ortho.float().mul_(-lr * scale)
    torch._foreach_add_(params, list(step.unbind(0)))


@functools.cache
def _compiled(fn):
    """fn through torch.compile, built on first use (--compile 1): the momentum, the Nesterov blend and the bf16
    cast fused into the stacking, and the weight decay and the update into one pass over each matrix, where eager
    makes each its own pass over all 106M hidden weights. Newton-Schulz stays eager: compiled, its bf16
    matmul chain rounds differently from torch.optim.Muon's."""
    return torch.compile(fn, fullgraph=True, dynamic=False)
