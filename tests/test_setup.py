"""setup.sh repairs a virtual environment that an interrupted set-up left half-made."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stamp_name() -> str:
    # The name setup.sh gives its "requirements installed" stamp: a hash of requirements.txt and setup.sh.
    blob = b"".join(open(os.path.join(REPO, f), "rb").read() for f in ("requirements.txt", "setup.sh"))
    return ".smollm2-setup-" + hashlib.sha256(blob).hexdigest()[:16]


def source_setup(venv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SMOLLM2_NO_VENV")}
    env["SMOLLM2_VENV"] = venv
    return subprocess.run(["bash", "-c", f'source "{REPO}/setup.sh" && python -c "import sys; print(sys.prefix)"'],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(shutil.which("python3") is None, reason="setup.sh runs python3")
@pytest.mark.parametrize("lost", ["bin/activate", "pip"])
def test_a_half_made_venv_is_completed_on_the_next_call(tmp_path, lost):
    venv = str(tmp_path / "venv")
    subprocess.run(["python3", "-m", "venv", "--without-pip", venv], check=True)
    # What a Ctrl-C inside `python3 -m venv` leaves: the interpreter, but no activate script (or no pip).
    if lost == "bin/activate":
        os.remove(os.path.join(venv, "bin", "activate"))
    prefix = subprocess.run([os.path.join(venv, "bin", "python"), "-c", "import sys; print(sys.prefix)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    open(os.path.join(prefix, stamp_name()), "w").close()  # the requirements count as installed: no pip download
    done = source_setup(venv)
    assert done.returncode == 0, done.stderr
    assert "completing" in done.stdout + done.stderr
    assert os.path.isfile(os.path.join(venv, "bin", "activate"))
    assert done.stdout.strip().splitlines()[-1] == prefix
    again = source_setup(venv)  # and the call after that has nothing to repair
    assert again.returncode == 0 and "completing" not in again.stdout + again.stderr
