"""Data parallelism through PyTorch's own stack, applied from outside the model (as torchtitan does).

Under `torchrun --nproc_per_node=N` every process trains on its own share of each step's micro-batches;
DDP averages gradients once per optimizer step (no_sync during accumulation). FSDP2 (`fully_shard`)
shards parameters, gradients and optimizer state per decoder layer for models that outgrow one card;
its checkpoints are gathered into full, unsharded tensors so they load in a single process.
Without torchrun every function here is a no-op and the code runs as one process.

torch.compile's work kept for the next process, so a resume and the next run do not compile again.

Two layers, both PyTorch's own:
  - the machine's caches: inductor's FX-graph cache, the AOTAutograd cache and the Triton kernels, on by
    default under $TORCHINDUCTOR_CACHE_DIR (default /tmp/torchinductor_$USER). A second run on the same
    machine hits them: dynamo still traces the model, but nothing is lowered or compiled again.
  - the portable artifacts ("mega-cache"): after the first step torch.compiler.save_cache_artifacts()
    serialises what this process compiled or loaded, and train.py writes it to <out_dir>/cache/
    compile_artifacts.bin; before the first compile load_cache_artifacts() puts that file's entries into
    the machine's caches. So a resume on another machine, or after /tmp was wiped, finds them too.
The artifacts carry their own keys (graph, torch version, device), so a stale or foreign file only
misses; a file that does not load is reported in one line and ignored, never a reason to stop a run.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

from smollm2.common import resolve_device
from smollm2.io import write_if_changed


@dataclass
class DistEnv:
    world_size: int
    rank: int
    local_rank: int
    device: torch.device


def setup(device_arg: str) -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_arg)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        # A rank that dies makes the collectives of the others fail after this timeout instead of hanging;
        # torchrun also tears the whole group down when one worker exits non-zero.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=int(os.environ.get("SMOLLM2_DIST_TIMEOUT_MIN", "10"))))
    return DistEnv(world, rank, local_rank, device)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def grad_sync(model: torch.nn.Module, forward_model: torch.nn.Module, last: bool):
    """Around one micro-step's forward and backward: gradients are reduced across ranks on the last micro-step
    of a step only (DDP: no_sync() before it; FSDP2: set_requires_gradient_sync). A no-op in one process."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2's counterpart of no_sync
        model.set_requires_gradient_sync(last)
    if hasattr(forward_model, "no_sync") and not last:
        return forward_model.no_sync()
    return contextlib.nullcontext()


COMPILE_SCOPES = ("model", "blocks")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated blocks: ours at model.model.layers, transformers' behind HFReference at hf.model.layers."""
    for name, module in model.named_modules():
        if name.endswith("model.layers") and isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError("no decoder layers found (expected a ModuleList named model.layers)")


def build_forward(model: torch.nn.Module, compile_: bool, scope: str, device: torch.device,
                  reduce_bf16: bool = False, ddp_overlap: bool = True, dynamic: Optional[bool] = None) -> torch.nn.Module:
    """The module the training step calls, from the plain `model` the optimizer owns.

    scope (only with compile_):
      model   torch.compile of the whole model, DDP around it: one graph, the most fusion on one GPU. Under
              DDP, dynamo's DDPOptimizer splits the graph at DDP's bucket boundaries so that each bucket's
              all-reduce overlaps the rest of the backward (ddp_overlap=False turns that off: one graph whose
              backward hands every gradient over at its end; a control for measuring what overlap buys).
      blocks  each decoder layer compiled on its own (one graph reused by all layers, as torchtitan does),
              and the final norm and fused loss as two more (compile_head); DDP around the model: gradients
              arrive layer by layer without splitting any graph.
    reduce_bf16: DDP all-reduces gradients in bf16 (half the bytes on slow links; the averaged gradient
    is rounded to bf16 before the float32 optimizer sees it). NCCL only. dynamic: torch.compile's (False: every new
    shape compiled again for that shape, as a sequence warmup's stages want; None: dynamo's default, a shape that
    changes is compiled once more as a dynamic one)."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope must be one of {', '.join(COMPILE_SCOPES)}, got {scope!r}")
    ddp = active() and not _is_fsdp(model)

    def wrap(module):
        wrapped = wrap_ddp(module, device)
        if reduce_bf16:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
            wrapped.register_comm_hook(None, bf16_compress_hook)
        return wrapped

    if not compile_:
        return wrap(model) if ddp else model
    # Read by dynamo when it compiles inside DDP's forward; set every time, so one process can build both kinds.
    torch._dynamo.config.optimize_ddp = ddp_overlap and scope == "model"
    if scope == "blocks":
        for layer in decoder_layers(model):
            layer.compile(dynamic=dynamic)
        compile_head(model, dynamic)
        return wrap(model) if ddp else model
    return wrap(torch.compile(model, dynamic=dynamic)) if ddp else torch.compile(model, dynamic=dynamic)


def compile_head(model: torch.nn.Module, dynamic: Optional[bool] = None) -> None:
    """--compile_scope blocks, our model: the final norm and the fused head + loss compiled as two more small
    regions. Eager, the loss's float32 softmax takes several passes over (tokens x vocabulary) and holds more of
    them at once; compiled, it is one pass, as inside the whole-model graph. Not under FSDP2, whose root unshards
    the tied weight around its own forward."""
    if not hasattr(model, "head_loss") or _is_fsdp(model):
        return  # transformers' model behind the bench adapter, or FSDP2
    model.model.norm.compile(dynamic=dynamic)
    model.head_loss = torch.compile(model.head_loss, dynamic=dynamic)


def apply_fsdp(model: torch.nn.Module) -> None:
    # Called after train.resolve_switches, which refuses --fsdp 1 without torchrun.
    from torch.distributed.fsdp import fully_shard
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)  # the root owns the embedding, final norm and (tied) lm_head


def _is_fsdp(model: torch.nn.Module) -> bool:
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


def full_state_dict(model: torch.nn.Module) -> dict:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach() for k, v in model.state_dict().items()}  # on the device: the save's snapshot copies them


def full_optimizer_state(model, optimizer, portable) -> dict:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return portable(optimizer)


def load_full_optimizer_state(model, optimizer, state: dict, plain_load) -> None:
    """The counterpart of full_optimizer_state: under FSDP2 each rank takes its shard of the full state
    (optimizer.load_state_dict would put full tensors beside DTensor parameters and fail at step())."""
    if not _is_fsdp(model):
        plain_load(optimizer, state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    # Single-process and DDP checkpoints key the state by position, FSDP2 ones by parameter name.
    names = {id(p): n for n, p in model.named_parameters()}  # a tied matrix once, under its first name
    rename = dict(zip([k for g in state["param_groups"] for k in g["params"]],
                      [names[id(p)] for g in optimizer.param_groups for p in g["params"]]))
    state = {"state": {rename[k]: v for k, v in state["state"].items()},
             "param_groups": [{**g, "params": [rename[k] for k in g["params"]]} for g in state["param_groups"]]}
    plain_load(optimizer, state, load=lambda s: set_optimizer_state_dict(
        model, optimizer, s, options=StateDictOptions(full_state_dict=True)))


def mean_across_ranks(value: torch.Tensor) -> float:
    if active():
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return float(value)


def max_across_ranks(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def any_rank(flag: bool) -> bool:
    return max_across_ranks(1.0 if flag else 0.0) > 0


# ----------------------------------------------------------------------------- the compile cache
ARTIFACTS = "compile_artifacts.bin"


def _count(info) -> int:
    return sum(len(v) for v in info.artifacts.values()) if info is not None else 0


def load_artifacts(path: str, log: Callable[[str], None]) -> None:
    if not os.path.isfile(path):
        return
    t0 = time.perf_counter()
    # torch logs a bad file's traceback as a warning and returns nothing loaded: the one line below says it
    quiet = logging.getLogger("torch.compiler._cache")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with open(path, "rb") as f:
            data = f.read()
        info = torch.compiler.load_cache_artifacts(data)
    except Exception as e:  # a truncated or foreign file: compile as if it were not there
        log(f"Compile cache: ignored {path} ({type(e).__name__}: {str(e)[:120]})")
        return
    finally:
        quiet.setLevel(level)
    if data and not _count(info):
        log(f"Compile cache: ignored {path}: corrupt (torch cannot read it); compiling afresh, and it is rewritten "
            f"after the first step")
        return
    log(f"Compile cache: loaded {_count(info)} artifacts from {path} in {time.perf_counter() - t0:.2f}s")


def save_artifacts(path: str, log: Callable[[str], None]) -> None:
    """Write what this process compiled (or loaded) so far; unchanged bytes are not rewritten."""
    t0 = time.perf_counter()
    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not saved[0]:
        return
    data, info = saved
    try:
        if not write_if_changed(path, data):
            return
    except OSError as e:  # a full disk costs the next run a compile, not this run its progress
        log(f"Compile cache: could not write {path} ({e.strerror or e})")
        return
    log(f"Compile cache: saved {_count(info)} artifacts ({len(data) / 1e6:.1f} MB) to {path} "
        f"in {time.perf_counter() - t0:.2f}s")
