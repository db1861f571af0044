"""smollm2.parallel's plumbing, without compiling: the artifacts file is written whole,
not rewritten when unchanged, and a file that does not load costs a line in the log, never the run."""

import torch

from smollm2 import parallel


class Info:
    def __init__(self, n):
        self.artifacts = {"inductor": ["k"] * n}


def test_artifacts_are_written_once_and_a_bad_file_is_ignored(tmp_path, monkeypatch):
    path, lines = tmp_path / parallel.ARTIFACTS, []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"artifacts", Info(2)))
    parallel.save_artifacts(str(path), lines.append)
    assert path.read_bytes() == b"artifacts" and "saved 2 artifacts" in lines[-1]
    assert [p.name for p in tmp_path.iterdir()] == [parallel.ARTIFACTS]  # no temporary left
    parallel.save_artifacts(str(path), lines.append)
    assert len(lines) == 1  # the same bytes: not rewritten

    loaded = []
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: loaded.append(data) or Info(3))
    parallel.load_artifacts(str(path), lines.append)
    assert loaded == [b"artifacts"] and "loaded 3 artifacts" in lines[-1]

    def broken(data):
        raise RuntimeError("unpickling failed")
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", broken)
    parallel.load_artifacts(str(path), lines.append)
    assert lines[-1].startswith("Compile cache: ignored") and "unpickling failed" in lines[-1]
    parallel.load_artifacts(str(tmp_path / "absent.bin"), lines.append)  # nothing there: nothing said
    assert len(lines) == 3
