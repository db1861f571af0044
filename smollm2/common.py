"""The basics every script and module may import, importing nothing of the repo: the error base every repo
exception derives from, the usage error, the stopped run, the one runner every script's command line goes
through, the one-line argument parser, device resolution, peak FLOPs and FLOPs per token (for MFU), a CUDA timer.
A leaf, so that inference (generate.py, app.py) never loads the training stack and nothing forms a circle; torch
is imported inside the functions that need it, so that the light scripts (benchmarks/bench_data.py's children)
stay light.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional

if TYPE_CHECKING:
    import torch


# Dense bf16 peak per card (datasheet, without sparsity), used for MFU. H100 SXM and H200: 989.4 TFLOP/s.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "H800": 989.4e12, "A100": 312e12, "L4": 121e12,
                   "4090": 165.2e12, "4060 Ti": 44.1e12}


class SmolError(Exception):
    """What the user can act on (a bad flag, a file that is not what it should be, a run that had to stop): run_cli
    prints it as `prog: error: message` (one line; a message of several, such as a refused resume's list of the
    settings that differ, whole) and exits with `code`. Every exception class of the repo derives from it; anything
    else that reaches run_cli is a bug and keeps its traceback. 2 marks bad input, 1 a failure."""

    code = 1


class UsageError(SmolError):
    """Bad flags or inputs: the scripts report it as one line and exit with status 2."""

    code = 2


class RunStopped(SmolError):
    """The run cannot go on (non-finite values, a failed save): logged, one line on stderr, exit `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def one_line(e: BaseException) -> str:
    """An exception as one line: its message's first line (a library's message may run to several), else its type."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def interrupted(e: KeyboardInterrupt) -> tuple[str, int]:
    return "interrupted", 130  # 128 + SIGINT, what a shell reports for a process that Ctrl-C stopped


def run_cli(main: Callable[[], Any], prog: str, *, also: tuple[type[BaseException], ...] = (),
            on_interrupt: Callable[[KeyboardInterrupt], tuple[str, int]] = interrupted,
            leave: Callable[[int], NoReturn] = sys.exit) -> NoReturn:
    """A script's command line: main()'s status (an int; whatever else it returns, None or a list of rows, is 0),
    or after a SmolError `prog: error: ...` on stderr and the error's code. `also` names the other exceptions that
    are the user's to act on in this script (an OSError on a folder the user named), reported by their first line
    with status 2. Ctrl-C gives on_interrupt's (line, status). Anything else propagates with its traceback. `leave`
    takes the status: sys.exit, unless the script has a faster way out."""
    try:
        code = main()
    except SmolError as e:
        code = _report(prog, str(e) or type(e).__name__, e.code)
    except KeyboardInterrupt as e:
        code = _report(prog, *on_interrupt(e))
    except also as e:
        code = _report(prog, one_line(e), 2)
    leave(code if isinstance(code, int) else 0)


def _report(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return code


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line (and exit status 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {name} requested but CUDA is not available; use cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"unknown device {name!r}; use auto, cuda, cuda:N or cpu")


def device_name(device: torch.device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_flops(name: str) -> Optional[float]:
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def cuda_median_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median CUDA time of fn() in milliseconds, each call bracketed by events, after `warmup` calls."""
    import torch

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
