"""A folder this repo replaces whole (export_hf.py --space_dir) is never the checkout, the home folder, `/`,
a repository (.git) or a folder of someone else's files: refused in one line, nothing deleted."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from smollm2.hub import SpaceError, is_space_folder, write_space
from smollm2.io import refuse_to_replace


def user_folder(path, git: bool):
    path.mkdir()
    (path / "notes.txt").write_text("mine\n")
    if git:
        (path / ".git").mkdir()
        (path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return path


@pytest.mark.parametrize("where", ["checkout", "above the checkout", "home", "root"])
def test_the_checkout_home_and_root_are_refused(where):
    folder = {"checkout": REPO_ROOT, "above the checkout": REPO_ROOT.parent, "home": os.path.expanduser("~"),
              "root": "/"}[where]
    with pytest.raises(ValueError, match="nothing was deleted"):
        refuse_to_replace(str(folder), "--space_dir", is_space_folder)


@pytest.mark.parametrize("git", [True, False])
def test_write_space_refuses_a_users_folder_and_deletes_nothing(tmp_path, git):
    space = user_folder(tmp_path / "space", git)
    before = sorted(p.relative_to(space) for p in space.rglob("*"))
    with pytest.raises(SpaceError, match="holds .git" if git else "did not write"):
        write_space(str(space), str(tmp_path / "no_export_needed"), {}, "t")
    assert sorted(p.relative_to(space) for p in space.rglob("*")) == before
    assert (space / "notes.txt").read_text() == "mine\n"


def test_export_hf_space_dir_dot_refuses_in_one_line_before_exporting(tmp_path):
    """`--space_dir .` from inside a checkout: exit 2, one line, no --out_dir written, every file still there.
    Run in a copy of the layout (a folder with .git), never in the real checkout."""
    work = user_folder(tmp_path / "checkout", git=True)
    r = subprocess.run([sys.executable, str(REPO_ROOT / "export_hf.py"), "--checkpoint", "missing.pt",
                        "--out_dir", "hf", "--space_dir", "."], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "--space_dir . holds .git" in r.stderr and "Traceback" not in r.stderr
    assert sorted(os.listdir(work)) == [".git", "notes.txt"]


def test_a_damaged_token_cache_holding_a_repository_is_refused_not_deleted(tmp_path, tokenizer_json_path, corpus_path):
    # The token cache is rebuilt by deleting its folder through the same guard: a cache folder that someone
    # made a repository of (git init inside it) is refused in one line and nothing is deleted.
    from smollm2.data import _raw_sources_and_key, load_training_data
    from smollm2.shards import MANIFEST, DataError
    from smollm2.tokenizer import load_tokenizer
    tok = load_tokenizer(str(tokenizer_json_path))
    cache = tmp_path / "cache"
    cache.mkdir()
    _, key, _ = _raw_sources_and_key(str(corpus_path), tok, str(cache), 0.1, lambda m: None)
    repo = user_folder(cache / f"data-{key}", git=True)
    (repo / MANIFEST).write_text("{}")  # looks prepared but is damaged, so a rebuild would delete the folder
    with pytest.raises(DataError, match="holds .git.*nothing was deleted"):
        load_training_data(str(corpus_path), tok, cache_dir=str(cache), val_fraction=0.1, log=lambda m: None)
    assert (repo / "notes.txt").read_text() == "mine\n" and (repo / ".git" / "HEAD").exists()


def test_remove_folder_deletes_only_what_the_guard_allows(tmp_path):
    from smollm2.io import remove_folder
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "x").write_text("1")
    remove_folder(str(ours), "--flag", lambda f: True)
    assert not ours.exists()
    theirs = user_folder(tmp_path / "theirs", git=False)
    with pytest.raises(ValueError, match="did not write"):
        remove_folder(str(theirs), "--flag", lambda f: False)
    assert (theirs / "notes.txt").exists()
