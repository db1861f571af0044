"""The FINDINGS and HEADLINES blocks: sentences whose every number is read from a result file, each naming its card."""

from __future__ import annotations

import glob
import os
from typing import Optional

from smollm2.metrics import RunSummary, number
from smollm2.results import link, plural, read_csv, read_json, rel, rows_by, rows_of, say
from smollm2.switches import DEFAULT_PATH, PROFILES, SEED_PATH

# The time-to-loss tables (results/time_to_loss/<stem>_runs.csv) of the README's quality line: per corpus, the
# full-horizon default's table, its horizon-halved run's (each against the best AdamW of its own process; one table
# can hold both) and, where that table's `default` is not today's defaults, what it ran instead (the line says so
# beside that corpus's share). The line holds on all of them.
# realdocs_warmup2's default is today's (2.5% lr warmup, momentum warmup); it has no horizon-halved run, so the
# line's 200-step clause names pystdlib's only. pystdlib_levers' default ran the 5% lr warmup before (no run since).
TIME_TO_LOSS_RUNS = (("realdocs_warmup2", "realdocs_warmup2", ""),
                     ("pystdlib_levers", "pystdlib_levers", "the 5% lr warmup"))

# How the benchmark numbers were taken: benchmarks/NOTES.md, beside the scripts (the result files are in --bench_dir).
BENCH_NOTES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "NOTES.md")


def default_path_row(rows: dict[str, dict[str, str]], profile: str = "throughput") -> Optional[dict[str, str]]:
    """train.py's default path in a bench table: for the seed profile what the seed's 5,000-step command runs
    (SEED_PATH, --compile_scope auto), else DEFAULT_PATH; tables measured before those existed hold ours_fast."""
    return (profile == "seed" and rows.get(SEED_PATH)) or rows.get(DEFAULT_PATH) or rows.get("ours_fast")


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
                       notes=rel(BENCH_NOTES, readme_dir)))
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


def quality_headline(ttl_dir: str, readme_dir: str, docs_dir: Optional[str] = None) -> list[str]:
    """The defaults against the best-tuned AdamW on every corpus of TIME_TO_LOSS_RUNS (train.py processes, one per
    recipe, benchmarks/time_to_loss.py): the largest share of AdamW's wall-clock the default needs to reach
    AdamW's final held-out loss, each corpus's share, and where the horizon-halved default ends against that
    loss. Nothing is claimed unless every corpus's table is there and the default reached AdamW's loss on each."""
    table = lambda stem: {r["recipe"]: r for r in rows_of(os.path.join(ttl_dir, f"{stem}_runs.csv"))}  # noqa: E731
    pairs = [(table(full), table(halved), before) for full, halved, before in TIME_TO_LOSS_RUNS]
    runs = [r for r, _, _ in pairs]
    if not all(number(r.get("default", {}).get("share")) for r in runs):  # a table missing, or never reached
        return []
    shares, margins, cards, below, above, half_steps = [], [], set(), [], [], 0
    for r, h, before in pairs:
        d, adamw = r["default"], r[r["default"]["reference"]]
        shares.append(say("headlines", "corpus_share", corpus=d["corpus"], share=number(d["share"]),
                          before=say("headlines", "share_before", before=before) if before else ""))
        margins.append(number(adamw["final_val_loss"]) - number(d["final_val_loss"]))
        cards.add(d["card"])
        if half := h.get("default_half"):
            half_steps = int(number(half["steps"]))
            (below if half["ends_at_or_below"] == "True" else above).append(
                say("headlines", "half_end", corpus=half["corpus"], loss=number(half["final_val_loss"]),
                    ref=number(h[half["reference"]]["final_val_loss"])))
    half = ""
    if below or above:
        half = say("headlines", "half_above" if above else "half_below", steps=half_steps,
                   below=" and ".join(below), above=" and ".join(above),
                   on=say("headlines", "on_below", below=" and ".join(below)) if below and above else "")
    return [say("headlines", "muon", worst=max(number(r["default"]["share"]) for r in runs), shares=", ".join(shares),
                n=len(runs), steps=int(number(runs[0]["default"]["steps"])), card=" and ".join(sorted(cards)),
                lower=min(margins), half=half, page=page_link("quality.md", readme_dir, docs_dir))]


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
    out += quality_headline(args.time_to_loss, readme_dir, args.docs_dir)
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
