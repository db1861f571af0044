"""How fast the GPUs of this host all-reduce a gradient-sized buffer: run under torchrun, one process a GPU.

    torchrun --standalone --nproc_per_node=8 benchmarks/allreduce_probe.py [--mb 538] [--out results/bench/links]

Every rank all-reduces (sum) one float32 buffer of --mb megabytes, the size of SmolLM2-135M's gradients
(134.5M parameters x 4 bytes = 538 MB), --warmup times untimed and --iters times timed. Reported as NCCL's
tests do: algorithm bandwidth = bytes / time, bus bandwidth = algbw x 2(n-1)/n, the rate each link must carry
in a ring, comparable across world sizes. Rank 0 prints one JSON line and merges it into <out>.csv/.json
(keyed on card, world size, backend and size), beside which the scaling tables can be read. On CPU (gloo) it
runs too, for a test of the script, not of a machine.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from smollm2.common import OneLineParser, UsageError, run_cli  # noqa: E402
from smollm2.io import merge_table  # noqa: E402

GRADIENT_MB = 134_515_008 * 4 / 1e6  # SmolLM2-135M's float32 gradients


def main() -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=GRADIENT_MB, help="buffer size in MB (1e6 bytes)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=os.path.join(REPO, "results", "bench", "links"), help="table stem (.csv/.json)")
    args = p.parse_args()
    if "RANK" not in os.environ:
        raise UsageError("run it under torchrun (torchrun --standalone --nproc_per_node=N ...)")
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    n = max(1, int(args.mb * 1e6) // 4)
    buf = torch.ones(n, dtype=torch.float32, device=device)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        dist.all_reduce(buf)
    sync()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        dist.all_reduce(buf)
    sync()
    seconds = (time.perf_counter() - t0) / args.iters
    slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # the collective ends when its slowest rank does
    seconds = slowest.item()
    # after warmup + iters sums of ones, every element is world ** (warmup + iters): the reduction really ran
    expect = float(world) ** (args.warmup + args.iters)
    ok = bool(torch.allclose(buf[:16], torch.full_like(buf[:16], expect), rtol=1e-5))
    if rank == 0:
        nbytes = n * 4
        algbw = nbytes / seconds / 1e9
        row = dict(card=torch.cuda.get_device_name(device) if cuda else "cpu", world_size=world, backend=backend,
                   mb=round(nbytes / 1e6, 1), ms=round(seconds * 1e3, 3), algbw_gb_s=round(algbw, 1),
                   busbw_gb_s=round(algbw * 2 * (world - 1) / world, 1), result_checked=ok,
                   torch=torch.__version__, nccl=".".join(map(str, torch.cuda.nccl.version())) if cuda else "")
        print(json.dumps(row), flush=True)
        merge_table(args.out, [row], key=lambda r: (r["card"], r["world_size"], r["backend"], r["mb"]))
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main, "allreduce_probe.py")
