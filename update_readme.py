"""Fill the marker blocks of README.md and docs/*.md from the files the scripts wrote (never typed by hand).

A block is the text between a `<!-- NAME_BEGIN -->` and a `<!-- NAME_END -->` line, replaced in full; TRAIN_LOG
and ABLATION_TABLE are required, the rest optional. A block's words are docs/templates/<name>.md (THROUGHPUT_TABLE
shares ablation_table.md), whose first line says what it shows. smollm2/report.py and smollm2/findings.py render
the blocks from the results files (read through smollm2/results.py) and draw the loss curve from the run's
records (smollm2.metrics.read_events); this script finds the markers, decides which blocks the README's run may
fill, and writes the pages.

Idempotent: a page or PNG is rewritten only when its bytes would change, atomically. Missing inputs leave a
placeholder and exit 0. A marker missing, repeated or unpaired, or an input it cannot parse, exits 2 with one
line and every page as it was. A log in the default folder that is not the seed's pair (step A, then its
resume) leaves the blocks drawn from it (TRAIN_LOG, HEADLINES, FINDINGS) and the loss plot as they were.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Callable, Optional

from smollm2.common import OneLineParser, SmolError, run_cli
from smollm2.findings import findings_block, headlines_block
from smollm2.io import write_if_changed
from smollm2.metrics import RunSummary, log_events, summarize
from smollm2.report import (bench_block, csv_block, data_results_block, eval_block, eval_speed_block, microbatch_block,
                            multigpu_block, quality_block, released_reference, render_comparison_plot, render_loss_plot,
                            seed_e2e_block, train_log_block)
from smollm2.results import InputError, link, read_train_log, rel, run_summary, say

REQUIRED = ("TRAIN_LOG", "ABLATION_TABLE")
OPTIONAL = ("THROUGHPUT_TABLE", "BENCH_TABLE", "MULTIGPU_TABLE", "MICROBATCH_TABLE", "SEED_E2E", "FINDINGS",
            "HEADLINES", "DATA_RESULTS", "EVAL_RESULTS", "QUALITY", "EVAL_SPEED")
RUN_BLOCKS = ("TRAIN_LOG", "HEADLINES", "FINDINGS")  # drawn from the README's run: kept as they are without it
SEED_SHAPE, SEED_MODEL = {"seq_len": 256, "batch_size": 1, "grad_accum": 4}, "smollm2-135m"  # the README's run


class MarkerError(SmolError):
    """A page's markers are missing, repeated or unpaired."""

    code = 2


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
    p = OneLineParser(description=__doc__.split("\n")[0])
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
    p.add_argument("--bench_dir", default=os.path.join("results", "bench"),
                   help="folder of the benchmark result files: bench_*.csv, multigpu*.csv, quality_*, *.png")
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
    p.add_argument("--time_to_loss", default="results/time_to_loss",
                   help="folder of benchmarks/time_to_loss.py's <corpus>_runs.csv tables")
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
            raise InputError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from err
    spans = check_pages(pages)
    try:
        return fill_pages(args, pages, spans)
    except InputError as err:
        raise InputError(f"{err}; {', '.join(pages)} left as they were") from err


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
    run_cli(main, "update_readme.py")
