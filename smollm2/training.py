"""The pieces train.py and bench.py share: the dtype policy, optimizer, lr schedule, evaluation, and the
one training step (eager, compiled, or replayed as a CUDA graph), configured by the speed switches of
smollm2.switches.Switches.

Dtype policy (the only place it is decided): parameters, gradients and optimizer state are float32;
on CUDA the forward/backward run under bf16 autocast; RMSNorm statistics, softmax and the loss are
computed in float32 inside the model. The residual stream between layers is float32 by default (the
embedding's dtype, as transformers keeps it) or bf16 with config.residual_dtype="bf16" (the model casts the
embedding output once, smollm2_model.stream_dtype; norms return the stream's dtype). On CPU everything is
float32.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from smollm2 import parallel
from smollm2_config import SmolLM2Config
from smollm2.loss import LOSS_CHUNK, linear_cross_entropy
from smollm2.switches import Switches


# ----------------------------------------------------------------------------- dtype policy and memory


def amp_context(device: torch.device, amp_dtype: Optional[torch.dtype], cache_enabled: bool = True):
    if amp_dtype is None:
        return contextlib.nullcontext()
    # cache_enabled=False is required while capturing CUDA graphs (the cast cache would be captured stale).
    return torch.autocast(device.type, dtype=amp_dtype, cache_enabled=cache_enabled)


def activation_bytes(config: SmolLM2Config, n_tokens: int, seq_len: int, compute_bytes: int, fused_loss: bool,
                     loss_chunk: int = LOSS_CHUNK) -> int:
    """What one eager forward over n_tokens tokens (windows of seq_len) keeps for its backward, plus the
    loss's transient logits: an upper estimate, used to decide whether micro-batches fit stacked.
    torch.compile keeps less (it recomputes cheap elementwise results in the backward).

    Per layer and token, from the tensors our layers save (tests/test_training.py holds the count to those
    of a real forward on CPU): 8 vectors of width C (each RMSNorm's input, normalised output and projection
    input; the query and the attention output), keys and values, one log-sum-exp per head and two RMSNorm
    statistics, all counted at 4 bytes (under bf16 some are 2: the upper side); and gate, up, silu and
    their product, 4 vectors of width H in the compute dtype. Manual attention adds the (heads x T)
    probabilities in float32 and the compute dtype, and the K/V repeated to every query head.
    """
    C, H, nh, V = config.hidden_size, config.intermediate_size, config.num_attention_heads, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    layer = 4 * (8 * C + 2 * kv + nh + 2) + compute_bytes * 4 * H
    if config.attn_impl == "manual":
        layer += nh * seq_len * (4 + compute_bytes) + compute_bytes * 2 * (C - kv)
    head = 4 * (2 * C + 1) + compute_bytes * C + 8  # final RMSNorm; hidden states (or their grad); the ids
    if fused_loss:  # one chunk's float32 logits, their exp, and the gradient in the compute dtype
        loss = 10 * V * min(n_tokens, loss_chunk)
    else:  # logits in the compute dtype and float32, the float32 log-softmax; in the backward two float32 grads
        loss = 14 * V * n_tokens
    return n_tokens * (config.num_hidden_layers * layer + head) + loss


def available_memory(device: torch.device) -> int:
    """Bytes this process can still allocate: on CUDA the card's free memory plus what PyTorch's caching
    allocator holds unused, on CPU the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil
    return psutil.virtual_memory().available


# ----------------------------------------------------------------------------- optimizer and schedule
def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every matrix (attention and MLP projections, the embedding / tied lm_head);
    none on the 1-D RMSNorm gains, whose scale decay would only fight the normalisation."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() yields a tied matrix once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Each optimizer's recipe: train.py's defaults for what --optimizer leaves unset. adamw's is the one the
# committed run of the seed's command trained with, so that run reproduces; muon's is the best of the realdocs sweeps in
# docs/quality.md (one H200, seq 2048 x 16, 400 steps, one process: held-out 3.152 at 5e-3 against 3.247 at
# 3e-3 and 3.796 at 1e-3; WSD 3.247 against cosine 3.538; 4.154 for the best AdamW), with SmolLM2's WSD shape
# (decay to 0 over the last 20%).
RECIPES: dict[str, dict] = {
    "adamw": {"lr_schedule": "cosine", "max_lr": 3e-4, "min_lr": 3e-5, "adamw_lr": None},
    "muon": {"lr_schedule": "wsd", "max_lr": 5e-3, "min_lr": 0.0, "adamw_lr": 5e-3},
}
OPTIMIZERS = tuple(RECIPES)
# What a new run gets when --muon_variant / --doc_mask are left unset (a resume keeps its run's: smollm2/run.py
# RUN_DEFAULTS). NorMuon: measured through train.py on one H100 (seq 2048 x 16, one process per recipe,
# results/time_to_loss/): held-out 3.579 against Muon's 3.620 at 400 steps on realdocs (3.573 in a second
# process), 2.161 against 2.177 on pystdlib, and lower at 200 steps on both, for about 2% more step time.
DEFAULT_MUON_VARIANT = "normuon"
# --doc_mask 1 measured the same way (results/time_to_loss/*_methods_*): 5-6% more step time, final held-out
# 0.010 lower on realdocs and 0.012 higher on pystdlib, behind on both at equal wall-clock: off by default.
DEFAULT_DOC_MASK = 0
# --muon_momentum_warmup_steps left unset: Muon's momentum goes from 0.85 to 0.95 over this share of the horizon.
# Measured through train.py on one H100 (seq 2048 x 16, 400 steps, results/time_to_loss/*_levers_*), against the
# default without it in the same process: final held-out 3.495 against 3.568 on realdocs (share of the best AdamW's
# time 0.510 against 0.535) and, untouched, 2.126 against 2.149 on pystdlib (0.534 against 0.545; at 200 steps
# 3.009 against 3.020, both under AdamW's 3.060), for 2% more step time.
MOMENTUM_WARMUP_FRACTION = 0.25


def default_momentum_warmup(horizon: int, optimizer: str) -> int:
    """Muon's momentum warmup steps for a schedule ending at step `horizon` (0 under AdamW: no Muon momentum)."""
    return round(MOMENTUM_WARMUP_FRACTION * horizon) if optimizer == "muon" else 0


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device,
                    capturable: bool = False, betas=(0.9, 0.95), eps: float = 1e-8, kind: str = "adamw",
                    adamw_lr: Optional[float] = None, norm_lr: Optional[float] = None, compile_update: bool = False,
                    muon_variant: str = "muon", momentum_schedule: bool = False) -> torch.optim.AdamW:
    """AdamW over every parameter (kind "adamw"), or Muon over the hidden matrices and AdamW at adamw_lr
    (default: lr) over the embedding, at norm_lr (default: adamw_lr) over the norm gains (kind "muon",
    smollm2/muon.py; compile_update: its
    elementwise passes through torch.compile). Each group's peak lr is lr * group["lr_scale"]; set_lr keeps that
    ratio along the schedule. momentum_schedule: Muon's momentum changes along the run (set_momentum), so under a
    CUDA graph or torch.compile it is a device tensor per group, like the lr."""
    fused = device.type == "cuda"
    if kind == "adamw":
        lr_value = torch.tensor(lr, device=device) if capturable else lr  # a tensor lr can change under a CUDA graph
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr_value, betas=betas, eps=eps,
                                 fused=fused, capturable=capturable)
    if kind != "muon":
        raise ValueError(f"unknown optimizer {kind!r}; one of {OPTIMIZERS}")
    from smollm2.muon import MuonAdamW, muon_param_groups
    adamw_lr = adamw_lr if adamw_lr is not None else lr
    groups = muon_param_groups(model, weight_decay, adamw_lr / lr, (norm_lr if norm_lr is not None else adamw_lr) / lr)
    for g in groups:  # one lr per group, and under a CUDA graph one device tensor per group (set_lr fills each)
        g["lr"] = torch.tensor(lr * g["lr_scale"], device=device) if capturable else lr * g["lr_scale"]
    optimizer = MuonAdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused, capturable=capturable,
                          compile_update=compile_update, variant=muon_variant)
    if momentum_schedule and (capturable or compile_update):  # a float would be a constant of the graph
        for g in optimizer.param_groups:
            if g["muon"]:
                g["momentum"] = torch.tensor(float(g["momentum"]), dtype=torch.float32, device=device)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        value = lr * g.get("lr_scale", 1.0)
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(value)
        else:
            g["lr"] = value


def optimizer_state_for_checkpoint(optimizer: torch.optim.Optimizer) -> dict:
    sd = optimizer.state_dict()
    for g in sd["param_groups"]:
        g["lr"] = float(g["lr"])  # portable between eager (float lr) and graph (tensor lr) runs
        if torch.is_tensor(g.get("momentum")):
            g["momentum"] = float(g["momentum"])  # likewise Muon's momentum under --muon_momentum_warmup_steps
    return sd


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, load=None) -> None:
    """Load a saved state into an optimizer built for this run, keeping this run's fused/capturable
    settings and lr type, so checkpoints move between eager, graph, CPU and CUDA runs. `load` replaces
    optimizer.load_state_dict where the state must be scattered (FSDP2 shards)."""
    keep = [{k: g[k] for k in ("lr", "fused", "capturable", "foreach") if k in g}
            | ({"momentum": g["momentum"]} if torch.is_tensor(g.get("momentum")) else {}) for g in optimizer.param_groups]
    (load or optimizer.load_state_dict)(state)
    for g, kept in zip(optimizer.param_groups, keep):
        g.update(kept)
        on_device = bool(g.get("fused") or g.get("capturable"))
        for p in g["params"]:
            st = optimizer.state.get(p, {})
            if "step" in st:
                st["step"] = st["step"].to(device=p.device if on_device else "cpu", dtype=torch.float32)


SCHEDULES = ("cosine", "wsd")
WSD_DECAY_FRACTION = 0.2  # wsd's default: decay over the last fifth of the steps (SmolLM2's)
# The default warmup: a share of the schedule's horizon, each optimizer's own, and at most 200 steps, the seed's
# fixed warmup (its 5,000-step run keeps the lr curve its committed log shows). A fixed 200 was a third of a
# 600-step run and two thirds of a 300-step one, where Muon's held-out loss lost 0.03-0.25 nats to a 10% warmup
# (Python source, one H100). Measured through train.py on one H100 (seq 2048 x 16, 400 steps, results/time_to_loss/
# *_warmup_*): Muon reaches the best AdamW's final loss sooner with 5% than with 10% on both corpora (share 0.528-0.532
# against 0.549 on realdocs, 0.559 against 0.573 on pystdlib) and its 200-step run ends lower (4.478 against 4.510;
# 3.014 against 3.030, under AdamW's 3.018 where 10% ended above it); AdamW ends higher with 5% (4.606 against 4.564).
# With the momentum warmup, Muon's 2.5% beat 5% again on realdocs (share 0.472 against 0.498, 3.457 against 3.491;
# results/time_to_loss/realdocs_warmup2_*); pystdlib, untouched, in docs/quality.md.
WARMUP_FRACTIONS = {"adamw": 0.1, "muon": 0.025}
WARMUP_MAX_STEPS = 200


def default_warmup(horizon: int, optimizer: str = "adamw") -> int:
    """Warmup steps of a schedule whose lr reaches min_lr at step `horizon`: the optimizer's share of it (adamw 10%,
    muon 2.5%), 1 to 200 steps."""
    return min(WARMUP_MAX_STEPS, max(1, round(WARMUP_FRACTIONS[optimizer] * horizon)))


def accum_at(step: int, grad_accum: int, ramp_steps: int = 0) -> int:
    """Micro-batches in optimizer step `step` (1-based) under --batch_warmup_steps: the batch grows linearly in
    whole micro-batches over the first ramp_steps steps, from 1 to grad_accum (0: grad_accum from the start)."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return grad_accum
    return max(1, math.ceil(grad_accum * step / ramp_steps))


def micro_batches_before(step: int, grad_accum: int, ramp_steps: int = 0) -> int:
    """Micro-batches (per rank) in optimizer steps 1 .. step - 1: where step `step` starts in the data order.
    Stage a of the ramp (a micro-batches a step) holds the steps s <= ramp_steps with ceil(grad_accum * s /
    ramp_steps) = a: floor((a - 1) * ramp_steps / grad_accum) < s <= floor(a * ramp_steps / grad_accum)."""
    done = step - 1
    if ramp_steps <= 0:
        return done * grad_accum
    ramped = min(done, ramp_steps)
    total = sum(a * (min(ramped, a * ramp_steps // grad_accum) - min(ramped, (a - 1) * ramp_steps // grad_accum))
                for a in range(1, grad_accum + 1))
    return total + (done - ramped) * grad_accum


SEQ_WARMUP_MIN_START = 64  # the shortest window a sequence warmup starts from: 64 -> 8192 is 8 shapes, dynamo's
# default recompile limit for one compiled forward


def seq_len_at(step: int, seq_len: int, start: int, ramp_steps: int = 0) -> int:
    """The window length of optimizer step `step` (1-based) under --seq_warmup_steps: steps 1 .. ramp_steps split
    evenly into the stages start, 2 x start, ... seq_len / 2, then seq_len from step ramp_steps + 1 on (0: seq_len from
    the start). seq_len must be start x a power of two."""
    if ramp_steps <= 0 or step > ramp_steps:
        return seq_len
    stages = (seq_len // start).bit_length() - 1  # the short ones: start x 2^0 .. 2^(stages-1)
    return start << ((step - 1) * stages // ramp_steps)


def split_windows(xs: torch.Tensor, ys: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's (A, B, T) windows and targets cut into (A, B * T / length, length) pieces, in order: row b's j-th
    piece is row b * (T / length) + j. The tokens and their targets stay the same; attention no longer reaches
    across the cuts, and each piece's positions start at 0."""
    A, B, T = xs.shape
    if length == T:
        return xs, ys
    return xs.reshape(A, B * T // length, length), ys.reshape(A, B * T // length, length)


def lr_at(step: int, warmup_steps: int, max_steps: int, max_lr: float, min_lr: float, schedule: str = "cosine",
          decay_fraction: float = WSD_DECAY_FRACTION) -> float:
    """The lr of `step` (1-based: the step about to run); min_lr from max_steps on. Both schedules warm up
    linearly to max_lr over warmup_steps, then
      cosine  decay to min_lr at max_steps along half a cosine;
      wsd     (warmup-stable-decay, SmolLM2's and MiniCPM's) hold max_lr, then decay linearly to min_lr over
              the last decay_fraction of the max_steps steps (SmolLM2: 0.2).
    The lr is a function of (step, max_steps) only, so raising --max_steps on resume moves the horizon: under
    cosine it re-stretches the curve from the current step on; under wsd a run still in warmup or the stable
    phase goes on exactly as if the larger horizon had been given from the start (the decay moves to the new
    end), while a run already decaying goes back up to the new horizon's lr at its step (max_lr, if the new
    decay starts later). docs/quality.md has the cases; tests/test_schedule.py holds them."""
    if warmup_steps > 0 and step <= warmup_steps:
        return max_lr * step / warmup_steps
    if step >= max_steps:
        return min_lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, max_steps - round(decay_fraction * max_steps))
        if step <= decay_start:
            return max_lr
        return max_lr + (min_lr - max_lr) * (step - decay_start) / (max_steps - decay_start)
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}; one of {SCHEDULES}")
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- the training step
# One step, read top to bottom in train_step; what makes it fast is applied from outside, as wrappers:
#   torch.compile and DDP/FSDP2 wrap the model's forward (smollm2.parallel.build_forward), the same code
#   either way; CUDAGraphed captures the whole step once and replays it; TrainStep plans the micro-batches
#   at the first call and binds the run's parts. build_train_step puts the three together.
@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """What TrainStep needs of the Switches, plus the clip."""
    grad_clip: float
    amp_dtype: Optional[torch.dtype] = None  # None = float32
    fused_loss: bool = False  # chunked linear + cross-entropy, no [tokens x vocab] logits
    cuda_graph: bool = False  # capture the whole step once, replay it afterwards
    stack_micro: int = -1  # micro-batches as one batch: -1 when it fits in memory, 0 never (accumulate), 1 always
    document_end: Optional[int] = None  # the end-of-text id: attention stops at document ends (--doc_mask 1)

    @classmethod
    def of(cls, switches: Switches, grad_clip: float, document_end: Optional[int] = None) -> "StepConfig":
        return cls(grad_clip=grad_clip, amp_dtype=switches.amp_dtype, fused_loss=switches.fused_loss,
                   cuda_graph=switches.cuda_graph, stack_micro=switches.stack_micro, document_end=document_end)


def train_step(xs: torch.Tensor, ys: torch.Tensor, *, model: nn.Module, forward: nn.Module,
               optimizer: torch.optim.Optimizer, micro_steps: int, cfg: StepConfig, finite: torch.Tensor,
               cache_enabled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a step's (grad_accum, B, T) windows: (mean loss, grad norm), device tensors, no host
    sync. `forward` runs the model (itself, compiled, or wrapped for DDP); `model` owns the parameters. The
    windows run as micro_steps forward/backward passes: grad_accum accumulates, 1 stacks them into one batch
    (TrainStep._plan). "Loss and norm are finite" is folded into the device flag `finite`. The gradients stay
    on .grad until the next step."""
    optimizer.zero_grad(set_to_none=True)
    params, n, device = [p for p in model.parameters() if p.requires_grad], micro_steps, xs.device
    xs, ys = xs.reshape(n, -1, xs.shape[-1]), ys.reshape(n, -1, ys.shape[-1])  # (n, rows, T): a view, not a copy
    total = torch.zeros((), device=device, dtype=torch.float32)
    for m in range(n):
        with parallel.grad_sync(model, forward, last=m == n - 1):  # all-reduce on the last micro-step only
            with amp_context(device, cfg.amp_dtype, cache_enabled):
                _, loss = forward(xs[m], ys[m], fused_loss=linear_cross_entropy if cfg.fused_loss else None,
                                  document_end=cfg.document_end)
            (loss / n).backward()
        total = total + loss.detach()
    if cfg.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=device.type == "cuda")
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    optimizer.step()
    loss = total / n
    whole_norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
    finite.logical_and_(torch.isfinite(loss) & torch.isfinite(whole_norm))
    return loss, norm


class CUDAGraphed:
    """A step function captured into one CUDA graph at its first call and replayed afterwards: for small steps
    (the seed's seq 256 x batch 1) launch overhead, not arithmetic, dominates, and one replay removes thousands
    of kernel launches per step. Returns static buffers that the next replay overwrites.

    The first call warms up (compiles, allocates optimizer state and the cuBLAS workspace) on a side stream,
    puts parameters, optimizer state and `finite` back exactly as they were, then captures one whole step.
    Parameters, grads and optimizer state keep their addresses from here on: never replace them (load
    checkpoints before the first step)."""

    def __init__(self, step: Callable, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                 finite: torch.Tensor, warmup: int = 3):
        self.step, self.params, self.optimizer, self.finite, self.warmup = step, params, optimizer, finite, warmup
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor):
        if self.graph is None:
            self._capture(xs, ys)
        self.static_x.copy_(xs, non_blocking=True)
        self.static_y.copy_(ys, non_blocking=True)
        self.graph.replay()
        return self.static_loss, self.static_norm

    def _capture(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        self.static_x, self.static_y = xs.clone(), ys.clone()
        # The snapshot waits in host memory: a device copy would add a whole model (and, on resume, the
        # optimizer state) to the run's peak GPU memory for the sake of one restore.
        saved_params = [p.detach().to("cpu") for p in self.params]
        was_finite = self.finite.clone()  # a capture mid-run (a batch warmup's next stage) keeps what came before
        had_state = {id(p) for p in self.params if self.optimizer.state.get(p)}
        saved_state = {id(p): {k: v.to("cpu") for k, v in self.optimizer.state[p].items()}
                       for p in self.params if id(p) in had_state}
        # Warm-up and capture share one side stream: cuBLAS keeps a workspace per stream (2 x 32 MiB on
        # Hopper), so a second stream for the capture would hold another pair for the rest of the run.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.step(self.static_x, self.static_y, cache_enabled=False)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for p, s in zip(self.params, saved_params):
                p.copy_(s)
            for p in self.params:
                for k, v in self.optimizer.state[p].items():
                    if id(p) in had_state:
                        v.copy_(saved_state[id(p)][k])
                    else:
                        v.zero_()
        del saved_params, saved_state
        self.finite.copy_(was_finite)  # the warm-up's steps are undone, so is what they said about finiteness
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=side):
            self.static_loss, self.static_norm = self.step(self.static_x, self.static_y, cache_enabled=False)


# Stack only if the estimate stays under this share of the memory free at the first step: the rest is
# for the allocator's fragmentation, cuBLAS and compile workspaces, and the estimate's own error.
STACK_HEADROOM = 0.8


class TrainStep:
    """The step the loop calls: train_step with this run's model, forward, optimizer and StepConfig, its
    micro-batch plan made at the first call, under cfg.cuda_graph captured once (CUDAGraphed).

    Micro-batches are stacked when they fit (StepConfig.stack_micro): the step's (A, B, T) windows run as
    one forward/backward over (A * B, T) instead of A accumulated ones. Every window has T targets and
    none is padding, so the mean over all A * B * T tokens is the mean of the A micro-batch means: the
    same loss and gradient up to float summation order, from about 1/A of the kernels. Decided once, at
    the first call (`micro_steps`: A or 1), and logged through `log`.
    Every step folds "loss and grad norm are finite" into a device flag (inside the graph), which
    all_finite() reads at log or save time: one host sync there catches a bad update of any step since the
    start, before it can be saved.
    """

    def __init__(self, model: nn.Module, forward_model: nn.Module, optimizer: torch.optim.Optimizer,
                 cfg: StepConfig, device: torch.device, log: Optional[Callable[[str], None]] = None):
        self.model, self.forward_model, self.optimizer, self.cfg, self.device = model, forward_model, optimizer, cfg, device
        self.log = log or (lambda msg: None)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self.micro_steps: Optional[int] = None
        self.shape: Optional[torch.Size] = None  # the (A, B, T) windows a step that self.step was made for
        self.step: Optional[Callable] = None  # train_step bound to this run (and graphed), made at the first call
        self.fresh = False  # whether the last call made self.step (and compiled or captured it)

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor):
        if self.step is not None and xs.shape != self.shape:  # a warmup's next stage: plan (and capture) again
            if xs.shape[0] != self.shape[0]:
                self.log(f"batch warmup: {self.shape[0]} -> {xs.shape[0]} micro-batches a step")
            if xs.shape[-1] != self.shape[-1]:
                self.log(f"sequence warmup: windows of {self.shape[-1]} -> {xs.shape[-1]} tokens "
                         f"({xs.shape[1]} a micro-batch)")
            self.step = None  # the previous stage's CUDA graph and its memory go with it
        self.fresh = self.step is None
        if self.step is None:
            self.shape = xs.shape
            self.micro_steps = self._plan(xs.shape)
            self.step = functools.partial(train_step, model=self.model, forward=self.forward_model,
                                          optimizer=self.optimizer, micro_steps=self.micro_steps, cfg=self.cfg,
                                          finite=self.finite)
            if self.cfg.cuda_graph:
                self.step = CUDAGraphed(self.step, self.params, self.optimizer, self.finite)
        return self.step(xs, ys)

    def all_finite(self) -> bool:
        """Whether every step so far had a finite loss and gradient norm (synchronises the host)."""
        return bool(self.finite)

    def _plan(self, shape: torch.Size) -> int:
        """Micro-steps per optimizer step: grad_accum (accumulate) or 1 (stack), from StepConfig.stack_micro;
        -1 compares the stacked batch's activation estimate with the memory this process can still take."""
        A, B, T = shape
        mode = self.cfg.stack_micro
        if A == 1:
            return 1
        if mode != -1:
            self.log(f"micro-batches {'stacked' if mode else 'accumulated'}: {A} x {B}"
                     f"{f' -> {A * B}' if mode else ''} (stack_micro {mode})")
            return 1 if mode else A
        compute_bytes = (self.cfg.amp_dtype or torch.float32).itemsize
        fused = self.cfg.fused_loss and not isinstance(self.model, TransformersAdapter)  # transformers forms full logits
        need = activation_bytes(self.model.config, A * B * T, T, compute_bytes, fused)
        # Gradients and AdamW's two moments appear during the first step; autocast's weight copies too.
        n = sum(p.numel() for p in self.params)
        pending = (4 * sum(p.numel() for p in self.params if p.grad is None)
                   + 8 * sum(p.numel() for p in self.params if not self.optimizer.state.get(p))
                   + (compute_bytes * n if compute_bytes < 4 else 0))
        free = available_memory(self.device) - pending
        # The tightest rank decides for all: every rank must run the same collectives (FSDP all-gathers per forward).
        fits = parallel.max_across_ranks(need / max(free, 1)) <= STACK_HEADROOM
        numbers = f"est. {need / 1e9:.2f} GB of {free / 1e9:.2f} GB free"
        self.log(f"micro-batches stacked: {A} x {B} -> {A * B} ({numbers})" if fits else
                 f"micro-batches accumulated: {A} x {B} (stacked {A * B}: {numbers})")
        return 1 if fits else A


# Tokens per evaluation forward: the validation windows run this many at a time (at least one training
# step's rows), not one training micro-batch at a time. An eager forward of a small model is launch-bound,
# so the seed's 16 x 4 windows of 256 cost one forward instead of 16; the mean loss is the same up to
# float summation order. Without gradients the forward keeps no activations, so this fits wherever training does.
EVAL_TOKENS = 32768


def build_train_step(model: nn.Module, switches: Switches, device: torch.device, *, lr: float,
                     weight_decay: float, grad_clip: float, adamw_lr: Optional[float] = None,
                     norm_lr: Optional[float] = None, muon_variant: str = "muon", momentum_schedule: bool = False,
                     document_end: Optional[int] = None, static_shapes: bool = False,
                     optimizer_state: Optional[dict] = None, log: Optional[Callable[[str], None]] = None) -> TrainStep:
    """The optimizer (switches.optimizer; adamw_lr, norm_lr: the AdamW part's peak lrs under Muon), the forward (compiled and wrapped for DDP as the switches say) and the step around
    them, for a model already on `device` (and sharded, under FSDP2): what train.py and bench.py both run.
    optimizer_state, a checkpoint's, is loaded into the new optimizer (scattered under FSDP2). document_end: the
    end-of-text id, to train with attention masked at document ends (StepConfig.document_end). static_shapes: the
    windows change shape along the run (a sequence warmup's stages): each shape compiled for itself."""
    optimizer = build_optimizer(model, lr, weight_decay, device, capturable=switches.cuda_graph, kind=switches.optimizer,
                                adamw_lr=adamw_lr, norm_lr=norm_lr,
                                compile_update=switches.compile and device.type == "cuda",
                                muon_variant=muon_variant, momentum_schedule=momentum_schedule)
    if optimizer_state is not None:
        parallel.load_full_optimizer_state(model, optimizer, optimizer_state, load_optimizer_state)
    forward_model = parallel.build_forward(model, switches.compile, switches.compile_scope, device,
                                           switches.grad_reduce_bf16, switches.ddp_overlap,
                                           dynamic=False if static_shapes else None)
    return TrainStep(model, forward_model, optimizer, StepConfig.of(switches, grad_clip, document_end), device, log=log)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, amp_dtype) -> Optional[float]:
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with amp_context(device, amp_dtype):
            _, loss = model(x, y, fused_loss=linear_cross_entropy)
        total += loss * y.numel()
        count += y.numel()
    model.train(was_training)
    return None if count == 0 else (total / count).item()


# ----------------------------------------------------------------------------- the transformers yardstick
class TransformersAdapter(nn.Module):
    """transformers' LlamaForCausalLM behind our forward(input_ids, targets) contract, so the same
    training step, data and optimizer drive it (the yardstick in bench.py and the ablation sweep).
    Its loss is the plain float32 cross-entropy over full logits, as transformers computes it."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        self.config = SmolLM2Config.from_hf(hf_model.config.to_dict())  # the shapes, for activation_bytes

    def forward(self, input_ids, targets=None, fused_loss=None, document_end=None):  # fused_loss: ours only, ignored
        if document_end is not None:
            raise ValueError("document masking is ours only; train.py refuses --doc_mask 1 with --model_impl hf")
        logits = self.hf(input_ids=input_ids).logits
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss
