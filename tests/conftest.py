"""Fixtures shared by every test file: where the repo and ../shared are, and a small seeded model.

Tests import the repo's modules directly (`import smollm2_model`), so the repo root goes on sys.path.
The reference files live outside the repo (never committed): ../shared/data/input.txt and
../shared/tokenizer/tokenizer.json. A test that needs one and cannot find it is skipped with the path
in the reason; CI provides both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference file {path} is missing (it lives next to the repo, in ../shared)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED_DIR)


@pytest.fixture(scope="session")
def corpus_path(shared_dir) -> Path:
    return _require(shared_dir / "data" / "input.txt")


@pytest.fixture(scope="session")
def tokenizer_json_path(shared_dir) -> Path:
    return _require(shared_dir / "tokenizer" / "tokenizer.json")


@pytest.fixture
def tiny_model():
    """The `tiny` preset (real 49,152-id vocab, 2 layers, 4 heads / 2 kv), seeded, eval mode, CPU."""
    from smollm2_config import get_config
    from smollm2_model import SmolLM2ForCausalLM

    torch.manual_seed(0)
    return SmolLM2ForCausalLM(get_config("tiny")).eval()
