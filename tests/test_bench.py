"""bench.py's pieces that run without a GPU: the max-batch search and the kernel grouping."""

import pytest
import torch

import bench


@pytest.mark.parametrize("limit,guess", [(37, 30), (37, 35), (37, 37), (37, 38), (37, 39), (37, 60), (9, 8),
                                         (100, 12)])
def test_largest_fitting_finds_the_limit(limit, guess):
    tried = []

    def fits(B):
        tried.append(B)
        return B <= limit

    ok, bad, trials = bench.largest_fitting(fits, guess, known_ok=8, limit=20)
    assert ok == limit and bad == limit + 1 and trials == len(tried)
    if abs(guess - limit) <= 2:
        assert len(tried) <= 4  # a good prediction costs a few runs, not a scan


def test_largest_fitting_gives_up_after_the_limit():
    ok, bad, trials = bench.largest_fitting(lambda B: True, 8, known_ok=8, limit=5)
    assert trials == 5 and bad is None and ok > 8


@pytest.mark.parametrize("name,group", [
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16", "attention"),
    ("nvjet_sm90_tst_192x192_64x3_1x2_h_bz_coopB_NNN", "matmul"),
    ("triton_red_fused__to_copy_clamp_exp_logsumexp_neg_scatter_add_slice", "loss"),
    ("triton_poi_fused__unsafe_view_mul_silu_silu_backward_view_4", "fused elementwise (triton)"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void at::native::embedding_backward_feature_kernel", "embedding"),
])
def test_kernel_groups(name, group):
    import re
    assert next(g for g, pat in bench.KERNEL_GROUPS if re.search(pat, name, re.I)) == group


def test_peak_report_replays_the_trace_to_the_peak():
    here = bench.__file__

    def ev(action, addr, size, line):
        return {"action": action, "addr": addr, "size": size,
                "frames": [{"filename": here, "line": line, "name": "f"},
                           {"filename": "/usr/lib/torch/x.py", "line": 1, "name": "g"}]}

    trace = [ev("alloc", 1, 100, 10), ev("alloc", 2, 300, 20), ev("alloc", 3, 50, 10),  # peak: 450 here
             ev("free_requested", 2, 300, 20), ev("alloc", 4, 200, 30)]                 # 350 after
    text = bench.peak_report({"device_traces": [trace]}, 0)
    lines = text.splitlines()
    assert "peak allocated during recording: 0.000 GB (event 2 of 5)" in lines[0]
    assert lines[1].split()[:4] == ["0.0", "MB", "1", "blocks"] and "bench.py:20" in lines[1]  # the 300-byte block
    assert "bench.py:10" in lines[2] and " 2 blocks" in lines[2]
    assert "bench.py:30" not in text  # allocated after the peak


@pytest.mark.parametrize("flags,msg", [(["--impls", "nope"], "unknown impl"),
                                       (["--world_sizes", "1,x", "--profile", "throughput"], "--world_sizes takes"),
                                       (["--world_sizes", "1,2", "--profile", "attention"], "--world_sizes needs"),
                                       (["--micro_batches", "16,x"], "--micro_batches takes"),
                                       (["--micro_batches", "16", "--profile", "all"], "sweeps one profile"),
                                       (["--impls", "ours_fsdp_default", "--profile", "throughput"],
                                        "shard the model with FSDP2"),
                                       ([], "needs CUDA")])
def test_bad_flags_and_no_gpu_exit_2(tmp_path, flags, msg):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, bench.__file__, *flags, "--out_dir", str(tmp_path / "b")],
                       capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], r.stderr
    assert not (tmp_path / "b").exists()


def test_collect_multigpu_efficiency_against_the_right_one_gpu_row(tmp_path):
    import json

    def put(n, impl, tok, status="ok"):
        d = tmp_path / ".multigpu" / f"w{n}" / impl
        d.mkdir(parents=True)
        (d / "bench_throughput.json").write_text(json.dumps([dict(
            impl=impl, world_size=n, status=status, tokens_per_s=tok * n, tokens_per_s_per_gpu=tok,
            x_hf_eager="", x_hf_compile="")]))

    put(1, "ours_compile", 300.0)
    put(2, "ours_compile", 285.0)
    put(4, "ours_compile_no_overlap", 150.0)  # DDP-only variant: measured against ours_compile's one-GPU row
    put(1, "ours_compile_blocks", 280.0)
    put(4, "ours_compile_blocks", 266.0)
    put(2, "ours_compile_blocks", 0.0, status="oom")
    rows = bench.collect_multigpu(str(tmp_path), "throughput")
    got = {(r["impl"], r["world_size"]): r["scaling_efficiency"] for r in rows}
    assert got == {("ours_compile", 1): 1.0, ("ours_compile", 2): 0.95, ("ours_compile_no_overlap", 4): 0.5,
                   ("ours_compile_blocks", 1): 1.0, ("ours_compile_blocks", 2): "", ("ours_compile_blocks", 4): 0.95}
    assert [r["impl"] for r in rows][:2] == ["ours_compile", "ours_compile"] and "x_hf_eager" not in rows[0]


def test_loss_curves_writes_the_comparison_and_the_float32_yardstick(tmp_path, monkeypatch):
    # On CPU, the tiny preset, and another path standing in for the fast one (ours_fast needs a GPU): the
    # bf16-residual eager path against the plain eager path differs, but by rounding only, as the float32
    # run (two micro-batches of half the rows) differs from the bf16 one.
    monkeypatch.setattr(bench, "MODEL_PRESET", "tiny")
    import json
    import numpy as np
    from smollm2.data import TokenBatches, TokenDataset
    ids = np.random.default_rng(0).integers(0, 49152, 5000).astype(np.int64)
    data = TokenBatches(TokenDataset.from_array(ids), 16, 7, "random")
    summary = bench.loss_curves(data, 16, 2, 3, torch.device("cpu"), 1337, str(tmp_path),
                                fast_impl="ours_eager_bf16res")
    assert 0.0 < summary["max_abs_diff"] < 0.02 and summary["final_fast"] != summary["final_eager"]
    assert 0.0 < summary["max_bf16_noise"] < 0.1 and abs(summary["final_fp32"] - summary["final_eager"]) < 0.1
    json.dumps(summary)
    lines = (tmp_path / "loss_equivalence.csv").read_text().splitlines()
    assert lines[0] == "step,ours_eager,ours_fast,abs_diff,ours_eager_fp32,bf16_noise" and len(lines) == 4
    assert (tmp_path / "loss_equivalence.png").stat().st_size > 1000


def test_residual_loss_curves_bf16_stream_tracks_the_float32_stream(tmp_path, monkeypatch):
    # On CPU under bf16 autocast, eager stand-ins for the fast path on the tiny preset: the float32-residual
    # run repeated is the same curve (CPU kernels are deterministic), and the bf16-residual run differs, but
    # by rounding only.
    monkeypatch.setattr(bench, "MODEL_PRESET", "tiny")
    import json
    import numpy as np
    from smollm2.data import TokenBatches, TokenDataset
    ids = np.random.default_rng(0).integers(0, 49152, 5000).astype(np.int64)
    data = TokenBatches(TokenDataset.from_array(ids), 16, 7, "random")
    s = bench.residual_loss_curves(data, 16, 2, 3, torch.device("cpu"), 1337, str(tmp_path),
                                   fp32_impl="ours_eager", bf16_impl="ours_eager_bf16res")
    assert s["max_rerun_noise"] == 0.0
    assert 0.0 < s["max_abs_diff"] < 0.02 and abs(s["final_bf16_residual"] - s["final_fp32_residual"]) < 0.02
    json.dumps(s)
    lines = (tmp_path / "loss_residual.csv").read_text().splitlines()
    assert lines[0] == "step,residual_fp32,residual_bf16,abs_diff,residual_fp32_rerun,rerun_noise" and len(lines) == 4
    assert (tmp_path / "loss_residual.png").stat().st_size > 1000


def test_sweep_micro_batches_records_oom_and_picks_the_fastest_that_fits():
    # A stand-in measurement: tokens/s rises with the micro-batch until memory runs out at 48 for one impl.
    calls = []

    def measure(impl, B):
        calls.append((impl, B))
        if impl == "hf_compile" and B >= 48:
            raise torch.OutOfMemoryError("CUDA out of memory")
        tok = {"hf_compile": {16: 200.0, 24: 210.0, 32: 205.0}, "ours_fast": {16: 300.0, 24: 320.0, 32: 330.0,
                                                                              48: 329.0}}[impl][B]
        return dict(impl=impl, micro_batch=B, status="ok", tokens_per_s=tok)

    seen = []
    rows, best = bench.sweep_micro_batches(["hf_compile", "ours_fast"], [16, 24, 32, 48], measure, seen.append)
    assert calls == [(i, b) for i in ("hf_compile", "ours_fast") for b in (16, 24, 32, 48)]  # an OOM stops nothing
    assert seen == rows and [(r["impl"], r["micro_batch"], r["status"]) for r in rows if r["status"] != "ok"] == \
        [("hf_compile", 48, "oom")]
    assert [(r["impl"], r["micro_batch"]) for r in best] == [("hf_compile", 24), ("ours_fast", 32)]


def test_with_ratios_against_each_transformers_row():
    rows = [dict(impl="hf_compile", status="ok", tokens_per_s=200.0),
            dict(impl="ours_fast", status="ok", tokens_per_s=330.0), dict(impl="ours_eager", status="oom")]
    bench.with_ratios(rows)
    assert [r["x_hf_compile"] for r in rows] == [1.0, 1.65, ""] and rows[1]["x_hf_eager"] == ""
