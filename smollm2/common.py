"""The basics every script and module may import, importing nothing of the repo: the usage error, the stopped
run and the one-line argument parser, device resolution, peak FLOPs and FLOPs per token (for MFU), a CUDA timer.
A leaf, so that inference (generate.py, app.py) never loads the training stack and nothing forms a circle.
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch


# Dense bf16 peak per card (datasheet, without sparsity), used for MFU. H100 SXM and H200: 989.4 TFLOP/s.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "H800": 989.4e12, "A100": 312e12, "L4": 121e12,
                   "4090": 165.2e12, "4060 Ti": 44.1e12}


class UsageError(Exception):
    """Bad flags or inputs: the scripts report it as one line and exit with status 2."""


class RunStopped(Exception):
    """The run cannot go on (non-finite values, a failed save): logged, one line on stderr, exit `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line (and exit status 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name} requested but CUDA is not available; use cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; use auto, cuda, cuda:N or cpu")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_flops(name: str) -> Optional[float]:
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def cuda_median_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median CUDA time of fn() in milliseconds, each call bracketed by events, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    # 6N for the matmuls forward+backward (the tied matrix counted once, as the lm_head matmul) plus the
    # attention score/value matmuls, 12 * L * C * T (PaLM appendix B).
    return 6 * n_params + 12 * n_layers * hidden * seq_len
