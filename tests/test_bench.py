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


def test_loss_curves_writes_the_comparison_and_the_float32_yardstick(tmp_path):
    # On CPU with a stand-in for the fast path (ours_fast needs a GPU): the same plain path twice must give
    # the same curve, and the float32 run (two micro-batches of half the rows) must differ from bf16 but
    # only by rounding.
    import json
    import numpy as np
    from smollm2_data import TokenBatches, TokenDataset
    ids = np.random.default_rng(0).integers(0, 49152, 5000).astype(np.int64)
    data = TokenBatches(TokenDataset.from_array(ids), 16, 7, "random")
    summary = bench.loss_curves(data, 16, 2, 3, torch.device("cpu"), 1337, str(tmp_path), fast_impl="ours_eager")
    assert summary["max_abs_diff"] == 0.0 and summary["final_fast"] == summary["final_eager"]
    assert 0.0 < summary["max_bf16_noise"] < 0.1 and abs(summary["final_fp32"] - summary["final_eager"]) < 0.1
    json.dumps(summary)
    lines = (tmp_path / "loss_equivalence.csv").read_text().splitlines()
    assert lines[0] == "step,ours_eager,ours_fast,abs_diff,ours_eager_fp32,bf16_noise" and len(lines) == 4
    assert (tmp_path / "loss_equivalence.png").stat().st_size > 1000
