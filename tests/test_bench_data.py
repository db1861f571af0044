"""benchmarks/bench_data.py at tiny scale: a 1 MB corpus, one worker, 20 training steps. Checks that every measurement
gives a row with sane values and that rows merge by key; no timing assertions (the numbers are noise here)."""

import csv
import importlib.util
import json
import os

import pytest

pytest.importorskip("psutil")
from benchmarks import bench_data  # noqa: E402  (needs psutil)
from conftest import SHARED_DIR  # noqa: E402  (realdocs from there when present, else the repo's input.txt)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer_json_path):
    work = tmp_path_factory.mktemp("bench_data_work")
    corpus = bench_data.make_corpus(str(work), 1.0, seed=7, fmt="jsonl.gz", file_mb=0.4, shared_dir=str(SHARED_DIR))
    return work, corpus, str(tokenizer_json_path)


def test_corpus_is_many_documents_and_reused(setup):
    work, corpus, _ = setup
    assert corpus["text_bytes"] >= 1e6 and corpus["documents"] > 20 and len(corpus["files"]) >= 2
    assert corpus["folder"].startswith(str(work)) and all(os.path.getsize(p) > 0 for p in corpus["files"])
    again = bench_data.make_corpus(str(work), 1.0, seed=7, fmt="jsonl.gz", file_mb=0.4, shared_dir=str(SHARED_DIR))
    assert again == corpus  # same size and seed: the files on disk are reused


def _check_memory(row):
    assert 20 < row["peak_rss_tree_mb"] < 4000 and row["peak_rss_max_process_mb"] <= row["peak_rss_tree_mb"]
    assert row["peak_pss_tree_mb"] is None or 0 < row["peak_pss_tree_mb"] <= row["peak_rss_tree_mb"] * 1.05
    assert row["hwm_sum_mb"] >= row["peak_rss_tree_mb"] * 0.95 and row["ru_maxrss_mb"] > 20
    assert row["samples"] >= 1 and row["max_processes"] >= 1 and row["wall_s"] > 0 and row["cpu_s"] > 0


def test_rows_for_every_measurement(setup, tmp_path):
    work, corpus, tok = setup
    # sampled every 10 ms: a 1 MB corpus is prepared in well under the default 0.2 s between samples
    ours = bench_data.measure_prepare(corpus, 1, tok, str(work), shard_tokens=20_000, keep=True, interval=0.01)
    assert ours["measurement"] == "throughput" and ours["workers"] == 1 and ours["corpus_mb"] == 1.0
    assert ours["pipeline"] == "prepare_data.py --encoder tiktoken"
    assert 2.0 < ours["bytes_per_token"] < 6.0 and ours["documents"] == corpus["documents"]
    assert ours["tokens_per_s"] > 0 and ours["shards"] > 5 and ours["max_processes"] == 2  # main + one worker
    _check_memory(ours)
    rows = [ours]

    if importlib.util.find_spec("datasets") is not None:
        y = bench_data.measure_yardstick(corpus, 1, tok, str(work))
        assert y["tokens"] == ours["tokens"]  # the same documents, each + end-of-text: the same ids counted
        assert y["documents"] == ours["documents"] and y["hf_cache_bytes"] > 0
        assert not any(n.startswith("yardstick-") for n in os.listdir(work))  # its cache and output are deleted
        _check_memory(y)
        rows.append(y)

    train = bench_data.measure_train_rss([ours["prepared_dir"]], tok, str(work), max_steps=20, log_every=10,
                                         threads=1)
    assert train["first_step"] == 10 and train["steps_done"] == 20 and train["train_shards"] > 5
    assert 50 < train["rss_first_mb"] < 4000 and 0.5 < train["rss_ratio"] < 2
    assert [s for s, _ in train["rss_series"]] == [10, 20]
    _check_memory(train)
    rows.append(train)

    machine = bench_data.machine_info("test-box")
    stem = str(tmp_path / "out" / "data_prep")
    merged = bench_data.merge_rows(stem, [{**machine, **r} for r in rows])
    assert len(merged) == len(rows)
    with open(stem + ".json") as f:
        assert json.load(f) == merged
    with open(stem + ".csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    for line in table:
        assert line["machine"] == "test-box" and int(line["cpu_count"]) == os.cpu_count() and line["cpu_model"]
        assert line["tokenizers"] and line["python"]
    assert json.loads(table[-1]["rss_series"]) == train["rss_series"]  # lists go into the CSV as JSON
    # The README reads the file this benchmark wrote.
    from smollm2.report import data_results_block
    block, _ = data_results_block(str(tmp_path / "none"), str(tmp_path / "out"), str(tmp_path))
    flat = "flat" if train["flat"] else "NOT flat"
    assert (f"on cpu, {train['train_shards']} shards of {train['shard_tokens']:,} ids): RSS {train['rss_first_mb']} MB "
            f"at step 10 and {train['rss_last_mb']} MB at step 20 (ratio {train['rss_ratio']}: {flat} within 5%)"
            in block)

    # A rerun replaces its own rows; another machine's rows stay.
    other = {**machine, **ours, "machine": "other-box"}
    merged = bench_data.merge_rows(stem, [{**machine, **ours, "tokens_per_s": 1}, other])
    assert len(merged) == len(rows) + 1
    mine = [r for r in merged if r["machine"] == "test-box" and r["measurement"] == "throughput"]
    assert len(mine) == 1 and mine[0]["tokens_per_s"] == 1


def test_arguments():
    args = bench_data.parse_args(["--what", "throughput,rss", "--workers", "2,1,2", "--work_dir", "/tmp/x"])
    assert args.what == ["throughput", "rss"] and args.workers == [1, 2]
    assert args.encoders == ["tiktoken", "tokenizers"]
    for bad in (["--what", "nope"], ["--workers", "a"], ["--encoders", "sentencepiece"], ["--work_dir", bench_data.REPO + "/corpora"]):
        with pytest.raises(SystemExit):
            bench_data.parse_args(bad)
