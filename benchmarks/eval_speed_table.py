"""The evaluation speed table: what `benchmarks/device_eval.sh speed` measured, one row per command, all from
one call on one card.

    python benchmarks/eval_speed_table.py OUT_DIR --out results/bench/eval_speed   (writes .csv and .json)

OUT_DIR holds speed.jsonl (each command's whole-process seconds, written by the runbook) and the JSON each
evaluate.py command wrote (speed_<name>.json): its scoring seconds (the clock starts after the model is on the
device; with --compile 1 the compile is timed apart, as compile_s) and its numbers. lm-evaluation-harness reports
no clock of its own, so its row has only the process seconds (export to an HF folder and the harness's own
loading included); the rows of this repo's scorer have both, so the two compare process to process.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from smollm2.common import OneLineParser, UsageError, run_cli  # noqa: E402
from smollm2.io import write_table  # noqa: E402

COLUMNS = ["what", "scorer", "work", "scoring_s", "compile_s", "process_s", "acc", "acc_norm", "bpb", "device",
           "torch"]


def row(name: str, process_s: float, result: dict) -> dict:
    lm_eval = result.get("task") == "lm_eval"
    metrics = next(iter(result["results"].values())) if lm_eval else result
    work = (f"{metrics.get('sample_len', 0):,} four-way items" if lm_eval else
            f"{result['items']:,} four-way items" if "items" in result else f"{result['tokens']:,} ids")
    return dict(what=name, scorer=result.get("harness") or "evaluate.py", work=work,
                scoring_s=None if lm_eval else round(result["seconds"], 2),
                compile_s=round(result["compile_s"], 2) if result.get("compile_s") is not None else None,
                process_s=process_s, acc=metrics.get("acc,none", metrics.get("acc")),
                acc_norm=metrics.get("acc_norm,none", metrics.get("acc_norm")), bpb=result.get("bpb"),
                device=result["device"], torch=result["torch"])


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--out", default=os.path.join("results", "bench", "eval_speed"), help="path stem: .csv and .json")
    args = p.parse_args(argv)
    rows = []
    with open(os.path.join(args.out_dir, "speed.jsonl"), encoding="utf-8") as f:
        for line in f:
            timing = json.loads(line)
            path = os.path.join(args.out_dir, f"speed_{timing['what']}.json")
            if not os.path.isfile(path):  # the command failed: its output says why; no row for it
                print(f"no {path}: {timing['what']} left out", file=sys.stderr)
                continue
            with open(path, encoding="utf-8") as g:
                rows.append(row(timing["what"], timing["process_s"], json.load(g)))
    if not rows:
        raise UsageError("no timed command left a result")
    write_table(args.out, [{k: r[k] for k in COLUMNS} for r in rows])
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    run_cli(main, "eval_speed_table.py")
