"""Every script's command line goes through smollm2.common.run_cli: a usage error is one stderr line
`<script>: error: ...` and exit 2, a SmolError raised in main is one line and the error's code, Ctrl-C is one
line and the script's own status, and anything else is a bug that keeps its traceback. Every exception class of
the repo derives from SmolError, so that no script needs a list of the errors it reports."""

from __future__ import annotations

import ast
import builtins
import importlib
import signal
import subprocess
import sys
import types

import pytest

from conftest import REPO_ROOT, TOKENIZER_JSON
from smollm2.checkpoint import CheckpointError
from smollm2.common import RunStopped, SmolError, UsageError, run_cli
from smollm2.shards import DataError

MODEL_FILES = {"smollm2_config.py", "smollm2_model.py"}  # modules, not scripts


def scripts() -> list[str]:
    top = [p.name for p in sorted(REPO_ROOT.glob("*.py")) if p.name not in MODEL_FILES]
    bench = [f"benchmarks/{p.name}" for p in sorted((REPO_ROOT / "benchmarks").glob("*.py"))
             if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")]
    return top + bench


def run_all(cases: dict[str, list[str]], tmp_path) -> dict[str, subprocess.CompletedProcess]:
    """Each script with its arguments, side by side in fresh processes (the start-up, torch's import, dominates)."""
    procs = {s: subprocess.Popen([sys.executable, str(REPO_ROOT / s), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for s, args in cases.items()}
    done = {}
    for s, p in procs.items():
        out, err = p.communicate(timeout=300)
        done[s] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return done


def assert_one_error_line(script: str, r: subprocess.CompletedProcess, code: int) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    name = script.split("/")[-1]
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith(f"{name}: error: "), (script, r.stderr)
    return lines[0]


def test_every_script_runs_its_command_line_through_run_cli():
    for script in scripts():
        tree = ast.parse((REPO_ROOT / script).read_text(encoding="utf-8"))
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "run_cli" in calls, f"{script} does not call run_cli"


def test_a_bad_flag_is_one_line_and_exit_2_in_every_script(tmp_path):
    results = run_all({s: ["--no_such_flag"] for s in scripts()}, tmp_path)
    for script, r in results.items():
        assert_one_error_line(script, r, 2)


def test_a_usage_error_raised_in_main_is_one_line_and_exit_2(tmp_path):
    # One refusal per script that main() (not argparse) makes before any real work, in fresh processes.
    missing = str(tmp_path / "missing")
    cases = {"train.py": ["--max_lr", "-1", "--out_dir", str(tmp_path / "run")],
             "export_hf.py": ["--checkpoint", f"{missing}.pt", "--out_dir", str(tmp_path / "hf")],
             "generate.py": ["--checkpoint", str(tmp_path), "--prompt", "x"],
             "prepare_data.py": [missing, "--out_dir", str(tmp_path / "data"), "--tokenizer_id", str(TOKENIZER_JSON)],
             "bench.py": ["--impls", "no_such_impl"],
             "benchmarks/code_corpus.py": ["--out", str(tmp_path / "c.jsonl"), "--root", missing],
             "benchmarks/time_to_loss.py": ["--input_file", missing, "--corpus", "c", "--recipes", "no_such_recipe"],
             "update_readme.py": ["--readme", f"{missing}.md"]}
    for script, r in run_all(cases, tmp_path).items():
        assert_one_error_line(script, r, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before anything was written


def _exit(main, capsys, **kw) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        run_cli(main, "prog.py", **kw)
    captured = capsys.readouterr()
    assert captured.out == ""
    return e.value.code, captured.err


def _raise(e: BaseException):
    def main():
        raise e
    return main


class Refused(SmolError):
    code = 3


@pytest.mark.parametrize("error,code", [(Refused("no"), 3), (UsageError("no"), 2), (RunStopped("no"), 1),
                                        (RunStopped("no", 2), 2), (SmolError("no"), 1), (CheckpointError("no"), 2),
                                        (DataError("no"), 2)])
def test_a_smolerror_is_one_line_and_its_code(capsys, error, code):
    assert _exit(_raise(error), capsys) == (code, "prog.py: error: no\n")


def test_a_message_of_several_lines_is_printed_whole_and_a_librarys_by_its_first(capsys):
    # The repo's own messages are written for the user (a refused resume lists one setting a line); a library's
    # (an OSError named in `also`) may carry a dump after its first line.
    assert _exit(_raise(UsageError("first\n  second")), capsys) == (2, "prog.py: error: first\n  second\n")
    assert _exit(_raise(UsageError("")), capsys) == (2, "prog.py: error: UsageError\n")
    assert _exit(_raise(OSError("first\nsecond")), capsys, also=(OSError,)) == (2, "prog.py: error: first\n")


def test_mains_status_is_the_exit_status(capsys):
    assert _exit(lambda: 0, capsys) == (0, "")
    assert _exit(lambda: 1, capsys) == (1, "")
    assert _exit(lambda: None, capsys) == (0, "")
    assert _exit(lambda: [{"row": 1}], capsys) == (0, "")  # a benchmark's rows are not a status
    seen = []
    with pytest.raises(SystemExit):  # leave is given the status
        run_cli(lambda: 5, "prog.py", leave=lambda code: (seen.append(code), sys.exit(code)))
    assert seen == [5]


def test_an_unexpected_exception_keeps_its_traceback(capsys):
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda: 1 / 0, "prog.py")
    with pytest.raises(OSError):  # an OSError is the user's to act on only where the script says so
        run_cli(_raise(OSError(28, "No space left on device")), "prog.py")
    assert capsys.readouterr().err == ""
    r = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "from smollm2.common import run_cli; run_cli(lambda: 1 / 0, 'prog.py')", str(REPO_ROOT)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr, r.stderr
    assert "prog.py: error" not in r.stderr


def test_also_names_the_scripts_other_errors(capsys):
    main = _raise(OSError(28, "No space left on device", "out/model.safetensors"))
    assert _exit(main, capsys, also=(OSError,)) == (
        2, "prog.py: error: [Errno 28] No space left on device: 'out/model.safetensors'\n")
    assert _exit(_raise(Refused("no")), capsys, also=(Exception,)) == (3, "prog.py: error: no\n")  # its own code


def test_ctrl_c_is_one_line_and_the_scripts_status(capsys, monkeypatch, tmp_path):
    assert _exit(_raise(KeyboardInterrupt()), capsys) == (130, "prog.py: error: interrupted\n")
    import prepare_data
    assert _exit(_raise(KeyboardInterrupt()), capsys, on_interrupt=prepare_data.on_interrupt) == (
        130, "prog.py: error: interrupted; the finished shards are kept: run the same command again to continue\n")
    import train
    monkeypatch.setattr(sys, "argv", ["train.py", "--out_dir", str(tmp_path / "run")])
    no_checkpoint = "aborted; no checkpoint saved in this folder yet: run the same command again"
    for raised, name in ((KeyboardInterrupt(), "SIGINT"), (KeyboardInterrupt("SIGTERM"), "SIGTERM"),
                         (KeyboardInterrupt("SIGHUP"), "SIGHUP")):
        assert _exit(_raise(raised), capsys, on_interrupt=train.on_interrupt) == (
            128 + signal.Signals[name].value, f"prog.py: error: {name} received: {no_checkpoint}\n")


def run_main_block(script: str, main, monkeypatch) -> None:
    """The script's own `if __name__ == "__main__":` block, in this process, with `main` in place of its main()."""
    path = REPO_ROOT / script
    *defs, block = ast.parse(path.read_text(encoding="utf-8")).body
    assert isinstance(block, ast.If) and ast.unparse(block.test) == "__name__ == '__main__'", script
    module = types.ModuleType(f"cli_test_{path.stem}")
    module.__file__ = str(path)
    monkeypatch.setitem(sys.modules, module.__name__, module)  # a dataclass looks its module up there
    ns = module.__dict__
    exec(compile(ast.Module(defs, type_ignores=[]), str(path), "exec"), ns)
    ns["main"] = main
    if "exit_without_teardown" in ns:  # train.py leaves through os._exit, which would end this process too
        ns["exit_without_teardown"] = sys.exit
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        exec(compile(ast.Module(block.body, type_ignores=[]), str(path), "exec"), ns)
    finally:
        for sig, handler in handlers.items():  # the blocks set their own (SIGTERM stops like Ctrl-C)
            signal.signal(sig, handler)


@pytest.mark.parametrize("script", scripts())
def test_a_smolerror_raised_in_a_scripts_main_is_one_line_and_its_code(script, capsys, monkeypatch):
    def main(argv=None):
        raise Refused("refused")

    with pytest.raises(SystemExit) as e:
        run_main_block(script, main, monkeypatch)
    assert e.value.code == 3
    assert capsys.readouterr().err == f"{script.split('/')[-1]}: error: refused\n"


@pytest.mark.parametrize("script", scripts())
def test_an_unexpected_exception_in_a_scripts_main_propagates(script, capsys, monkeypatch):
    def main(argv=None):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):  # in a process of its own: a traceback and exit 1
        run_main_block(script, main, monkeypatch)
    assert capsys.readouterr().err == ""


def _exception_classes(tree: ast.Module) -> list[str]:
    """Module-level classes of one file that derive, by name, from an exception (builtin or of this file)."""
    builtin = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                     for b in node.bases}
            if node.name.endswith("Error") or bases & (builtin | set(names)) or any(
                    b.endswith(("Error", "Exception", "NotFound", "Busy", "Stopped")) for b in bases):
                names.append(node.name)
    return names


def test_every_exception_class_derives_from_smolerror():
    files = sorted({*REPO_ROOT.glob("*.py"), *REPO_ROOT.glob("smollm2/*.py"), *REPO_ROOT.glob("benchmarks/*.py")})
    found = {}
    for path in files:
        rel = path.relative_to(REPO_ROOT).as_posix()
        classes = _exception_classes(ast.parse(path.read_text(encoding="utf-8")))
        if not classes:
            continue
        assert not rel.startswith("benchmarks/"), f"{rel} defines {classes}: import it here to check them"
        module = importlib.import_module(rel[:-3].replace("/", "."))
        for name in classes:
            cls = getattr(module, name)
            assert isinstance(cls, type) and issubclass(cls, BaseException), f"{rel}: {name} is not an exception"
            found[f"{rel}:{name}"] = cls
    assert "smollm2/checkpoint.py:CheckpointError" in found and "export_hf.py:ExportError" in found  # the walk works
    assert not [n for n, cls in found.items() if not issubclass(cls, SmolError)]
