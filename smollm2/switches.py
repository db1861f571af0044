"""The speed switches, one vocabulary: Switches says how a run computes the same training step. train.py
resolves its flags into one (train.resolve_switches) and logs it; each bench.py impl (IMPLS) and each
train_ablation.py variant (VARIANTS) is a named instance; PROFILES are the run shapes both measure.
No torch import at module level: update_readme.py (smollm2/report.py) reads SWITCH_PAIRS without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Switches:
    """Defaults are the plain path: float32 eager PyTorch, SDPA, full logits, micro-batches accumulated."""
    autocast: bool = False          # bf16 autocast (CUDA); norms, softmax and the loss stay float32
    compile: bool = False           # torch.compile, over compile_scope: "model" (one graph) or "blocks" (each layer)
    compile_scope: str = "model"
    cuda_graph: bool = False        # the whole step captured once and replayed (single process)
    fused_loss: bool = False        # chunked linear + cross-entropy: never the (tokens x vocab) logits
    stack_micro: int = 0            # a step's micro-batches as one batch: 1 always, 0 never, -1 when it fits
    residual_dtype: str = "fp32"    # residual stream under autocast: fp32 (as transformers) or bf16
    attn: str = "sdpa"              # sdpa, or manual (softmax(QK^T)V written out)
    model_impl: str = "ours"        # hf: transformers' LlamaForCausalLM through the same step (a yardstick)
    tie_word_embeddings: bool = True
    grad_reduce_bf16: bool = False  # data parallel: all-reduce gradients in bf16
    ddp_overlap: bool = True        # data parallel: split the compiled graph at bucket boundaries
    fsdp: bool = False              # under torchrun: FSDP2 (fully_shard per decoder layer) instead of DDP
    # Not a speed switch but named beside them, so that bench.py and train_ablation.py can time and train it:
    # adamw, or muon (smollm2/muon.py: Muon on the hidden matrices, AdamW on the embedding and norm gains).
    optimizer: str = "adamw"

    @property
    def amp_dtype(self):
        import torch
        return torch.bfloat16 if self.autocast else None

    def but(self, **changes) -> "Switches":
        return replace(self, **changes)

    def train_flags(self) -> dict:
        """The train.py flags that select exactly these switches (every one given, none left to --fast)."""
        flags = {k: int(v) if isinstance(v, bool) else v for k, v in asdict(self).items()
                 if k not in ("grad_reduce_bf16", "ddp_overlap")}  # ddp_overlap is a bench-only switch
        flags["grad_reduce_dtype"] = "bf16" if self.grad_reduce_bf16 else "fp32"
        return flags

    def describe(self) -> str:
        """The log's "Speed path" fields: `name value` per switch, in field order."""
        shown = {**asdict(self), "autocast": "bf16" if self.autocast else "off (fp32)",
                 "stack_micro": "auto" if self.stack_micro == -1 else self.stack_micro}
        del shown["fsdp"]  # the line ends with how the ranks share the model: DDP, FSDP2 or single process
        return " | ".join(f"{k} {int(v) if isinstance(v, bool) else v}" for k, v in shown.items())


@dataclass(frozen=True)
class Profile:
    seq_len: int
    micro_batch: int
    grad_accum: int


# The run shapes the benchmarks measure. "seed" is named after the starter command whose shape it is
# (seq 256 x micro-batch 1 x accum 4, the seed's); bench_seed.csv and --profile seed carry the name.
PROFILES = {"seed": Profile(seq_len=256, micro_batch=1, grad_accum=4),
            "throughput": Profile(seq_len=2048, micro_batch=16, grad_accum=1)}

# ----------------------------------------------------------------------------- bench.py impls
# bf16 autocast for all but the float32 yardstick: the dtype policy is shared. ours_fast_bf16res is train.py's
# default CUDA path (DEFAULT_PATH): micro-batches stacked when they fit, the residual stream in bf16;
# ours_fast is the same with the float32 stream, ours_fast_accum ours_fast before stacking; every other impl
# accumulates micro-batches, as the committed tables did.
_BF16 = Switches(autocast=True)
_COMPILED = _BF16.but(compile=True, fused_loss=True)
_FAST = _COMPILED.but(cuda_graph=True, stack_micro=-1)
IMPLS: dict[str, Switches] = {
    "hf_eager": _BF16.but(model_impl="hf"),
    "hf_compile": _BF16.but(model_impl="hf", compile=True),
    "ours_eager": _BF16,
    "ours_compile": _COMPILED,
    "ours_fast_accum": _FAST.but(stack_micro=0),
    "ours_fast": _FAST,
    # the residual stream in bf16: every residual add and RMSNorm moves half the bytes
    "ours_fast_bf16res": _FAST.but(residual_dtype="bf16"),
    # the same with each decoder layer compiled alone: what train.py runs for a run of at most
    # AUTO_BLOCKS_MAX_STEPS steps (the seed's command), a tenth of the compile time
    "ours_fast_blocks": _FAST.but(residual_dtype="bf16", compile_scope="blocks"),
    "ours_eager_bf16res": _BF16.but(residual_dtype="bf16"),
    # train.py's default path with --optimizer muon: what the Muon step costs against the AdamW step
    "ours_fast_bf16res_muon": _FAST.but(residual_dtype="bf16", optimizer="muon"),
    # data-parallel variants of ours_compile (smollm2.parallel.build_forward); same math, except bf16grads
    "ours_compile_no_overlap": _COMPILED.but(ddp_overlap=False),
    "ours_compile_blocks": _COMPILED.but(compile_scope="blocks"),
    "ours_compile_bf16grads": _COMPILED.but(grad_reduce_bf16=True),
    # what train.py runs under torchrun by default (no CUDA graph there), and the same sharded with FSDP2
    # or optimised with Muon: the rows of the several-GPU table (benchmarks/device_multigpu.sh)
    "ours_ddp_default": _COMPILED.but(residual_dtype="bf16", stack_micro=-1),
    "ours_fsdp_default": _COMPILED.but(residual_dtype="bf16", stack_micro=-1, fsdp=True),
    "ours_ddp_muon": _COMPILED.but(residual_dtype="bf16", stack_micro=-1, optimizer="muon"),
    # no autocast (matmuls in TF32): the yardstick for how far bf16 rounding alone moves a loss curve
    "ours_eager_fp32": Switches(fused_loss=True),
}
# Impls that differ from another only under DDP: on one GPU that one's row serves.
DDP_ONLY = {"ours_compile_no_overlap": "ours_compile", "ours_compile_bf16grads": "ours_compile"}
DEFAULT_PATH = "ours_fast_bf16res"  # what train.py runs on one GPU with its defaults, for a long run
SEED_PATH = "ours_fast_blocks"  # what it runs for the seed's command (--max_steps 5000): compile scope "auto"

# --compile_scope auto: "blocks" for a single-process run of at most this many steps, "model" beyond, decided
# when the run starts and kept by its resumes (the same compiled code, so a resume continues it exactly).
# Measured on one H200 at the seed's shape (results/bench/seed_e2e/scopes_wall.jsonl): compiling the whole model
# costs 24 s more than one layer with warm compile caches (51 s more cold). It saved ~1.25 ms a step when the
# threshold was set (pays after ~19k steps); since the head is compiled too (compile_head) the gap there is
# 0.04 ms (bench_seed.csv), so the threshold is conservative at that shape; at others the gap is not measured.
AUTO_BLOCKS_MAX_STEPS = 20_000


def auto_compile_scope(max_steps: int, world_size: int) -> str:
    return "blocks" if max_steps <= AUTO_BLOCKS_MAX_STEPS and world_size == 1 else "model"

# ----------------------------------------------------------------------------- train_ablation.py variants
# The starter write-up's seven first, under their original names; then what the speed work added. Two pairs
# of those seven are one configuration under two names: sdpa_off is autocast (manual attention, eager, bf16)
# and sdpa_with_tie_on is sdpa_on; SAME_AS says so, and the README's table with them.
_PLAIN_BF16 = Switches(autocast=True, stack_micro=-1)  # stack_micro -1: train.py's default, as the rows recorded
VARIANTS: dict[str, Switches] = {
    "baseline": Switches(attn="manual", stack_micro=-1),
    "autocast": _PLAIN_BF16.but(attn="manual"),
    "autocast_comp": _PLAIN_BF16.but(attn="manual", compile=True),
    "sdpa_on": _PLAIN_BF16,
    "sdpa_off": _PLAIN_BF16.but(attn="manual"),
    "sdpa_with_tie_on": _PLAIN_BF16,
    "sdpa_with_tie_off": _PLAIN_BF16.but(tie_word_embeddings=False),
    "fused_loss": _PLAIN_BF16.but(fused_loss=True),
    "compile_sdpa": _PLAIN_BF16.but(compile=True),
    "compile_fused": _PLAIN_BF16.but(compile=True, fused_loss=True),
    "cuda_graph": _PLAIN_BF16.but(cuda_graph=True, fused_loss=True),
    "fast": _PLAIN_BF16.but(compile=True, cuda_graph=True, fused_loss=True),
    "fast_accum": _PLAIN_BF16.but(compile=True, cuda_graph=True, fused_loss=True, stack_micro=0),
    "fast_bf16res": _PLAIN_BF16.but(compile=True, cuda_graph=True, fused_loss=True, residual_dtype="bf16"),
    "hf_reference": _PLAIN_BF16.but(model_impl="hf"),
    "fast_bf16res_muon": _PLAIN_BF16.but(compile=True, cuda_graph=True, fused_loss=True, residual_dtype="bf16",
                                         optimizer="muon"),
}
SAME_AS = {"sdpa_off": "autocast", "sdpa_with_tie_on": "sdpa_on"}
# What each switch buys alone: (switch, the variant with it, the variant without it), one switch apart
# (tests/test_ablation.py checks that). update_readme.py writes one line per pair under each table.
SWITCH_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("bf16 autocast (eager, manual attention)", "autocast", "baseline"),
    ("SDPA instead of manual attention (eager)", "sdpa_on", "sdpa_off"),
    ("torch.compile (manual attention)", "autocast_comp", "autocast"),
    ("torch.compile (SDPA)", "compile_sdpa", "sdpa_on"),
    ("fused linear + cross-entropy (eager)", "fused_loss", "sdpa_on"),
    ("fused linear + cross-entropy (compiled)", "compile_fused", "compile_sdpa"),
    ("CUDA graph over the step (eager)", "cuda_graph", "fused_loss"),
    ("CUDA graph over the step (compiled)", "fast", "compile_fused"),
    ("micro-batches stacked into one forward/backward (fast path)", "fast", "fast_accum"),
    ("residual stream in bf16 instead of float32 (fast path)", "fast_bf16res", "fast"),
    ("untied output head", "sdpa_with_tie_off", "sdpa_with_tie_on"),
    ("transformers' LlamaForCausalLM in our step", "hf_reference", "sdpa_on"),
)
