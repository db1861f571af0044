"""The pages' blocks rendered from the result files, each as (Markdown, a note): the ablation and benchmark tables,
the README's and the real-corpus run with their loss plots, evaluate.py's results, benchmarks/quality.py's runs."""

from __future__ import annotations

import glob
import io
import json
import os
import re
from typing import Callable, Optional

from smollm2.io import write_if_changed
from smollm2.metrics import RunSummary, number
from smollm2.results import (MISSING, InputError, fmt, images, labels, link, markdown_table, plural, read_csv, read_json,
                             read_train_log, rel, rows_of, run_summary, say)
from smollm2.switches import SAME_AS, SWITCH_PAIRS

DATA_PREP_COLUMNS = ["machine", "cpu_model", "measurement", "pipeline", "workers", "corpus_mb", "tokens", "wall_s",
                     "tokens_per_s", "tokens_per_cpu_s", "peak_rss_tree_mb", "peak_pss_tree_mb"]

# Known column names -> (header, fmt); everything else is shown as written.
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


# ----------------------------------------------------------------------------------------------
# plots


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
# TRAIN_LOG


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
    """results/bench/eval_speed*.csv (benchmarks/eval_speed_table.py): evaluate.py and lm-evaluation-harness on the
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
    # a sweep since quality.py drove train.py records each row's command; the earlier ones ran in one process
    parts = [say("quality", "section_processes" if first.get("command") else "section", what=what,
                 card=first.get("card", ""), csv=rel(stem + "_runs.csv", readme_dir)),
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
