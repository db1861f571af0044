"""Probe quack-kernels' Hopper kernels at SmolLM2-135M's seq 2048 x 16 shapes (32,768 tokens), against the
PyTorch ops the compiled step uses today: fused residual add + RMSNorm, the SwiGLU MLP with the activation in
the GEMM epilogue, and the tied head + cross-entropy. Each op forward + backward, median of 20, relative
error of the output and of the input gradient against the PyTorch reference on the same bf16 inputs.

    python benchmarks/probe_quack.py [--out results/bench/probe_quack.json]

Needs a Hopper GPU and quack-kernels with a matching nvidia-cutlass-dsl (benchmarks/NOTES.md, "Hopper kernels
from the registries": 0.6.4 pins 4.6.2; 0.6.5 asks for >= 4.7 and its GEMM kernels failed to build on 4.8.1).
Without them it says so in one line and exits 1. One JSON line per op; a kernel that fails to build or run is
a row with its error's first line, and the other ops go on.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's modules
from smollm2.common import OneLineParser, run_cli  # noqa: E402


def versions() -> dict:
    from importlib import metadata
    out = {}
    for dist in ("quack-kernels", "nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-base", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = ""
    return out


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def compare(name, ours, ref, inputs, dout_shape=None) -> dict:
    """ours/ref: functions of `inputs` (tensors needing grad) returning one tensor; fwd+bwd each."""
    import torch

    from smollm2.common import cuda_median_ms
    row = {"op": name}
    try:
        def run(fn):
            xs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
            out = fn(*xs)
            g = torch.ones_like(out) if out.dim() == 0 else torch.randn(out.shape, device=out.device,
                                                                          dtype=out.dtype,
                                                                          generator=torch.Generator(out.device).manual_seed(0))
            out.backward(g)
            return out, xs[0].grad

        o_ref, g_ref = run(ref)
        o_q, g_q = run(ours)
        row.update(status="ok", rel_err_out=f"{rel(o_q, o_ref):.2e}", rel_err_dx=f"{rel(g_q, g_ref):.2e}",
                   ms_quack=round(cuda_median_ms(lambda: run(ours)), 3),
                   ms_torch_compile=round(cuda_median_ms(lambda: run(ref)), 3))
    except Exception as e:  # a kernel that does not build or run is a finding, not the end of the probe
        row.update(status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("results", "bench", "probe_quack.json"))
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--tuned", type=int, default=0, choices=[0, 1],
                   help="quack's autotuner for the GEMM kernels (1: minutes of tuning per shape; 0: its default config)")
    args = p.parse_args(argv)
    try:
        import quack  # noqa: F401
        import torch
    except Exception as e:
        print(f"probe_quack: quack-kernels is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
              f"pip install quack-kernels with its nvidia-cutlass-dsl (benchmarks/NOTES.md)", file=sys.stderr)
        return 1
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        print("probe_quack: needs a Hopper (sm90) or newer GPU", file=sys.stderr)
        return 1
    import torch.nn.functional as F
    from smollm2.loss import linear_cross_entropy
    from smollm2_model import rms_norm

    head = dict(card=torch.cuda.get_device_name(), tokens=args.tokens, tuned=args.tuned, **versions())
    print(json.dumps(head), flush=True)
    dev, bf16 = "cuda", torch.bfloat16
    N, C, H, V = args.tokens, 576, 1536, 49152
    g = torch.Generator(dev).manual_seed(0)
    rnd = lambda *shape, s=1.0: (torch.randn(*shape, device=dev, generator=g) * s).to(bf16).requires_grad_()  # noqa: E731
    rows = []

    # 1. residual add + RMSNorm: (N, C) + (N, C) -> normed (N, C)
    from quack.rmsnorm import rmsnorm as q_rmsnorm
    w_norm = torch.ones(C, device=dev, requires_grad=True)
    ref_norm = torch.compile(lambda x, r: rms_norm(x + r, w_norm, 1e-5))
    rows.append(compare("residual_add_rmsnorm", lambda x, r: q_rmsnorm(x, w_norm, residual=r, eps=1e-5),
                        ref_norm, [rnd(N, C), rnd(N, C)]))

    # 2. SwiGLU MLP: (N, C) -> (N, C); gate and up stacked as one (2H, C) weight ([gate; up], concat_layout)
    from quack.mlp import mlp_func
    w1, w2 = rnd(2 * H, C, s=0.04), rnd(C, H, s=0.04)

    def ref_mlp(x):
        gate, up = (x @ w1.t()).chunk(2, dim=-1)  # (N, H) each
        return (F.silu(gate) * up) @ w2.t()
    tuned = bool(args.tuned)
    rows.append(compare("swiglu_mlp",
                        lambda x: mlp_func(x, w1, w2, activation="swiglu", concat_layout=True, tuned=tuned),
                        torch.compile(ref_mlp), [rnd(N, C)]))

    # 3. tied head + cross-entropy: (N, C) x (V, C) -> mean loss; ours is the repo's fused chunked loss
    from quack.linear_cross_entropy import chunked_linear_cross_entropy
    w_head = rnd(V, C, s=0.04)
    t = torch.randint(0, V, (N,), device=dev, generator=g)
    rows.append(compare("linear_cross_entropy", lambda x: chunked_linear_cross_entropy(x, w_head, t, tuned=tuned),
                        torch.compile(lambda x: linear_cross_entropy(x, w_head, t)), [rnd(N, C)]))

    with open(args.out, "w") as f:
        json.dump(dict(head, rows=rows), f, indent=2)
    return 0 if all(r["status"] == "ok" for r in rows) else 3


if __name__ == "__main__":
    run_cli(main, "probe_quack.py")
