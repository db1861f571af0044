"""update_readme.py on synthetic READMEs, logs and CSVs in tmp_path (CPU, a few seconds)."""

import os
import json
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "update_readme.py")
sys.path.insert(0, ROOT)

import update_readme as ur  # noqa: E402
from smollm2 import findings, report, results  # noqa: E402
from smollm2.common import run_cli  # noqa: E402
from smollm2.metrics import RunSummary, parse_log  # noqa: E402

README = """# Title

Intro text that must survive.

<!-- TRAIN_LOG_BEGIN -->
old log placeholder
<!-- TRAIN_LOG_END -->

## Ablation

<!-- ABLATION_TABLE_BEGIN -->
_Run `python update_readme.py` to auto-insert ablation_results.csv here._
<!-- ABLATION_TABLE_END -->

Trailing text.
"""

OPTIONAL_BLOCKS = """
<!-- THROUGHPUT_TABLE_BEGIN -->
<!-- THROUGHPUT_TABLE_END -->

<!-- BENCH_TABLE_BEGIN -->
<!-- BENCH_TABLE_END -->

<!-- MULTIGPU_TABLE_BEGIN -->
<!-- MULTIGPU_TABLE_END -->
"""


def step_line(step, total, loss):
    return (f"step {step:5d}/{total} | lr 3.000e-03 | loss {loss:.4f} | grad_norm 1.000 | "
            f"ms/step 45.21 | tok/s 3585.9 | mfu 1.23%")


def make_log(resume=True):
    lines = ["Device: cpu", 'Args: {"max_steps": 300, "resume": 0}', "Model params: 134,515,008",
             "Starting from scratch (random init)."]
    for st in range(50, 301, 50):
        lines.append(step_line(st, 300, 10.0 - st / 100))
        if st % 100 == 0:
            lines.append(f"step {st:5d}/300 | val loss {9.5 - st / 100:.4f} | val ppl 123.45")
            lines.append(f"CHECKPOINT: saved checkpoint_step_{st}.pt and checkpoint_latest.pt")
        if st == 200:
            lines += ["[sample @ step 200] once upon a time", "the text goes on | over lines"]
    if resume:
        lines += ["Device: cpu", 'Args: {"max_steps": 350, "resume": 1}',
                  "RESUME: starting from global_step=300"]
        lines.append(step_line(350, 350, 6.9))
        lines.append("CHECKPOINT: saved checkpoint_step_350.pt and checkpoint_latest.pt")
    return "\n".join(lines) + "\n"


ABLATION_CSV = (
    "timestamp,variant,steps,seq_len,batch_size,grad_accum,seed,device,autocast,amp_dtype,compile,"
    "attention_impl,tie_word_embeddings,params,warmup_ignored_steps,avg_tok_s_steady,peak_mem_bytes,"
    "device_name,mfu,ms_per_step,final_loss,status,error\n"
    "2024-01-01T00:00:00,baseline,500,256,1,4,1337,cuda,0,,0,manual,1,134515008,50,12345.6,"
    "2345678901,NVIDIA H100,0.1234,83.2,5.4321,ok,\n"
    "2024-01-01T00:10:00,autocast_comp,500,256,1,4,1337,cuda,1,bfloat16,1,sdpa,1,134515008,50,,,"
    "NVIDIA H100,,,,failed,\"RuntimeError: Triton not found | a very long explanation that goes on and on "
    "and on until it must be shortened\"\n"
)


def write(path, text):
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def run(cwd, *args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True)


def populate(tmp_path, readme=README):
    write(tmp_path / "README.md", readme)
    write(tmp_path / "out_smollm2_scratch" / "train.log", make_log())
    d = tmp_path / "ablation_results_500steps_profiles"
    write(d / "ablation_results.csv", ABLATION_CSV)
    (d / "tokens_per_s.png").write_bytes(b"png")
    (d / "peak_mem.png").write_bytes(b"png")


def test_cli_fills_log_and_ablation(tmp_path):
    populate(tmp_path)
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and "TRAIN_LOG" in r.stdout and "ABLATION_TABLE" in r.stdout
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert out.startswith("# Title\n\nIntro text that must survive.\n") and out.endswith("Trailing text.\n")
    for m in ("TRAIN_LOG_BEGIN", "TRAIN_LOG_END", "ABLATION_TABLE_BEGIN", "ABLATION_TABLE_END"):
        assert out.count(f"<!-- {m} -->") == 1
    assert "old log placeholder" not in out and "auto-insert" not in out
    # log block
    assert "<summary><b>Click to expand: out_smollm2_scratch/train.log</b></summary>" in out
    assert "```text\nDevice: cpu\n" in out and "[sample @ step 200] once upon a time" in out
    assert "![Loss curve: train and val loss against step](out_smollm2_scratch/loss_curve.png)" in out
    assert (tmp_path / "out_smollm2_scratch" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ablation table: units, ON/OFF, links to the PNGs beside the CSV
    assert "| variant | status | autocast | compile | attention | tie | params (M) | tokens/s |" in out
    assert "| `baseline` | ok | OFF | OFF | manual | ON | 134.5 | 12,346 | 83.2 | 12.34 | 2.35 | 5.432 |" in out
    assert "ON (bf16)" in out
    assert "![peak_mem](ablation_results_500steps_profiles/peak_mem.png)" in out
    assert "![tokens_per_s](ablation_results_500steps_profiles/tokens_per_s.png)" in out
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_idempotent(tmp_path):
    populate(tmp_path, README + OPTIONAL_BLOCKS)
    write(tmp_path / "results" / "bench" / "bench_seq.csv", "seq_len,tok_s\n256,1000\n")
    assert run(tmp_path).returncode == 0
    png = tmp_path / "out_smollm2_scratch" / "loss_curve.png"
    first, png_bytes, png_mtime = (tmp_path / "README.md").read_bytes(), png.read_bytes(), png.stat().st_mtime_ns
    readme_mtime = (tmp_path / "README.md").stat().st_mtime_ns
    r = run(tmp_path)
    assert r.returncode == 0 and "unchanged" in r.stdout
    assert (tmp_path / "README.md").read_bytes() == first
    assert png.read_bytes() == png_bytes
    assert png.stat().st_mtime_ns == png_mtime and (tmp_path / "README.md").stat().st_mtime_ns == readme_mtime


def test_missing_inputs_give_placeholders(tmp_path):
    write(tmp_path / "README.md", README + OPTIONAL_BLOCKS)
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "_No training log yet: `out_smollm2_scratch/train.log` not found." in out
    assert "_No ablation results yet: `ablation_results_500steps_profiles/ablation_results.csv` not found._" in out
    assert "_No throughput results yet:" in out
    assert "_No benchmark results yet:" in out and "_No multi-GPU results yet:" in out
    assert not (tmp_path / "out_smollm2_scratch").exists()
    assert run(tmp_path).returncode == 0
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == out


def test_missing_markers_exit_2(tmp_path):
    write(tmp_path / "README.md", "# Title\n\n<!-- TRAIN_LOG_BEGIN -->\n<!-- TRAIN_LOG_END -->\n")
    before = (tmp_path / "README.md").read_bytes()
    r = run(tmp_path)
    assert r.returncode == 2
    assert "ABLATION_TABLE_BEGIN" in r.stderr and "TRAIN_LOG" not in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert (tmp_path / "README.md").read_bytes() == before


def test_unpaired_optional_marker_exit_2(tmp_path):
    write(tmp_path / "README.md", README + "<!-- BENCH_TABLE_BEGIN -->\n")
    r = run(tmp_path)
    assert r.returncode == 2 and "BENCH_TABLE_END" in r.stderr and "Traceback" not in r.stderr


def test_absent_optional_markers_are_not_added(tmp_path):
    populate(tmp_path)
    write(tmp_path / "results" / "bench" / "bench_seq.csv", "seq_len,tok_s\n256,1000\n")
    assert run(tmp_path).returncode == 0
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "BENCH_TABLE" not in out and "bench_seq" not in out


def test_marker_mentioned_inline_is_not_a_marker():
    text = README.replace("Intro text", "Intro mentions `<!-- TRAIN_LOG_BEGIN -->` inline;")
    out = ur.fill(text, {"TRAIN_LOG": "NEW", "ABLATION_TABLE": "TABLE"})
    assert "<!-- TRAIN_LOG_BEGIN -->\nNEW\n<!-- TRAIN_LOG_END -->" in out
    assert "`<!-- TRAIN_LOG_BEGIN -->` inline" in out


def test_resume_summary_and_plot(tmp_path):
    s = parse_log(make_log())
    assert s.resumes == [300] and s.checkpoints == 4
    assert s.train[0] == (50, 9.5) and s.train[-1] == (350, 6.9) and s.val[-1] == (300, 6.5)
    line = report.summary_line(s, "out_smollm2_scratch/train.log")
    assert "steps 50 → 350" in line and "train loss 9.5000 → 6.9000" in line
    assert "last val loss 6.5000 (step 300)" in line and "4 checkpoint saves" in line
    assert "resumed at step 300" in line
    populate(tmp_path)
    assert run(tmp_path).returncode == 0
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "resumed at step 300" in out
    png = (tmp_path / "out_smollm2_scratch" / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"matplotlib" not in png


def test_no_resume_summary():
    line = report.summary_line(parse_log(make_log(resume=False)), "x.log")
    assert "no resume" in line and "steps 50 → 300" in line


def test_lineage_drops_superseded_steps():
    # The first run reached 300, crashed; the resume restarts from the checkpoint at 200.
    log = "\n".join([step_line(100, 300, 9.0), step_line(200, 300, 8.0), step_line(300, 300, 7.0),
                     "RESUME: starting from global_step=200", step_line(250, 300, 7.5),
                     step_line(300, 300, 7.2)])
    s = parse_log(log)
    assert s.train == [(100, 9.0), (200, 8.0), (250, 7.5), (300, 7.2)] and s.resumes == [200]
    # A second "Starting from scratch" starts a new lineage; an extra field is tolerated.
    log2 = log + "\nStarting from scratch (random init).\n" + step_line(50, 100, 10.5) + " | new_field 3"
    s2 = parse_log(log2)
    assert s2.train == [(50, 10.5)] and s2.resumes == []
    assert "earlier runs" in report.summary_line(s2, "x.log")


def test_log_without_step_lines_skips_plot(tmp_path):
    populate(tmp_path)
    write(tmp_path / "out_smollm2_scratch" / "train.log", "Device: cpu\nStarting from scratch (random init).\n")
    r = run(tmp_path)
    assert r.returncode == 0 and "left as they were" in r.stdout and "no step lines" in r.stdout
    assert not (tmp_path / "out_smollm2_scratch" / "loss_curve.png").exists()
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "loss_curve.png" not in out and "old log placeholder" in out


def _metrics(path, *records):
    write(path, "".join(json.dumps(r) + "\n" for r in records))


def test_a_short_run_in_the_default_folder_does_not_replace_the_readme_run(tmp_path):
    """The README's block is rendered once from the seed's run; then a 5-step tiny CPU run lands in the same
    folder (metrics.jsonl beside the committed log): the block, the plot and the headline stay as they were,
    and the output says why."""
    populate(tmp_path, README + "\n<!-- HEADLINES_BEGIN -->\n<!-- HEADLINES_END -->\n")
    assert run(tmp_path).returncode == 0
    readme = tmp_path / "README.md"
    rendered, plot = readme.read_text(encoding="utf-8"), tmp_path / "out_smollm2_scratch" / "loss_curve.png"
    assert "resumed at step" in rendered and plot.exists()
    plot_bytes = plot.read_bytes()
    run_dir = tmp_path / "out_smollm2_scratch"
    _metrics(run_dir / "metrics.jsonl", {"event": "start", "step": 0},
             {"event": "header", "device": "cpu", "args": {"model": "tiny", "seq_len": 32, "batch_size": 2,
                                                          "grad_accum": 2, "max_steps": 5}},
             *[{"event": "train", "step": st, "loss": 10.0, "lr": 1e-4} for st in range(1, 6)])
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "is not the README's run" in r.stdout and "no resume line" in r.stdout
    assert readme.read_text(encoding="utf-8") == rendered and plot.read_bytes() == plot_bytes
    # Resumed, but the tiny preset: still not the README's run.
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "resume", "step": 5}) + "\n" + json.dumps({"event": "train", "step": 6,
                                                                                 "loss": 9.0, "lr": 1e-4}) + "\n")
    r = run(tmp_path)
    assert "trained the tiny preset" in r.stdout and readme.read_text(encoding="utf-8") == rendered


def test_blocks_are_filled_on_docs_pages_with_links_from_each_page(tmp_path):
    populate(tmp_path, "# Title\n\n<!-- TRAIN_LOG_BEGIN -->\n<!-- TRAIN_LOG_END -->\n")
    page = tmp_path / "docs" / "speed.md"
    write(page, "# Speed\n\n<!-- ABLATION_TABLE_BEGIN -->\n<!-- ABLATION_TABLE_END -->\n")
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    text = page.read_text(encoding="utf-8")
    assert "Rendered from `../ablation_results_500steps_profiles/ablation_results.csv`" in text
    assert "](../ablation_results_500steps_profiles/tokens_per_s.png)" in text
    assert "](out_smollm2_scratch/loss_curve.png)" in (tmp_path / "README.md").read_text(encoding="utf-8")
    again = run(tmp_path)
    assert again.returncode == 0 and "no page changed" in again.stdout  # idempotent across pages


def test_a_block_on_two_pages_or_on_none_exits_2_and_touches_nothing(tmp_path):
    populate(tmp_path)
    page = tmp_path / "docs" / "more.md"
    write(page, "<!-- TRAIN_LOG_BEGIN -->\n<!-- TRAIN_LOG_END -->\n")
    r = run(tmp_path)
    assert r.returncode == 2 and "TRAIN_LOG_BEGIN --> is in both" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == README
    write(tmp_path / "README.md", "# nothing here\n")
    write(page, "# nor here\n")
    r = run(tmp_path)
    assert r.returncode == 2 and "TRAIN_LOG_BEGIN --> / <!-- TRAIN_LOG_END --> missing" in r.stderr


def test_backticks_in_log_get_a_longer_fence(tmp_path):
    populate(tmp_path)
    write(tmp_path / "out_smollm2_scratch" / "train.log", make_log() + "[sample @ step 300] ```code```\n")
    assert run(tmp_path).returncode == 0
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "````text\n" in out and "\n````\n" in out


def test_failed_variant_row_renders():
    import csv
    import io
    reader = csv.DictReader(io.StringIO(ABLATION_CSV))
    rows = list(reader)
    table = report.render_ablation(list(reader.fieldnames), rows)
    failed = [ln for ln in table.splitlines() if "autocast_comp" in ln][0]
    cells = [c.strip() for c in failed.strip("|").split(" | ")]
    assert cells[1].startswith("failed: RuntimeError: Triton not found \\| a very long") and cells[1].endswith("…")
    assert len(cells[1]) < 80
    assert cells[2] == "ON (bf16)" and cells[7:12] == ["—"] * 5 and cells[12] == "NVIDIA H100"
    # the pipe in the error is escaped, so the row still has one cell per header column
    assert len(cells) == len(table.splitlines()[0].strip("|").split(" | ")) == 13


def test_missing_columns_tolerated():
    table = report.render_ablation(["variant", "avg_tok_s_steady"], [{"variant": "a", "avg_tok_s_steady": "1234567.8"}])
    assert table.splitlines()[0] == "| variant | tokens/s |"
    assert table.splitlines()[2] == "| `a` | 1,234,568 |"


def test_bench_and_multigpu_tables(tmp_path):
    populate(tmp_path, README + OPTIONAL_BLOCKS)
    b = tmp_path / "results" / "bench"
    write(b / "bench_seq_len.csv", "seq_len,tokens_per_s,peak_mem_gb,mfu,ms_per_step,note\n"
                                   "256,98765.4,3.14159,0.4567,12.34,fast\n1024,,,,,oom\n")
    write(b / "bench_attention.csv", "impl,tok_s,peak_mem_bytes\nsdpa,5000,1500000000\n")
    write(b / "multigpu_ddp.csv", "gpus,tokens_per_s,x_hf_eager,mfu,scaling_efficiency\n1,100000,,0.4,1.0\n"
                                  "2,195000,,0.39,0.975\n")
    (b / "scaling.png").write_bytes(b"png")
    assert run(tmp_path).returncode == 0
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    bench = out.split("<!-- BENCH_TABLE_BEGIN -->")[1].split("<!-- BENCH_TABLE_END -->")[0]
    assert bench.index("#### bench_attention") < bench.index("#### bench_seq_len")
    assert "| seq_len | tokens/s | peak mem (GB) | MFU (%) | ms/step | note |" in bench
    assert "| 256 | 98,765 | 3.14 | 45.67 | 12.3 | fast |" in bench
    assert "| 1024 | — | — | — | — | oom |" in bench
    assert "| sdpa | 5,000 | 1.50 |" in bench
    assert "![scaling](results/bench/scaling.png)" in bench
    multi = out.split("<!-- MULTIGPU_TABLE_BEGIN -->")[1].split("<!-- MULTIGPU_TABLE_END -->")[0]
    # a column empty in every row (x_hf_eager) is left out
    assert "| gpus | tokens/s | MFU (%) | per-GPU efficiency (%) |" in multi and "| 2 | 195,000 | 39.00 | 97.5 |" in multi
    assert "####" not in multi


def test_custom_paths(tmp_path):
    write(tmp_path / "docs" / "R.md", README)
    write(tmp_path / "logs" / "run.log", make_log())
    write(tmp_path / "abl" / "a.csv", ABLATION_CSV)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss_curves.png").write_bytes(b"png")
    r = run(tmp_path, "--readme", "docs/R.md", "--train_log", "logs/run.log", "--ablation_csv", "abl/a.csv",
            "--ablation_dir", "plots", "--loss_plot", "figs/loss.png")
    assert r.returncode == 0, r.stderr
    out = (tmp_path / "docs" / "R.md").read_text(encoding="utf-8")
    assert "(../figs/loss.png)" in out and "(../plots/loss_curves.png)" in out
    assert "Click to expand: ../logs/run.log" in out and (tmp_path / "figs" / "loss.png").exists()


@pytest.mark.parametrize("value,expected", [("0.1234", "12.34"), ("", "—"), ("nan", "—"), ("x", "—")])
def test_mfu_format(value, expected):
    assert report.KNOWN["mfu"][1](value) == expected


BENCH_HEADER = "profile,impl,status,card,tokens_per_s,mfu,peak_mem_gb\n"


def test_findings_are_computed_from_the_files(tmp_path):
    readme = README + "\n<!-- FINDINGS_BEGIN -->\nold\n<!-- FINDINGS_END -->\n"
    populate(tmp_path, readme)
    log = make_log().replace("RESUME:", "DONE: steps 1..300 in 100.0s (3000.0 tok/s overall, compile/capture included)\nRESUME:")
    write(tmp_path / "out_smollm2_scratch" / "train.log",
          log + "DONE: steps 301..350 in 20.0s (2500.0 tok/s overall, compile/capture included)\n")
    write(tmp_path / "results" / "bench" / "bench_seed.csv", BENCH_HEADER +
          "seed,hf_eager,ok,NVIDIA H100,2000,0.002,3.0\n"
          "seed,hf_compile,ok,NVIDIA H100,5000,0.005,3.1\n"
          "seed,ours_fast,ok,NVIDIA H100,30000,0.03,2.5\n")
    write(tmp_path / "results" / "bench" / "bench_max_batch.csv", "impl,card,seq_len,max_micro_batch,card_memory_gb\n"
          "hf_eager,NVIDIA H100,2048,21,85.0\nours_compile,NVIDIA H100,2048,58,85.0\nhf_compile,NVIDIA H100,2048,,85.0\n")
    write(tmp_path / "results" / "bench" / "loss_equivalence.json",
          '{"steps": 200, "max_abs_diff": 0.02, "mean_abs_diff": 0.005, "final_fast": 3.5, "final_eager": 3.51}')
    write(tmp_path / "results" / "bench" / "multigpu_throughput.csv",
          "profile,impl,status,card,world_size,seq_len,micro_batch,tokens_per_s,tokens_per_s_per_gpu,scaling_efficiency\n"
          "throughput,ours_compile,ok,NVIDIA H100,2,2048,16,580000,290000,0.97\n"
          "throughput,ours_compile,ok,NVIDIA H100,1,2048,16,300000,300000,1.0\n"
          "throughput,ours_compile_bf16grads,ok,NVIDIA H100,2,2048,16,570000,285000,0.95\n")
    write(tmp_path / "results" / "bench" / "multigpu_throughput_other.csv",
          "profile,impl,status,card,world_size,seq_len,micro_batch,tokens_per_s,tokens_per_s_per_gpu,scaling_efficiency\n"
          "throughput,ours_compile,ok,NVIDIA H200,4,2048,16,900000,225000,0.69\n")
    write(tmp_path / "results" / "bench" / "time_breakdown_throughput.csv",
          "impl,card,ms_per_step,attention ms,matmul ms,other ms\nours_compile,NVIDIA H100,111.3,27.1,42.5,0.5\n")
    write(tmp_path / "ablation_results_throughput" / "ablation_results.csv",
          "variant,status,batch_size,device_name,avg_tok_s_steady\nbaseline,oom,16,NVIDIA H100,\n"
          "fast,ok,16,NVIDIA H100,290000\nhf_reference,ok,16,NVIDIA H100,100000\n")
    assert run(tmp_path).returncode == 0
    text = (tmp_path / "README.md").read_text()
    block = text.split("<!-- FINDINGS_BEGIN -->")[1].split("<!-- FINDINGS_END -->")[0]
    assert "30,000 tokens/s" in block and "15.0x" in block and "6.0x" in block  # 30000/2000, 30000/5000
    assert "1 GPU: 300,000 tokens/s" in block and "2 GPUs: 580,000 tokens/s (290,000 per GPU, 97% of one GPU)" in block
    assert "111.3 ms per step" in block and "matmul 42.5, attention 27.1" in block
    assert "`fast` at 290,000 tokens/s, 2.9x `hf_reference`" in block and "`baseline`" in block
    assert "within 0.020" in block and "first 200 steps" in block and "bf16 rounding alone" not in block
    write(tmp_path / "results" / "bench" / "loss_equivalence.json",
          '{"steps": 200, "max_abs_diff": 0.02, "mean_abs_diff": 0.005, "final_fast": 3.5, "final_eager": 3.51, '
          '"final_fp32": 3.52, "max_bf16_noise": 0.04, "mean_bf16_noise": 0.01}')
    assert run(tmp_path).returncode == 0
    block = (tmp_path / "README.md").read_text().split("<!-- FINDINGS_BEGIN -->")[1].split("<!-- FINDINGS_END -->")[0]
    assert "same seed (bf16 rounding alone, the plain path in bf16 against float32: up to 0.040, mean 0.0100)" in block
    assert "`ours_compile_bf16grads`: 2 GPUs 95% of one GPU" in block and "1 GPU: 285,000" not in block
    assert "NVIDIA H200): 4 GPUs: 900,000 tokens/s (225,000 per GPU, 69% of one GPU)" in block
    assert "Largest micro-batch at seq 2048** that trains on one NVIDIA H100 (85.0 GB): `hf_eager` 21, " \
           "`ours_compile` 58 (" in block  # a row without a size (a failed probe) is left out
    assert "steps 1 to 350 in 120 s" in block and "resumed at step 300" in block and "3,000 tokens/s" in block
    assert "old" not in block


def test_findings_placeholder_without_files(tmp_path):
    write(tmp_path / "README.md", README + "\n<!-- FINDINGS_BEGIN -->\n<!-- FINDINGS_END -->\n")
    assert run(tmp_path).returncode == 0
    assert "No result files yet" in (tmp_path / "README.md").read_text()


def test_switch_effects_from_pairs():
    """Each SWITCHES pair in the table becomes one line: tokens/s ratio, memory, loss; a failed side is named."""
    rows = [
        {"variant": "sdpa_on", "avg_tok_s_steady": "2000", "peak_mem_bytes": "3000000000", "final_loss": "4.5",
         "status": "ok", "device_name": "NVIDIA H100"},
        {"variant": "compile_sdpa", "avg_tok_s_steady": "5000", "peak_mem_bytes": "2500000000", "final_loss": "4.25",
         "status": "ok", "device_name": "NVIDIA H100"},
        {"variant": "sdpa_off", "avg_tok_s_steady": "", "peak_mem_bytes": "", "final_loss": "", "status": "oom",
         "device_name": "NVIDIA H100"},
    ]
    text = report.switch_effects(rows)
    assert text.startswith("What each switch buys alone on NVIDIA H100 ")
    compiled = [ln for ln in text.splitlines() if "`compile_sdpa` vs `sdpa_on`" in ln]
    assert compiled == ["- torch.compile (SDPA) (`compile_sdpa` vs `sdpa_on`): **2.50x** tokens/s (5,000 vs 2,000); "
                        "peak memory 2.50 vs 3.00 GB (-0.50); final loss 4.250 vs 4.500."]
    assert "- SDPA instead of manual attention (eager): not compared; `sdpa_on` 2,000 tokens/s at 3.00 GB, " \
           "`sdpa_off` oom." in text
    assert len(text.splitlines()) == 2 + 2  # heading, blank, the two pairs whose both variants are present
    assert report.switch_effects([rows[0]]) == ""  # no pair present: nothing written


def test_data_results_block_from_the_run_files(tmp_path):
    import json
    res = tmp_path / "results"
    res.mkdir()
    (res / "manifest_summary.json").write_text(json.dumps({
        "dtype": "uint16", "eos_id": 0, "sources": {"a.jsonl.gz": {"files": 1, "bytes": 2_000_000}},
        "totals": {"tokens": 12345, "documents": 7, "val_documents": 2, "val_tokens": 345}}))
    (res / "prepare.log").write_text("prepared 12,345 tokens from 7 documents in 0.1s (0.12M tokens/s, 2 workers) -> x\n")
    (res / "train.log").write_text(
        "Device: cuda (NVIDIA H100 80GB HBM3) | CUDA available: True\nStarting from scratch (random init).\n"
        "step    10/20 | lr 1.0e-04 | loss 9.0000 | ms/step 10.0 | tok/s 1000.0\n"
        "step    20/20 | lr 1.0e-04 | loss 8.0000 | ms/step 10.0 | tok/s 3000.0\n"
        "step    20/20 | val loss 8.5000 | val ppl 4914.77\n")
    block, note = report.data_results_block(str(res), str(tmp_path / "none"), str(tmp_path))
    assert "12,345 tokens in 7 documents" in block and "2 whole documents, 345 tokens" in block
    assert "NVIDIA H100 80GB HBM3: median 3,000 tokens/s" in block and "last val loss 8.5000" in block
    assert "prepared 12,345 tokens" in block and (res / "loss_curve.png").exists() and note == "real-corpus run"
    empty, note = report.data_results_block(str(tmp_path / "nothing"), str(tmp_path / "none"), str(tmp_path))
    assert "No data results yet" in empty


def test_previous_readme_log_is_drawn_beside_the_current_one(tmp_path):
    populate(tmp_path)
    write(tmp_path / "out_smollm2_scratch" / "train_previous.log", make_log())
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "![The seed's commands before and now](out_smollm2_scratch/loss_curve_vs_previous.png)" in out
    assert (tmp_path / "out_smollm2_scratch" / "loss_curve_vs_previous.png").read_bytes()[:4] == b"\x89PNG"


def test_microbatch_sweep_table(tmp_path):
    # The sweep CSV as bench.py writes it: ok rows with numbers, an oom row with only its keys.
    populate(tmp_path, README + OPTIONAL_BLOCKS + "\n<!-- MICROBATCH_TABLE_BEGIN -->\nstale placeholder\n<!-- MICROBATCH_TABLE_END -->\n")
    b = tmp_path / "results" / "bench"
    write(b / "microbatch_sweep.csv",
          "profile,impl,status,card,seq_len,micro_batch,tokens_per_s,mfu,peak_mem_gb\n"
          "throughput,hf_compile,ok,NVIDIA H200,2048,16,230564.2,0.287,32.35\n"
          "throughput,hf_compile,ok,NVIDIA H200,2048,24,241000.0,0.3001,47.1\n"
          "throughput,hf_compile,oom,NVIDIA H200,2048,48,,,\n"
          "throughput,ours_fast,ok,NVIDIA H200,2048,16,341767.0,0.4256,25.1\n"
          "throughput,ours_fast,ok,NVIDIA H200,2048,48,350000.0,0.4358,70.44\n")
    assert run(tmp_path).returncode == 0
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    block = out.split("<!-- MICROBATCH_TABLE_BEGIN -->")[1].split("<!-- MICROBATCH_TABLE_END -->")[0]
    assert "stale placeholder" not in block and "seq 2048 on NVIDIA H200" in block
    assert "`hf_compile` 24, `ours_fast` 48" in block
    assert "| micro-batch | `hf_compile` | `ours_fast` |" in block
    assert "| 16 | 230,564 tok/s, 28.7% MFU, 32.4 GB | 341,767 tok/s, 42.6% MFU, 25.1 GB |" in block
    assert "| 24 | **241,000 tok/s, 30.0% MFU, 47.1 GB** | — |" in block
    assert "| 48 | out of memory | **350,000 tok/s, 43.6% MFU, 70.4 GB** |" in block
    assert "microbatch_sweep" not in out.split("<!-- BENCH_TABLE_BEGIN -->")[1].split("<!-- BENCH_TABLE_END -->")[0]
def test_seed_e2e_table(tmp_path):
    """device_seed_e2e.sh's seed_e2e.csv: a row per case, described (the compile-scope cases by their scope and
    kind, an unknown case by its name), with its wall time; without the file the block says so."""
    readme = README + "\n<!-- SEED_E2E_BEGIN -->\nstale\n<!-- SEED_E2E_END -->\n"
    populate(tmp_path, readme)
    assert run(tmp_path).returncode == 0
    assert ("_No end-to-end timings yet: no `results/bench/seed_e2e/seed_e2e.csv`._"
            in (tmp_path / "README.md").read_text())
    write(tmp_path / "results" / "bench" / "seed_e2e" / "seed_e2e.csv",
          "case,command,wall_s,exit_status,card,torch\n"
          "scope_blocks_resume,train.py --max_steps 350 --resume 1,23.1,0,NVIDIA H200,2.11.0+cu130\n"
          "warm_A,train.py --max_steps 5000 --resume 0,70.64,0,NVIDIA H200,2.11.0+cu130\n"
          "my_case,train.py,1.0,1,NVIDIA H200,2.11.0+cu130\n")
    assert run(tmp_path).returncode == 0
    block = (tmp_path / "README.md").read_text().split("<!-- SEED_E2E_BEGIN -->")[1].split("<!-- SEED_E2E_END -->")[0]
    assert "stale" not in block and "on NVIDIA H200 (torch 2.11.0+cu130)" in block
    assert "| `scope_blocks_resume` | `--compile_scope blocks`: resume to 350 (Python bytecode not kept) | 23.1 | 0 |" in block
    assert "| `warm_A` | step A on a machine that has run it (the README's log) | 70.6 | 0 |" in block
    assert "| `my_case` | my_case | 1.0 | 1 |" in block


def test_wall_lines_become_a_table_per_run_of_the_last_lineage(tmp_path):
    """train.py's WALL line (JSON after DONE) is rendered as one column per run; an earlier lineage's is not."""
    wall = ('WALL: {"startup_s": 9.0, "loop_s": 80.0, "compile_s": 20.0, "steps_s": 45.0, "save_stall_s": 1.5, '
            '"val_s": 6.0, "sample_s": 7.0, "other_s": 0.5, "steps": 5000, "saves": 20, "save_stall_max_s": 0.12, '
            '"save_write_s": 30.0, "async_save": true, "vals": 20, "samples": 11}\n')
    old = make_log(resume=False).replace("Device: cpu", "Device: old") + 'WALL: {"startup_s": 700.0, "loop_s": 77.0}\n'
    log = make_log().replace("RESUME:", "DONE: steps 1..300 in 80.0s (3000.0 tok/s overall, compile/capture included)\n"
                             + wall + "RESUME:")
    log += "DONE: steps 301..350 in 5.0s (2500.0 tok/s overall)\n" + wall.replace('"loop_s": 80.0', '"loop_s": 5.0')
    populate(tmp_path)
    write(tmp_path / "out_smollm2_scratch" / "train.log", old + log)
    assert run(tmp_path).returncode == 0
    out = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "| part | run 1 (from scratch) | run 2 (resume) |" in out
    assert "| steady steps | 45.0 (4,999 steps) | 45.0 (4,999 steps) |" in out
    assert "| saves: loop stalled | 1.5 (20 saves, longest 0.12) |" in out
    assert "| **wall time of the command** | **89.0** | **14.0** |" in out
    assert "777.0" not in out.split("<details>")[0]
    assert parse_log("step 1/2 | loss 1.0\nDONE: steps 1..2 in 1.0s (1.0 tok/s overall)\n").walls == []


def test_a_bad_metrics_jsonl_beside_the_log_exits_2(tmp_path):
    """The records beside train.log are what the block is drawn from (tests/test_train.py feeds a real run's);
    a file that is not records is refused, the README left as it was."""
    populate(tmp_path)
    before = (tmp_path / "README.md").read_bytes()
    write(tmp_path / "out_smollm2_scratch" / "metrics.jsonl", '{"event": "start", "step": 0}\nnot json\n')
    r = run(tmp_path)
    assert r.returncode == 2 and "metrics.jsonl line 2 is not JSON" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "README.md").read_bytes() == before


@pytest.mark.parametrize("table, body", [
    ("results/bench/bench_seed.csv", "impl,tokens_per_s,mfu,peak_mem_gb\nours_fast_blocks,1000,0.1,1.0\n"
                                  "hf_eager,100,0.01,1.0\nhf_compile,200,0.02,1.0\n"),
])
def test_a_table_without_a_column_is_one_line_and_the_pages_stay(tmp_path, table, body):
    """A bench CSV without its `card` column: exit 2 naming the file and the column, no traceback, README
    untouched."""
    populate(tmp_path, README + "\n<!-- FINDINGS_BEGIN -->\n<!-- FINDINGS_END -->\n"
                                "<!-- HEADLINES_BEGIN -->\n<!-- HEADLINES_END -->\n")
    before = (tmp_path / "README.md").read_text(encoding="utf-8")
    write(tmp_path / table, body)
    r = run(tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert table in r.stderr and "has no column" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == before


def ttl_runs(path, rows):
    write(path, "corpus,recipe,optimizer,steps,tokens,final_val_loss,card,reference,share,ends_at_or_below\n"
          + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_quality_headline_holds_on_every_corpus(tmp_path, monkeypatch):
    """The README's quality line: the largest share of the best AdamW's time the default needs over every corpus
    table of TIME_TO_LOSS_RUNS, each corpus's share, the smallest margin, and where the halved run ends; nothing
    is claimed while a corpus's table is missing or its default never reached AdamW's loss."""
    d = tmp_path / "results" / "time_to_loss"
    # realdocs' halved run in a table of its own, pystdlib's beside its full run
    (real, real_half), (code, code_half) = ("realdocs_a", "realdocs_b"), ("pystdlib_a", "pystdlib_a")
    monkeypatch.setattr(findings, "TIME_TO_LOSS_RUNS", ((real, real_half, ""), (code, code_half, "")))
    card = "NVIDIA H100 80GB HBM3"
    ttl_runs(d / f"{real}_runs.csv", [("realdocs", "adamw_wsd_1e-3", "adamw", 400, 13107200, 4.57, card, "adamw_wsd_1e-3", 1.0, True),
                                      ("realdocs", "default", "default", 400, 13107200, 3.58, card, "adamw_wsd_1e-3", 0.544, True)])
    ttl_runs(d / f"{real_half}_runs.csv",  # its own process: the halved run is judged against this AdamW (4.56)
             [("realdocs", "adamw_wsd_1e-3", "adamw", 400, 13107200, 4.56, card, "adamw_wsd_1e-3", 1.0, True),
              ("realdocs", "default_half", "default", 200, 6553600, 4.506, card, "adamw_wsd_1e-3", 0.502, True)])
    assert findings.quality_headline(str(d), str(tmp_path)) == []  # one corpus of two: nothing claimed
    ttl_runs(d / f"{code}_runs.csv", [("pystdlib", "adamw_wsd_2e-3", "adamw", 400, 13107200, 3.034, card, "adamw_wsd_2e-3", 1.0, True),
                                      ("pystdlib", "default", "default", 400, 13107200, 2.156, card, "adamw_wsd_2e-3", "", False)])
    assert findings.quality_headline(str(d), str(tmp_path)) == []  # a default that never reached AdamW's loss
    ttl_runs(d / f"{code}_runs.csv", [("pystdlib", "adamw_wsd_2e-3", "adamw", 400, 13107200, 3.034, card, "adamw_wsd_2e-3", 1.0, True),
                                      ("pystdlib", "default", "default", 400, 13107200, 2.156, card, "adamw_wsd_2e-3", 0.570, True),
                                      ("pystdlib", "default_half", "default", 200, 6553600, 3.040, card, "adamw_wsd_2e-3", "", False)])
    (line,) = findings.quality_headline(str(d), str(tmp_path))
    assert "at most **0.57x** its wall-clock on each of 2 corpora (realdocs 0.54x, pystdlib 0.57x; 400 steps" in line
    assert f"process, {card}), ending at least 0.88 nats under it; trained for 200 steps they end above it on " \
           "pystdlib (3.040 against 3.034), at or below it on realdocs (4.506 against 4.560) ([`docs/quality.md`]" in line
    ttl_runs(d / f"{code}_runs.csv", [("pystdlib", "adamw_wsd_2e-3", "adamw", 400, 13107200, 3.034, card, "adamw_wsd_2e-3", 1.0, True),
                                      ("pystdlib", "default", "default", 400, 13107200, 2.156, card, "adamw_wsd_2e-3", 0.570, True),
                                      ("pystdlib", "default_half", "default", 200, 6553600, 3.01, card, "adamw_wsd_2e-3", 0.49, True)])
    (line,) = findings.quality_headline(str(d), str(tmp_path))
    assert "they end at or below that loss too: realdocs (4.506 against 4.560) and pystdlib (3.010 against 3.034) (" in line
    # a table whose default ran an earlier default says so beside its share
    monkeypatch.setattr(findings, "TIME_TO_LOSS_RUNS", ((real, real_half, ""), (code, code_half, "the 5% lr warmup")))
    (line,) = findings.quality_headline(str(d), str(tmp_path))
    assert "(realdocs 0.54x, pystdlib 0.57x (with the 5% lr warmup of the default before); 400 steps" in line


def test_eval_headline_needs_both_rows(tmp_path):
    d = tmp_path / "results" / "eval"
    write(d / "seed_bpb_tinyshakespeare_val.json", json.dumps({"bpb": 2.8636}))
    assert findings.eval_headline(str(d), str(tmp_path)) == []  # the released weights' row is missing: nothing claimed
    write(d / "released_bpb_tinyshakespeare_val.json", json.dumps({"bpb": 1.7611}))
    (line,) = findings.eval_headline(str(d), str(tmp_path))
    assert "**2.86 bits per byte**" in line and "(4-bit) 1.76" in line and "](docs/evaluation.md)" in line
    assert "realdocs" not in line  # the realdocs pair is said only when both rows exist
    write(d / "realdocs_run_bpb_realdocs_val_first65536.json", json.dumps({"bpb": 1.0033, "tokens": 65535}))
    assert "realdocs" not in findings.eval_headline(str(d), str(tmp_path))[0]
    write(d / "released_bpb_realdocs_val_first65536.json", json.dumps({"bpb": 0.7594, "tokens": 65535}))
    (line,) = findings.eval_headline(str(d), str(tmp_path))
    assert "(their first 65,536 ids) the 1,000-step realdocs run 1.00, the released weights 0.76" in line
    write(d / "realdocs_run_bpb_realdocs_val.json", json.dumps({"bpb": 1.1713, "tokens": 1079665}))
    write(d / "released_bpb_realdocs_val.json", json.dumps({"bpb": 1.0151, "tokens": 1079665}))
    (line,) = findings.eval_headline(str(d), str(tmp_path))
    assert "(all 1,079,666 ids) the 1,000-step realdocs run 1.17, the released weights 1.02" in line


def test_released_weights_reference_line_from_evaluate_results(tmp_path):
    d = tmp_path / "results" / "eval"
    assert report.released_reference(str(d), "tinyshakespeare") is None
    write(d / "released_bpb_realdocs_val_first65536.json", json.dumps({
        "loss": 2.0981, "bpb": 0.7594, "tokens": 65535, "command": "evaluate.py --pretrained --max_tokens 65536"}))
    loss, label = report.released_reference(str(d), "realdocs")
    assert loss == 2.0981 and "2.10 (0.76 bits/byte)" in label and "its first 65,535 ids" in label
    # once the whole split is scored too, the line is drawn from it
    write(d / "released_bpb_realdocs_val.json", json.dumps({"loss": 2.1234, "bpb": 0.77, "tokens": 1079665,
                                                            "command": "evaluate.py --pretrained"}))
    loss, label = report.released_reference(str(d), "realdocs")
    assert loss == 2.1234 and "first" not in label
    assert report.render_loss_plot(RunSummary(train=[(1, 9.0), (2, 8.0)]), (loss, label))[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_ablation_csv_without_a_variant_column_is_one_line_and_touches_nothing(tmp_path):
    populate(tmp_path)
    csv_path = tmp_path / "ablation_results_500steps_profiles" / "ablation_results.csv"
    header, *rows = ABLATION_CSV.splitlines()
    keep = [i for i, c in enumerate(header.split(",")) if c != "variant"]
    write(csv_path, "\n".join(",".join(line.split(",")[i] for i in keep) for line in [header, *rows]) + "\n")
    before = (tmp_path / "README.md").read_text(encoding="utf-8")
    r = run(tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "has no column 'variant'" in r.stderr and "ablation_results.csv" in r.stderr
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == before


def test_a_tiny_run_after_the_readme_run_keeps_its_headline_and_finding(tmp_path):
    """The seed's pair (with DONE and WALL lines, so it has a headline and a finding) is rendered; a 5-step tiny
    run from scratch is then appended to the same train.log: TRAIN_LOG, HEADLINES (README) and FINDINGS (a docs
    page) keep their rendered text byte for byte, the plot too, and the output names exactly those blocks."""
    wall = 'WALL: {"startup_s": 9.0, "loop_s": 80.0}\n'
    log = make_log().replace("RESUME:", "DONE: steps 1..300 in 80.0s (3000.0 tok/s overall)\n" + wall + "RESUME:")
    populate(tmp_path, README + "\n<!-- HEADLINES_BEGIN -->\n<!-- HEADLINES_END -->\n")
    write(tmp_path / "out_smollm2_scratch" / "train.log", log + "DONE: steps 301..350 in 5.0s (2500.0 tok/s overall)\n"
          + wall)
    results = tmp_path / "docs" / "results.md"
    write(results, "# Results\n\n<!-- FINDINGS_BEGIN -->\n<!-- FINDINGS_END -->\n")
    assert run(tmp_path).returncode == 0
    readme, plot = tmp_path / "README.md", tmp_path / "out_smollm2_scratch" / "loss_curve.png"
    before = {p: p.read_bytes() for p in (readme, results, plot)}
    assert b"**The seed's run, 350 steps with its resume**" in before[readme]
    assert b"- **The seed's run** on the logged device: steps 1 to 350" in before[results]
    tiny = ["Device: cpu", 'Args: {"model": "tiny", "max_steps": 5, "resume": 0}', "Starting from scratch (random init)."]
    tiny += [step_line(st, 5, 10.8) for st in range(1, 6)] + ["DONE: steps 1..5 in 3.1s (1665.1 tok/s overall)", wall]
    with open(tmp_path / "out_smollm2_scratch" / "train.log", "a", encoding="utf-8") as f:
        f.write("\n".join(tiny))
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert "TRAIN_LOG, HEADLINES, FINDINGS and the loss plot left as they were" in r.stdout
    assert "no resume line" in r.stdout and "HEADLINES (" not in r.stdout and "FINDINGS (" not in r.stdout


def test_a_log_named_elsewhere_draws_its_plot_beside_it(tmp_path):
    """--readme COPY --train_log OTHER: the loss curve goes beside OTHER, the committed one stays untouched."""
    populate(tmp_path)
    committed = tmp_path / "out_smollm2_scratch" / "loss_curve.png"
    committed.write_bytes(b"the committed plot")
    write(tmp_path / "copy" / "README.md", README)
    write(tmp_path / "other" / "train.log", make_log())
    r = run(tmp_path, "--readme", "copy/README.md", "--train_log", "other/train.log")
    assert r.returncode == 0, r.stderr
    assert committed.read_bytes() == b"the committed plot"
    assert (tmp_path / "other" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](../other/loss_curve.png)" in (tmp_path / "copy" / "README.md").read_text(encoding="utf-8")


def test_a_manifest_summary_that_is_not_json_is_one_line_and_touches_nothing(tmp_path):
    populate(tmp_path, README + "\n<!-- DATA_RESULTS_BEGIN -->\n<!-- DATA_RESULTS_END -->\n")
    write(tmp_path / "results" / "realdocs" / "manifest_summary.json", '{"totals": ')
    write(tmp_path / "results" / "realdocs" / "train.log", make_log())
    before = (tmp_path / "README.md").read_bytes()
    r = run(tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "manifest_summary.json is not JSON" in r.stderr and (tmp_path / "README.md").read_bytes() == before


@pytest.mark.parametrize("slip, said", [("<!-- plot -->", "train_log.md has no part <!-- plot -->"),
                                        ("({plot})", "part <!-- plot --> has a placeholder update_readme.py does not")])
def test_a_template_slip_is_one_line_and_touches_nothing(tmp_path, monkeypatch, capsys, slip, said):
    """The words come from docs/templates/<block>.md: a part renamed or a placeholder misspelled there is one
    error line naming the file, exit 2, every page as it was."""
    import shutil
    populate(tmp_path)
    templates = tmp_path / "templates"
    shutil.copytree(os.path.join(ROOT, "docs", "templates"), templates)
    page = templates / "train_log.md"
    page.write_text(page.read_text(encoding="utf-8").replace(slip, slip.replace("plot", "plots")), encoding="utf-8")
    monkeypatch.setattr(results, "TEMPLATES", str(templates))
    monkeypatch.chdir(tmp_path)
    before = (tmp_path / "README.md").read_bytes()
    results.template.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            run_cli(lambda: ur.main([]), "update_readme.py")
    finally:
        results.template.cache_clear()  # the next test reads the real templates
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("update_readme.py: error: ") and said in err
    assert len(err.strip().splitlines()) == 1 and (tmp_path / "README.md").read_bytes() == before
