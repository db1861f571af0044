"""benchmarks/quality.py's arithmetic (recipe names, time to a held-out loss) and update_readme.py's QUALITY block
rendered from the files quality.py writes."""

import csv
import json
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import quality  # noqa: E402
from smollm2 import report  # noqa: E402
from smollm2.common import UsageError  # noqa: E402


def test_recipe_names():
    assert quality.parse_recipe("adamw_cos_3e-4", None) == dict(
        name="adamw_cos_3e-4", impl="ours", optimizer="adamw", schedule="cosine", max_lr=3e-4, adamw_lr=None,
        min_lr=pytest.approx(3e-5), steps=None, warmup_fraction=None, decay_fraction=0.2)
    m = quality.parse_recipe("muon_wsd_3e-3", None)
    assert (m["optimizer"], m["schedule"], m["max_lr"], m["adamw_lr"], m["min_lr"]) == ("muon", "wsd", 3e-3, 3e-3, 0.0)
    assert quality.parse_recipe("muon_wsd_3e-3_a1e-2", None)["adamw_lr"] == 1e-2
    short = quality.parse_recipe("muon_wsd_5e-3_n200", None)  # its own horizon; the AdamW part keeps Muon's peak
    assert (short["steps"], short["adamw_lr"]) == (200, 5e-3)
    assert quality.parse_recipe("muon_wsd_5e-3_a1e-3_n180", None)["steps"] == 180
    r = quality.parse_recipe("muon_wsd_5e-3_n180_w0.05_d0.4", None)
    assert (r["steps"], r["warmup_fraction"], r["decay_fraction"]) == (180, 0.05, 0.4)
    for bad in ("sgd_cos_1e-3", "adamw_lin_1e-3", "muon_wsd_fast", "muon_wsd_5e-3_x2", "muon_wsd_5e-3_n",
                "muon_wsd_5e-3_d0", "muon_wsd_5e-3_d1.5", "muon_wsd_5e-3_w1"):
        with pytest.raises(UsageError, match="is not <adamw"):
            quality.parse_recipe(bad, None)
    hf = quality.parse_recipe("hf_best_adamw", "adamw_cos_1e-3")
    assert (hf["impl"], hf["optimizer"], hf["max_lr"], hf["like"]) == ("hf", "adamw", 1e-3, "adamw_cos_1e-3")
    with pytest.raises(UsageError, match="needs AdamW recipes before it"):
        quality.parse_recipe("hf_best_adamw", None)


POINTS = [dict(step=0, tokens=0, train_s=0.0, val_loss=11.0), dict(step=10, tokens=100, train_s=2.0, val_loss=6.0),
          dict(step=20, tokens=200, train_s=4.0, val_loss=4.0), dict(step=30, tokens=300, train_s=6.0, val_loss=4.5)]


def test_time_to_reach_interpolates_between_evaluations():
    import time_to_loss
    assert time_to_loss.time_to_reach(POINTS, 5.0) == (pytest.approx(3.0), pytest.approx(150))
    assert time_to_loss.time_to_reach(POINTS, 4.0) == (4.0, 200)
    assert time_to_loss.time_to_reach(POINTS, 3.9) is None  # never reached (the curve's minimum is 4.0)


def run(name, optimizer, final, train_s, points, impl="ours"):
    return dict(recipe=name, optimizer=optimizer, impl=impl, final_val_loss=final, train_s=train_s, points=points)


def test_ttl_rows_and_the_rendered_block(tmp_path):
    slow = [dict(p, train_s=p["train_s"] * 3, val_loss=p["val_loss"] + 0.5) for p in POINTS[:3]]
    runs = [run(quality.ADAMW_RECIPE, "adamw", 4.5, 12.0, slow), run("adamw_cos_1e-3", "adamw", 4.0, 4.0, POINTS[:3]),
            run("muon_wsd_3e-3", "muon", 4.0, 6.0, POINTS)]
    rows = quality.ttl_rows("realdocs_2048", runs, "NVIDIA H200")
    today = {r["recipe"]: r for r in rows if r["target"].startswith("today")}
    assert today[quality.ADAMW_RECIPE]["share_of_reference_time"] == 1.0
    # 4.5 lies 3/4 of the way from 6.0 (at 2 s) to 4.0 (at 4 s): 3.5 s of the reference's 12
    assert today["adamw_cos_1e-3"]["train_s"] == 3.5 and today["adamw_cos_1e-3"]["share_of_reference_time"] == 0.292
    best = [r for r in rows if r["target"].startswith("best AdamW (adamw_cos_1e-3)")]
    assert [r["reached"] for r in best] == [False, True, True]

    stem = tmp_path / "quality_realdocs_2048"
    quality.write_csv(f"{stem}_ttl.csv", rows)
    for r in runs:
        r.update(section="realdocs_2048", card="NVIDIA H200", schedule="cosine", max_lr=1e-3, adamw_lr=None,
                 ms_per_step=88.0, first_step_s=30.0, steps=400, tokens=13107200, seq_len=2048, micro_batch=16)
        quality.append_rows(f"{stem}_runs.csv", quality.RUN_COLUMNS, [r])
    body, note = report.quality_block(str(tmp_path), str(tmp_path))
    assert note == "1 sections" and "#### realdocs (the first sweep), seq 2048 x micro-batch 16, 400 steps (13.1M tokens), NVIDIA H200" in body
    assert "| muon_wsd_3e-3 | muon | cosine |" in body and "not reached" in body
    assert "`quality_realdocs_2048_ttl.csv`" in body
    # every run's half-time share in one table on top: the Muon rows against the run's best AdamW
    assert body.startswith("#### Every run's half-time comparison")
    share = [r for r in best if r["recipe"] == "muon_wsd_3e-3"][0]["share_of_reference_time"]
    assert f"| `realdocs_2048` | 2048 x 16 | adamw_cos_1e-3 | 4.000 | muon_wsd_3e-3 | {share:.3f} | NVIDIA H200 |" in body
    assert report.quality_block(str(tmp_path / "none"), str(tmp_path))[1] == "no quality csv"
    # the runbook's seeds part writes one section per seed; each is found and rendered under its seed
    import shutil
    shutil.copy(f"{stem}_runs.csv", tmp_path / "quality_realdocs_2048_seed2_runs.csv")
    body, note = report.quality_block(str(tmp_path), str(tmp_path))
    assert note == "2 sections" and "the half-time comparison under seed 2, 400 steps" in body
    assert body.count("| `realdocs_2048` | 2048 x 16 | adamw_cos_1e-3 |") == 1  # the seed run has runs but no _ttl.csv


def test_eval_speed_table_and_block(tmp_path):
    """benchmarks/eval_speed_table.py turns the runbook's timings and evaluate.py's JSONs into one table (a
    command that left no JSON gets no row); update_readme renders it."""
    import eval_speed_table as table
    common = {"device": "NVIDIA H200", "torch": "2.11.0+cu130"}
    (tmp_path / "speed_ours_hs.json").write_text(json.dumps(
        {"task": "hellaswag", "items": 10000, "acc": 0.2519, "acc_norm": 0.2469, "seconds": 9.87, "compile_s": None, **common}))
    (tmp_path / "speed_harness_hs.json").write_text(json.dumps(
        {"task": "lm_eval", "harness": "lm_eval 0.4.13", "results": {"t": {"sample_len": 10000, "acc,none": 0.2506,
                                                                         "acc_norm,none": 0.2467}}, **common}))
    (tmp_path / "speed_ours_bpb.json").write_text(json.dumps(
        {"task": "bpb", "tokens": 9258464, "bpb": 5.3977, "seconds": 6.2, "compile_s": 21.5, **common}))
    (tmp_path / "speed.jsonl").write_text("".join(json.dumps({"what": w, "process_s": s}) + "\n" for w, s in
                                                  [("ours_hs", 15.0), ("harness_hs", 74.8), ("ours_bpb", 40.0), ("failed", 1.0)]))
    bench = tmp_path / "bench"
    assert table.main([str(tmp_path), "--out", str(bench / "eval_speed")]) == 0
    rows = list(csv.DictReader(open(bench / "eval_speed.csv", encoding="utf-8")))
    assert [r["what"] for r in rows] == ["ours_hs", "harness_hs", "ours_bpb"]
    assert rows[1]["scorer"] == "lm_eval 0.4.13" and rows[1]["scoring_s"] == "" and rows[1]["acc"] == "0.2506"
    assert rows[2]["work"] == "9,258,464 ids" and rows[2]["compile_s"] == "21.5"
    body, note = report.eval_speed_block(str(bench), str(tmp_path))
    assert note == "3 rows in 1 tables" and "| ours_bpb | evaluate.py | 9,258,464 ids | 6.2 | 21.5 | 40.0 |" in body


def test_time_to_loss_recipes_write_their_warmup_into_the_command():
    """benchmarks/time_to_loss.py: {w5} / {w10} are 5% / 10% of the recipe's own steps (half of --max_steps for a
    _half name); the default recipe names no warmup, so it runs train.py's own default."""
    import argparse
    import time_to_loss
    args = argparse.Namespace(input_file="c", max_steps=400, seq_len=64, batch_size=2, val_every=25, val_batches=4,
                              seed=1, extra=[])
    flags = lambda name: time_to_loss.recipe_command(name, args, "out")[2:]  # noqa: E731 (after python, train.py)
    assert flags("warmup_5pct")[-2:] == ["--warmup_steps", "20"]
    assert flags("warmup_10pct")[-2:] == ["--warmup_steps", "40"]
    assert flags("warmup_10pct_half")[-2:] == ["--warmup_steps", "20"]
    assert "--warmup_steps" not in flags("default") and flags("default_half")[flags("default_half").index("--max_steps") + 1] == "200"
    assert flags("adamw_wsd_1e-3_w5")[-4:] == ["--max_lr", "1e-3", "--warmup_steps", "20"]
    assert flags("seq_warmup_25pct")[-2:] == ["--seq_warmup_steps", "100"]


def test_time_to_loss_reads_a_runs_points_compile_seconds_and_memory_in_one_pass(tmp_path):
    import json
    import time_to_loss
    path = tmp_path / "metrics.jsonl"
    events = [{"event": "val", "step": 25, "tokens": 800, "loss": 5.0, "steps_s": 2.0},
              {"event": "val", "step": 30, "tokens": 960, "loss": None, "steps_s": 2.4},  # no loss: not a point
              {"event": "wall", "step": 3, "compile_s": 12.34},
              {"event": "val", "step": 50, "tokens": 1600, "loss": 4.5, "steps_s": 4.1},
              {"event": "wall", "step": 50, "compile_s": 31.26},  # a resumed run: the last process's
              {"event": "done", "step": 50, "peak_mem_bytes": None}]  # on the CPU
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    run = time_to_loss.read_run(str(path))
    assert run["points"] == [dict(step=25, tokens=800, train_s=2.0, val_loss=5.0),
                             dict(step=50, tokens=1600, train_s=4.1, val_loss=4.5)]
    assert run["compile_s"] == 31.3 and run["peak_mem_gb"] is None
    path.write_text(json.dumps(events[0]) + "\n")  # stopped before its end: no compile_s
    assert time_to_loss.read_run(str(path)) == dict(points=[dict(step=25, tokens=800, train_s=2.0, val_loss=5.0)],
                                                    compile_s=None, peak_mem_gb=None)


def test_step_time_writes_its_table_after_every_row_so_a_stopped_run_keeps_what_it_measured(tmp_path, monkeypatch):
    """quality.py's step_time section on the CPU (tiny preset): the CSV is rewritten as each row ends, with
    each Muon row's ratio to the AdamW row before it; a run stopped in its third row leaves the first two."""
    import torch
    from conftest import CORPUS, TOKENIZER_JSON
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", torch._dynamo.config.recompile_limit)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32)
    built, build = [], quality.build_model

    def build_until_stopped(*a, **k):
        built.append(1)
        if len(built) == 3:
            raise KeyboardInterrupt  # the device call's time ran out in the third row
        return build(*a, **k)

    monkeypatch.setattr(quality, "build_model", build_until_stopped)
    with pytest.raises(KeyboardInterrupt):
        quality.main(["--section", "step_time_cpu", "--model", "tiny", "--seq_len", "32", "--micro_batch", "2",
                      "--timed", "2", "--device", "cpu", "--input_file", str(CORPUS), "--tokenizer_id",
                      str(TOKENIZER_JSON), "--out_dir", str(tmp_path), "--cache_dir", str(tmp_path / "cache")])
    rows = list(csv.DictReader(open(tmp_path / "quality_step_time_cpu.csv", encoding="utf-8")))
    assert [(r["optimizer"], r["impl"]) for r in rows] == [(o, i) for o, i in quality.STEP_ROWS[:2]]
    assert rows[0]["vs_adamw"] == "" and rows[0]["card"] == "cpu"
    assert float(rows[1]["vs_adamw"]) == pytest.approx(float(rows[1]["ms_per_step"]) / float(rows[0]["ms_per_step"]), abs=2e-3)


def sweep_argv(tmp_path, *extra) -> list[str]:
    """quality.py's flags for a 20-step sweep of the tiny preset on input.txt, on the CPU."""
    from conftest import CORPUS, TOKENIZER_JSON
    return ["--section", "cpu", "--model", "tiny", "--seq_len", "32", "--micro_batch", "16", "--steps", "20",
            "--eval_every", "5", "--val_windows", "32", "--device", "cpu", "--input_file", str(CORPUS),
            "--tokenizer_id", str(TOKENIZER_JSON), "--out_dir", str(tmp_path / "out"),
            "--work_dir", str(tmp_path / "runs"), *extra]


def sweep_args(tmp_path, *extra):
    return quality.parse_args(sweep_argv(tmp_path, *extra))


def test_a_recipe_is_a_train_py_command_that_pins_what_the_sweeps_ran(tmp_path):
    """Each name's train.py flags: its optimizer, schedule, lrs, horizon, warmup and decay, and what train.py's
    defaults no longer are (Keller Jordan's Muon, a constant momentum, the whole model compiled)."""
    args = sweep_args(tmp_path)

    def flags(name, best=None):
        cmd = quality.recipe_command(quality.parse_recipe(name, best), args, "o")
        assert cmd[1] == "train.py"
        return dict(zip(cmd[2::2], cmd[3::2]))

    a = flags("adamw_cos_1e-3")
    assert (a["--optimizer"], a["--lr_schedule"], a["--max_lr"], a["--min_lr"], a["--warmup_steps"]) == \
        ("adamw", "cosine", "0.001", "0.0001", "2")
    assert (a["--max_steps"], a["--val_every"], a["--val_batches"], a["--weight_decay"], a["--grad_clip"]) == \
        ("20", "5", "2", "0.1", "1.0")
    assert "--adamw_lr" not in a and "--lr_decay_fraction" not in a and a["--compile_scope"] == "model"
    m = flags("muon_wsd_5e-3_a1e-2_n10_w0.2_d0.4")
    assert (m["--max_steps"], m["--warmup_steps"], m["--lr_decay_fraction"], m["--adamw_lr"], m["--min_lr"]) == \
        ("10", "2", "0.4", "0.01", "0")
    assert (m["--muon_variant"], m["--muon_momentum_warmup_steps"]) == ("muon", "0")
    hf = flags("hf_best_adamw", "adamw_cos_1e-3")
    assert (hf["--model_impl"], hf["--cuda_graph"], hf["--fused_loss"], hf["--max_lr"]) == ("hf", "0", "0", "0.001")
    for bad, says in (("adamw_cos_1e-3_n12", "trains 12 steps, which --eval_every 5 does not divide"),
                      ("hf_best_adamw", "needs AdamW recipes before it")):
        with pytest.raises(UsageError, match=says):
            quality.check_recipes(sweep_args(tmp_path, "--recipes", f"muon_wsd_5e-3,{bad}"))


def test_a_sweep_runs_train_py_per_recipe_and_writes_its_tables(tmp_path):
    """Two recipes and transformers' model on the CPU (tiny preset): each a train.py process whose command is in
    the runs table, its curve and the time-to-loss rows written; hf_best_adamw runs the best AdamW's schedule
    from the same init, so its held-out losses equal ours to float32 rounding."""
    assert quality.main(sweep_argv(tmp_path, "--recipes", "adamw_cos_1e-3,muon_wsd_5e-3,hf_best_adamw")) == 0
    runs = list(csv.DictReader(open(tmp_path / "out" / "quality_cpu_runs.csv", encoding="utf-8")))
    assert [r["recipe"] for r in runs] == ["adamw_cos_1e-3", "muon_wsd_5e-3", "hf_best_adamw"]
    assert all(r["command"].startswith("python train.py ") and r["steps"] == "20" and r["tokens"] == str(20 * 16 * 32)
               for r in runs)
    assert "--model_impl hf" in runs[2]["command"] and "--muon_variant muon" in runs[1]["command"]
    assert float(runs[1]["final_val_loss"]) < float(runs[0]["final_val_loss"])  # Muon learns faster
    assert float(runs[2]["final_val_loss"]) == pytest.approx(float(runs[0]["final_val_loss"]), abs=2e-3)
    curves = list(csv.DictReader(open(tmp_path / "out" / "quality_cpu_curves.csv", encoding="utf-8")))
    assert [int(c["step"]) for c in curves if c["recipe"] == "muon_wsd_5e-3"] == [5, 10, 15, 20]
    ttl = list(csv.DictReader(open(tmp_path / "out" / "quality_cpu_ttl.csv", encoding="utf-8")))
    best = {r["recipe"]: r for r in ttl if r["target"].startswith("best AdamW")}
    assert best["adamw_cos_1e-3"]["share_of_reference_time"] == "1.0" and best["muon_wsd_5e-3"]["reached"] == "True"
    section = "\n\n".join(report.quality_section(str(tmp_path / "out" / "quality_cpu"), "cpu", str(tmp_path)))
    assert "each row its own `train.py` process on one card" in section and "| hf_best_adamw |" in section
