"""Compile once, measured on a CPU: what the first step of a compiled train.py costs when the
machine's inductor caches are empty (cold), when they hold this model (a machine that ran it before), and
when they are empty but the run folder holds compile_artifacts.bin (a resume on another machine). Each
row is a train.py process (tiny preset, --compile 1 on CPU, where inductor compiles C++ instead of
Triton); compile_s is the WALL line's, the first step including compilation.

    python benchmarks/compile_cache_cpu.py --shared_dir ../shared     # -> results/bench/compile_cache_cpu.json
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from smollm2.common import OneLineParser, run_cli  # noqa: E402


def train(out_dir, cache_dir, shared, *extra):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir, TORCH_LOGS="recompiles")
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--model", "tiny", "--device", "cpu", "--compile", "1",
           "--seq_len", "64", "--batch_size", "1", "--grad_accum", "4", "--log_every", "1", "--save_every", "3",
           "--sample_every", "0", "--val_every", "0", "--out_dir", out_dir,
           "--input_file", os.path.join(shared, "data", "input.txt"),
           "--tokenizer_id", os.path.join(shared, "tokenizer", "tokenizer.json"), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"train.py failed: {r.stderr[-2000:]}")
    wall = [json.loads(l[len("WALL: "):]) for l in r.stdout.splitlines() if l.startswith("WALL: ")][-1]
    notes = [l for l in r.stdout.splitlines() if l.startswith("Compile cache:")]
    notes += [l.strip()[:300] for l in r.stderr.splitlines() if "ecompil" in l]  # TORCH_LOGS=recompiles
    return wall, notes


def main():
    p = OneLineParser()
    p.add_argument("--shared_dir", default=os.path.join(os.path.dirname(REPO), "shared"))
    p.add_argument("--out", default=os.path.join(REPO, "results", "bench", "compile_cache_cpu.json"))
    a = p.parse_args()
    root = tempfile.mkdtemp(prefix="compile_cache_")
    machine_a, machine_b = os.path.join(root, "inductor_a"), os.path.join(root, "inductor_b")
    run1, run2 = os.path.join(root, "run1"), os.path.join(root, "run2")
    rows = []
    for name, out_dir, cache, extra in [
            ("cold: empty machine caches, new folder", run1, machine_a, ["--max_steps", "3"]),
            ("warm machine caches, new folder (no artifacts file)", run2, machine_a, ["--max_steps", "3"]),
            ("empty machine caches, resume with the folder's compile_artifacts.bin", run1, machine_b,
             ["--max_steps", "6", "--resume", "1"])]:
        wall, notes = train(out_dir, cache, a.shared_dir, *extra)
        rows.append({"case": name, "compile_s": wall["compile_s"], "startup_s": wall["startup_s"],
                     "steps_2_on_s": wall["steps_s"], "steps": wall["steps"], "notes": notes})
        print(json.dumps(rows[-1]), flush=True)
    import torch
    with open(a.out, "w") as f:
        json.dump({"torch": torch.__version__, "cpus": os.cpu_count(), "rows": rows}, f, indent=1)
        f.write("\n")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    run_cli(main, "compile_cache_cpu.py")
