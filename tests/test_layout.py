"""The repository's shape, read from its imports: no import circle anywhere, the design card's two model
files depend on nothing of the package, the package never imports a script, and inference (app.py,
generate.py, evaluate.py) loads none of the training stack. The graph is the one the Space export walks
(smollm2.hub.reachable_files)."""

from __future__ import annotations

from pathlib import Path

from smollm2.hub import local_imports, reachable_files

REPO = Path(__file__).resolve().parents[1]
# What only training needs: the step and its optimizer, parallelism, the run folder, the switches, the
# corpus -> windows pipeline, the metrics log, the options table and the loop's plumbing.
TRAINING = {"smollm2/training.py", "smollm2/parallel.py", "smollm2/run.py", "smollm2/switches.py",
            "smollm2/data.py", "smollm2/prepare.py", "smollm2/metrics.py", "smollm2/sources.py",
            "smollm2/options.py", "smollm2/loop.py"}
MODEL_FILES = {"smollm2_config.py", "smollm2_model.py"}


def _graph() -> dict[str, set[str]]:
    files = [p.relative_to(REPO).as_posix() for pattern in ("*.py", "smollm2/*.py", "benchmarks/*.py")
             for p in sorted(REPO.glob(pattern))]
    return {f: local_imports(str(REPO / f)) - {f} for f in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, found = {}, [], []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a.py": {"b.py"}, "b.py": {"c.py"}, "c.py": {"a.py"}}) == [["a.py", "b.py", "c.py", "a.py"]]
    assert _cycles({"a.py": {"b.py"}, "b.py": set()}) == []


def test_no_import_circle():
    graph = _graph()
    assert "smollm2/training.py" in graph and "train.py" in graph  # the walk sees the package and the scripts
    assert _cycles(graph) == []


def test_layers_point_one_way():
    graph = _graph()
    for f in MODEL_FILES:
        assert graph[f] <= MODEL_FILES, f"{f} imports {graph[f] - MODEL_FILES}"
    for f, deps in graph.items():
        if f.startswith("smollm2/"):
            outside = {d for d in deps if not d.startswith("smollm2/")} - MODEL_FILES
            assert not outside, f"{f} imports scripts {outside}"
    assert graph["smollm2/common.py"] == set(), "common.py is the leaf every module may import"
    assert (REPO / "smollm2" / "__init__.py").read_text() == ""


def test_inference_loads_no_training_module():
    for entry in ("app.py", "generate.py", "evaluate.py"):
        reached = set(reachable_files(entry))
        assert "smollm2_model.py" in reached and "smollm2/inference.py" in reached
        assert not reached & TRAINING, f"{entry} reaches {sorted(reached & TRAINING)}"


def test_no_committed_file_carries_a_path_of_the_machine_that_wrote_it():
    """Logs, tables, pages and plots name files relative to the repository: a home folder, a checkout's location
    or a virtual environment's path would publish one machine's layout (and mean nothing on another)."""
    import re
    import subprocess

    try:
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        import pytest
        pytest.skip("not a git checkout")
    machine_path = re.compile(rb"(?<![\w.])/(?:home|root|Users|work|opt)/[\w.-]+/|/tmp/repo/")
    found = []
    for name in tracked.decode().split("\0"):
        if not name or not name.endswith((".log", ".csv", ".json", ".txt", ".md", ".png")):
            continue
        if name.startswith("tests/"):
            continue
        data = (REPO / name).read_bytes()
        for m in machine_path.finditer(data):
            found.append(f"{name}: {m.group().decode(errors='replace')}")
    assert not found, "\n".join(found[:20])


def test_every_script_prints_its_help():
    # A help text is formatted with %: a bare "10% of" in one crashes --help with a traceback.
    import subprocess
    import sys
    scripts = sorted(p.name for p in REPO.glob("*.py") if p.name not in MODEL_FILES)  # the model files are modules
    procs = {s: subprocess.Popen([sys.executable, s, "--help"], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for s in scripts}
    for s, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "usage:" in out, f"{s} --help: {err.strip().splitlines()[-1:]}"
