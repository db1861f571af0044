"""train.py --doc_mask: trains through the masked attention, is kept on resume, and is refused where it cannot act.
The mask itself is checked against each document run alone in tests/test_model.py."""

from __future__ import annotations

from conftest import run_train


def test_doc_mask_trains_and_a_resume_may_not_drop_it(tmp_path):
    out = tmp_path / "run"
    run_train(out, "--doc_mask", 1, "--max_steps", 2)
    assert '"doc_mask": 1' in (out / "train.log").read_text()
    r = run_train(out, "--doc_mask", 0, "--max_steps", 4, "--resume", 1, check=False)
    assert r.returncode == 2 and "doc_mask: 1 -> 0" in r.stderr, r.stderr


def test_doc_mask_is_refused_with_the_transformers_model(tmp_path):
    r = run_train(tmp_path / "hf", "--doc_mask", 1, "--model_impl", "hf", "--max_steps", 2, check=False)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--doc_mask 1 masks our attention" in lines[0], r.stderr
    assert not (tmp_path / "hf").exists()
