"""Data-preparation benchmark: how fast prepare_data.py turns documents into token shards, how much memory
it takes on a large corpus, how a nanoGPT-style `datasets` pipeline does on the same corpus, and whether
training's memory stays flat over a long run on many shards.

    python benchmarks/bench_data.py                          # everything: 200 MB throughput corpus, 2 GB corpus, 10k steps
    python benchmarks/bench_data.py --what throughput,yardstick --workers 1,2 --corpus_mb 20
    python benchmarks/bench_data.py --what rss               # peak memory on the 2 GB corpus (generated once, reused)
    python benchmarks/bench_data.py --what train_rss --max_steps 500

Measurements (--what):
  throughput  prepare_data.py end to end (read, tokenize, write) as a subprocess, for each --workers
  yardstick   nanoGPT's openwebtext/prepare.py recipe on the same corpus and tokenizer: `datasets.load_dataset`,
              `train_test_split`, `.map(batched=True, num_proc=N)` appending the end-of-text id, one uint16
              np.memmap per split written in 1024 pieces. A private HF_DATASETS_CACHE, deleted after.
  rss         prepare_data.py on a corpus of at least --rss_corpus_mb (default 2 GB, all cores): peak memory
  train_rss   train.py (tiny model, --train_device) on a folder prepared with small shards: RSS at the first log step
              and at --max_steps, and their ratio

Every prepare/yardstick/train run is a child process. Its memory is sampled every --interval s over the
whole process tree (the main process and its workers): the sum of RSS (counts pages the forked workers
share with their parent once per process: an upper bound), the sum of PSS (shared pages split among the
sharers: what the tree really holds) and the largest single process. Two kernel high-water marks check
that nothing peaked between samples: `hwm_sum_mb`, the per-process peaks (VmHWM) summed (an upper bound
on the tree's peak), and `ru_maxrss_mb`, the largest single process of the run, from os.wait4 (what
getrusage(RUSAGE_CHILDREN) reports, for this child alone: RUSAGE_CHILDREN accumulates over every child
waited for). Linux carries a parent's high-water mark into a child it forks and execs, so ru_maxrss is
never below this script's own peak when it launched the child (`launcher_hwm_mb`); this script stays small
for that reason (it writes the corpora from a child process). `cpu_s` is the user + system time of the
whole tree: tokens per CPU-second moves much less than tokens per second when other work shares the machine.

The synthetic corpora are documents of ../shared/data/realdocs and groups of Tiny Shakespeare paragraphs,
repeated in seeded shuffled passes up to the target size, written as --corpus_format files of --file_mb
under --work_dir (never inside the repo) and reused when present. Sizes are decimal: 1 MB = 1e6 bytes of text
(train_rss rows: corpus_mb is the size of the input files, compressed where they are).

Rows go to <out_dir>/data_prep.csv and .json, merged by (machine, measurement, workers, corpus_mb): runs on
other machines accumulate, a rerun replaces its own rows. Each row names the machine (hostname, cores, CPU
model, memory) and the versions. One JSON line per result is printed on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

import numpy as np
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this file lives in benchmarks/
if REPO not in sys.path:  # run as `python benchmarks/bench_data.py`: the repo's package beside it
    sys.path.insert(0, REPO)
from smollm2.common import OneLineParser, run_cli  # noqa: E402  (standard library only: children stay light)
from smollm2.io import merge_table  # noqa: E402  (standard library only: children stay light)
SHARED = os.path.join(os.path.dirname(REPO), "shared")
MEASUREMENTS = ("throughput", "yardstick", "rss", "train_rss")
FORMATS = ("jsonl.gz", "jsonl", "parquet")
KEY = ("machine", "measurement", "pipeline", "workers", "corpus_mb")
ENCODERS = ("tiktoken", "tokenizers")  # prepare_data.py --encoder, each measured
CORPUS_VERSION = 1  # bump when the generator changes: the cached corpora are keyed on it
RSS_TARGET_MB = 2000.0  # the whole process tree under 2 GB while preparing >= 2 GB
FLAT_TOLERANCE = 0.05  # training RSS at the last step within 5% of the first
MB = 1e6


def log(msg: str) -> None:
    print(f"[bench_data] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the machine
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(machine: str = "") -> dict:
    host = socket.gethostname()  # often generic on VMs ("vm", "localhost"): the key adds the core count
    return {"machine": machine or f"{host}/{os.cpu_count()}cpu", "hostname": host, "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "ram_gb": round(psutil.virtual_memory().total / 1e9, 1), "python": platform.python_version(),
            "tokenizers": _version("tokenizers"), "datasets": _version("datasets"), "pyarrow": _version("pyarrow"),
            "numpy": _version("numpy"), "torch": _version("torch"), "git_commit": _git("rev-parse", "--short", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


# ----------------------------------------------------------------------------- synthetic corpora
def document_pool(shared_dir: str, seed: int) -> list[str]:
    """Every realdocs document (txt files, jsonl.gz, parquet) and Tiny Shakespeare cut into documents of 1 to
    40 consecutive paragraphs (a seeded cut), in a fixed order."""
    realdocs = os.path.join(shared_dir, "data", "realdocs")
    docs: list[str] = []
    for path in sorted(glob.glob(os.path.join(realdocs, "**", "*"), recursive=True)):
        if path.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                docs.append(f.read())
        elif path.endswith(".jsonl.gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                docs += [json.loads(line)["text"] for line in f if line.strip()]
        elif path.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                log(f"pyarrow is not installed: {path} stays out of the document pool")
                continue
            docs += [t for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t]
    shakespeare = os.path.join(shared_dir, "data", "input.txt")
    if not os.path.exists(shakespeare):
        shakespeare = os.path.join(REPO, "input.txt")  # the repository's own copy
    if os.path.exists(shakespeare):
        with open(shakespeare, encoding="utf-8") as f:
            paras = [p for p in f.read().split("\n\n") if p.strip()]
        rng = np.random.default_rng([seed, 1])
        i = 0
        while i < len(paras):
            k = int(rng.integers(1, 41))
            docs.append("\n\n".join(paras[i:i + k]) + "\n")
            i += k
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise SystemExit(f"no documents found under {shared_dir}/data (realdocs/, input.txt); pass --shared_dir")
    return docs


def corpus_dir(work_dir: str, size_mb: float, seed: int, fmt: str, file_mb: float) -> str:
    return os.path.join(work_dir, f"corpus-v{CORPUS_VERSION}-{size_mb:g}MB-seed{seed}-{fmt}-{file_mb:g}MBfiles")


class _PartWriter:
    """Documents into numbered files of about file_bytes of text each."""

    def __init__(self, folder: str, fmt: str, file_bytes: int):
        self.folder, self.fmt, self.file_bytes = folder, fmt, file_bytes
        self.files: list[str] = []
        self.f, self.rows, self.in_file, self.is_open = None, [], 0, False

    def _open(self) -> None:
        path = os.path.join(self.folder, f"part-{len(self.files):05d}.{self.fmt}")
        self.files.append(path)
        if self.fmt == "jsonl.gz":
            self.f = gzip.open(path, "wt", encoding="utf-8", compresslevel=1)  # fast to write; reads like any gzip
        elif self.fmt == "jsonl":
            self.f = open(path, "w", encoding="utf-8")
        self.rows, self.in_file, self.is_open = [], 0, True

    def add(self, doc: str, n_bytes: int) -> None:
        if not self.is_open:
            self._open()
        if self.fmt == "parquet":
            self.rows.append(doc)
        else:
            self.f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
        self.in_file += n_bytes
        if self.in_file >= self.file_bytes:
            self.close()

    def close(self) -> None:
        if not self.is_open:
            return
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq
            pq.write_table(pa.table({"text": self.rows}), self.files[-1], row_group_size=1024, compression="zstd")
            self.rows = []
        else:
            self.f.close()
            self.f = None
        self.is_open = False


def make_corpus(work_dir: str, size_mb: float, seed: int = 1234, fmt: str = "jsonl.gz", file_mb: float = 50,
                shared_dir: str = SHARED) -> dict:
    """A corpus of at least size_mb MB of document text on disk; reused when its folder is complete.
    Returns its description (folder, files, text bytes, documents), also stored as corpus.json."""
    if fmt not in FORMATS:
        raise SystemExit(f"--corpus_format must be one of {', '.join(FORMATS)}, got {fmt}")
    folder = corpus_dir(work_dir, size_mb, seed, fmt, file_mb)
    marker = os.path.join(folder, "corpus.json")
    if os.path.exists(marker):
        with open(marker) as f:
            info = json.load(f)
        if all(os.path.exists(p) for p in info["files"]):
            log(f"reusing corpus {folder} ({info['text_bytes'] / MB:,.1f} MB of text, {info['documents']:,} documents)")
            return info
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    t0 = time.perf_counter()
    pool = document_pool(shared_dir, seed)
    sizes = [len(d.encode("utf-8")) for d in pool]
    target = int(size_mb * MB)
    writer = _PartWriter(folder, fmt, int(file_mb * MB))
    rng = np.random.default_rng(seed)
    written, n_docs, passes = 0, 0, 0
    while written < target:  # whole shuffled passes over the pool; the last one stops at the target
        passes += 1
        for i in rng.permutation(len(pool)):
            writer.add(pool[i], sizes[i])
            written += sizes[i]
            n_docs += 1
            if written >= target:
                break
    writer.close()
    info = {"folder": folder, "files": writer.files, "format": fmt, "size_mb": size_mb, "seed": seed,
            "text_bytes": written, "file_bytes": sum(os.path.getsize(p) for p in writer.files), "documents": n_docs,
            "passes": passes, "pool_documents": len(pool), "pool_bytes": sum(sizes), "version": CORPUS_VERSION}
    with open(marker + ".tmp", "w") as f:
        json.dump(info, f, indent=1)
    os.replace(marker + ".tmp", marker)
    log(f"wrote corpus {folder}: {written / MB:,.1f} MB of text, {n_docs:,} documents in {len(writer.files)} files "
        f"({info['file_bytes'] / MB:,.1f} MB on disk) in {time.perf_counter() - t0:.1f}s")
    return info


def make_corpus_in_child(*args) -> dict:
    """make_corpus in a child process: the document pool never inflates this process (see the docstring)."""
    call = f"bench_data.make_corpus(*json.loads({json.dumps(args)!r}))"
    code = f"import json; from benchmarks import bench_data; print('CORPUS ' + json.dumps({call}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"writing the corpus failed (exit {res.returncode})")
    return json.loads(next(line for line in res.stdout.splitlines() if line.startswith("CORPUS "))[len("CORPUS "):])


# ----------------------------------------------------------------------------- measuring a child process
def _vm_hwm(pid: str | int = "self") -> int:
    """A process's peak RSS so far (VmHWM, bytes); 0 where /proc does not say."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """Samples the memory of a process and all its descendants every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.2, pss_every: int = 5):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval, self.pss_every = interval, pss_every
        self.stop_event = threading.Event()
        self.peak_rss = self.peak_pss = self.peak_single = 0
        self.max_procs = self.samples = 0
        self.pss_ok = True
        self.hwm: dict[int, int] = {}  # pid -> VmHWM seen last (the kernel's per-process high-water mark)

    def measure(self, with_pss: bool = True) -> dict:
        """The tree's memory now: rss (and pss) summed over its processes, the largest rss, the count.
        PSS reads /proc/PID/smaps_rollup, ~10 ms for a process that loaded torch and it takes the process's
        mmap lock: hence only every pss_every-th sample."""
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return {"rss": 0, "pss": 0, "single": 0, "procs": 0}
        rss = pss = single = n = 0
        for p in procs:
            try:
                if self.pss_ok and with_pss:
                    try:
                        m = p.memory_full_info()
                        pss += getattr(m, "pss", 0)
                    except psutil.AccessDenied:
                        self.pss_ok = False
                        m = p.memory_info()
                else:
                    m = p.memory_info()
            except psutil.Error:  # exited between the listing and the read
                continue
            rss += m.rss
            single = max(single, m.rss)
            n += 1
            self.hwm[p.pid] = max(self.hwm.get(p.pid, 0), _vm_hwm(p.pid))
        return {"rss": rss, "pss": pss, "single": single, "procs": n}

    def sample(self) -> dict:
        m = self.measure(with_pss=self.samples % self.pss_every == 0)
        self.peak_rss = max(self.peak_rss, m["rss"])
        self.peak_pss = max(self.peak_pss, m["pss"])
        self.peak_single = max(self.peak_single, m["single"])
        self.max_procs = max(self.max_procs, m["procs"])
        self.samples += 1
        return m

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self) -> dict:
        self.stop_event.set()
        self.join()
        return {"peak_rss_tree_mb": round(self.peak_rss / MB, 1),
                "peak_pss_tree_mb": round(self.peak_pss / MB, 1) if self.pss_ok else None,
                "peak_rss_max_process_mb": round(self.peak_single / MB, 1),
                "hwm_sum_mb": round(sum(self.hwm.values()) / MB, 1), "max_processes": self.max_procs,
                "samples": self.samples}


def run_measured(cmd: list[str], env: Optional[dict] = None, interval: float = 0.2,
                 on_line: Optional[Callable[[str, TreeSampler], None]] = None, cwd: str = REPO) -> dict:
    """Run cmd, sampling its process tree's memory; stdout and stderr are read line by line (on_line sees each).
    Returns wall time, exit code, the memory peaks, ru_maxrss and CPU time of the tree, and the output."""
    load_before, launcher_hwm = os.getloadavg()[0], _vm_hwm()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=env, cwd=cwd)
    sampler = TreeSampler(proc.pid, interval)
    sampler.start()
    lines: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if on_line is not None:
            on_line(line, sampler)
    proc.stdout.close()
    # os.wait4 instead of proc.wait(): the rusage of this child and its waited-for descendants alone
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    mem = sampler.stop()
    return {"rc": proc.returncode, "wall_s": round(wall, 2), **mem,
            "ru_maxrss_mb": round(ru.ru_maxrss * 1024 / MB, 1),  # Linux reports KiB
            "launcher_hwm_mb": round(launcher_hwm / MB, 1),  # the floor of ru_maxrss (see the docstring)
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 2), "loadavg_before": round(load_before, 2),
            "loadavg_after": round(os.getloadavg()[0], 2), "output": lines}


def _failed(res: dict, what: str) -> str:
    tail = "\n".join(res["output"][-15:])
    return f"{what} exited with {res['rc']}:\n{tail}"


def _public(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("output", "rc")}


def _rates(tokens: int, res: dict) -> dict:
    return {"tokens": tokens, "tokens_per_s": round(tokens / max(res["wall_s"], 1e-9)),
            "tokens_per_cpu_s": round(tokens / max(res["cpu_s"], 1e-9))}


def _corpus_fields(corpus: dict) -> dict:
    return {"corpus_mb": corpus["size_mb"], "corpus_format": corpus["format"],
            "corpus_text_bytes": corpus["text_bytes"], "corpus_file_bytes": corpus["file_bytes"],
            "corpus_documents": corpus["documents"], "corpus_files": len(corpus["files"])}


# ----------------------------------------------------------------------------- ours: prepare_data.py
_PREPARED = re.compile(r"prepared ([\d,]+) tokens from ([\d,]+) documents in ([\d.]+)s \(([\d.]+)M tokens/s")


def measure_prepare(corpus: dict, workers: Optional[int], tokenizer_json: str, work_dir: str,
                    measurement: str = "throughput", shard_tokens: int = 100_000_000, interval: float = 0.2,
                    keep: bool = False, encoder: str = "tiktoken") -> dict:
    """prepare_data.py --encoder `encoder` on the corpus into a fresh folder; workers None = its default (all cores)."""
    out = os.path.join(work_dir, f"prepared-{os.path.basename(corpus['folder'])}-w{workers}")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, os.path.join(REPO, "prepare_data.py"), corpus["folder"], "--out_dir", out,
           "--tokenizer_id", tokenizer_json, "--shard_tokens", str(shard_tokens), "--encoder", encoder, "--quiet"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    log(f"{measurement}: prepare_data.py --encoder {encoder}, workers {workers if workers is not None else 'default'}, "
        f"{corpus['text_bytes'] / MB:,.1f} MB corpus")
    res = run_measured(cmd, interval=interval)
    if res["rc"] != 0:
        raise RuntimeError(_failed(res, "prepare_data.py"))
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    m = next((_PREPARED.search(line) for line in res["output"] if _PREPARED.search(line)), None)
    used_workers = workers if workers is not None else os.cpu_count()
    row = {"measurement": measurement, "pipeline": f"prepare_data.py --encoder {encoder}", "workers": used_workers, **_corpus_fields(corpus),
           "documents": manifest["totals"]["documents"], **_rates(manifest["totals"]["tokens"], res), **_public(res),
           # prepare()'s own figure: tokenizing and writing only, after the inputs were hashed
           "reported_tokens_per_s": round(manifest["totals"]["tokens"] / max(float(m.group(3)), 0.05)) if m else None,
           "reported_s": float(m.group(3)) if m else None,
           "shards": len(manifest["shards"]["train"]) + len(manifest["shards"]["val"]),
           "output_bytes": sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "*.bin"))),
           "bytes_per_token": round(corpus["text_bytes"] / manifest["totals"]["tokens"], 3)}
    if measurement == "rss":
        row.update(target_rss_mb=RSS_TARGET_MB, under_target=row["peak_rss_tree_mb"] < RSS_TARGET_MB)
    if keep:
        row["prepared_dir"] = out
    else:
        shutil.rmtree(out, ignore_errors=True)
    return row


# ----------------------------------------------------------------------------- the nanoGPT-style yardstick
_yardstick_tokenizers: dict = {}


def _yardstick_encode(batch: dict, tokenizer_json: str, eos_id: int) -> dict:
    # One tokenizer per map process, loaded on first use (the function is pickled by reference).
    tok = _yardstick_tokenizers.get(tokenizer_json)
    if tok is None:
        from tokenizers import Tokenizer
        tok = _yardstick_tokenizers[tokenizer_json] = Tokenizer.from_file(tokenizer_json)
    ids = [e.ids + [eos_id] for e in tok.encode_batch(batch["text"], add_special_tokens=False)]
    return {"ids": ids, "len": [len(x) for x in ids]}


def yardstick_child(files: list[str], fmt: str, out_dir: str, tokenizer_json: str, num_proc: int) -> dict:
    """nanoGPT's data/openwebtext/prepare.py with this tokenizer, in this process (run as a child by
    measure_yardstick). Prints one JSON line: tokens, documents and the time of each phase."""
    from datasets import load_dataset
    from tokenizers import Tokenizer

    eos_id = Tokenizer.from_file(tokenizer_json).token_to_id("<|endoftext|>")
    nproc = num_proc if num_proc > 1 else None
    times = {}
    t = time.perf_counter()
    builder = "parquet" if fmt == "parquet" else "json"
    dataset = load_dataset(builder, data_files=files, split="train", num_proc=nproc)
    times["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    split = dataset.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split["val"] = split.pop("test")
    tokenized = split.map(_yardstick_encode, batched=True, num_proc=nproc, remove_columns=dataset.column_names,
                          fn_kwargs={"tokenizer_json": tokenizer_json, "eos_id": eos_id}, desc="tokenizing")
    times["map_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tokens = {}
    for name, dset in tokenized.items():
        arr_len = int(np.sum(dset["len"], dtype=np.uint64))
        arr = np.memmap(os.path.join(out_dir, f"{name}.bin"), dtype=np.uint16, mode="w+", shape=(arr_len,))
        total_batches = min(1024, len(dset))
        idx = 0
        for batch_idx in range(total_batches):
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
            arr_batch = np.concatenate(batch["ids"])
            arr[idx:idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()
        assert idx == arr_len, (idx, arr_len)
        tokens[name] = arr_len
    times["write_s"] = time.perf_counter() - t
    result = {"tokens": sum(tokens.values()), "val_tokens": tokens["val"], "documents": len(dataset),
              **{k: round(v, 2) for k, v in times.items()}}
    print("YARDSTICK " + json.dumps(result), flush=True)
    return result


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path) for n in names
               if not os.path.islink(os.path.join(root, n)))


def measure_yardstick(corpus: dict, workers: int, tokenizer_json: str, work_dir: str, interval: float = 0.2,
                      measurement: str = "yardstick") -> dict:
    """The nanoGPT-style pipeline as a child process, with its own datasets cache (deleted after)."""
    base = os.path.join(work_dir, f"yardstick-{os.path.basename(corpus['folder'])}-w{workers}")
    shutil.rmtree(base, ignore_errors=True)
    cache, out = os.path.join(base, "hf_datasets_cache"), os.path.join(base, "out")
    os.makedirs(cache)
    os.makedirs(out)
    env = dict(os.environ, HF_DATASETS_CACHE=cache, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_HOME=os.path.join(base, "hf_home"), HF_DATASETS_DISABLE_PROGRESS_BARS="1",
               # one thread per map process, as prepare_data.py's workers: num_proc is the parallelism
               TOKENIZERS_PARALLELISM="false")
    spec = json.dumps([corpus["files"], corpus["format"], out, tokenizer_json, workers])
    code = f"import json; from benchmarks import bench_data; bench_data.yardstick_child(*json.loads({spec!r}))"
    log(f"{measurement}: nanoGPT-style datasets pipeline, num_proc {workers}, "
        f"{corpus['text_bytes'] / MB:,.1f} MB corpus")
    res = run_measured([sys.executable, "-c", code], env=env, interval=interval)
    try:
        if res["rc"] != 0:
            raise RuntimeError(_failed(res, "the yardstick"))
        line = next(line for line in res["output"] if line.startswith("YARDSTICK "))
        child = json.loads(line[len("YARDSTICK "):])
        cache_bytes = _du(cache)  # datasets keeps every intermediate table: the end is the peak
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"measurement": measurement, "pipeline": "datasets.map + np.memmap (nanoGPT)", "workers": workers,
            **_corpus_fields(corpus), "documents": child["documents"], **_rates(child["tokens"], res),
            **_public(res), "load_s": child["load_s"], "map_s": child["map_s"], "write_s": child["write_s"],
            "hf_cache_bytes": cache_bytes, "bytes_per_token": round(corpus["text_bytes"] / child["tokens"], 3)}


# ----------------------------------------------------------------------------- training memory
_STEP = re.compile(r"^step\s+(\d+)/(\d+) \| lr")


def measure_train_rss(inputs: list[str], tokenizer_json: str, work_dir: str, max_steps: int = 10_000,
                      log_every: int = 100, shard_tokens: int = 1_000_000, interval: float = 0.2,
                      threads: int = 0, extra_args: tuple = (), corpus_mb: Optional[float] = None,
                      device: str = "cpu") -> dict:
    """train.py (tiny model, on `device`) on `inputs` prepared with shard_tokens ids per shard (or on `inputs`, one
    folder already prepared). The RSS of the training process is read when each step line appears; the row
    has it at the first logged step and at max_steps, their ratio, and the series. threads > 0 sets
    OMP_NUM_THREADS (on a shared machine one thread runs this tiny model about twice as fast as two)."""
    if len(inputs) == 1 and os.path.isfile(os.path.join(inputs[0], "manifest.json")):
        data = inputs[0]
    else:
        sources = sorted(os.path.abspath(p) for p in inputs)
        tag = hashlib.sha256(json.dumps([sources, shard_tokens]).encode()).hexdigest()[:12]  # reused across runs
        data = os.path.join(work_dir, f"train-data-{tag}")
        prep = subprocess.run([sys.executable, os.path.join(REPO, "prepare_data.py"), *sources, "--out_dir", data,
                               "--tokenizer_id", tokenizer_json, "--shard_tokens", str(shard_tokens),
                               "--overwrite", "1", "--quiet"], capture_output=True, text=True, cwd=REPO)
        if prep.returncode != 0:
            raise RuntimeError(f"prepare_data.py for train_rss failed:\n{prep.stdout[-2000:]}{prep.stderr[-2000:]}")
    with open(os.path.join(data, "manifest.json")) as f:
        manifest = json.load(f)
    out = os.path.join(work_dir, "train-out")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--input_file", data, "--out_dir", out,
           "--tokenizer_id", tokenizer_json, "--model", "tiny", "--device", device, "--seq_len", "64",
           "--batch_size", "4", "--grad_accum", "1", "--save_every", "0", "--sample_every", "0", "--val_every", "0",
           "--log_every", str(log_every), "--max_steps", str(max_steps), *extra_args]
    series: list[tuple[int, float, float]] = []  # (step, rss of train.py, rss of its tree) in MB

    def at_step(line: str, sampler: TreeSampler) -> None:
        m = _STEP.match(line)
        if m:
            try:
                own = psutil.Process(sampler.root.pid).memory_info().rss
            except psutil.Error:
                return
            tree = sampler.sample()["rss"]
            series.append((int(m.group(1)), round(own / MB, 1), round(tree / MB, 1)))

    log(f"train_rss: train.py --model tiny --device {device} for {max_steps:,} steps on {len(manifest['shards']['train'])} "
        f"shards of {manifest['settings']['shard_tokens']:,} ids")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads > 0 else None
    res = run_measured(cmd, env=env, interval=interval, on_line=at_step)
    shutil.rmtree(out, ignore_errors=True)
    if res["rc"] != 0 or not series:
        raise RuntimeError(_failed(res, "train.py"))
    first, last = series[0], series[-1]
    ratio = last[1] / first[1]
    file_bytes = sum(s["bytes"] for s in manifest["sources"])  # compressed where the inputs are
    return {"measurement": "train_rss", "pipeline": "train.py", "workers": None,
            "corpus_mb": corpus_mb if corpus_mb is not None else round(file_bytes / MB, 1),
            "corpus_file_bytes": file_bytes, "corpus_files": len(manifest["sources"]),
            "corpus_documents": manifest["totals"]["documents"],
            "tokens": manifest["totals"]["train_tokens"], "train_shards": len(manifest["shards"]["train"]),
            "shard_tokens": manifest["settings"]["shard_tokens"], "torch_threads": threads or "default",
            "train_device": device,
            "max_steps": max_steps, "steps_done": last[0],
            "first_step": first[0], "rss_first_mb": first[1], "rss_last_mb": last[1], "rss_ratio": round(ratio, 4),
            "rss_max_logged_mb": max(s[1] for s in series), "flat_tolerance": FLAT_TOLERANCE,
            "flat": abs(ratio - 1) <= FLAT_TOLERANCE, "steps_per_s": round(last[0] / res["wall_s"], 1),
            **_public(res), "rss_series": [[s, own] for s, own, _ in series]}


# ----------------------------------------------------------------------------- results
def _key(row: dict) -> tuple:
    return tuple(str(row.get(k)) for k in KEY)


def merge_rows(path_stem: str, rows: list[dict]) -> list[dict]:
    """Write rows into <stem>.json and .csv, replacing earlier rows with the same KEY; returns all rows."""
    return merge_table(path_stem, rows, key=_key, order=lambda r: (
        str(r.get("machine")), MEASUREMENTS.index(r["measurement"]) if r.get("measurement") in MEASUREMENTS else 99,
        float(r.get("corpus_mb") or 0), int(r.get("workers") or 0)))


# ----------------------------------------------------------------------------- main
def resolve_tokenizer(tokenizer_id: str, work_dir: str) -> str:
    """A tokenizer.json path for every child (the yardstick reads the file itself): the file when given one,
    else the repo's loader's result saved under work_dir."""
    if tokenizer_id.endswith(".json") and os.path.isfile(tokenizer_id):
        return os.path.abspath(tokenizer_id)
    from smollm2.tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer
    tok = load_tokenizer(tokenizer_id or DEFAULT_TOKENIZER_ID, log=log)
    path = os.path.join(work_dir, f"tokenizer-{tok.fingerprint()}.json")
    if not os.path.exists(path):
        tok.tokenizer.save(path)
    return path


def _int_list(text: str) -> list[int]:
    return sorted(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))


def parse_args(argv=None) -> argparse.Namespace:
    default_tok = os.path.join(SHARED, "tokenizer", "tokenizer.json")
    cores = os.cpu_count() or 1
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", default=",".join(MEASUREMENTS), help=f"comma list of {', '.join(MEASUREMENTS)}")
    p.add_argument("--workers", default=",".join(map(str, _int_list(f"1,2,{cores}"))),
                   help="tokenizer processes for throughput and yardstick (comma list; default 1, 2 and all cores)")
    p.add_argument("--encoders", default=",".join(ENCODERS),
                   help="throughput: prepare_data.py --encoder values to measure (rss: the first)")
    p.add_argument("--corpus_mb", type=float, default=200, help="text in the throughput/yardstick corpus (MB)")
    p.add_argument("--rss_corpus_mb", type=float, default=2000,
                   help="text in the rss corpus (MB; >= 2000 for the 2 GB target)")
    p.add_argument("--rss_workers", type=int, default=None,
                   help="workers of the rss run (default: prepare_data.py's, all cores)")
    p.add_argument("--rss_yardstick", type=int, default=0, choices=[0, 1],
                   help="1: also run the yardstick on the rss corpus (slow; its datasets cache is ~3x the corpus)")
    p.add_argument("--corpus_format", default="jsonl.gz", choices=FORMATS, help="files of the synthetic corpora")
    p.add_argument("--file_mb", type=float, default=50, help="text per corpus file (MB)")
    p.add_argument("--seed", type=int, default=1234, help="shuffles the documents of the synthetic corpora")
    p.add_argument("--shard_tokens", type=int, default=100_000_000,
                   help="prepare_data.py --shard_tokens (throughput, rss)")
    p.add_argument("--max_steps", type=int, default=10_000, help="train_rss: last training step")
    p.add_argument("--log_every", type=int, default=100,
                   help="train_rss: steps between step lines (the first is the baseline)")
    p.add_argument("--train_inputs", default=os.path.join(SHARED, "data", "realdocs"),
                   help="train_rss: corpus to prepare and train on (comma list of paths)")
    p.add_argument("--train_shard_tokens", type=int, default=1_000_000, help="train_rss: ids per shard (many shards)")
    p.add_argument("--train_device", default="cpu", help="train_rss: --device of train.py (cpu, cuda)")
    p.add_argument("--train_threads", type=int, default=0,
                   help="train_rss: OMP_NUM_THREADS of train.py (0: torch's default)")
    p.add_argument("--tokenizer_id", default=default_tok if os.path.exists(default_tok) else "",
                   help="tokenizer.json, or anything smollm2.tokenizer.load_tokenizer takes (empty: its default)")
    p.add_argument("--shared_dir", default=SHARED, help="where data/realdocs and data/input.txt are")
    p.add_argument("--work_dir", default=os.path.join("/tmp", "smollm2_bench_data"),
                   help="corpora, prepared outputs and caches (outside the repo); corpora are kept and reused")
    p.add_argument("--out_dir", default=os.path.join(REPO, "results", "bench"), help="data_prep.csv / .json go here")
    p.add_argument("--machine", default="", help="name of this machine in the rows' key (default: HOSTNAME/Ncpu)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between memory samples")
    p.add_argument("--keep", type=int, default=0, choices=[0, 1], help="1: keep the prepared folders in --work_dir")
    args = p.parse_args(argv)
    args.what = [w.strip() for w in args.what.split(",") if w.strip()]
    bad = [w for w in args.what if w not in MEASUREMENTS]
    if bad:
        p.error(f"unknown --what {', '.join(bad)}; choose from {', '.join(MEASUREMENTS)}")
    try:
        args.workers = _int_list(args.workers)
    except ValueError:
        p.error(f"--workers takes a comma list of integers, got {args.workers!r}")
    if not args.workers or min(args.workers) < 0:
        p.error("--workers needs integers >= 0")
    args.encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if not args.encoders or any(e not in ENCODERS for e in args.encoders):
        p.error(f"--encoders takes a comma list of {', '.join(ENCODERS)}")
    if args.max_steps < args.log_every:
        p.error("--max_steps must be >= --log_every (the first step line is the baseline)")
    if args.work_dir and os.path.abspath(args.work_dir).startswith(REPO + os.sep):
        p.error(f"--work_dir {args.work_dir} is inside the repo; corpora never go there")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    tok = resolve_tokenizer(args.tokenizer_id, args.work_dir)
    machine = machine_info(args.machine)
    stem = os.path.join(args.out_dir, "data_prep")
    rows = []

    def record(row: dict) -> None:
        row = {**machine, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
        print(json.dumps(row), flush=True)
        rows.append(row)
        merge_rows(stem, [row])  # written as each result comes: an interrupted run keeps what it measured

    if "throughput" in args.what or "yardstick" in args.what:
        corpus = make_corpus_in_child(args.work_dir, args.corpus_mb, args.seed, args.corpus_format, args.file_mb,
                                      args.shared_dir)
        ours_tokens = None
        for w in args.workers:  # ours and the yardstick back to back: the same background load for both
            for encoder in args.encoders if "throughput" in args.what else ():
                row = measure_prepare(corpus, w, tok, args.work_dir, "throughput", args.shard_tokens, args.interval,
                                      bool(args.keep), encoder)
                ours_tokens = row["tokens"]
                record(row)
            if "yardstick" in args.what:
                row = measure_yardstick(corpus, w, tok, args.work_dir, args.interval)
                if ours_tokens is not None:  # the same documents, each + end-of-text: the same count
                    row["tokens_match_ours"] = row["tokens"] == ours_tokens
                record(row)
    if "rss" in args.what:
        corpus = make_corpus_in_child(args.work_dir, args.rss_corpus_mb, args.seed, args.corpus_format,
                                      args.file_mb, args.shared_dir)
        row = measure_prepare(corpus, args.rss_workers, tok, args.work_dir, "rss", args.shard_tokens, args.interval,
                              bool(args.keep), args.encoders[0])
        record(row)
        if args.rss_yardstick:
            y = measure_yardstick(corpus, row["workers"], tok, args.work_dir, args.interval,
                                  measurement="rss_yardstick")
            y["tokens_match_ours"] = y["tokens"] == row["tokens"]
            record(y)
    if "train_rss" in args.what:
        inputs = [s for s in args.train_inputs.split(",") if s]
        record(measure_train_rss(inputs, tok, args.work_dir, args.max_steps, args.log_every, args.train_shard_tokens,
                                 args.interval, args.train_threads, device=args.train_device))
    log(f"{len(rows)} rows merged into {stem}.csv and .json")
    return rows


if __name__ == "__main__":
    run_cli(main, "bench_data.py")
