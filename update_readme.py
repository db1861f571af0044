"""Fill the marker blocks of README.md and docs/*.md from the files the scripts wrote (never typed by hand).

A block is the text between a `<!-- NAME_BEGIN -->` and a `<!-- NAME_END -->` line, replaced in full; TRAIN_LOG
and ABLATION_TABLE are required, the rest optional. A block's words are docs/templates/<name>.md (THROUGHPUT_TABLE
shares ablation_table.md), whose first line says what it shows; this script gathers the numbers, tables and
plots from the results files, and draws the loss curve from the run's records (smollm2.metrics.read_events).

Idempotent: a page or PNG is rewritten only when its bytes would change, atomically. Missing inputs leave a
placeholder and exit 0. A marker missing, repeated or unpaired, or an input it cannot parse, exits 2 with one
line and every page as it was. A log in the default folder that is not the seed's pair (step A, then its
resume) leaves the blocks drawn from it (TRAIN_LOG, HEADLINES, FINDINGS) and the loss plot as they were.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import sys
from typing import Callable, Optional

from smollm2.io import write_if_changed
from smollm2.metrics import RunSummary, log_events, number, summarize
from smollm2.results import (MISSING, InputError, fmt, images, labels, link, markdown_table, plural, read_csv, read_json,
                             read_train_log, rel, rows_by, rows_of, run_summary, say)
from smollm2.switches import DEFAULT_PATH, PROFILES, SAME_AS, SEED_PATH, SWITCH_PAIRS

REQUIRED = ("TRAIN_LOG", "ABLATION_TABLE")
OPTIONAL = ("THROUGHPUT_TABLE", "BENCH_TABLE", "MULTIGPU_TABLE", "MICROBATCH_TABLE", "SEED_E2E", "FINDINGS",
            "HEADLINES", "DATA_RESULTS", "EVAL_RESULTS", "QUALITY", "EVAL_SPEED")
RUN_BLOCKS = ("TRAIN_LOG", "HEADLINES", "FINDINGS")  # drawn from the README's run: kept as they are without it
SEED_SHAPE, SEED_MODEL = {"seq_len": 256, "batch_size": 1, "grad_accum": 4}, "smollm2-135m"  # the README's run
HEADLINE_SECTIONS = ("realdocs_2048_defaults", "realdocs_2048_schedules", "realdocs_2048")  # the first present
MB48_SECTIONS = ("realdocs_2048_mb48_bracket", "realdocs_2048_mb48")  # the same tokens at the fastest micro-batch
DEFAULT_MUON = "muon_wsd_5e-3"  # train.py's --optimizer muon recipe, as quality.py names it
DATA_PREP_COLUMNS = ["machine", "cpu_model", "measurement", "pipeline", "workers", "corpus_mb", "tokens", "wall_s",
                     "tokens_per_s", "tokens_per_cpu_s", "peak_rss_tree_mb", "peak_pss_tree_mb"]


class MarkerError(Exception):
    """A page's markers are missing, repeated or unpaired."""


# ----------------------------------------------------------------------------------------------
# tables and plots


# Known column names -> (header, formatter); everything else is shown as written.
# MFU is a fraction 0..1 in the CSVs; peak memory is shown in GB = 1e9 bytes.
_TOKENS = fmt(1, 0, thousands=True)
KNOWN: dict[str, tuple[str, Callable[[str], str]]] = {
    "tokens_per_s": ("tokens/s", _TOKENS), "tok_s": ("tokens/s", _TOKENS), "avg_tok_s_steady": ("tokens/s", _TOKENS),
    "peak_mem_bytes": ("peak mem (GB)", fmt(1e-9, 2)), "peak_mem_gb": ("peak mem (GB)", fmt(1, 2)),
    "mfu": ("MFU (%)", fmt(100, 2)), "ms_per_step": ("ms/step", fmt(1, 1)), "params": ("params (M)", fmt(1e-6, 1)),
    "final_loss": ("final loss", fmt(1, 3)), "tokens_per_s_per_gpu": ("tokens/s per GPU", _TOKENS),
    "tok_s_per_gpu": ("tokens/s per GPU", _TOKENS), "scaling_efficiency": ("per-GPU efficiency (%)", fmt(100, 1)),
}


def render_generic(cols: list[str], rows: list[dict[str, str]]) -> str:
    cols = [c for c in cols if any(r.get(c, "").strip() for r in rows)]  # a column empty in every row says nothing
    header = [KNOWN[c][0] if c in KNOWN else c for c in cols]
    return markdown_table(header, [[KNOWN[c][1](r.get(c, "")) if c in KNOWN else r.get(c, "") for c in cols]
                                   for r in rows])


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(9, 5), dpi=100)  # 900x500 px


def _png(fig, ax, title: str, **legend) -> bytes:
    import matplotlib.pyplot as plt

    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(**legend)
    fig.tight_layout()
    buf = io.BytesIO()
    # No 'Software' chunk (it carries the matplotlib version) and no dates: same data, same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def render_loss_plot(s: RunSummary, reference: Optional[tuple[float, str]] = None) -> bytes:
    fig, ax = _axes()
    if s.train:
        ax.plot(*zip(*s.train), lw=1.2, color="tab:blue", label="train loss")
    if s.val:
        ax.plot(*zip(*s.val), "o-", ms=3, lw=1.2, color="tab:orange", label="val loss")
    if reference is not None:
        ax.axhline(reference[0], ls=":", lw=1.5, color="tab:green", label=reference[1])
    for r in s.resumes:
        ax.axvline(r, ls="--", lw=1, color="gray")
        ax.text(r, 0.98, f" resume @ {r}", transform=ax.get_xaxis_transform(),
                rotation=90, va="top", ha="right", fontsize=8, color="gray")
    # loss falls from the upper left; the resume label sits upper right
    return _png(fig, ax, "SmolLM2-135M from scratch: loss vs step", loc="upper center")


def render_comparison_plot(before: RunSummary, after: RunSummary, names: tuple[str, str]) -> bytes:
    """Two runs of the same command on one axes: train (lines) and val (dots) loss against step."""
    fig, ax = _axes()
    for s, name, color in ((before, names[0], "tab:gray"), (after, names[1], "tab:blue")):
        if s.train:
            ax.plot(*zip(*s.train), lw=1.1, color=color, label=f"train: {name}")
        if s.val:
            ax.plot(*zip(*s.val), "o--", ms=3, lw=1, color=color, label=f"val: {name}")
    return _png(fig, ax, "The seed's commands, before and after a change of the default path", loc="upper right",
                fontsize=8)


def released_reference(eval_dir: str, corpus: str) -> Optional[tuple[float, str]]:
    """The released weights' loss per token on a corpus' held-out split (evaluate.py's file), as a line to draw
    beside a run's val loss: the same tokenizer, so the same units; its bits per byte in the label."""
    # the whole split (released_bpb_<corpus>_val.json) or its first N ids (..._val_first<N>.json)
    scored = [read_json(path) for path in glob.glob(os.path.join(eval_dir, f"released_bpb_{corpus}_val*.json"))]
    if not scored:
        return None
    r = max(scored, key=lambda x: x.get("tokens", 0))  # the most text scored
    part = f", its first {r['tokens']:,} ids" if "--max_tokens" in str(r.get("command", "")) else ""
    return r["loss"], f"released SmolLM2 weights, held-out split{part}: {r['loss']:.2f} ({r['bpb']:.2f} bits/byte)"


# ----------------------------------------------------------------------------------------------
# TRAIN_LOG: the README's run


def not_the_readme_run(s: RunSummary, seed_only: bool) -> Optional[str]:
    """Why a run's records are not the README's run (both commands, the resume line), None when they are.
    With seed_only (the default folder), also the seed's model and shape. Records written by train.py name
    their args; logs from before them are judged by the lineage alone."""
    if not s.train:
        return "it holds no step lines"
    if not s.resumes:
        return f"its last run (steps {s.train[0][0]}..{s.train[-1][0]}) has no resume line"
    given = (s.header.get("args") or {}) if seed_only else {}  # a log named with --train_log needs only the resume
    if given.get("model", SEED_MODEL) != SEED_MODEL:
        return f"its last run trained the {given['model']} preset, not {SEED_MODEL}"
    off = [f"{k} {given[k]}" for k, v in SEED_SHAPE.items() if k in given and int(given[k]) != v]
    return f"its last run is not the seed's shape ({', '.join(off)})" if off else None


def wall_table(walls: list[dict]) -> str:
    """Seconds per part of each run of the lineage (a column per run: step A, then each resume)."""
    if not walls:
        return ""
    f = lambda v: MISSING if v is None else f"{v:,.1f}"  # noqa: E731

    def count(key: str, w: dict) -> str:  # what the part's seconds were spent on
        if key == "steps_s":
            return f" ({w.get('steps', 0) - 1:,} steps)" if w.get("steps") else ""
        if key == "save_stall_s":
            return f" ({w.get('saves', 0)} save{plural(w.get('saves'))}, longest {w.get('save_stall_max_s', 0):.2f})"
        return f" ({w.get(key[:-2] + 's', 0)})" if key in ("val_s", "sample_s") else ""

    rows = []
    for key, label in labels("train_log", "wall_rows").items():
        rows.append([label, *[f(w.get(key)) + (count(key, w) if w.get(key) is not None else "") for w in walls]])
        if key == "startup_s" and any(w.get("startup_parts") for w in walls):
            rows += [[sub, *[f((w.get("startup_parts") or {}).get(part)) for w in walls]]
                     for part, sub in labels("train_log", "startup_rows").items()]
    rows.append([say("train_log", "command_row"),
                 *[f"**{f(w.get('startup_s', 0) + w.get('loop_s', 0))}**" for w in walls]])
    rows.append([say("train_log", "async_save_row" if walls[-1].get("async_save") else "save_row"),
                 *[f(w.get("save_write_s")) for w in walls]])
    names = [say("train_log", "resumed_run" if i else "first_run", n=i + 1) for i in range(len(walls))]
    return say("train_log", "wall_table", table=markdown_table(["part", *names], rows))


def summary_line(s: RunSummary, log_rel: str) -> str:
    facts = []
    if s.train:
        facts.append(say("train_log", "steps", first=s.train[0][0], last=s.train[-1][0]))
        facts.append(say("train_log", "train_loss", first=s.train[0][1], last=s.train[-1][1]))
    if s.val:
        facts.append(say("train_log", "val_loss", loss=s.val[-1][1], step=s.val[-1][0]))
    facts.append(say("train_log", "checkpoints", n=s.checkpoints, s=plural(s.checkpoints)))
    facts.append(say("train_log", "resumed", steps=", ".join(map(str, s.resumes))) if s.resumes else
                 say("train_log", "no_resume"))
    part = "summary_of_the_last_lineage" if s.runs > 1 + len(s.resumes) else "summary"
    return say("train_log", part, log=log_rel, facts=" · ".join(facts))


def train_log_block(log_path: str, text: Optional[str], s: Optional[RunSummary], plot_path: Optional[str],
                    readme_dir: str) -> tuple[str, str]:
    log_rel = rel(log_path, readme_dir)
    if text is None:
        return say("train_log", "missing", log=log_rel), "log missing"
    text = text.rstrip("\n")
    out = [summary_line(s, log_rel)] + ([wall_table(s.walls)] if s.walls else [])
    if plot_path:
        out.append(say("train_log", "plot", plot=link(plot_path, readme_dir)))
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`{3,}", text)), default=2) + 1)
    out.append(say("train_log", "log", log=log_rel, fence=fence, text=text))
    last = s.train[-1][0] if s.train else "no steps"
    return "\n\n".join(out), f"log to step {last}" + (", resumed at " + "/".join(map(str, s.resumes)) if s.resumes else "")


def started(log_text: str) -> str:
    """When a train.log's first run started, from its header line ("... training | 2026-11-28T08:27:21")."""
    m = re.search(r"^SmolLM2 from-scratch training \| (\S+)", log_text, re.M)
    return m.group(1).replace("T", " ") if m else "date not logged"


def comparison(args, log_text: Optional[str], run: Optional[RunSummary], page_dir: str, notes: list[str]) -> str:
    """The README's run before the default path changed beside today's, when train_previous.log is there."""
    previous = read_train_log(args.previous_train_log) if os.path.isfile(args.previous_train_log) else None
    if previous is None or log_text is None:
        return ""
    try:
        write_if_changed(args.comparison_plot, render_comparison_plot(
            summarize(log_events(previous)), run, (f"before ({started(previous)})", f"now ({started(log_text)})")))
    except ImportError:
        notes.append("comparison plot skipped (matplotlib missing)")
        return ""
    return "\n\n" + say("train_log", "comparison", previous=rel(args.previous_train_log, page_dir),
                        plot=link(args.comparison_plot, page_dir))


# ----------------------------------------------------------------------------------------------
# ABLATION_TABLE and THROUGHPUT_TABLE: train_ablation.py's CSVs


def _on_off(s: str) -> str:
    t = (s or "").strip().lower()
    return "ON" if t in ("1", "true", "yes", "on", "y") else "OFF" if t in ("0", "false", "no", "off", "n") else s or MISSING


def _autocast(r: dict[str, str]) -> str:
    on = _on_off(r.get("autocast", ""))
    dt = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(r.get("amp_dtype", ""), r.get("amp_dtype", ""))
    return f"ON ({dt})" if on == "ON" and dt else on


def _status(r: dict[str, str]) -> str:
    st, err = r.get("status", "").strip(), r.get("error", "").strip()
    if err and st.lower() != "ok":
        err = " ".join(err.split())
        return f"{st or 'failed'}: " + (err if len(err) <= 60 else err[:59].rstrip() + "…")
    return st or MISSING


def variant_cell(name: str) -> str:
    """The variant's name; a variant that is another's configuration under a second name says which."""
    if not name:
        return MISSING
    return say("ablation_table", "same_as", name=name, same=SAME_AS[name]) if name in SAME_AS else f"`{name}`"


def _known(column: str) -> tuple[str, tuple[str, ...], Callable[[dict[str, str]], str]]:
    return KNOWN[column][0], (column,), lambda r: KNOWN[column][1](r.get(column, ""))


# (header, source columns that must exist for the column to be shown, cell function)
ABLATION_COLS: list[tuple[str, tuple[str, ...], Callable[[dict[str, str]], str]]] = [
    ("variant", ("variant",), lambda r: variant_cell(r.get("variant", ""))),
    ("status", ("status", "error"), _status),
    ("autocast", ("autocast",), _autocast),
    ("compile", ("compile",), lambda r: _on_off(r.get("compile", ""))),
    ("attention", ("attention_impl",), lambda r: r.get("attention_impl") or MISSING),
    ("tie", ("tie_word_embeddings",), lambda r: _on_off(r.get("tie_word_embeddings", ""))),
    *map(_known, ("params", "avg_tok_s_steady", "ms_per_step", "mfu", "peak_mem_bytes", "final_loss")),
    ("device", ("device_name",), lambda r: r.get("device_name") or MISSING),
]


def render_ablation(cols: list[str], rows: list[dict[str, str]]) -> str:
    chosen = [(h, f) for h, need, f in ABLATION_COLS if any(c in cols for c in need)]
    if not chosen:  # not the ablation schema at all: show it as it is
        return render_generic(cols, rows)
    return markdown_table([h for h, _ in chosen], [[f(r) for _, f in chosen] for r in rows])


def _measured(r: dict[str, str]) -> str:
    t, m = number(r.get("avg_tok_s_steady")), number(r.get("peak_mem_bytes"))
    if not t:
        return say("ablation_table", "unmeasured" if r.get("status") else "no_result", variant=r.get("variant"),
                   status=r.get("status"))
    return say("ablation_table", "measured_memory" if m else "measured", variant=r.get("variant"), tok_s=t,
               gb=(m or 0) / 1e9)


def switch_effects(rows: list[dict[str, str]]) -> str:
    """One line per smollm2.switches.SWITCH_PAIRS pair in the table: tokens/s ratio, peak memory and final loss."""
    by, lines = {r.get("variant"): r for r in rows}, []
    for name, on, off in SWITCH_PAIRS:
        a, b = by.get(on), by.get(off)
        if not (a and b):
            continue
        ta, tb = number(a.get("avg_tok_s_steady")), number(b.get("avg_tok_s_steady"))
        if not (ta and tb):  # one side failed (out of memory, say): what each side did
            lines.append(say("ablation_table", "not_compared", name=name, a=_measured(a), b=_measured(b)))
            continue
        ma, mb = number(a.get("peak_mem_bytes")), number(b.get("peak_mem_bytes"))
        la, lb = number(a.get("final_loss")), number(b.get("final_loss"))
        memory = say("ablation_table", "effect_memory", ma=ma / 1e9, mb=mb / 1e9, diff=(ma - mb) / 1e9) if ma and mb else ""
        loss = say("ablation_table", "effect_loss", la=la, lb=lb) if la is not None and lb is not None else ""
        lines.append(say("ablation_table", "effect", name=name, on=on, off=off, ratio=ta / tb, ta=ta, tb=tb,
                         memory=memory, loss=loss))
    if not lines:
        return ""
    cards = sorted({r["device_name"] for r in rows if r.get("device_name")})
    return say("ablation_table", "effects_on_cards" if cards else "effects", cards=", ".join(cards),
               lines="\n".join(lines))


def csv_block(csv_path: str, png_dir: Optional[str], readme_dir: str, what: str) -> tuple[str, str]:
    csv_rel = rel(csv_path, readme_dir)
    if not os.path.isfile(csv_path):
        return say("ablation_table", "missing", what=what, csv=csv_rel), "csv missing"
    cols, rows = read_csv(csv_path)
    if rows and "variant" not in cols:  # the table and its findings are keyed by the variant's name
        raise InputError(f"{csv_path} has no column 'variant' (its columns: {', '.join(cols) or 'none'}); write it "
                         f"again with train_ablation.py")
    if not rows:
        body, note = say("ablation_table", "no_rows", csv=csv_rel), "csv empty"
    else:
        body, note = say("ablation_table", "table", csv=csv_rel, table=render_ablation(cols, rows)), f"{len(rows)} rows"
        if effects := switch_effects(rows):
            body += "\n\n" + effects
    pngs = sorted(glob.glob(os.path.join(png_dir, "*.png"))) if png_dir and os.path.isdir(png_dir) else []
    return body + ("\n\n" + images(pngs, readme_dir) if pngs else ""), note


# ----------------------------------------------------------------------------------------------
# the benchmark tables: BENCH_TABLE, MULTIGPU_TABLE, MICROBATCH_TABLE, SEED_E2E, EVAL_SPEED


def tables_block(block: str, paths: list[str], readme_dir: str, headings: bool) -> list[str]:
    """One generic table per CSV, under its name when `headings`."""
    out = []
    for p in paths:
        cols, rows = read_csv(p)
        parts = [say(block, "heading", name=os.path.splitext(os.path.basename(p))[0])] if headings else []
        parts.append(say(block, "rendered", csv=rel(p, readme_dir)))
        out.append("\n\n".join(parts + [render_generic(cols, rows) if rows else say(block, "no_rows")]))
    return out


def bench_block(bench_dir: str, readme_dir: str) -> tuple[str, str]:
    csvs = sorted(glob.glob(os.path.join(bench_dir, "bench_*.csv")))
    # the quality plots belong to the QUALITY block, beside their tables
    pngs = sorted(p for p in glob.glob(os.path.join(bench_dir, "*.png")) if not os.path.basename(p).startswith("quality_"))
    if not csvs and not pngs:
        return say("bench_table", "missing", dir=rel(bench_dir, readme_dir)), "no bench csv"
    parts = tables_block("bench_table", csvs, readme_dir, headings=True) + ([images(pngs, readme_dir)] if pngs else [])
    return "\n\n".join(parts), f"{len(csvs)} table{plural(len(csvs))}"


def multigpu_block(bench_dir: str, readme_dir: str) -> tuple[str, str]:
    csvs = sorted(glob.glob(os.path.join(bench_dir, "multigpu*.csv")))
    if not csvs:
        return say("multigpu_table", "missing", dir=rel(bench_dir, readme_dir)), "no multigpu csv"
    return ("\n\n".join(tables_block("multigpu_table", csvs, readme_dir, headings=len(csvs) > 1)),
            f"{len(csvs)} table{plural(len(csvs))}")


def microbatch_block(bench_dir: str, readme_dir: str) -> tuple[str, str]:
    """bench.py --micro_batches: one row per micro-batch, one column per impl (tokens/s, MFU, peak memory, or
    out of memory), the fastest size that fit in bold; then which size each impl's throughput row uses."""
    path = os.path.join(bench_dir, "microbatch_sweep.csv")
    if not os.path.isfile(path):
        return say("microbatch_table", "missing", csv=rel(path, readme_dir)), "no sweep csv"
    _, rows = read_csv(path)
    impls, sizes = list(dict.fromkeys(r["impl"] for r in rows)), sorted({int(r["micro_batch"]) for r in rows})
    cell, best = {(r["impl"], int(r["micro_batch"])): r for r in rows}, {}
    for r in rows:
        t = number(r.get("tokens_per_s")) if r.get("status") == "ok" else None
        if t and t > best.get(r["impl"], (0, 0))[1]:
            best[r["impl"]] = (int(r["micro_batch"]), t)

    def show(impl, B):
        r = cell.get((impl, B))
        if r is None:
            return MISSING
        if r.get("status") != "ok":
            return say("microbatch_table", "out_of_memory") if r.get("status") == "oom" else r.get("status") or MISSING
        text = say("microbatch_table", "cell", tok_s=number(r["tokens_per_s"]), mfu=100 * (number(r.get("mfu")) or 0),
                   gb=number(r.get("peak_mem_gb")) or 0)
        return say("microbatch_table", "fastest", cell=text) if best.get(impl, (None,))[0] == B else text

    table = markdown_table(["micro-batch"] + [f"`{i}`" for i in impls], [[str(B)] + [show(i, B) for i in impls] for B in sizes])
    picks = ", ".join(f"`{i}` {best[i][0]}" for i in impls if i in best) or say("microbatch_table", "none_fit")
    return (say("microbatch_table", "sweep", seq=rows[0].get("seq_len", ""), card=rows[0].get("card", ""),
                csv=rel(path, readme_dir), picks=picks, table=table), f"{len(impls)} impls x {len(sizes)} sizes")


def e2e_case(case: str) -> str:
    if m := re.fullmatch(r"scope_(model|blocks)_(cold|warm|resume)", case):
        return say("seed_e2e", "scope_case", scope=m.group(1), what=labels("seed_e2e", "scope_kinds")[m.group(2)])
    return labels("seed_e2e", "cases").get(case, case)


def seed_e2e_block(bench_dir: str, readme_dir: str) -> tuple[str, str]:
    """device_seed_e2e.sh's wall times (the shell's, process start to exit), one row per case."""
    path = os.path.join(bench_dir, "seed_e2e", "seed_e2e.csv")
    if not os.path.isfile(path):
        return say("seed_e2e", "missing", csv=rel(path, readme_dir)), "no seed_e2e csv"
    _, rows = read_csv(path)
    if not rows:
        return say("seed_e2e", "no_rows", csv=rel(path, readme_dir)), "empty seed_e2e csv"
    cards = ", ".join(dict.fromkeys(say("seed_e2e", "card", card=r.get("card", ""), torch=r.get("torch", ""))
                                    for r in rows))
    table = markdown_table(["case", "what", "wall (s)", "exit"], [[f"`{r['case']}`", e2e_case(r["case"]),
                           f"{number(r.get('wall_s')) or 0:.1f}", r.get("exit_status", "")] for r in rows])
    return say("seed_e2e", "table", cards=cards, csv=rel(path, readme_dir), table=table), f"{len(rows)} cases"


def eval_speed_block(bench_dir: str, readme_dir: str) -> tuple[str, str]:
    """benchmarks/eval_speed*.csv (benchmarks/eval_speed_table.py): evaluate.py and lm-evaluation-harness on the
    same work, a table per call on one card."""
    paths = sorted(glob.glob(os.path.join(bench_dir, "eval_speed*.csv")))
    if not paths:
        return say("eval_speed", "missing", csv=rel(os.path.join(bench_dir, "eval_speed.csv"), readme_dir)), \
            "no eval_speed csv"
    header = ["command", "scorer", "work", "scoring (s)", "compile, apart (s)", "whole process (s)", "acc", "acc_norm",
              "bits per byte", "device"]
    s, s4 = fmt(1, 1), fmt(1, 4)
    tables = [(path, [[r["what"], r["scorer"], r["work"], s(r["scoring_s"]), s(r["compile_s"]), s(r["process_s"]),
                       s4(r["acc"]), s4(r["acc_norm"]), s4(r["bpb"]), r["device"]] for r in read_csv(path)[1]])
              for path in paths]
    return ("\n\n".join(say("eval_speed", "table", csv=rel(p, readme_dir), table=markdown_table(header, rows))
                        for p, rows in tables), f"{sum(len(rows) for _, rows in tables)} rows in {len(paths)} tables")


# ----------------------------------------------------------------------------------------------
# DATA_RESULTS, EVAL_RESULTS and QUALITY: the real corpus, evaluate.py and benchmarks/quality.py


def train_rss_sentence(r: dict[str, str]) -> str:
    """Whether training's memory stayed flat, from a benchmarks/bench_data.py train_rss row."""
    return say("data_results", "train_rss", machine=r["machine"], device=r.get("train_device") or "cpu",
               shards=int(r["train_shards"]), shard_tokens=int(float(r["shard_tokens"])), first_mb=r["rss_first_mb"],
               first_step=r["first_step"], last_mb=r["rss_last_mb"], last_step=r["steps_done"], ratio=r["rss_ratio"],
               flat=say("data_results", "flat" if r.get("flat") == "True" else "not_flat"),
               tolerance=float(r["flat_tolerance"]))


def data_results_block(results_dir: str, bench_dir: str, readme_dir: str, eval_dir: str = "") -> tuple[str, str]:
    """The real-corpus run (manifest summary, preparation line, training summary, loss curve, log) and the
    data-pipeline benchmark table."""
    parts, note = [], []
    summary_path, log_path = os.path.join(results_dir, "manifest_summary.json"), os.path.join(results_dir, "train.log")
    if os.path.isfile(summary_path) and os.path.isfile(log_path):
        m = read_json(summary_path)
        t = m["totals"]
        groups = ", ".join(say("data_results", "source", name=k, files=v["files"], s=plural(v["files"]),
                               mb=v["bytes"] / 1e6) for k, v in m["sources"].items())
        parts.append(say("data_results", "corpus", summary=rel(summary_path, readme_dir), groups=groups,
                         tokens=t["tokens"], documents=t["documents"], dtype=m["dtype"], eos=m["eos_id"],
                         val_documents=t["val_documents"], val_tokens=t["val_tokens"]))
        prep_log = os.path.join(results_dir, "prepare.log")
        if os.path.isfile(prep_log):
            with open(prep_log, encoding="utf-8", errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.startswith("prepared ")]
            parts += [say("data_results", "preparation", line=lines[-1])] if lines else []
        text = read_train_log(log_path)
        s = run_summary(log_path, text)
        if speeds := sorted(s.speeds):
            device = s.header.get("device_name") or say("data_results", "unnamed_device")
            parts.append(say("data_results", "training_speed", device=device, tok_s=speeds[len(speeds) // 2]))
        plot = os.path.join(results_dir, "loss_curve.png")
        try:
            write_if_changed(plot, render_loss_plot(s, released_reference(eval_dir, "realdocs")))
        except ImportError:
            plot = None
        parts.append(train_log_block(log_path, text, s, plot if (s.train or s.val) else None, readme_dir)[0])
        note.append("real-corpus run")
    csv_path = os.path.join(bench_dir, "data_prep.csv")
    if os.path.isfile(csv_path):
        _, rows = read_csv(csv_path)
        prep = [r for r in rows if r.get("measurement") != "train_rss"]  # those are a sentence each, below
        parts.append(say("data_results", "pipeline", csv=rel(csv_path, readme_dir)))
        parts.append(render_generic(DATA_PREP_COLUMNS, prep) if prep else say("data_results", "no_rows"))
        parts += [train_rss_sentence(r) for r in rows if r.get("measurement") == "train_rss"]
        note.append("data_prep table")
    if not parts:
        return say("data_results", "missing"), "no data results"
    return "\n\n".join(parts), ", ".join(note)


def eval_block(eval_dir: str, readme_dir: str) -> tuple[str, str]:
    """One table per kind of results/eval/*.json (bits per byte; multiple-choice tasks; lm-eval), a row per
    file, each naming its weights, text, device and the file itself."""
    results = []
    for path in sorted(glob.glob(os.path.join(eval_dir, "*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                results.append((path, json.load(f)))
        except (OSError, ValueError) as e:
            raise InputError(f"{path} is not a JSON file written by evaluate.py ({e})") from e
    if not results:
        return say("eval_results", "missing", dir=rel(eval_dir, readme_dir)), "no results"

    def row(kind: str, path: str, r: dict, **values) -> str:
        w = r["weights"]
        weights = (say("eval_results", "weights_file", name=r["name"], file=w["file"], sha=w["sha256"][:12])
                   if w.get("file") else say("eval_results", "weights", name=r["name"], description=w["description"]))
        return say("eval_results", f"{kind}_row", weights=weights, device=r["device"], file=os.path.basename(path),
                   link=link(path, readme_dir), **values)

    def cell(v, pattern: str = "{:.4f}") -> str:
        return MISSING if v is None else pattern.format(v)

    kinds = {"bpb": [], "task": [], "harness": []}
    for p, r in results:
        kind = {"bpb": "bpb", "lm_eval": "harness"}.get(r.get("task"), "task")
        if kind == "bpb":
            kinds[kind].append(row(kind, p, r, text=r["text"], seq_len=r["seq_len"], tokens=r["tokens"], bytes=r["bytes"],
                                   bpb=cell(r["bpb"]), loss=cell(r["loss"]), ppl=cell(r["ppl"], "{:.2f}")))
        elif kind == "task":
            kinds[kind].append(row(kind, p, r, task=r["task"], data=r["data"], items=r["items"],
                                   acc=cell(r.get("acc")), acc_norm=cell(r.get("acc_norm"))))
        else:
            kinds[kind] += [row(kind, p, r, task=task, metric=metric.split(",")[0], value=v)
                            for task, metrics in r["results"].items() for metric, v in metrics.items()
                            if isinstance(v, float) and "stderr" not in metric]
    parts = [say("eval_results", f"{kind}_table") + "\n" + "\n".join(rows) for kind, rows in kinds.items() if rows]
    return "\n\n".join(parts), f"{len(results)} result files"


def against_best_adamw(ttl: list[dict]) -> list[dict]:
    """The rows of a quality_*_ttl.csv whose target is the final loss of the run's best AdamW (quality.py's
    "best AdamW (<recipe>) at the end"), not today's recipe's."""
    return [t for t in ttl if t["target"].startswith("best AdamW")]


def _share(t: dict[str, str], digits: int) -> str:
    """A time-to-loss row's share of the reference's time, or that it was not reached."""
    return fmt(1, digits)(t["share_of_reference_time"]) if t["reached"] == "True" else say("quality", "not_reached")


def quality_sections(bench_dir: str) -> dict[str, str]:
    """The sections of the QUALITY template, then one per seed run of device_quality.sh seeds (found by their
    files)."""
    sections = labels("quality", "sections")
    for path in sorted(glob.glob(os.path.join(bench_dir, "quality_realdocs_2048_seed*_runs.csv"))):
        section = os.path.basename(path)[len("quality_"):-len("_runs.csv")]
        sections[section] = say("quality", "seed_section", seed=section[len("realdocs_2048_seed"):])
    return sections


def half_time_table(bench_dir: str, sections: dict[str, str]) -> Optional[str]:
    """One row per Muon recipe of every run that has a best-AdamW target: its share of that AdamW run's time,
    each share a ratio of two rows of one process (so runs sit side by side, never divided by each other)."""
    rows = []
    for section in sections:
        path = os.path.join(bench_dir, f"quality_{section}_ttl.csv")
        if not os.path.isfile(path):
            continue
        ttl, runs = read_csv(path)[1], rows_of(os.path.join(bench_dir, f"quality_{section}_runs.csv"))
        shape = f"{runs[0]['seq_len']} x {runs[0]['micro_batch']}" if runs else MISSING
        rows += [[f"`{section}`", shape, t["target"].split("(")[1].split(")")[0], fmt(1, 3)(t["target_loss"]),
                  t["recipe"], _share(t, 3), t["card"]] for t in against_best_adamw(ttl) if t["recipe"].startswith("muon")]
    if not rows:
        return None
    return say("quality", "half_time", table=markdown_table(
        ["run", "seq x micro-batch", "best AdamW of the run", "its final loss", "Muon recipe", "share", "card"], rows))


def quality_section(stem: str, what: str, readme_dir: str) -> list[str]:
    """One section: its runs (held-out loss at the end, step time), the time to each target loss, its plot."""
    runs = read_csv(stem + "_runs.csv")[1]
    first = runs[0] if runs else {}
    if number(first.get("steps", "")) and number(first.get("tokens", "")):
        what = say("quality", "section_steps", what=what, steps=int(number(first["steps"])),
                   mtok=number(first["tokens"]) / 1e6)
    parts = [say("quality", "section", what=what, card=first.get("card", ""), csv=rel(stem + "_runs.csv", readme_dir)),
             markdown_table(["recipe", "optimizer", "schedule", "peak lr", "AdamW-part lr", "steps",
                             "held-out loss at the end", "ms/step", "steps (s)", "first step (s)"],
                            [[r["recipe"], say("quality", "hf_optimizer", optimizer=r["optimizer"]) if r["impl"] == "hf"
                              else r["optimizer"], r["schedule"], r["max_lr"], r["adamw_lr"] or MISSING,
                              r.get("steps") or MISSING, fmt(1, 3)(r["final_val_loss"]), fmt(1, 1)(r["ms_per_step"]),
                              fmt(1, 1)(r["train_s"]), fmt(1, 1)(r["first_step_s"])] for r in runs])]
    if os.path.isfile(stem + "_ttl.csv"):
        parts.append(say("quality", "time_to_loss", csv=rel(stem + "_ttl.csv", readme_dir)))
        parts.append(markdown_table(
            ["target", "loss", "recipe", "steps' wall-clock (s)", "tokens (M)", "share of the reference's time"],
            [[t["target"], t["target_loss"], t["recipe"], fmt(1, 1)(t["train_s"]), fmt(1e-6, 1)(t["tokens"]),
              _share(t, 2)] for t in read_csv(stem + "_ttl.csv")[1]]))
    return parts + ([images([stem + ".png"], readme_dir)] if os.path.isfile(stem + ".png") else [])


def quality_block(bench_dir: str, readme_dir: str) -> tuple[str, str]:
    """benchmarks/quality.py's files: every run's half-time share in one table; a section per run; then the
    step-time tables."""
    sections = quality_sections(bench_dir)
    summary = half_time_table(bench_dir, sections)
    parts = [summary] if summary else []
    for section, what in sections.items():
        stem = os.path.join(bench_dir, f"quality_{section}")
        parts += quality_section(stem, what, readme_dir) if os.path.isfile(stem + "_runs.csv") else []
    for step in sorted(glob.glob(os.path.join(bench_dir, "quality_step_time*.csv"))):
        cols, rows = read_csv(step)
        shape = {k: rows[0][k] for k in ("seq_len", "micro_batch")} if rows else {}
        parts.append(say("quality", "step_time_at_shape" if rows else "step_time", csv=rel(step, readme_dir), **shape))
        parts.append(render_generic([c for c in cols if c not in ("section", "torch")], rows))
    if not parts:
        return say("quality", "missing", dir=rel(bench_dir, readme_dir)), "no quality csv"
    return "\n\n".join(parts), f"{sum(p.startswith('####') for p in parts) - bool(summary)} sections"


# ----------------------------------------------------------------------------------------------
# FINDINGS and HEADLINES: sentences whose every number is read from a result file


def default_path_row(rows: dict[str, dict[str, str]], profile: str = "throughput") -> Optional[dict[str, str]]:
    """train.py's default path in a bench table: for the seed profile what the seed's 5,000-step command runs
    (SEED_PATH, --compile_scope auto), else DEFAULT_PATH; tables measured before those existed hold ours_fast."""
    return (profile == "seed" and rows.get(SEED_PATH)) or rows.get(DEFAULT_PATH) or rows.get("ours_fast")


def first_quality_run(bench_dir: str, sections: tuple[str, ...]) -> Optional[str]:
    """The path stem of the first of `sections` whose quality.py runs and time-to-loss tables are both present."""
    for section in sections:
        stem = os.path.join(bench_dir, f"quality_{section}")
        if os.path.isfile(stem + "_runs.csv") and os.path.isfile(stem + "_ttl.csv"):
            return stem
    return None


def multigpu_finding(path: str, readme_dir: str) -> str:
    """One sentence per multi-GPU table: the first impl at every size, the others at their sizes by efficiency."""
    mg = [r for r in read_csv(path)[1] if r.get("status") == "ok"]
    if not mg:
        return ""
    mg.sort(key=lambda r: int(r["world_size"]))
    main_impl = mg[0]["impl"]

    def eff(r):
        e = number(r.get("scaling_efficiency"))
        return say("findings", "efficiency", pct=100 * number(r["scaling_efficiency"])) if e else ""

    def size(r):
        n = r["world_size"]
        values = dict(n=n, s=plural(int(n)), tok_s=number(r["tokens_per_s"]), per_gpu=number(r["tokens_per_s_per_gpu"]))
        if n != "1" and eff(r):
            return say("findings", "gpus_with_efficiency", efficiency=eff(r), **values)
        return say("findings", "gpus", **values)

    others = {}
    for r in mg:
        if r["impl"] != main_impl and eff(r):
            others.setdefault(r["impl"], []).append(say("findings", "other_impl_gpus", n=r["world_size"], efficiency=eff(r)))
    return say("findings", "several_gpus", impl=main_impl, seq=mg[0]["seq_len"], micro_batch=mg[0]["micro_batch"],
               card=mg[0]["card"], sizes="; ".join(size(r) for r in mg if r["impl"] == main_impl),
               others="".join(say("findings", "other_impl", impl=k, sizes=", ".join(v)) for k, v in others.items()),
               csv=rel(path, readme_dir))


def shape_text(profile: str, fast: dict, hfe: dict, hfc: dict) -> str:
    """'seq 256 x batch 1 x accum 4' when the three rows share a shape; after a micro-batch sweep each impl's
    row is at its own fastest size: 'seq 2048; micro-batch: ours 48, transformers eager 16, compiled 48; ...'.
    A row without the shape columns has the profile's shape."""
    shape = PROFILES[profile]
    seq, accum = fast.get("seq_len") or shape.seq_len, fast.get("grad_accum") or str(shape.grad_accum)
    mb = [r.get("micro_batch") or str(shape.micro_batch) for r in (fast, hfe, hfc)]
    with_accum = "_with_accum" if accum != "1" else ""
    if len(set(mb)) == 1:
        return say("findings", "shape" + with_accum, seq=seq, micro_batch=mb[0], accum=accum)
    return say("findings", "swept_shape" + with_accum, seq=seq, accum=accum, ours=mb[0], eager=mb[1], compiled=mb[2])


def speed_findings(bench_dir: str, readme_dir: str) -> list[str]:
    """Our default path against transformers, per profile (bench_<profile>.csv, or a run of the two alone)."""
    out = []
    seed = rows_by(os.path.join(bench_dir, "bench_seed.csv"), "impl")
    thr = rows_by(os.path.join(bench_dir, "bench_throughput.csv"), "impl")
    for name, rows in (("seed", seed), ("throughput", thr)):
        fast = default_path_row(rows, name)
        hfe, hfc = rows.get("hf_eager"), rows.get("hf_compile")
        if not (fast and hfe and hfc):
            continue
        tf, te, tc = (float(r["tokens_per_s"]) for r in (fast, hfe, hfc))
        out.append(say("findings", "speed", what=say("findings", name, shape=shape_text(name, fast, hfe, hfc)),
                       card=fast["card"], impl=fast["impl"], tf=tf, mfu=100 * float(fast["mfu"]), xe=tf / te, te=te,
                       xc=tf / tc, tc=tc, mf=float(fast["peak_mem_gb"]), me=float(hfe["peak_mem_gb"]),
                       mc=float(hfc["peak_mem_gb"]), csv=rel(os.path.join(bench_dir, f"bench_{name}.csv"), readme_dir)))
    vs_path = os.path.join(bench_dir, "bench_throughput_vs_compile.csv")  # a run of the two alone
    vs = rows_by(vs_path, "impl")
    fast, hfc = default_path_row(vs), vs.get("hf_compile")
    if fast and hfc and not (thr.get("hf_compile") and thr.get("hf_eager")):
        tf, tc = float(fast["tokens_per_s"]), float(hfc["tokens_per_s"])
        out.append(say("findings", "speed_against_compile", card=fast["card"], tf=tf, mfu=100 * float(fast["mfu"]),
                       xc=tf / tc, tc=tc, mf=float(fast["peak_mem_gb"]), mc=float(hfc["peak_mem_gb"]),
                       csv=rel(vs_path, readme_dir)))
    return out


def benchmark_findings(bench_dir: str, readme_dir: str) -> list[str]:
    """The largest micro-batch, loss equivalence, where the time goes, several GPUs."""
    out = []
    mb_path = os.path.join(bench_dir, "bench_max_batch.csv")
    mb = [r for r in rows_of(mb_path) if number(r.get("max_micro_batch"))]
    if mb:
        out.append(say("findings", "max_batch", card=mb[0]["card"], memory=mb[0]["card_memory_gb"],
                       sizes=", ".join(f"`{r['impl']}` {r['max_micro_batch']}" for r in mb), csv=rel(mb_path, readme_dir)))
    eq = os.path.join(bench_dir, "loss_equivalence.json")
    if os.path.isfile(eq):
        e = read_json(eq)
        noise = "max_bf16_noise" in e
        out.append(say("findings", "same_numbers_beside_bf16_noise" if noise else "same_numbers", steps=e["steps"],
                       max=e["max_abs_diff"], mean=e["mean_abs_diff"], noise_max=e.get("max_bf16_noise"),
                       noise_mean=e.get("mean_bf16_noise"), fast=e["final_fast"], eager=e["final_eager"],
                       plot=rel(os.path.join(bench_dir, "loss_equivalence.png"), readme_dir)))
    tb_path = os.path.join(bench_dir, "time_breakdown_throughput.csv")
    tb = rows_by(tb_path, "impl")
    r = tb.get("ours_compile") or tb.get("ours_fast")
    groups = sorted(((k[:-3], number(v)) for k, v in r.items() if k.endswith(" ms") and number(v)),
                    key=lambda kv: -kv[1]) if r else []
    if groups:
        out.append(say("findings", "time_breakdown", card=r.get("card", ""), ms=number(r["ms_per_step"]),
                       groups=", ".join(f"{k} {v:.1f}" for k, v in groups[:3]), csv=rel(tb_path, readme_dir),
                       notes=rel(os.path.join(bench_dir, "NOTES.md"), readme_dir)))
    for mg_path in sorted(glob.glob(os.path.join(bench_dir, "multigpu_*.csv"))):
        if line := multigpu_finding(mg_path, readme_dir):
            out.append(line)
    return out


def ablation_findings(args, readme_dir: str) -> list[str]:
    """The fastest variant at seq 2048, and the fast path against the baseline at the seed's shape."""
    out = []
    thr_abl = rows_by(args.throughput_csv, "variant")
    ok = {k: r for k, r in thr_abl.items() if r.get("status") == "ok" and number(r.get("avg_tok_s_steady"))}
    if ok:
        best = max(ok.values(), key=lambda r: number(r["avg_tok_s_steady"]))
        tok_s = number(best["avg_tok_s_steady"])
        failed = sorted(k for k, r in thr_abl.items() if r.get("status") in ("oom", "error"))
        ref = ok.get("hf_reference")
        reference = say("findings", "against_reference", x=tok_s / number(ref["avg_tok_s_steady"]),
                        ref=number(ref["avg_tok_s_steady"])) if ref else ""
        failed = say("findings", "did_not_run", variants=", ".join(f"`{k}`" for k in failed)) if failed else ""
        out.append(say("findings", "fastest_variant", batch=best["batch_size"], device=best.get("device_name", ""),
                       variant=best["variant"], tok_s=tok_s, reference=reference, failed=failed,
                       csv=rel(args.throughput_csv, readme_dir)))
    abl = rows_by(args.ablation_csv, "variant")
    base, fast = abl.get("baseline"), abl.get("fast")
    if base and fast and base.get("avg_tok_s_steady") and fast.get("avg_tok_s_steady"):
        tb, tf = float(base["avg_tok_s_steady"]), float(fast["avg_tok_s_steady"])
        out.append(say("findings", "ablation", steps=fast["steps"], device=fast.get("device_name", ""), tb=tb, tf=tf,
                       x=tf / tb))
    return out


def readme_run_finding(run: Optional[RunSummary]) -> list[str]:
    """The README's run: its wall time, speed and losses, from its records."""
    if run is None or not (run.train and run.done):
        return []
    s, done, walls, h = run, run.done, run.walls, run.header
    took = ", ".join(say("findings", "seconds", s=w.get("startup_s", 0) + w.get("loop_s", 0)) for w in walls)
    where = say("findings", "device_and_torch", device=h["device_name"], torch=h["torch"]) \
        if h.get("device_name") and h.get("torch") else say("findings", "logged_device")
    return [say("findings", "seed_run", where=where, last=s.train[-1][0], wall=sum(d["seconds"] for d in done),
                runs=len(done), tok_s=done[0]["tok_s"], resumes=", ".join(map(str, s.resumes)) or say("findings", "no_resume"),
                first_loss=s.train[0][1], last_loss=s.train[-1][1],
                val=say("findings", "seed_run_val", loss=s.val[-1][1]) if s.val else "",
                commands=say("findings", "seed_run_commands", took=took) if walls else "")]


def findings_block(args, run: Optional[RunSummary], readme_dir: str) -> tuple[str, str]:
    """Headline findings as sentences whose every number is read from a result file."""
    out = (speed_findings(args.bench_dir, readme_dir) + benchmark_findings(args.bench_dir, readme_dir)
           + ablation_findings(args, readme_dir) + readme_run_finding(run))
    if not out:
        return say("findings", "missing"), "placeholder"
    return "\n".join(out), f"{len(out)} findings"


def page_link(page: str, readme_dir: str, docs_dir: Optional[str]) -> str:
    """A docs page's link from the README's folder."""
    return link(os.path.join(docs_dir or os.path.join(readme_dir, "docs"), page), readme_dir)


def eval_headline(eval_dir: str, readme_dir: str, docs_dir: Optional[str] = None) -> list[str]:
    """Bits per byte of a trained checkpoint and of the released weights on the same held-out text: the seed's
    run on Tiny Shakespeare's, and the realdocs run on realdocs' (the ids the released weights were scored on)."""
    def scored(stem: str) -> Optional[dict]:
        path = os.path.join(eval_dir, stem + ".json")
        return read_json(path) if os.path.isfile(path) else None

    seed, released = scored("seed_bpb_tinyshakespeare_val"), scored("released_bpb_tinyshakespeare_val")
    if not (seed and released):
        return []
    realdocs = ""
    for suffix, ids in (("", "all_ids"), ("_first65536", "first_ids")):  # the whole split first
        real, real_released = scored(f"realdocs_run_bpb_realdocs_val{suffix}"), scored(f"released_bpb_realdocs_val{suffix}")
        if real and real_released:
            realdocs = say("headlines", "realdocs", ids=say("headlines", ids, n=real["tokens"] + 1), run=real["bpb"],
                           released=real_released["bpb"])
            break
    return [say("headlines", "how_good", seed=seed["bpb"], released=released["bpb"], realdocs=realdocs,
                page=page_link("evaluation.md", readme_dir, docs_dir))]


def shares_said(shares: list[float]) -> str:
    """'0.46-0.52x' for several shares, '0.48x' for one."""
    if len(shares) > 1:
        return say("headlines", "share_range", low=min(shares), high=max(shares))
    return say("headlines", "share", x=shares[0])


def shorter_horizon(bench_dir: str) -> str:
    """'Trained for 200 steps it needs 0.46-0.52x of that AdamW's time (6 runs ...)': the default Muon recipe over
    a shorter horizon (`muon_wsd_5e-3_n<steps>`, the horizon with the most runs) against the best AdamW of each
    run's own process, over every run on file; '' without one."""
    shares: dict[int, list[float]] = {}
    for path in sorted(glob.glob(os.path.join(bench_dir, "quality_*_ttl.csv"))):
        for t in against_best_adamw(read_csv(path)[1]):
            m = re.fullmatch(re.escape(DEFAULT_MUON) + r"_n(\d+)", t["recipe"])
            if m and t["reached"] == "True":
                shares.setdefault(int(m.group(1)), []).append(number(t["share_of_reference_time"]))
    if not shares:
        return ""
    steps, got = max(shares.items(), key=lambda kv: (len(kv[1]), -kv[0]))
    return say("headlines", "shorter_horizon", steps=steps, said=shares_said(got), n=len(got), s=plural(len(got)))


def largest_batch(bench_dir: str, horizon: str) -> str:
    """'at micro-batch 48 ... needs 0.46x and 0.48x ...': the default Muon recipe against the best AdamW of each
    micro-batch-48 run present (each share within its run), or '' without one; after `horizon`'s sentence, or
    as a sentence of its own."""
    shares, mb = [], None
    for section in MB48_SECTIONS:
        stem = os.path.join(bench_dir, f"quality_{section}")
        if not os.path.isfile(stem + "_ttl.csv") or not os.path.isfile(stem + "_runs.csv"):
            continue
        mb = read_csv(stem + "_runs.csv")[1][0]["micro_batch"]
        shares += [number(t["share_of_reference_time"]) for t in against_best_adamw(read_csv(stem + "_ttl.csv")[1])
                   if t["recipe"] == DEFAULT_MUON and t["reached"] == "True"]
    if not shares:
        return ""
    said = " and ".join(say("headlines", "share", x=x) for x in sorted(shares))
    return say("headlines", "largest_batch_after" if horizon else "largest_batch", micro_batch=mb, recipe=DEFAULT_MUON,
               said=said, n=len(shares), s=plural(len(shares)))


def quality_headline(bench_dir: str, readme_dir: str, docs_dir: Optional[str] = None) -> list[str]:
    """Muon's best recipe (the default for large steps) against AdamW on the real corpus: the share of each
    AdamW reference's wall-clock it needs to reach that reference's final held-out loss, from one run."""
    stem = first_quality_run(bench_dir, HEADLINE_SECTIONS)  # the newest sweep present
    if stem is None:
        return []
    runs = [r for r in read_csv(stem + "_runs.csv")[1] if r["optimizer"] == "muon" and number(r["final_val_loss"])]
    if not runs:
        return []
    muon = min(runs, key=lambda r: number(r["final_val_loss"]))
    ttl = read_csv(stem + "_ttl.csv")[1]
    reference = {t["target"]: t["recipe"] for t in ttl if number(t["share_of_reference_time"]) == 1.0}
    shares = [t for t in ttl if t["recipe"] == muon["recipe"] and t["reached"] == "True" and t["target"] in reference]
    if not shares:
        return []
    reached = " and ".join(say("headlines", "reached_next" if i else "reached_first", reference=reference[t["target"]],
                               loss=number(t["target_loss"]), share=number(t["share_of_reference_time"]))
                           for i, t in enumerate(shares))
    horizon = shorter_horizon(bench_dir)
    more = horizon + largest_batch(bench_dir, horizon)
    line = say("headlines", "muon_and_more" if more else "muon", card=muon["card"], recipe=muon["recipe"],
               reached=reached, loss=number(muon["final_val_loss"]), more=more,
               page=page_link("quality.md", readme_dir, docs_dir))
    plot = stem + ".png"  # the same run's held-out loss against wall-clock and tokens
    if not os.path.isfile(plot):
        return [line]
    return [line, "\n" + say("headlines", "muon_plot", plot=link(plot, readme_dir)) + "\n"]


def headlines_block(args, run: Optional[RunSummary], readme_dir: str) -> tuple[str, str]:
    """The README's first-screen numbers: a few short lines, each read from a result file and naming its card."""
    out = []
    for profile in ("seed", "throughput"):
        path = os.path.join(args.bench_dir, f"bench_{profile}.csv")
        rows = rows_by(path, "impl")
        fast, hfe, hfc = default_path_row(rows, profile), rows.get("hf_eager"), rows.get("hf_compile")
        if not (fast and hfc):
            continue
        tf, tc = float(fast["tokens_per_s"]), float(hfc["tokens_per_s"])
        xe = tf / float(hfe["tokens_per_s"]) if hfe else 0.0
        out.append(say("headlines", "speed_beside_eager" if hfe else "speed", tf=tf, what=say("headlines", profile),
                       mfu=100 * float(fast["mfu"]), xe=xe, digits=0 if xe >= 10 else 1, xc=tf / tc, card=fast["card"],
                       csv=rel(path, readme_dir), link=link(path, readme_dir)))
    if run is not None and run.walls and run.train:
        took = " and ".join(say("headlines", "seconds", s=w.get("startup_s", 0) + w.get("loop_s", 0)) for w in run.walls)
        out.append(say("headlines", "seed_run", steps=run.train[-1][0], took=took,
                       where=run.header.get("device_name") or say("headlines", "logged_device"),
                       log=link(args.train_log, readme_dir)))
    out += quality_headline(args.bench_dir, readme_dir, args.docs_dir)
    out += eval_headline(args.eval_results, readme_dir, args.docs_dir)
    best = None
    for path in sorted(glob.glob(os.path.join(args.bench_dir, "multigpu_*.csv"))):
        for r in read_csv(path)[1]:
            eff, n = number(r.get("scaling_efficiency")), int(number(r.get("world_size")) or 0)
            if r.get("status") == "ok" and eff and n > 1 and (best is None or (n, eff) > best[0]):
                best = ((n, eff), r, path)
    if best:
        (n, eff), r, path = best
        out.append(say("headlines", "several_gpus", n=n, pct=100 * eff, impl=r["impl"], card=r["card"],
                       csv=rel(path, readme_dir), link=link(path, readme_dir)))
    if not out:
        return say("headlines", "missing"), "placeholder"
    return "\n".join(out), f"{sum(line.startswith('- ') for line in out)} headlines"


# ----------------------------------------------------------------------------------------------
# markers and writing


def marker_span(text: str, name: str) -> Optional[tuple[int, int]]:
    """(end of the BEGIN line, start of the END line), None if the pair is absent.

    Raises MarkerError when only one half is there, either appears twice, or END comes first.
    """
    found = []
    for half in ("BEGIN", "END"):
        ms = list(re.finditer(rf"^[ \t]*<!-- {name}_{half} -->[ \t]*$", text, re.MULTILINE))
        if len(ms) > 1:
            raise MarkerError(f"<!-- {name}_{half} --> appears {len(ms)} times")
        found.append(ms[0] if ms else None)
    b, e = found
    if b is None and e is None:
        return None
    if b is None or e is None:
        raise MarkerError(f"<!-- {name}_{'BEGIN' if b is None else 'END'} --> is missing")
    if e.start() < b.end():
        raise MarkerError(f"<!-- {name}_END --> comes before <!-- {name}_BEGIN -->")
    return b.end(), e.start()


def check_markers(text: str) -> dict[str, Optional[tuple[int, int]]]:
    """The span of every known block in one page; MarkerError for an unpaired or repeated marker."""
    spans, problems = {}, []
    for name in REQUIRED + OPTIONAL:
        try:
            spans[name] = marker_span(text, name)
        except MarkerError as err:
            problems.append(str(err))
    if problems:
        raise MarkerError("; ".join(problems))
    return spans


def check_pages(pages: dict[str, str]) -> dict[str, dict[str, Optional[tuple[int, int]]]]:
    """Spans per page. Each block lives on one page only, and the required ones on some page."""
    spans, problems, home = {}, [], {}
    for path, text in pages.items():
        try:
            spans[path] = check_markers(text)
        except MarkerError as err:
            problems.append(f"{path}: {err}")
            continue
        for name, span in spans[path].items():
            if span is not None and name in home:
                problems.append(f"<!-- {name}_BEGIN --> is in both {home[name]} and {path}")
            if span is not None:
                home.setdefault(name, path)
    problems += [f"<!-- {name}_BEGIN --> / <!-- {name}_END --> missing (in {' and '.join(pages)})"
                 for name in REQUIRED if name not in home and not problems]
    if problems:
        raise MarkerError("; ".join(problems))
    return spans


def fill(text: str, blocks: dict[str, str]) -> str:
    spans = check_markers(text)
    # Replace from the back so earlier offsets stay valid.
    for name, (a, b) in sorted(((n, sp) for n, sp in spans.items() if sp and n in blocks),
                               key=lambda kv: kv[1][0], reverse=True):
        text = text[:a] + "\n" + blocks[name].strip("\n") + "\n" + text[b:]
    return text


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--readme", default="README.md", help="README to fill in place")
    p.add_argument("--docs_dir", default=None,
                   help="folder of further pages (*.md) whose blocks are filled too (default: docs/ beside --readme)")
    p.add_argument("--train_log", default=None,
                   help="log written by train.py (default: out_smollm2_scratch/train.log, which must be the seed's "
                        "pair: the 135M model at seq 256 x 1 x accum 4, then its resume; a log named here needs only "
                        "the resume)")
    p.add_argument("--ablation_csv", default="ablation_results_500steps_profiles/ablation_results.csv",
                   help="ablation table written by train_ablation.py")
    p.add_argument("--ablation_dir", default=None,
                   help="folder whose *.png are linked beside the ablation table (default: the CSV's folder)")
    p.add_argument("--throughput_csv", default="ablation_results_throughput/ablation_results.csv",
                   help="second ablation table for THROUGHPUT_TABLE; its folder's *.png are linked")
    p.add_argument("--bench_dir", default="benchmarks", help="folder with bench_*.csv, multigpu*.csv and *.png")
    p.add_argument("--loss_plot", default=None,
                   help="loss-curve PNG drawn from --train_log (default: loss_curve.png beside --train_log)")
    p.add_argument("--previous_train_log", default=None,
                   help="the README's run before the default path changed; drawn beside the current one when present "
                        "(default: train_previous.log beside --train_log)")
    p.add_argument("--comparison_plot", default=None,
                   help="the PNG of --previous_train_log against --train_log (default: loss_curve_vs_previous.png "
                        "beside --train_log)")
    p.add_argument("--data_results", default="results/realdocs",
                   help="folder of the real-corpus run: manifest_summary.json, prepare.log, train.log")
    p.add_argument("--eval_results", default="results/eval", help="folder of evaluate.py's result JSON files")
    args = p.parse_args(argv)
    args.seed_run_only = args.train_log is None  # the default folder: only the seed's own pair may fill it
    args.train_log = args.train_log or os.path.join("out_smollm2_scratch", "train.log")
    run_dir = os.path.dirname(args.train_log)  # a log elsewhere (a test's) never touches the README run's files
    args.loss_plot = args.loss_plot or os.path.join(run_dir, "loss_curve.png")
    args.previous_train_log = args.previous_train_log or os.path.join(run_dir, "train_previous.log")
    args.comparison_plot = args.comparison_plot or os.path.join(run_dir, "loss_curve_vs_previous.png")
    args.docs_dir = args.docs_dir or os.path.join(os.path.dirname(args.readme), "docs")
    pages = {}
    for path in [args.readme] + sorted(glob.glob(os.path.join(args.docs_dir, "*.md"))):
        try:
            with open(path, encoding="utf-8") as f:
                pages[path] = f.read()
        except (OSError, UnicodeDecodeError) as err:
            print(f"update_readme: error: cannot read {path}: {getattr(err, 'strerror', None) or err}", file=sys.stderr)
            return 2
    try:
        return fill_pages(args, pages, check_pages(pages))
    except MarkerError as err:
        print(f"update_readme: error: {err}", file=sys.stderr)
    except InputError as err:
        print(f"update_readme: error: {err}; {', '.join(pages)} left as they were", file=sys.stderr)
    return 2


def fill_pages(args, pages: dict[str, str], spans: dict) -> int:
    notes = []
    log_text = read_train_log(args.train_log)
    run = run_summary(args.train_log, log_text) if log_text is not None else None
    why_not = not_the_readme_run(run, args.seed_run_only) if run is not None else None
    if why_not:
        # A first short run in the default folder must not replace the README's record of the seed's run: every
        # block drawn from it keeps its committed text, and so does the plot.
        kept = [name for name in RUN_BLOCKS if any(page.get(name) for page in spans.values())]
        notes.append(f"{', '.join(kept)} and the loss plot left as they were: {args.train_log} is not the README's "
                     f"run ({why_not}); run the seed's step A and step B there, or name a resumed run's log with --train_log")
    plot = None  # drawn first, so that the pages link it only when it is current
    if run is not None and not why_not:
        if not (run.train or run.val):
            notes.append("plot skipped (no step lines in log)")
        else:
            try:
                changed = write_if_changed(args.loss_plot, render_loss_plot(
                    run, released_reference(args.eval_results, "tinyshakespeare")))
                plot = args.loss_plot
                notes.append(f"plot {'written' if changed else 'unchanged'}")
            except ImportError:
                notes.append("plot skipped (matplotlib missing)")
    ablation_png_dir = args.ablation_dir or os.path.dirname(args.ablation_csv) or "."
    makers: dict[str, Callable[[str], tuple[str, str]]] = {  # each block from the folder of the page it is on
        "TRAIN_LOG": lambda d: train_log_block(args.train_log, log_text, run, plot, d),
        "ABLATION_TABLE": lambda d: csv_block(args.ablation_csv, ablation_png_dir, d, "ablation"),
        "THROUGHPUT_TABLE": lambda d: csv_block(args.throughput_csv, os.path.dirname(args.throughput_csv) or ".", d,
                                                "throughput"),
        "BENCH_TABLE": lambda d: bench_block(args.bench_dir, d),
        "MULTIGPU_TABLE": lambda d: multigpu_block(args.bench_dir, d),
        "MICROBATCH_TABLE": lambda d: microbatch_block(args.bench_dir, d),
        "SEED_E2E": lambda d: seed_e2e_block(args.bench_dir, d),
        "FINDINGS": lambda d: findings_block(args, run, d),
        "HEADLINES": lambda d: headlines_block(args, run, d),
        "DATA_RESULTS": lambda d: data_results_block(args.data_results, args.bench_dir, d, args.eval_results),
        "EVAL_RESULTS": lambda d: eval_block(args.eval_results, d),
        "QUALITY": lambda d: quality_block(args.bench_dir, d),
        "EVAL_SPEED": lambda d: eval_speed_block(args.bench_dir, d),
    }
    new_pages, filled = {}, []
    for path, text in pages.items():
        d, blocks = os.path.dirname(os.path.abspath(path)), {}
        for name, make in makers.items():
            if spans[path].get(name) and not (name in RUN_BLOCKS and why_not):
                blocks[name], note = make(d)
                filled.append(f"{name} ({note})")
        if "TRAIN_LOG" in blocks:
            blocks["TRAIN_LOG"] += comparison(args, log_text, run, d, notes)
        new_pages[path] = fill(text, blocks)
    changed = [path for path, text in new_pages.items()
               if text != pages[path] and write_if_changed(path, text.encode("utf-8"))]
    print(f"update_readme: {', '.join(changed) + ' updated' if changed else 'no page changed'}; filled "
          + ", ".join(filled) + ("; " + "; ".join(notes) if notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
